//! Host tensors: a shape, a dtype and contiguous row-major storage.

use half::{bf16, f16};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
}

impl HostData {
    /// Index of the first NaN or infinite value, if any: the load-time check of model weights,
    /// one pass over the values as stored (half-precision ones by their exponent bits, so that
    /// a memory-mapped bf16 checkpoint is read once and never widened for it).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            HostData::F32(v) => first_non_finite(v),
            HostData::F16(v) => first_all_ones(bytemuck::cast_slice(v), 0x7C00),
            HostData::BF16(v) => first_all_ones(bytemuck::cast_slice(v), 0x7F80),
            HostData::I64(_) => None,
        }
    }
}

/// Index of the first NaN or infinite value of `values`. Runs in branch-free blocks (the common
/// all-finite case vectorises) and looks for the index only inside a failing block.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    const BLOCK: usize = 4096;
    values.chunks(BLOCK).enumerate().find_map(|(b, block)| {
        let finite = block.iter().fold(true, |ok, v| ok & v.is_finite());
        (!finite).then(|| b * BLOCK + block.iter().position(|v| !v.is_finite()).unwrap_or(0))
    })
}

/// Index of the first 16-bit float whose exponent field (`mask`) is all ones: infinity or NaN.
fn first_all_ones(bits: &[u16], mask: u16) -> Option<usize> {
    const BLOCK: usize = 4096;
    bits.chunks(BLOCK).enumerate().find_map(|(b, block)| {
        let finite = block.iter().fold(true, |ok, &x| ok & (x & mask != mask));
        (!finite).then(|| b * BLOCK + block.iter().position(|&x| x & mask == mask).unwrap_or(0))
    })
}

/// A contiguous row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: HostData,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: HostData) -> Result<Self> {
        let len = match &data {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::I64(v) => v.len(),
        };
        let expected: usize = shape.iter().product();
        if len != expected {
            return Err(Error::input(format!(
                "tensor of shape {shape:?} needs {expected} elements, got {len}"
            )));
        }
        Ok(HostTensor { shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::new(shape, HostData::F32(data))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::I64(_) => DType::I64,
        }
    }

    pub fn data(&self) -> &HostData {
        &self.data
    }

    pub fn into_data(self) -> HostData {
        self.data
    }

    /// The values as f32, converting half precision (f32 data is borrowed, not copied).
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        use std::borrow::Cow;
        match &self.data {
            HostData::F32(v) => Cow::Borrowed(v),
            HostData::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            HostData::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            HostData::I64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
        }
    }

    pub fn into_f32(self) -> Vec<f32> {
        match self.data {
            HostData::F32(v) => v,
            other => HostTensor {
                shape: self.shape,
                data: other,
            }
            .to_f32()
            .into_owned(),
        }
    }
}
