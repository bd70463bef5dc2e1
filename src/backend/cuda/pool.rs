//! The pool family on CUDA (kernels/pool.cu): one embedding per sequence (one block each) and
//! the in-place L2 normalisation of rows (one block per row).

use cudarc::driver::PushKernelArg;

use super::device::{config, row_threads, sequence_starts, to_i32};
use super::CudaBackend;
use crate::backend::{shapes, Pooling, SeqLayout, Tensor};
use crate::error::{Error, Result};

pub(super) fn pool(
    be: &CudaBackend,
    hidden: &Tensor,
    layout: &SeqLayout,
    mode: Pooling,
    out: &mut Tensor,
) -> Result<()> {
    let d = shapes::pool(hidden, layout, out)?;
    let di = to_i32(d, "pool width")?;
    let mode = mode.code() as i32;
    let seqs = u32::try_from(layout.num_sequences())
        .map_err(|_| Error::input("pool: sequences exceed u32"))?;
    let starts = be.upload_small(&sequence_starts(layout)?)?;
    let f = be.function("pool", "pool_v1")?;
    let hidden = be.slice(hidden)?;
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(hidden).arg(&starts).arg(out).arg(&di).arg(&mode);
    let cfg = config((seqs, 1, 1), (row_threads(d), 1, 1));
    be.launch("pool_v1", &mut args, cfg)
}

pub(super) fn l2_normalize(be: &CudaBackend, x: &mut Tensor) -> Result<()> {
    let (n, d) = shapes::l2_normalize(x)?;
    let di = to_i32(d, "l2_normalize width")?;
    let rows = u32::try_from(n).map_err(|_| Error::input("l2_normalize: rows exceed u32"))?;
    let f = be.function("pool", "l2_normalize_v1")?;
    let x = be.slice_mut(x)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(x).arg(&di);
    let cfg = config((rows, 1, 1), (row_threads(d), 1, 1));
    be.launch("l2_normalize_v1", &mut args, cfg)
}
