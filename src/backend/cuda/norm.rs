//! The norm family on CUDA (kernels/norm.cu): LayerNorm in place and RMSNorm into another
//! tensor, one block per row.

use cudarc::driver::PushKernelArg;

use super::device::{config, row_threads, to_i32};
use super::CudaBackend;
use crate::backend::{shapes, Tensor};
use crate::error::{Error, Result};

pub(super) fn layer_norm(
    be: &CudaBackend,
    x: &mut Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<()> {
    let (n, d) = shapes::layer_norm(x, gamma, beta)?;
    let di = to_i32(d, "layer_norm width")?;
    let rows = u32::try_from(n).map_err(|_| Error::input("layer_norm: rows exceed u32"))?;
    let f = be.function("norm", "layer_norm_v1")?;
    let (gamma, beta) = (be.slice(gamma)?, be.slice(beta)?);
    let x = be.slice_mut(x)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(x).arg(gamma).arg(beta).arg(&di).arg(&eps);
    let cfg = config((rows, 1, 1), (row_threads(d), 1, 1));
    be.launch("layer_norm_v1", &mut args, cfg)
}

pub(super) fn rms_norm(
    be: &CudaBackend,
    x: &Tensor,
    gamma: &Tensor,
    eps: f32,
    out: &mut Tensor,
) -> Result<()> {
    let (n, d) = shapes::rms_norm(x, gamma, out)?;
    let di = to_i32(d, "rms_norm width")?;
    let rows = u32::try_from(n).map_err(|_| Error::input("rms_norm: rows exceed u32"))?;
    let f = be.function("norm", "rms_norm_v1")?;
    let (x, gamma) = (be.slice(x)?, be.slice(gamma)?);
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(x).arg(gamma).arg(out).arg(&di).arg(&eps);
    let cfg = config((rows, 1, 1), (row_threads(d), 1, 1));
    be.launch("rms_norm_v1", &mut args, cfg)
}
