//! The attention family on CUDA (kernels/attention.cu and kernels/attention_mma.cu), numbered
//! [`AttentionVariant`]s: the naive kernel (one block per sequence and head, any head_dim), the
//! thread-per-query flash kernel (head_dim 32 and 64), the warp-per-query flash kernel (64 and
//! 128) and the tensor-core flash kernel on bf16 operands (64 and 128, opt-in). Unless the
//! backend was opened with a variant, head_dim 32 and 64 run variant 2, 128 variant 3, the others
//! variant 1; opened with variant 4, the head_dims it has no kernel for run that default.

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::device::{config, grid_yz, sequence_starts, to_i32};
use super::CudaBackend;
use crate::backend::{shapes, AttentionSpec, AttentionVariant, SeqLayout, Tensor};
use crate::error::{Error, Result};

/// Must match `AttentionShape` in kernels/attention.cuh.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttentionShape {
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    causal: i32,
    /// Negative: no window.
    window: i32,
    scale: f32,
}

// SAFETY: a plain repr(C) struct of 4-byte scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for AttentionShape {}

pub(super) fn attention(
    be: &CudaBackend,
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &mut Tensor,
) -> Result<()> {
    shapes::attention(qkv, layout, spec, out)?;
    let (sequences, max_len) = (layout.num_sequences(), layout.max_len());
    if max_len == 0 {
        return Ok(());
    }
    let shape = AttentionShape {
        heads: to_i32(spec.heads, "attention heads")?,
        kv_heads: to_i32(spec.kv_heads, "attention kv_heads")?,
        head_dim: to_i32(spec.head_dim, "attention head_dim")?,
        causal: spec.causal.into(),
        // A window longer than every sequence masks nothing more; clamping keeps it an i32.
        window: match spec.window {
            Some(w) => to_i32(w.min(max_len), "attention window")?,
            None => -1,
        },
        scale: spec.scale,
    };
    let seqs =
        u32::try_from(sequences).map_err(|_| Error::input("attention: sequences exceed u32"))?;
    let heads = grid_yz(spec.heads, "attention heads")?;
    let default = match spec.head_dim {
        32 | 64 => AttentionVariant::Flash,
        128 => AttentionVariant::FlashWarp,
        _ => AttentionVariant::Naive,
    };
    let variant = match be.attention {
        // Tensor cores only for the head_dims with a kernel, like the Hopper GEMM's fallback.
        Some(AttentionVariant::MmaBf16)
            if !AttentionVariant::MmaBf16.supports_head_dim(spec.head_dim) =>
        {
            default
        }
        picked => picked.unwrap_or(default),
    };
    if !AttentionVariant::CUDA.contains(&variant) {
        return Err(Error::input(format!(
            "attention variant {variant} is a CPU kernel; CUDA's are 1 (naive), 2 (flash), \
             3 (flash-warp) and 4 (mma-bf16)"
        )));
    }
    if !variant.supports_head_dim(spec.head_dim) {
        return Err(Error::input(format!(
            "attention variant {variant} has CUDA kernels for head_dim {:?}, not {}",
            variant.head_dims().unwrap_or_default(),
            spec.head_dim
        )));
    }
    // Queries per block: FLASH_BQ and WARP_BQ in kernels/attention.cu, MMA_BQ in
    // kernels/attention_mma.cu.
    let query_tiles =
        |per_block: usize| grid_yz(max_len.div_ceil(per_block), "attention query tiles");
    let (family, kernel, cfg) = match (variant, spec.head_dim) {
        (AttentionVariant::Naive, _) => (
            "attention",
            "attention_v1_naive",
            config((seqs, heads, 1), (128, 1, 1)),
        ),
        (AttentionVariant::Flash, hd) => (
            "attention",
            if hd == 32 {
                "attention_v2_flash_hd32"
            } else {
                "attention_v2_flash_hd64"
            },
            config((seqs, heads, query_tiles(64)?), (64, 1, 1)),
        ),
        (AttentionVariant::FlashWarp, hd) => (
            "attention",
            if hd == 64 {
                "attention_v3_flash_warp_hd64"
            } else {
                "attention_v3_flash_warp_hd128"
            },
            config((seqs, heads, query_tiles(16)?), (128, 1, 1)),
        ),
        (AttentionVariant::MmaBf16, hd) => (
            "attention_mma",
            if hd == 64 {
                "attention_v4_mma_bf16_hd64"
            } else {
                "attention_v4_mma_bf16_hd128"
            },
            config((seqs, heads, query_tiles(64)?), (128, 1, 1)),
        ),
        (cpu, _) => unreachable!("{cpu} was refused above"),
    };
    let starts = be.upload_small(&sequence_starts(layout)?)?;
    let f = be.function(family, kernel)?;
    let qkv = be.slice(qkv)?;
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(qkv).arg(&starts).arg(out).arg(&shape);
    be.launch(kernel, &mut args, cfg)
}
