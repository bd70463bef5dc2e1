//! The backward family on wgpu (shaders/backward.wgsl): `layer_norm_backward` (one thread per
//! row), `attention_backward` (a statistics pass per (query, head), then one workgroup per
//! (token, head) with a thread per channel), `scatter_rows` (one thread per table value, through a CSR index of the ids
//! built here) and `sequence_sums` (one thread per (sequence, column)). `activation_backward` is in `gemm.rs`, as its kernel is in gemm.wgsl.

use bytemuck::{Pod, Zeroable};

use super::device::{direct_loop_iterations, to_u32};
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::{shapes, AttentionSpec, Backend, SeqLayout, Tensor};
use crate::error::Result;

/// backward.wgsl `ROW_WORKGROUP`, `QUERY_WORKGROUP` (also the gradient pass's channels and keys
/// at a time), `SCATTER_WORKGROUP`, `SUM_WORKGROUP`.
const ROW_WORKGROUP: usize = 64;
const QUERY_WORKGROUP: usize = 64;
const SCATTER_WORKGROUP: usize = 256;
const SUM_WORKGROUP: usize = 256;

/// backward.wgsl `NormParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    width: u32,
    eps: f32,
    _pad: u32,
}

/// backward.wgsl `AttentionParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    heads: u32,
    head_dim: u32,
    scale: f32,
    _pad: u32,
}

/// backward.wgsl `ScatterParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ScatterParams {
    rows: u32,
    width: u32,
    accumulate: u32,
    _pad: u32,
}

/// backward.wgsl `SumParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SumParams {
    sequences: u32,
    width: u32,
    weighted: u32,
    _pad: u32,
}

pub(super) fn layer_norm_backward(
    backend: &WgpuBackend,
    pre: &Tensor,
    gamma: &Tensor,
    eps: f32,
    dy: &Tensor,
    dx: &mut Tensor,
    normed: &mut Tensor,
) -> Result<()> {
    let (n, d) = shapes::layer_norm_backward(pre, gamma, dy, dx, normed)?;
    // Four passes over the row.
    backend.check_loop_limit(direct_loop_iterations(4 * (d + 1)), || {
        format!("layer_norm_backward of rows of {d}")
    })?;
    let params = NormParams {
        rows: to_u32(n, "layer_norm_backward rows")?,
        width: to_u32(d, "layer_norm_backward width")?,
        eps,
        _pad: 0,
    };
    let buffers = [
        backend.buffer(pre, "layer_norm_backward input rows")?,
        backend.buffer(gamma, "layer_norm_backward gamma")?,
        backend.buffer(dy, "layer_norm_backward gradient")?,
        backend.buffer(dx, "layer_norm_backward dx")?,
        backend.buffer(normed, "layer_norm_backward normed rows")?,
    ];
    let groups = backend.grid(n.div_ceil(ROW_WORKGROUP))?;
    backend.dispatch(Kernel::LayerNormBackward, &params, &buffers, groups);
    Ok(())
}

pub(super) fn attention_backward(
    backend: &WgpuBackend,
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    d_out: &Tensor,
    d_qkv: &mut Tensor,
) -> Result<()> {
    shapes::attention_backward(qkv, layout, spec, d_out, d_qkv)?;
    let tokens = layout.num_tokens();
    if tokens == 0 || spec.heads * spec.head_dim == 0 {
        return Ok(());
    }
    let (max_len, hd) = (layout.max_len(), spec.head_dim);
    // The statistics pass runs two loops over the keys, three head-wide dot products a key in
    // all; the gradient pass, for each block of channels and chunk of keys, four dot products
    // for its thread's key and then a loop over the chunk.
    let stats_loops = max_len * (3 * (hd + 1) + 2);
    let chunks = max_len.div_ceil(QUERY_WORKGROUP);
    let grad_loops =
        hd.div_ceil(QUERY_WORKGROUP) * (chunks * (4 * (hd + 1) + QUERY_WORKGROUP + 1) + 1);
    backend.check_loop_limit(direct_loop_iterations(stats_loops.max(grad_loops)), || {
        format!("attention_backward over {max_len} tokens with head_dim {hd}")
    })?;
    let (heads, sequences) = (spec.heads, layout.num_sequences());
    let max = backend.max_workgroups_per_dim as usize;
    let stats_groups = [max_len.div_ceil(QUERY_WORKGROUP), heads, sequences];
    let grad_groups = [max_len, heads, sequences];
    shapes::ensure(
        stats_groups.iter().chain(&grad_groups).all(|&g| g <= max),
        || {
            format!(
                "attention_backward: {sequences} sequences × {heads} heads × {max_len} tokens \
                 exceed the device's grid"
            )
        },
    )?;
    let params = AttentionParams {
        heads: to_u32(heads, "attention_backward heads")?,
        head_dim: to_u32(hd, "attention_backward head_dim")?,
        scale: spec.scale,
        _pad: 0,
    };
    let starts = backend.upload_sequence_starts(layout)?;
    let stats = backend.zeros(&[tokens * heads, 3])?;
    let buffers = [
        backend.buffer(qkv, "attention_backward qkv")?,
        &starts,
        backend.buffer(d_out, "attention_backward gradient")?,
        backend.buffer(&stats, "attention_backward statistics")?,
        backend.buffer(d_qkv, "attention_backward d_qkv")?,
    ];
    let as_u32 = |g: [usize; 3]| g.map(|g| g as u32);
    backend.dispatch(
        Kernel::AttentionBackwardStats,
        &params,
        &buffers,
        as_u32(stats_groups),
    );
    backend.dispatch(
        Kernel::AttentionBackward,
        &params,
        &buffers,
        as_u32(grad_groups),
    );
    Ok(())
}

pub(super) fn scatter_rows(
    backend: &WgpuBackend,
    delta: &Tensor,
    ids: &[u32],
    accumulate: bool,
    table: &mut Tensor,
) -> Result<()> {
    let (rows, d) = shapes::scatter_rows(delta, ids, table)?;
    let (row_starts, order) = shapes::ids_by_row(ids, rows)?;
    let most = row_starts
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    backend.check_loop_limit(direct_loop_iterations(most as usize), || {
        format!("scatter_rows with {most} ids naming one row")
    })?;
    let params = ScatterParams {
        rows: to_u32(rows, "scatter_rows table rows")?,
        width: to_u32(d, "scatter_rows width")?,
        accumulate: accumulate.into(),
        _pad: 0,
    };
    let row_starts = backend.upload_u32("scatter_rows row starts", &row_starts);
    let order = backend.upload_u32("scatter_rows token order", &order);
    let buffers = [
        backend.buffer(delta, "scatter_rows gradient rows")?,
        &row_starts,
        &order,
        backend.buffer(table, "scatter_rows table")?,
    ];
    let groups = backend.grid((rows * d).div_ceil(SCATTER_WORKGROUP))?;
    backend.dispatch(Kernel::ScatterRows, &params, &buffers, groups);
    Ok(())
}

pub(super) fn sequence_sums(
    backend: &WgpuBackend,
    values: &Tensor,
    weights: Option<&Tensor>,
    layout: &SeqLayout,
    out: &mut Tensor,
) -> Result<()> {
    let d = shapes::sequence_sums(values, weights, layout, out)?;
    let sequences = layout.num_sequences();
    if sequences * d == 0 {
        return Ok(());
    }
    let max_len = layout.max_len();
    backend.check_loop_limit(direct_loop_iterations(max_len), || {
        format!("sequence_sums over sequences of {max_len} tokens")
    })?;
    let params = SumParams {
        sequences: to_u32(sequences, "sequence_sums sequences")?,
        width: to_u32(d, "sequence_sums width")?,
        weighted: weights.is_some().into(),
        _pad: 0,
    };
    let starts = backend.upload_sequence_starts(layout)?;
    let buffers = [
        backend.buffer(values, "sequence_sums values")?,
        // Unweighted, the kernel never reads its weights binding: the values stand in.
        backend.buffer(weights.unwrap_or(values), "sequence_sums weights")?,
        &starts,
        backend.buffer(out, "sequence_sums output")?,
    ];
    let groups = backend.grid((sequences * d).div_ceil(SUM_WORKGROUP))?;
    backend.dispatch(Kernel::SequenceSums, &params, &buffers, groups);
    Ok(())
}
