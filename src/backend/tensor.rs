//! Tensors on a backend's device, and the memory behind them.

use super::{cuda, wgpu};
use crate::error::{Error, Result};
use crate::tensor::{DType, HalfMatrix, SharedBytes};

/// A tensor living on a backend's device: f32 values (f16 or bf16 for GEMM weights and embedding
/// tables a backend keeps in half precision, see [`super::Backend::upload_half`]), row-major.
#[derive(Debug)]
pub struct Tensor {
    pub(super) shape: Vec<usize>,
    pub(super) storage: Storage,
    /// The CPU's packed copy of f32 `linear` weights, made at the first `linear` that reads them
    /// (empty on other tensors and backends; emptied whenever the values are written).
    pub(super) cpu_packed: super::cpu::PackedCache,
}

/// Device memory behind a [`Tensor`]; each backend adds its variant when its issue lands.
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    /// Read-only f32 values where they already were (a checkpoint's memory map, 4-byte
    /// aligned): weights and tables the model never writes, kept without a copy
    /// ([`super::Backend::upload_mapped`]).
    CpuMapped(SharedBytes),
    /// GEMM weights and embedding tables in f16 or bf16, where they already were (a checkpoint's
    /// memory map): only `linear` and `gather_rows` read them.
    CpuHalf(HalfMatrix),
    Wgpu(wgpu::WgpuStorage),
    Cuda(cuda::CudaStorage),
}

impl Storage {
    /// The backend this memory belongs to.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Storage::Cpu(_) | Storage::CpuMapped(_) | Storage::CpuHalf(_) => "cpu",
            Storage::Wgpu(_) => "wgpu",
            Storage::Cuda(_) => "cuda",
        }
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type the device holds.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Wgpu(s) => s.dtype(),
            Storage::CpuHalf(m) => m.dtype(),
            Storage::Cuda(s) => s.dtype(),
            Storage::Cpu(_) | Storage::CpuMapped(_) => DType::F32,
        }
    }

    /// The error for a tensor handed to a backend it does not live on.
    pub fn foreign(&self, backend: &str) -> Error {
        Error::input(format!(
            "tensor of shape {:?} lives on the {} backend, not {backend}",
            self.shape,
            self.storage.backend_name()
        ))
    }

    /// `(rows, cols)` of a matrix, or an error naming `what`.
    pub fn dims2(&self, what: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => Err(Error::input(format!(
                "{what}: expected a matrix, got shape {:?}",
                self.shape
            ))),
        }
    }
}
