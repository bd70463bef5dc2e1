//! RoPE on wgpu (shaders/rope.wgsl): the host sends each token's position; the shader reads the
//! model's `(cos, sin)` table ([`RopeFrequencies::table`](crate::backend::RopeFrequencies::table))
//! and turns the query and key pairs in place, one invocation per pair.

use bytemuck::{Pod, Zeroable};

use super::device::to_u32;
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::{shapes, RopeSpec, SeqLayout, Tensor};
use crate::error::Result;

/// Threads per workgroup (rope.wgsl `@workgroup_size`).
const WORKGROUP: usize = 256;

/// rope.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    tokens: u32,
    width: u32,
    rotated_heads: u32,
    half: u32,
}

pub(super) fn rope(
    backend: &WgpuBackend,
    qkv: &mut Tensor,
    layout: &SeqLayout,
    spec: &RopeSpec,
    table: &Tensor,
) -> Result<()> {
    let (tokens, width) = shapes::rope(qkv, layout, spec, table)?;
    if tokens == 0 {
        return Ok(());
    }
    let half = spec.head_dim / 2;
    let rotated_heads = spec.heads + spec.kv_heads;
    let pairs = to_u32(tokens * rotated_heads * half, "rope pairs")?;
    let params = RopeParams {
        tokens: to_u32(tokens, "rope tokens")?,
        width: to_u32(width, "rope width")?,
        rotated_heads: to_u32(rotated_heads, "rope heads")?,
        half: to_u32(half, "rope head_dim")?,
    };
    let positions: Vec<u32> = layout.positions().map(|p| p as u32).collect();
    let positions = backend.upload_u32("positions", &positions);
    let buffers = [
        backend.buffer(qkv, "rope qkv")?,
        &positions,
        backend.buffer(table, "rope table")?,
    ];
    let groups = backend.grid((pairs as usize).div_ceil(WORKGROUP))?;
    backend.dispatch(Kernel::Rope, &params, &buffers, groups);
    Ok(())
}
