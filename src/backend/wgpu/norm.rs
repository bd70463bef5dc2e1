//! The row normalisations on wgpu (shaders/norm.wgsl): `layer_norm` and `l2_normalize` in
//! place, `rms_norm` into another tensor, one workgroup per row, each in its shared-memory build or, where the backend
//! reduces with subgroups, its subgroup build.

use bytemuck::{Pod, Zeroable};

use super::device::to_u32;
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::{shapes, Tensor};
use crate::error::Result;

/// norm.wgsl `Params` (every entry point; `eps` is unused by `l2_normalize`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    width: u32,
    eps: f32,
    _pad: u32,
}

/// The two builds of one norm op's kernel.
struct Builds {
    shared_memory: Kernel,
    subgroup: Kernel,
}

const LAYER_NORM: Builds = Builds {
    shared_memory: Kernel::LayerNorm,
    subgroup: Kernel::LayerNormSubgroup,
};
const RMS_NORM: Builds = Builds {
    shared_memory: Kernel::RmsNorm,
    subgroup: Kernel::RmsNormSubgroup,
};
const L2_NORMALIZE: Builds = Builds {
    shared_memory: Kernel::L2Normalize,
    subgroup: Kernel::L2NormalizeSubgroup,
};

/// Dispatches the build of `builds` this backend runs over `rows` rows of `width` values.
fn dispatch(
    backend: &WgpuBackend,
    builds: Builds,
    op: &str,
    (rows, width): (usize, usize),
    eps: f32,
    buffers: &[&wgpu::Buffer],
) -> Result<()> {
    let params = NormParams {
        rows: to_u32(rows, &format!("{op} rows"))?,
        width: to_u32(width, &format!("{op} width"))?,
        eps,
        _pad: 0,
    };
    let kernel = if backend.subgroup_norms {
        builds.subgroup
    } else {
        builds.shared_memory
    };
    backend.dispatch(kernel, &params, buffers, backend.grid(rows)?);
    Ok(())
}

pub(super) fn layer_norm(
    backend: &WgpuBackend,
    x: &mut Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<()> {
    let shape = shapes::layer_norm(x, gamma, beta)?;
    let buffers = [
        backend.buffer(x, "layer_norm input")?,
        backend.buffer(gamma, "layer_norm gamma")?,
        backend.buffer(beta, "layer_norm beta")?,
    ];
    dispatch(backend, LAYER_NORM, "layer_norm", shape, eps, &buffers)
}

/// Out of place: the kernel writes `out` (binding 1, where the in-place norms write) from `x`
/// (binding 3, `beta`'s slot in layer_norm).
pub(super) fn rms_norm(
    backend: &WgpuBackend,
    x: &Tensor,
    gamma: &Tensor,
    eps: f32,
    out: &mut Tensor,
) -> Result<()> {
    let shape = shapes::rms_norm(x, gamma, out)?;
    let buffers = [
        backend.buffer(out, "rms_norm output")?,
        backend.buffer(gamma, "rms_norm gamma")?,
        backend.buffer(x, "rms_norm input")?,
    ];
    dispatch(backend, RMS_NORM, "rms_norm", shape, eps, &buffers)
}

pub(super) fn l2_normalize(backend: &WgpuBackend, x: &mut Tensor) -> Result<()> {
    let shape = shapes::l2_normalize(x)?;
    let buffers = [backend.buffer(x, "l2_normalize input")?];
    dispatch(backend, L2_NORMALIZE, "l2_normalize", shape, 0.0, &buffers)
}
