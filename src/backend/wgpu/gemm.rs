//! `linear` on wgpu (shaders/gemm.wgsl): which GEMM variant a backend runs, the kernel of each
//! variant on f32 and f16 weights, and the dispatch of one output tile per workgroup (64×64, or
//! 16 rows × 128 columns for the subgroup kernel); and
//! `gated_activation`, the gated feed-forward's epilogue, from the same shader.
//!
//! A weight matrix larger than one storage binding (a Mistral-7B MLP matrix in f32 is 235 MB;
//! many adapters bind at most 128 MiB) is held in parts of whole rows, as every split tensor is
//! (memory.rs). Its rows are output columns, so `linear` dispatches once per part, each writing
//! its own columns of the one output with the full row stride; bias, activation and residual
//! apply per output element, hence per part unchanged, and each output's reduction over k is the
//! same as unsplit (the results are identical). A split fused gate/up matrix needs nothing more:
//! `gated_activation` reads the whole `[n, 2I]` output.

use bytemuck::{Pod, Zeroable};

use super::device::{direct_loop_iterations, slab_loop_iterations, to_u32};
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::{shapes, Activation, GemmVariant, Tensor};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Output rows and columns per workgroup of the tiled and direct variants (gemm.wgsl `TILE`).
const TILE: usize = 64;

/// Output rows and columns per workgroup of the subgroup variant (gemm_subgroup.wgsl: rows
/// `SUBGROUP_ROWS`, columns two per invocation of `SUBGROUP_THREADS`).
const SUBGROUP_TILE: [usize; 2] = [16, 128];

/// k per loop iteration of the subgroup variant (gemm_subgroup.wgsl `SUBGROUP_STEP`).
const SUBGROUP_STEP: usize = 8;

/// The smallest subgroup the subgroup variant works with: lanes 0..8 load a step's x values.
pub(super) const MIN_SUBGROUP_SIZE: u32 = SUBGROUP_STEP as u32;

/// Threads per workgroup of `gated_activation` (gemm.wgsl `GATED_WORKGROUP`).
const GATED_WORKGROUP: usize = 256;

/// gemm.wgsl `Params`; `activation` is one of the shader's `ACT_*` constants. `m` counts the
/// weight rows of one dispatch (one part), `col0` is the output column of its first row and
/// `out_stride` the output's width.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LinearParams {
    n: u32,
    k: u32,
    m: u32,
    has_bias: u32,
    has_residual: u32,
    activation: u32,
    col0: u32,
    out_stride: u32,
}

/// The kernel of `variant`, or `None` where gemm.wgsl has none ([`WgpuBackend::GEMM_VARIANTS`]
/// lists those it has).
fn kernel(variant: GemmVariant) -> Option<Kernel> {
    match variant {
        GemmVariant::Tiled => Some(Kernel::LinearTiled),
        GemmVariant::Direct => Some(Kernel::LinearDirect),
        GemmVariant::TiledF16 => Some(Kernel::LinearTiledF16),
        GemmVariant::DirectF16 => Some(Kernel::LinearDirectF16),
        GemmVariant::Subgroup => Some(Kernel::LinearSubgroup),
        GemmVariant::SubgroupF16 => Some(Kernel::LinearSubgroupF16),
        GemmVariant::Naive
        | GemmVariant::MmaBf16
        | GemmVariant::Faer
        | GemmVariant::Packed
        | GemmVariant::PackedF16
        | GemmVariant::WgmmaBf16
        | GemmVariant::AmxBf16
        | GemmVariant::DotBf16 => None,
    }
}

/// The f32-weight variant a backend runs: the one `requested` (an f16-weight variant names the
/// kernel it builds on; which build runs follows the weights' dtype), else on software adapters
/// subgroup where `subgroups` (the device has them, at least [`MIN_SUBGROUP_SIZE`] wide) and
/// direct otherwise, and tiled elsewhere. The error lists wgpu's variants, or says why the
/// subgroup variant cannot run.
pub(super) fn choose_variant(
    requested: Option<GemmVariant>,
    software: bool,
    subgroups: bool,
) -> std::result::Result<GemmVariant, String> {
    match requested.map(GemmVariant::on_f32_weights) {
        Some(GemmVariant::Subgroup) if !subgroups => Err(format!(
            "GEMM variant {} needs subgroups of at least {MIN_SUBGROUP_SIZE} invocations, which \
             this adapter does not offer (or they were turned off)",
            GemmVariant::Subgroup
        )),
        Some(variant) if kernel(variant).is_some() => Ok(variant),
        Some(other) => {
            let listed: Vec<String> = WgpuBackend::GEMM_VARIANTS.map(|v| v.to_string()).to_vec();
            Err(format!(
                "GEMM variant {other} is not a wgpu kernel; wgpu has {}",
                listed.join(", ")
            ))
        }
        None if software && subgroups => Ok(GemmVariant::Subgroup),
        None if software => Ok(GemmVariant::Direct),
        None => Ok(GemmVariant::Tiled),
    }
}

pub(super) fn linear(
    backend: &WgpuBackend,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    let (n, k, m) = shapes::linear(x, w, bias, residual, out)?;
    let weight = backend.storage_any_dtype(w)?;
    let x_buffer = backend.buffer(x, "linear input")?;
    let bias_buffer = backend.optional_buffer(bias, "linear bias")?;
    let residual_buffer = backend.optional_buffer(residual, "linear residual")?;
    let out_buffer = backend.buffer(out, "linear output")?;
    let variant = match weight.dtype {
        DType::F16 => backend.gemm.on_f16_weights(),
        _ => Some(backend.gemm),
    };
    let kernel = variant.and_then(kernel).ok_or_else(|| {
        Error::input(format!(
            "linear: GEMM variant {} has no wgpu kernel for {:?} weights",
            backend.gemm, weight.dtype
        ))
    })?;
    let ([tile_rows, tile_cols], iterations) = match kernel {
        Kernel::LinearTiled | Kernel::LinearTiledF16 => ([TILE, TILE], slab_loop_iterations(k)),
        Kernel::LinearSubgroup | Kernel::LinearSubgroupF16 => (
            SUBGROUP_TILE,
            direct_loop_iterations(k.div_ceil(SUBGROUP_STEP)),
        ),
        _ => ([TILE, TILE], direct_loop_iterations(k)),
    };
    // The first part is the largest.
    let widest = weight.part_rows(0, m).len();
    let row_groups = n.div_ceil(tile_rows);
    if [widest.div_ceil(tile_cols), row_groups]
        .iter()
        .any(|&g| g > backend.max_workgroups_per_dim as usize)
    {
        return Err(Error::input(format!(
            "linear: [{n}, {widest}] output exceeds the device's workgroup grid"
        )));
    }
    backend.check_loop_limit(iterations, || format!("linear over {k} input features"))?;
    for (i, part) in weight.parts.iter().enumerate() {
        let cols = weight.part_rows(i, m);
        let params = LinearParams {
            n: to_u32(n, "linear rows")?,
            k: to_u32(k, "linear features")?,
            m: to_u32(cols.len(), "linear outputs")?,
            has_bias: bias.is_some().into(),
            has_residual: residual.is_some().into(),
            activation: act.code(),
            col0: to_u32(cols.start, "linear output column")?,
            out_stride: to_u32(m, "linear outputs")?,
        };
        let groups = [cols.len().div_ceil(tile_cols) as u32, row_groups as u32, 1];
        backend.dispatch(
            kernel,
            &params,
            &[x_buffer, part, bias_buffer, residual_buffer, out_buffer],
            groups,
        );
    }
    Ok(())
}

pub(super) fn gated_activation(
    backend: &WgpuBackend,
    gate_up: &Tensor,
    act: Activation,
    out: &mut Tensor,
) -> Result<()> {
    let (n, m) = shapes::gated_activation(gate_up, out)?;
    if n * m == 0 {
        return Ok(());
    }
    // The shader's weight, bias and residual bindings are unused here.
    let unused = &backend.placeholder;
    let buffers = [
        backend.buffer(gate_up, "gated_activation input")?,
        unused,
        unused,
        unused,
        backend.buffer(out, "gated_activation output")?,
    ];
    let params = LinearParams {
        n: to_u32(n, "gated_activation rows")?,
        k: 0,
        m: to_u32(m, "gated_activation width")?,
        has_bias: 0,
        has_residual: 0,
        activation: act.code(),
        col0: 0,
        out_stride: 0,
    };
    let groups = backend.grid((n * m).div_ceil(GATED_WORKGROUP))?;
    backend.dispatch(Kernel::GatedActivation, &params, &buffers, groups);
    Ok(())
}

/// The backward family's `dy ⊙ act'(pre)`, in gemm.wgsl beside the activations: `pre` bound as
/// the input, `dy` as the residual.
pub(super) fn activation_backward(
    backend: &WgpuBackend,
    pre: &Tensor,
    dy: &Tensor,
    act: Activation,
    out: &mut Tensor,
) -> Result<()> {
    let (n, m) = shapes::activation_backward(pre, dy, out)?;
    if n * m == 0 {
        return Ok(());
    }
    let unused = &backend.placeholder;
    let buffers = [
        backend.buffer(pre, "activation_backward pre-activation")?,
        unused,
        unused,
        backend.buffer(dy, "activation_backward gradient")?,
        backend.buffer(out, "activation_backward output")?,
    ];
    let params = LinearParams {
        n: to_u32(n, "activation_backward rows")?,
        k: 0,
        m: to_u32(m, "activation_backward width")?,
        has_bias: 0,
        has_residual: 1,
        activation: act.code(),
        col0: 0,
        out_stride: 0,
    };
    let groups = backend.grid((n * m).div_ceil(GATED_WORKGROUP))?;
    backend.dispatch(Kernel::ActivationBackward, &params, &buffers, groups);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_variants_are_those_with_a_kernel() {
        let with_kernel: Vec<GemmVariant> = GemmVariant::ALL
            .into_iter()
            .filter(|&v| kernel(v).is_some())
            .collect();
        assert_eq!(with_kernel, WgpuBackend::GEMM_VARIANTS);
    }
}
