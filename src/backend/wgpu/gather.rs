//! `gather_rows` on wgpu (shaders/gather.wgsl): one thread per output value, dispatched once per
//! part of a table split across storage bindings; an f16 table runs the shader's f16 build.

use bytemuck::{Pod, Zeroable};

use super::device::to_u32;
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::{shapes, Tensor};
use crate::error::Result;
use crate::tensor::DType;

/// Threads per workgroup (gather.wgsl `@workgroup_size`).
const WORKGROUP: usize = 256;

/// gather.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    rows: u32,
    width: u32,
    first_row: u32,
    part_rows: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

pub(super) fn gather_rows(
    backend: &WgpuBackend,
    table: &Tensor,
    ids: &[u32],
    accumulate: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (rows, d) = shapes::gather(table, ids, out)?;
    let storage = backend.storage_any_dtype(table)?;
    let kernel = match storage.dtype {
        DType::F16 => Kernel::GatherF16,
        _ => Kernel::Gather,
    };
    let out_buffer = backend.buffer(out, "gather output")?;
    let ids_buffer = backend.upload_u32("ids", ids);
    let groups = backend.grid((ids.len() * d).div_ceil(WORKGROUP))?;
    for (i, part) in storage.parts.iter().enumerate() {
        let part_rows = storage.part_rows(i, rows);
        let params = GatherParams {
            rows: to_u32(ids.len(), "gather ids")?,
            width: to_u32(d, "gather width")?,
            first_row: part_rows.start as u32,
            part_rows: part_rows.len() as u32,
            accumulate: accumulate.into(),
            _pad: [0; 3],
        };
        backend.dispatch(kernel, &params, &[part, &ids_buffer, out_buffer], groups);
    }
    Ok(())
}
