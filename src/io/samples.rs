//! Readers for the numbers `mscope alpha` and `mscope compare` take: text with one number per line
//! (blank lines and `#` comments ignored), NumPy `.npy` (little-endian f4/f8/i4/i8, C order) and
//! safetensors (a single tensor, or the one named for the role). Every value must be finite; an
//! error names the file and the line or position.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::npy::NpyArray;
use crate::error::{Error, Result};

/// Numbers read from a file with their shape (`[len]` for text).
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// Reads any supported format, choosing by extension (`.npy`, `.safetensors`, else text).
/// A safetensors file with several tensors must hold one called `name`.
pub fn read_array(path: &Path, name: &str) -> Result<Array> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let array = match ext {
        "npy" => read_npy(path)?,
        "safetensors" => read_safetensors(path, name)?,
        _ => read_text(path)?,
    };
    if let Some(i) = array.values.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "{}: value {} at index {} is not finite",
            path.display(),
            array.values[i],
            unravel(i, &array.shape)
        )));
    }
    Ok(array)
}

/// The C-order multi-index of flat position `i`, as `[row, col, …]` (0-based, like NumPy).
fn unravel(mut i: usize, shape: &[usize]) -> String {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        *slot = i % dim.max(1);
        i /= dim.max(1);
    }
    format!("{index:?}")
}

/// A 1-D sample of soft decisions (f32, as the trim kernels take them).
pub fn read_sample(path: &Path) -> Result<Vec<f32>> {
    let array = read_array(path, "scores")?;
    if array.shape.len() != 1 {
        return Err(Error::input(format!(
            "{}: expected a 1-D sample, got shape {:?}",
            path.display(),
            array.shape
        )));
    }
    if array.values.is_empty() {
        return Err(Error::input(format!("{}: empty sample", path.display())));
    }
    to_f32(path, &array.values)
}

/// Integer class labels, one per point.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let array = read_array(path, "labels")?;
    if array.shape.len() != 1 {
        return Err(Error::input(format!(
            "{}: expected 1-D labels, got shape {:?}",
            path.display(),
            array.shape
        )));
    }
    array
        .values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.fract() == 0.0 && v.abs() < 2f64.powi(53) {
                Ok(v as i64)
            } else {
                Err(Error::input(format!(
                    "{}: label {v} at row {} is not an integer",
                    path.display(),
                    i + 1
                )))
            }
        })
        .collect()
}

/// `values` as f32, or an error naming `path` and the position of one that overflows f32.
pub fn to_f32(path: &Path, values: &[f64]) -> Result<Vec<f32>> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let x = v as f32;
            if x.is_finite() {
                Ok(x)
            } else {
                Err(Error::input(format!(
                    "{}: value {v} at position {} overflows f32",
                    path.display(),
                    i + 1
                )))
            }
        })
        .collect()
}

fn read_text(path: &Path) -> Result<Array> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut values = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let field = line.split('#').next().unwrap_or("").trim();
        if field.is_empty() {
            continue;
        }
        let v: f64 = field.parse().map_err(|_| {
            Error::input(format!(
                "{}:{}: `{field}` is not a number",
                path.display(),
                i + 1
            ))
        })?;
        if !v.is_finite() {
            return Err(Error::input(format!(
                "{}:{}: `{field}` is not finite",
                path.display(),
                i + 1
            )));
        }
        values.push(v);
    }
    Ok(Array {
        shape: vec![values.len()],
        values,
    })
}

/// A numeric `.npy` array (see [`super::npy`]) as f64 values.
fn read_npy(path: &Path) -> Result<Array> {
    let array = NpyArray::read(path)?;
    let values = array.to_f64().ok_or_else(|| {
        Error::input(format!(
            "{}: holds strings ({:?}), expected numbers",
            path.display(),
            array.dtype
        ))
    })?;
    Ok(Array {
        shape: array.shape,
        values,
    })
}

fn read_safetensors(path: &Path, name: &str) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::input(format!("{}: {msg}", path.display()));
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let names = file.names();
    let chosen = match names[..] {
        [only] => only,
        _ if names.contains(&name) => name,
        _ => {
            return Err(bad(format!(
                "holds tensors {names:?}: expected a single tensor or one named `{name}`"
            )))
        }
    };
    let t = file.tensor(chosen).map_err(|e| bad(e.to_string()))?;
    let data = t.data();
    let values: Vec<f64> = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
            .collect(),
        other => {
            return Err(bad(format!(
                "tensor `{chosen}` is {other:?}; expected F32, F64, I32 or I64"
            )))
        }
    };
    Ok(Array {
        shape: t.shape().to_vec(),
        values,
    })
}
