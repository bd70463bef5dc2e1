//! Device memory of CUDA tensors: one f32 buffer per tensor, plus its bf16 copy once a
//! tensor-core GEMM has used it as weights.

use std::sync::OnceLock;

use cudarc::driver::CudaSlice;

/// The memory behind a [`crate::backend::Tensor`] on the CUDA backend.
pub struct CudaStorage {
    /// The backend that allocated it (tensors of another device are rejected).
    pub(super) owner: u64,
    pub(super) data: CudaSlice<f32>,
    /// bf16 bits of `data` for GEMM variant 3, made at its first use. Ops that write a tensor
    /// reach it through [`CudaStorage::data_mut`], which drops the copy.
    pub(super) bf16: OnceLock<CudaSlice<u16>>,
}

impl CudaStorage {
    pub(super) fn new(owner: u64, data: CudaSlice<f32>) -> Self {
        CudaStorage {
            owner,
            data,
            bf16: OnceLock::new(),
        }
    }

    /// The f32 buffer for writing; a stale bf16 copy is dropped.
    pub(super) fn data_mut(&mut self) -> &mut CudaSlice<f32> {
        self.bf16.take();
        &mut self.data
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStorage")
            .field("owner", &self.owner)
            .field("len", &self.data.len())
            .field("bf16", &self.bf16.get().is_some())
            .finish()
    }
}
