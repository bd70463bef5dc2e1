//! The backward family on CUDA (kernels/backward.cu): `activation_backward` (one thread per
//! value), `layer_norm_backward` (one block per row), `attention_backward` (a statistics kernel per
//! (query, head), then one thread per (token, head, channel)), `scatter_rows` (one thread per
//! table value, through the CSR index of the ids the wgpu backend builds too) and
//! `sequence_sums` (one thread per (sequence, column)).

use cudarc::driver::PushKernelArg;

use super::device::{config, grid_yz, row_threads, sequence_starts, to_i32};
use super::CudaBackend;
use crate::backend::{shapes, Activation, AttentionSpec, Backend, SeqLayout, Tensor};
use crate::error::{Error, Result};

/// Threads per block of the element-wise and per-token kernels.
const THREADS: usize = 256;

pub(super) fn activation_backward(
    be: &CudaBackend,
    pre: &Tensor,
    dy: &Tensor,
    act: Activation,
    out: &mut Tensor,
) -> Result<()> {
    let (n, m) = shapes::activation_backward(pre, dy, out)?;
    if n * m == 0 {
        return Ok(());
    }
    let (len, act) = ((n * m) as i64, act.code() as i32);
    let f = be.function("backward", "activation_backward_v1")?;
    let (pre, dy) = (be.slice(pre)?, be.slice(dy)?);
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(pre).arg(dy).arg(out).arg(&len).arg(&act);
    let blocks = (n * m).div_ceil(THREADS).min(1 << 16) as u32;
    let cfg = config((blocks, 1, 1), (THREADS as u32, 1, 1));
    be.launch("activation_backward_v1", &mut args, cfg)
}

pub(super) fn layer_norm_backward(
    be: &CudaBackend,
    pre: &Tensor,
    gamma: &Tensor,
    eps: f32,
    dy: &Tensor,
    dx: &mut Tensor,
    normed: &mut Tensor,
) -> Result<()> {
    let (n, d) = shapes::layer_norm_backward(pre, gamma, dy, dx, normed)?;
    if n == 0 {
        return Ok(());
    }
    let di = to_i32(d, "layer_norm_backward width")?;
    let rows =
        u32::try_from(n).map_err(|_| Error::input("layer_norm_backward: rows exceed u32"))?;
    let f = be.function("backward", "layer_norm_backward_v1")?;
    let (pre, gamma, dy) = (be.slice(pre)?, be.slice(gamma)?, be.slice(dy)?);
    let (dx, normed) = (be.slice_mut(dx)?, be.slice_mut(normed)?);
    let mut args = be.stream().launch_builder(&f);
    args.arg(pre)
        .arg(gamma)
        .arg(dy)
        .arg(dx)
        .arg(normed)
        .arg(&di)
        .arg(&eps);
    let cfg = config((rows, 1, 1), (row_threads(d), 1, 1));
    be.launch("layer_norm_backward_v1", &mut args, cfg)
}

pub(super) fn attention_backward(
    be: &CudaBackend,
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
    let heads = grid_yz(spec.heads, "attention_backward heads")?;
    let sequences = grid_yz(layout.num_sequences(), "attention_backward sequences")?;
    let grid_x = |work: usize| {
        u32::try_from(work.div_ceil(THREADS))
            .map_err(|_| Error::input("attention_backward: sequence too long for the CUDA grid"))
    };
    let (stats_blocks, grad_blocks) = (grid_x(max_len)?, grid_x(max_len * hd)?);
    let (heads_i, hd_i) = (
        to_i32(spec.heads, "attention_backward heads")?,
        to_i32(hd, "attention_backward head_dim")?,
    );
    let starts = be.upload_small(&sequence_starts(layout)?)?;
    let mut stats = be.zeros(&[tokens * spec.heads, 3])?;
    let (qkv, d_out) = (be.slice(qkv)?, be.slice(d_out)?);
    {
        let f = be.function("backward", "attention_backward_stats_v1")?;
        let stats = be.slice_mut(&mut stats)?;
        let mut args = be.stream().launch_builder(&f);
        args.arg(qkv)
            .arg(&starts)
            .arg(d_out)
            .arg(stats)
            .arg(&heads_i)
            .arg(&hd_i)
            .arg(&spec.scale);
        let cfg = config((stats_blocks, heads, sequences), (THREADS as u32, 1, 1));
        be.launch("attention_backward_stats_v1", &mut args, cfg)?;
    }
    let f = be.function("backward", "attention_backward_v1")?;
    let stats = be.slice(&stats)?;
    let d_qkv = be.slice_mut(d_qkv)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(qkv)
        .arg(&starts)
        .arg(d_out)
        .arg(stats)
        .arg(d_qkv)
        .arg(&heads_i)
        .arg(&hd_i)
        .arg(&spec.scale);
    let cfg = config((grad_blocks, heads, sequences), (THREADS as u32, 1, 1));
    be.launch("attention_backward_v1", &mut args, cfg)
}

pub(super) fn scatter_rows(
    be: &CudaBackend,
    delta: &Tensor,
    ids: &[u32],
    accumulate: bool,
    table: &mut Tensor,
) -> Result<()> {
    let (rows, d) = shapes::scatter_rows(delta, ids, table)?;
    if rows * d == 0 {
        return Ok(());
    }
    let (row_starts, order) = shapes::ids_by_row(ids, rows)?;
    let to_i32s = |v: Vec<u32>| -> Result<Vec<i32>> {
        v.into_iter()
            .map(|x| to_i32(x as usize, "scatter_rows ids"))
            .collect()
    };
    let row_starts = be.upload_small(&to_i32s(row_starts)?)?;
    let order = be.upload_small(&to_i32s(order)?)?;
    let (rows_i, di, acc) = (
        to_i32(rows, "scatter_rows table rows")?,
        to_i32(d, "scatter_rows width")?,
        i32::from(accumulate),
    );
    let f = be.function("backward", "scatter_rows_v1")?;
    let delta = be.slice(delta)?;
    let table = be.slice_mut(table)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(delta)
        .arg(&row_starts)
        .arg(&order)
        .arg(table)
        .arg(&rows_i)
        .arg(&di)
        .arg(&acc);
    let blocks = (rows * d).div_ceil(THREADS).min(1 << 16) as u32;
    let cfg = config((blocks, 1, 1), (THREADS as u32, 1, 1));
    be.launch("scatter_rows_v1", &mut args, cfg)
}

pub(super) fn sequence_sums(
    be: &CudaBackend,
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
    let starts = be.upload_small(&sequence_starts(layout)?)?;
    let (sequences_i, di, weighted) = (
        to_i32(sequences, "sequence_sums sequences")?,
        to_i32(d, "sequence_sums width")?,
        i32::from(weights.is_some()),
    );
    let f = be.function("backward", "sequence_sums_v1")?;
    // Unweighted, the kernel never reads its weights: the values stand in.
    let (values_s, weights_s) = (be.slice(values)?, be.slice(weights.unwrap_or(values))?);
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(values_s)
        .arg(weights_s)
        .arg(&starts)
        .arg(out)
        .arg(&sequences_i)
        .arg(&di)
        .arg(&weighted);
    let blocks = (sequences * d).div_ceil(THREADS).min(1 << 16) as u32;
    let cfg = config((blocks, 1, 1), (THREADS as u32, 1, 1));
    be.launch("sequence_sums_v1", &mut args, cfg)
}
