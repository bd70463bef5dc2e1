//! Small safetensors files read whole and written atomically: datasets, MLP classifiers, kernels.
//! (Model checkpoints go through [`crate::weights`], which memory-maps them.) Every error names
//! the file and the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A safetensors file held in memory, with its string metadata.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::input(format!("{}: not a safetensors file: {e}", path.display()))
        })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let file = TensorFile {
            path: path.to_path_buf(),
            bytes,
            metadata,
        };
        file.view()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An input error naming this file.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::input(format!("{}: {message}", self.path.display()))
    }

    fn view(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.error(format!("not a safetensors file: {e}")))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.view().is_ok_and(|v| v.tensor(name).is_ok())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .view()
            .map(|v| v.names().into_iter().map(str::to_string).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Every metadata entry, in key order.
    pub fn metadata_entries(&self) -> BTreeMap<&str, &str> {
        self.metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Every tensor as stored, in name order, as it would be written again.
    pub fn raw_tensors(&self) -> Result<Vec<TensorOut<'_>>> {
        let view = self.view()?;
        let mut tensors: Vec<TensorOut<'_>> = view
            .tensors()
            .into_iter()
            .map(|(name, tensor)| TensorOut {
                name,
                dtype: tensor.dtype(),
                shape: tensor.shape().to_vec(),
                bytes: tensor.data(),
            })
            .collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tensors)
    }

    /// Shape and values of an F32 tensor.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.decode(name, Dtype::F32, f32::from_le_bytes)
    }

    /// Shape and values of an F64 tensor.
    pub fn f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        self.decode(name, Dtype::F64, f64::from_le_bytes)
    }

    /// Shape and values of an I64 tensor.
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        self.decode(name, Dtype::I64, i64::from_le_bytes)
    }

    fn decode<const N: usize, T>(
        &self,
        name: &str,
        dtype: Dtype,
        from_le: impl Fn([u8; N]) -> T,
    ) -> Result<(Vec<usize>, Vec<T>)> {
        let view = self.view()?;
        let tensor = view
            .tensor(name)
            .map_err(|_| self.error(format!("no tensor `{name}`")))?;
        if tensor.dtype() != dtype {
            return Err(self.error(format!(
                "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                tensor.dtype()
            )));
        }
        let values = tensor
            .data()
            .chunks_exact(N)
            .map(|b| from_le(b.try_into().expect("chunk of N bytes")))
            .collect();
        Ok((tensor.shape().to_vec(), values))
    }
}

/// One tensor to write: name, dtype, shape and little-endian bytes.
pub struct TensorOut<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl<'a> TensorOut<'a> {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &'a [f32]) -> Self {
        Self::new(name, Dtype::F32, shape, bytemuck::cast_slice(values))
    }

    pub fn f64(name: impl Into<String>, shape: Vec<usize>, values: &'a [f64]) -> Self {
        Self::new(name, Dtype::F64, shape, bytemuck::cast_slice(values))
    }

    pub fn i64(name: impl Into<String>, shape: Vec<usize>, values: &'a [i64]) -> Self {
        Self::new(name, Dtype::I64, shape, bytemuck::cast_slice(values))
    }

    fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>, bytes: &'a [u8]) -> Self {
        let expected = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        assert_eq!(
            bytes.len(),
            expected,
            "tensor bytes disagree with its shape"
        );
        TensorOut {
            name: name.into(),
            dtype,
            shape,
            bytes,
        }
    }
}

/// Serialises `tensors` with string `metadata` and writes them atomically.
pub fn write(
    path: &Path,
    tensors: Vec<TensorOut<'_>>,
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    super::write_atomic(path, &serialize(tensors, &metadata))
}

/// The safetensors bytes of `tensors` and `metadata`, the same for the same inputs in every run:
/// metadata keys in sorted order (the safetensors crate takes a `HashMap`, whose order changes
/// from process to process), tensors laid out as that crate lays them out (larger element types
/// first, then by name), the header padded with spaces to a multiple of 8 bytes.
pub fn serialize(mut tensors: Vec<TensorOut<'_>>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    tensors.sort_by(|a, b| {
        (std::cmp::Reverse(a.dtype.bitsize()), &a.name)
            .cmp(&(std::cmp::Reverse(b.dtype.bitsize()), &b.name))
    });
    let quoted = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let entries: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", quoted(k), quoted(v)))
        .collect();
    let mut header = format!("{{\"__metadata__\":{{{}}}", entries.join(","));
    let mut offset = 0;
    for t in &tensors {
        header.push(',');
        let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{:?}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            quoted(&t.name),
            t.dtype,
            shape.join(","),
            offset + t.bytes.len()
        ));
        offset += t.bytes.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for t in &tensors {
        bytes.extend_from_slice(t.bytes);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors<'a>(a: &'a [f32], b: &'a [i64], c: &'a [f64]) -> Vec<TensorOut<'a>> {
        vec![
            TensorOut::f32("weight", vec![2, 3], a),
            TensorOut::i64("labels", vec![3], b),
            TensorOut::f64("z", vec![1], c),
            TensorOut::f32("bias", vec![0], &[]),
        ]
    }

    /// With at most one metadata key (no order to choose), the bytes are the safetensors crate's
    /// given the same map;
    /// with several, the file reads back through it with every key, and its bytes do not depend
    /// on the order the keys were inserted.
    #[test]
    fn serialize_matches_the_safetensors_crate_with_sorted_metadata() {
        let (a, b, c) = ([1.0, -2.0, 3.5, 0.0, 1e-3, 7.0], [4, -5, 6], [0.25]);
        let views: Vec<_> = tensors(&a, &b, &c)
            .into_iter()
            .map(|t| {
                let view = safetensors::tensor::TensorView::new(t.dtype, t.shape, t.bytes);
                (t.name, view.unwrap())
            })
            .collect();
        let one = BTreeMap::from([("kind".to_string(), "trntk".to_string())]);
        for metadata in [BTreeMap::new(), one] {
            let theirs =
                safetensors::serialize(views.clone(), Some(metadata.clone().into_iter().collect()));
            assert_eq!(serialize(tensors(&a, &b, &c), &metadata), theirs.unwrap());
        }

        let keys = ["pooling", "model", "labels", "normalized", "max_length"];
        let forward: BTreeMap<String, String> = keys
            .iter()
            .map(|k| (k.to_string(), format!("\"{k}\"")))
            .collect();
        let backward: BTreeMap<String, String> = keys
            .iter()
            .rev()
            .map(|k| (k.to_string(), format!("\"{k}\"")))
            .collect();
        let bytes = serialize(tensors(&a, &b, &c), &forward);
        assert_eq!(bytes, serialize(tensors(&a, &b, &c), &backward));
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let read: BTreeMap<String, String> =
            header.metadata().clone().unwrap().into_iter().collect();
        assert_eq!(read, forward);
        let file = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            file.tensor("weight").unwrap().data(),
            bytemuck::cast_slice::<f32, u8>(&a)
        );
        assert_eq!(
            file.tensor("labels").unwrap().data(),
            bytemuck::cast_slice::<i64, u8>(&b)
        );
    }
}
