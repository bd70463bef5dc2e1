//! Device memory of CUDA tensors: one f32 buffer per tensor (plus its bf16 copy once a
//! tensor-core GEMM has used it as weights), or the 16-bit values of f16/bf16 GEMM weights and
//! embedding tables as the checkpoint stores them, so a 7B bf16 model takes its 14.5 GB on the
//! device, not 29.

use std::sync::OnceLock;

use cudarc::driver::CudaSlice;

use crate::tensor::DType;

/// The values of a CUDA tensor.
pub(super) enum CudaData {
    F32(CudaSlice<f32>),
    /// f16 or bf16 bits, read only by `linear` (as weights) and `gather_rows` (as a table).
    Half(DType, CudaSlice<u16>),
}

/// The memory behind a [`crate::backend::Tensor`] on the CUDA backend.
pub struct CudaStorage {
    /// The backend that allocated it (tensors of another device are rejected).
    pub(super) owner: u64,
    pub(super) data: CudaData,
    /// bf16 bits of f32 `data` for GEMM variant 4, made at its first use. Ops that write a
    /// tensor reach it through [`CudaStorage::data_mut`], which drops the copy.
    pub(super) bf16: OnceLock<CudaSlice<u16>>,
}

impl CudaStorage {
    pub(super) fn new(owner: u64, data: CudaData) -> Self {
        CudaStorage {
            owner,
            data,
            bf16: OnceLock::new(),
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match &self.data {
            CudaData::F32(_) => DType::F32,
            CudaData::Half(dtype, _) => *dtype,
        }
    }

    /// Bytes held on the device (without the bf16 copy).
    pub fn device_bytes(&self) -> usize {
        match &self.data {
            CudaData::F32(d) => 4 * d.len(),
            CudaData::Half(_, d) => 2 * d.len(),
        }
    }

    /// The f32 buffer for writing, `None` for half-precision values; a stale bf16 copy is
    /// dropped.
    pub(super) fn data_mut(&mut self) -> Option<&mut CudaSlice<f32>> {
        self.bf16.take();
        match &mut self.data {
            CudaData::F32(d) => Some(d),
            CudaData::Half(..) => None,
        }
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStorage")
            .field("owner", &self.owner)
            .field("dtype", &self.dtype())
            .field("bytes", &self.device_bytes())
            .field("bf16", &self.bf16.get().is_some())
            .finish()
    }
}
