//! The gather family on CUDA (kernels/gather.cu): one block per id copies (or adds) its table row.

use cudarc::driver::PushKernelArg;

use super::device::{config, row_threads, to_i32};
use super::CudaBackend;
use crate::backend::{shapes, Tensor};
use crate::error::{Error, Result};

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
    let f = be.function("gather", "gather_rows_v1")?;
    let table = be.slice(table)?;
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(table).arg(&ids).arg(out).arg(&di).arg(&acc);
    let cfg = config((blocks, 1, 1), (row_threads(d), 1, 1));
    be.launch("gather_rows_v1", &mut args, cfg)
}
