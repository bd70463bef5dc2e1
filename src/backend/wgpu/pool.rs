//! `pool` on wgpu (shaders/pool.wgsl): one thread per (sequence, column), the pooling mode a
//! uniform.

use bytemuck::{Pod, Zeroable};

use super::device::to_u32;
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::{shapes, Pooling, SeqLayout, Tensor};
use crate::error::Result;

/// Threads per workgroup (pool.wgsl `WORKGROUP`).
const WORKGROUP: usize = 256;

/// pool.wgsl `Params`; `mode` is one of the shader's `POOL_*` constants.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PoolParams {
    sequences: u32,
    width: u32,
    mode: u32,
    _pad: u32,
}

pub(super) fn pool(
    backend: &WgpuBackend,
    hidden: &Tensor,
    layout: &SeqLayout,
    mode: Pooling,
    out: &mut Tensor,
) -> Result<()> {
    let d = shapes::pool(hidden, layout, out)?;
    let sequences = layout.num_sequences();
    let params = PoolParams {
        sequences: to_u32(sequences, "pool sequences")?,
        width: to_u32(d, "pool width")?,
        mode: mode.code(),
        _pad: 0,
    };
    let starts = backend.upload_sequence_starts(layout)?;
    let buffers = [
        backend.buffer(hidden, "pool input")?,
        &starts,
        backend.buffer(out, "pool output")?,
    ];
    let groups = backend.grid((sequences * d).div_ceil(WORKGROUP))?;
    backend.dispatch(Kernel::Pool, &params, &buffers, groups);
    Ok(())
}
