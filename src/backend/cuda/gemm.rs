//! The GEMM family on CUDA (kernels/gemm.cu): `linear` as one fused kernel (GEMM, bias,
//! activation, residual) of the variant the backend was opened with, in the build for the
//! weights' element type (f32, or f16/bf16 kept as uploaded), and the bf16 copy of f32 weights
//! that the tensor-core variants read; and `gated_activation`, the gated feed-forward's
//! epilogue. Variant 10 (Hopper, kernels/gemm_sm90.cu) launches from `gemm_sm90`; the shapes and
//! weight types it cannot take run variant 4.

use cudarc::driver::{CudaSlice, LaunchArgs, PushKernelArg};

use super::device::{config, device_error, tile_grid, to_i32, unsupported_variant, NULL};
use super::gemm_sm90;
use super::memory::CudaData;
use super::CudaBackend;
use crate::backend::{shapes, Activation, GemmVariant, Tensor};
use crate::error::Result;
use crate::tensor::DType;

pub(super) fn linear(
    be: &CudaBackend,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    let (n, k, m) = shapes::linear(x, w, bias, residual, out)?;
    let (ni, ki, mi) = (
        to_i32(n, "linear rows")?,
        to_i32(k, "linear features")?,
        to_i32(m, "linear outputs")?,
    );
    let storage = be.storage(w)?;
    let variant = match be.gemm {
        GemmVariant::WgmmaBf16 if gemm_sm90::runs(k, storage.dtype()) => {
            return gemm_sm90::linear(be, x, w, bias, act, residual, out, (n, k, m));
        }
        GemmVariant::WgmmaBf16 => GemmVariant::MmaBf16,
        other => other,
    };
    let act = act.code() as i32;
    let cfg = match variant {
        GemmVariant::Naive => config(tile_grid(n, m, 16, "linear")?, (16, 16, 1)),
        GemmVariant::Tiled => config(tile_grid(n, m, 64, "linear")?, (256, 1, 1)),
        GemmVariant::MmaBf16 => config(tile_grid(n, m, 64, "linear")?, (128, 1, 1)),
        other => return Err(unsupported_variant(other.to_string())),
    };
    let kernel = kernel_name(variant, storage.dtype());
    let f = be.function("gemm", kernel)?;
    let weight_copy = match (variant, &storage.data) {
        (GemmVariant::MmaBf16, CudaData::F32(_)) => Some(bf16_weights(be, w)?),
        _ => None,
    };
    let x = be.slice(x)?;
    let dims_act = [ni, mi, ki, act];
    let mut args = be.stream().launch_builder(&f);
    args.arg(x);
    match (weight_copy, &storage.data) {
        (Some(bits), _) | (None, CudaData::Half(_, bits)) => args.arg(bits),
        (None, CudaData::F32(w)) => args.arg(w),
    };
    push_epilogue_args(be, &mut args, bias, residual, out, &dims_act)?;
    be.launch(kernel, &mut args, cfg)
}

/// Pushes the arguments every GEMM kernel takes after its operands: bias and residual (null
/// pointers when absent), the output, then `dims_act` = [n, m, k, activation code].
pub(super) fn push_epilogue_args<'a>(
    be: &CudaBackend,
    args: &mut LaunchArgs<'a>,
    bias: Option<&'a Tensor>,
    residual: Option<&'a Tensor>,
    out: &'a mut Tensor,
    dims_act: &'a [i32; 4],
) -> Result<()> {
    for optional in [bias, residual] {
        match optional {
            Some(t) => args.arg(be.slice(t)?),
            None => args.arg(&NULL),
        };
    }
    args.arg(be.slice_mut(out)?);
    for value in dims_act {
        args.arg(value);
    }
    Ok(())
}

/// The build of GEMM `variant` (1, 2 or 4) for weights of `dtype` (kernels/gemm.cu's header).
fn kernel_name(variant: GemmVariant, dtype: DType) -> &'static str {
    match (variant, dtype) {
        (GemmVariant::Naive, DType::F16) => "gemm_v1_naive_f16w",
        (GemmVariant::Naive, DType::BF16) => "gemm_v1_naive_bf16w",
        (GemmVariant::Naive, _) => "gemm_v1_naive",
        (GemmVariant::Tiled, DType::F16) => "gemm_v2_tiled_f16w",
        (GemmVariant::Tiled, DType::BF16) => "gemm_v2_tiled_bf16w",
        (GemmVariant::Tiled, _) => "gemm_v2_tiled",
        // f32 weights through their bf16 copy, bf16 weights as they are.
        (_, DType::F16) => "gemm_v4_mma_bf16_f16w",
        _ => "gemm_v4_mma_bf16",
    }
}

pub(super) fn gated_activation(
    be: &CudaBackend,
    gate_up: &Tensor,
    act: Activation,
    out: &mut Tensor,
) -> Result<()> {
    let (n, m) = shapes::gated_activation(gate_up, out)?;
    if n * m == 0 {
        return Ok(());
    }
    let act = act.code() as i32;
    let f = be.function("gemm", "gated_activation_v1")?;
    let x = be.slice(gate_up)?;
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(x).arg(out).arg(&n).arg(&m).arg(&act);
    let blocks = (n * m).div_ceil(256).min(1 << 16) as u32;
    be.launch(
        "gated_activation_v1",
        &mut args,
        config((blocks, 1, 1), (256, 1, 1)),
    )
}

/// The bf16 copy of weights `w`, made once by the conversion kernel.
pub(super) fn bf16_weights<'a>(be: &CudaBackend, w: &'a Tensor) -> Result<&'a CudaSlice<u16>> {
    let storage = be.storage(w)?;
    if let Some(b) = storage.bf16.get() {
        return Ok(b);
    }
    let bits = bf16_copy(be, be.slice(w)?, w.len())?;
    // Another thread may have converted it meanwhile; either copy is the same.
    let _ = storage.bf16.set(bits);
    Ok(storage.bf16.get().expect("set above"))
}

/// The first `len` values of `src` rounded to bf16 (to nearest even) by `to_bf16_v1`, in a new
/// buffer (never empty: a buffer of zero bytes cannot be allocated).
pub(super) fn bf16_copy(
    be: &CudaBackend,
    src: &CudaSlice<f32>,
    len: usize,
) -> Result<CudaSlice<u16>> {
    let len = len.max(1);
    // SAFETY: every element is written by the conversion kernel below before any read.
    let mut bits = unsafe { be.stream().alloc::<u16>(len) }.map_err(device_error)?;
    let f = be.function("gemm", "to_bf16_v1")?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(src).arg(&mut bits).arg(&len);
    let blocks = len.div_ceil(256).min(1 << 16) as u32;
    be.launch("to_bf16_v1", &mut args, config((blocks, 1, 1), (256, 1, 1)))?;
    drop(args);
    Ok(bits)
}
