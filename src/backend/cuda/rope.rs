//! The rope family on CUDA (kernels/rope.cu): rotary position embedding in place, one thread per
//! rotated pair, angles read from the model's `(cos, sin)` table; the positions are uploaded
//! with each call.

use cudarc::driver::PushKernelArg;

use super::device::{config, to_i32};
use super::CudaBackend;
use crate::backend::{shapes, RopeSpec, SeqLayout, Tensor};
use crate::error::Result;

pub(super) fn rope(
    be: &CudaBackend,
    qkv: &mut Tensor,
    layout: &SeqLayout,
    spec: &RopeSpec,
    table: &Tensor,
) -> Result<()> {
    let (tokens, width) = shapes::rope(qkv, layout, spec, table)?;
    let half = spec.head_dim / 2;
    let rotated_heads = spec.heads + spec.kv_heads;
    let (ti, wi, hi, halfi) = (
        to_i32(tokens, "rope tokens")?,
        to_i32(width, "rope width")?,
        to_i32(rotated_heads, "rope heads")?,
        to_i32(half, "rope head_dim")?,
    );
    let pairs = tokens * rotated_heads * half;
    if pairs == 0 {
        return Ok(());
    }
    let positions: Vec<i32> = layout.positions().map(|p| p as i32).collect();
    let positions = be.upload_small(&positions)?;
    let table = be.slice(table)?;
    let f = be.function("rope", "rope_v1")?;
    let qkv = be.slice_mut(qkv)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(qkv)
        .arg(&positions)
        .arg(table)
        .arg(&ti)
        .arg(&wi)
        .arg(&hi)
        .arg(&halfi);
    // A grid-stride loop covers what a capped grid leaves.
    let blocks = pairs.div_ceil(256).min(1 << 16) as u32;
    be.launch("rope_v1", &mut args, config((blocks, 1, 1), (256, 1, 1)))
}
