//! Small safetensors files read whole and written atomically: datasets, MLP classifiers, kernels.
//! (Model checkpoints go through [`crate::weights`], which memory-maps them.) Every error names
//! the file and the tensor.

use std::collections::HashMap;
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
    metadata: HashMap<String, String>,
) -> Result<()> {
    let fail = |e: safetensors::SafeTensorError| Error::input(format!("{}: {e}", path.display()));
    let views = tensors
        .into_iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape, t.bytes).map(|v| (t.name, v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(fail)?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(fail)?;
    super::write_atomic(path, &bytes)
}
