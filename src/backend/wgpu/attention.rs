//! Attention on wgpu (shaders/attention.wgsl): one workgroup per query block of every head of
//! every packed sequence, online softmax, so scores never reach memory.

use bytemuck::{Pod, Zeroable};

use super::device::to_u32;
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::{shapes, AttentionSpec, SeqLayout, Tensor};
use crate::error::Result;

/// Longest head the kernel holds (attention.wgsl `MAX_HEAD_DIM`).
const MAX_HEAD_DIM: usize = 128;
/// Queries per workgroup (attention.wgsl `BLOCK_Q`).
const BLOCK_Q: usize = 64;
/// Keys per streamed block (attention.wgsl `BLOCK_K`).
const BLOCK_K: usize = 16;
/// Channels each channel loop handles per iteration (attention.wgsl `4 · CHUNK`).
const CHUNK_CHANNELS: usize = 16;

/// attention.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    causal: u32,
    has_window: u32,
    window: u32,
    scale: f32,
    _pad: u32,
}

pub(super) fn attention(
    backend: &WgpuBackend,
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &mut Tensor,
) -> Result<()> {
    shapes::attention(qkv, layout, spec, out)?;
    shapes::ensure(spec.head_dim <= MAX_HEAD_DIM, || {
        format!(
            "attention: head_dim {} exceeds the wgpu kernel's {MAX_HEAD_DIM}",
            spec.head_dim
        )
    })?;
    let max_len = layout.max_len();
    let params = AttentionParams {
        heads: to_u32(spec.heads, "attention heads")?,
        kv_heads: to_u32(spec.kv_heads, "attention kv_heads")?,
        head_dim: spec.head_dim as u32,
        causal: spec.causal.into(),
        has_window: spec.window.is_some().into(),
        // A window as long as the longest sequence masks nothing more; clamping keeps the
        // shader's index arithmetic in range.
        window: to_u32(spec.window.unwrap_or(0).min(max_len), "attention window")?,
        scale: spec.scale,
        _pad: 0,
    };
    let groups = [
        max_len.div_ceil(BLOCK_Q),
        spec.heads,
        layout.num_sequences(),
    ];
    let max = backend.max_workgroups_per_dim as usize;
    shapes::ensure(groups.iter().all(|&g| g <= max), || {
        format!(
            "attention: {} sequences × {} heads × {} query blocks exceed the device's grid",
            groups[2], groups[1], groups[0]
        )
    })?;
    backend.check_loop_limit(attention_loop_iterations(max_len, spec), || {
        format!(
            "attention over {max_len} tokens with head_dim {}",
            spec.head_dim
        )
    })?;
    let starts = backend.upload_sequence_starts(layout)?;
    let buffers = [
        backend.buffer(qkv, "attention qkv")?,
        &starts,
        backend.buffer(out, "attention output")?,
    ];
    backend.dispatch(
        Kernel::Attention,
        &params,
        &buffers,
        groups.map(|g| g as u32),
    );
    Ok(())
}

/// An upper bound on the loop iterations one invocation of attention.wgsl runs for the longest
/// sequence: per visited key block, the score and accumulate loops over its keys with a channel
/// loop inside each, the tile load, the rescale and the block loop itself; then loading the
/// query and storing the output. Each loop counts one iteration more than it runs (its exit
/// test), and the block's own loops count twice: measured on llvmpipe (Mesa 22.3) the limit falls
/// 1–3% above this bound at head_dim 16, 64 and 128.
fn attention_loop_iterations(max_len: usize, spec: &AttentionSpec) -> u64 {
    let chunks = spec.head_dim.div_ceil(CHUNK_CHANNELS) as u64;
    let head_vecs = 4 * chunks;
    let key_span = match spec.window {
        Some(w) => max_len.min(BLOCK_Q + 2 * w),
        None => max_len,
    };
    let blocks = key_span.div_ceil(BLOCK_K) as u64 + 1;
    let key_loop = (BLOCK_K as u64 + 1) + BLOCK_K as u64 * (chunks + 1);
    let per_block = 2 * key_loop + 2 * (2 * (chunks + 1) + 1);
    blocks * per_block + (head_vecs + 1) + (spec.head_dim as u64 + 1)
}
