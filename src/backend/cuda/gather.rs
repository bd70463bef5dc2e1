//! The gather family on CUDA (kernels/gather.cu): one block per id copies (or adds) its table
//! row, from an f32 table or one kept in f16/bf16.

use cudarc::driver::PushKernelArg;

use super::device::{config, row_threads, to_i32};
use super::memory::CudaData;
use super::CudaBackend;
use crate::backend::{shapes, Tensor};
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(super) fn gather_rows(
    be: &CudaBackend,
    table: &Tensor,
    ids: &[u32],
    accumulate: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (_, d) = shapes::gather(table, ids, out)?;
    let (di, acc) = (to_i32(d, "gather width")?, i32::from(accumulate));
    let blocks = u32::try_from(ids.len())
        .map_err(|_| Error::input(format!("gather: {} ids exceed u32", ids.len())))?;
    let ids = be.upload_small(ids)?;
    let table = &be.storage(table)?.data;
    let kernel = match table {
        CudaData::F32(_) => "gather_rows_v1",
        CudaData::Half(DType::F16, _) => "gather_rows_v1_f16",
        CudaData::Half(_, _) => "gather_rows_v1_bf16",
    };
    let f = be.function("gather", kernel)?;
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    match table {
        CudaData::F32(values) => args.arg(values),
        CudaData::Half(_, bits) => args.arg(bits),
    };
    args.arg(&ids).arg(out).arg(&di).arg(&acc);
    let cfg = config((blocks, 1, 1), (row_threads(d), 1, 1));
    be.launch(kernel, &mut args, cfg)
}
