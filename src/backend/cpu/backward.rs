//! The backward pass of the encoder op family on host f32 slices: the CPU reference of the
//! gradient kernels a transformer classifier's per-sample gradients need. Each function takes
//! what its forward op saw (the pre-activation, the rows before LayerNorm, the packed `qkv`) and
//! the gradient at that op's output, and returns the gradient at its input; parameter gradients
//! are left to the caller, which keeps them per sample (`Δᵀ A` for a GEMM, rows scattered by id
//! for an embedding, sums over each sample's tokens for biases and LayerNorm).
//!
//! `activation_backward`, `layer_norm_backward`, `attention_backward`, `sequence_sums` and
//! `scatter_rows` are also the CPU's ops of the backward family
//! ([`crate::backend::OpFamily::Backward`]), through `on_tensors`; the GPU kernels are checked against them.
//! So are the training ops only the CPU runs: `dropout` (inverted dropout by a
//! [`DropoutMask`]), [`attention_dropout`] and its backward pass (`attention_backward` with the
//! mask). A linear layer's input gradient
//! (`linear_input_backward`) is `linear` on the transposed weight on a device.
//!
//! Row statistics (LayerNorm's mean and variance, softmax's `Σ P ⊙ dP`) accumulate in f64: they
//! are differences of nearly equal sums, and the cost is a few flops a value.

use std::ops::Range;

use rayon::prelude::*;

use super::activation;
use super::common::{
    lane_sum_f64, lane_sum_pairs_f64, row_dots_portable, rows_per_task, split_sequences,
    with_wide_simd,
};
use super::gemm::{gemm, Operand};
use crate::backend::{Activation, AttentionSpec, DropoutMask, SeqLayout};
use crate::error::{Error, Result};

/// `dz = dy ⊙ act'(z)` through an epilogue activation, from its pre-activation `z`.
pub fn activation_backward(act: Activation, z: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dz = vec![0.0f32; z.len()];
    activation_backward_into(act, z, dy, &mut dz);
    dz
}

/// [`activation_backward`] written into `dz`, in parallel over chunks of the vectorised slopes
/// (a memory-bound pass: the op's output is written once, never collected then copied).
pub fn activation_backward_into(act: Activation, z: &[f32], dy: &[f32], dz: &mut [f32]) {
    assert!(
        z.len() == dy.len() && dz.len() == dy.len(),
        "activation_backward: shapes differ"
    );
    // Large enough to amortise a task, small enough to balance two to a few dozen threads.
    const CHUNK: usize = 1 << 14;
    dz.par_chunks_mut(CHUNK)
        .zip(z.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dz, (z, dy))| activation::backward(act, z, dy, dz));
}

/// The gradient at a linear layer's input, `dx = δ·W` for `δ: [n, d_out]` and the PyTorch-layout
/// weight `w: [d_out, d_in]`; adds into `dx` when `accumulate` (a residual branch).
pub fn linear_input_backward(
    delta: &[f32],
    w: &[f32],
    d_out: usize,
    d_in: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    let n = delta.len() / d_out.max(1);
    assert_eq!(dx.len(), n * d_in, "linear_input_backward: dx shape");
    gemm(
        dx,
        Operand::plain(delta, n, d_out),
        Operand::plain(w, d_out, d_in),
        accumulate,
    );
}

/// Row-wise LayerNorm backward. `pre: [n, d]` are the rows LayerNorm saw, `dy` the gradient at
/// its output. Returns `dx` and the normalised rows `x̂ = (x − μ)/σ`, so the caller can form
/// `∂/∂γ = dy ⊙ x̂` and `∂/∂β = dy` per token:
/// `dx = (g − mean(g) − x̂·mean(g ⊙ x̂)) / σ` with `g = dy ⊙ γ`.
pub fn layer_norm_backward(
    pre: &[f32],
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0f32; pre.len()];
    let mut normed = vec![0.0f32; pre.len()];
    layer_norm_backward_into(pre, gamma, eps, dy, &mut dx, &mut normed);
    (dx, normed)
}

/// [`layer_norm_backward`] written into `dx` and `normed`, in parallel over blocks of rows (about
/// 64 KiB of each array a task): a memory-bound pass, each row read from memory once and its
/// later sweeps served from L1.
pub fn layer_norm_backward_into(
    pre: &[f32],
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
    dx: &mut [f32],
    normed: &mut [f32],
) {
    let d = gamma.len();
    assert!(
        pre.len() == dy.len() && dx.len() == dy.len() && normed.len() == dy.len(),
        "layer_norm_backward: shapes differ"
    );
    let block = d * rows_per_task(d);
    dx.par_chunks_mut(block)
        .zip(normed.par_chunks_mut(block))
        .zip(pre.par_chunks(block).zip(dy.par_chunks(block)))
        .for_each(|((dx, normed), (x, dy))| {
            layer_norm_backward_rows(x, gamma, eps, dy, dx, normed)
        });
}

with_wide_simd! {
    /// [`layer_norm_backward`] of each row (the width of `gamma`) of `x`, as wide as the CPU
    /// allows (AVX-512's f64 conversions take eight values an instruction).
    pub(super) avx512 fn layer_norm_backward_rows => layer_norm_backward_rows_portable(x: &[f32], gamma: &[f32], eps: f32, dy: &[f32], dx: &mut [f32], normed: &mut [f32])
}

/// Five sweeps a row, each a vectorised loop: the forward's mean and variance in f64 lanes,
/// `x̂` and `g` rounded to f32 once each (`g` in `dx`'s row until `dx` replaces it), the two
/// means of `g` in f64 lanes, then `dx`. The row stays in L1 after the first.
#[inline(always)]
fn layer_norm_backward_rows_portable(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
    dx: &mut [f32],
    normed: &mut [f32],
) {
    let d = gamma.len();
    let rows = x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d).zip(normed.chunks_exact_mut(d)));
    for ((x, dy), (dx, normed)) in rows {
        let mean = lane_sum_f64(x, |v| v) / d as f64;
        let var = lane_sum_f64(x, |v| (v - mean) * (v - mean)) / d as f64;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        let outputs = normed.iter_mut().zip(dx.iter_mut());
        for ((h, g), ((&x, &dy), &gamma)) in outputs.zip(x.iter().zip(dy).zip(gamma)) {
            *h = ((f64::from(x) - mean) * inv) as f32;
            *g = dy * gamma;
        }
        let g_mean = (lane_sum_f64(dx, |g| g) / d as f64) as f32;
        let gh_mean = (lane_sum_pairs_f64(dx, normed, |g, h| g * h) / d as f64) as f32;
        let inv = inv as f32;
        for (g, &h) in dx.iter_mut().zip(normed.iter()) {
            *g = inv * (*g - g_mean - h * gh_mean);
        }
    }
}

/// Softmax attention backward for the bidirectional multi-head attention of `spec` (every query
/// sees every key of its own sequence; no causal mask, window or grouped heads) over packed
/// sequences: from the packed `qkv: [tokens, 3·heads·head_dim]` the forward read and the gradient
/// at its output `d_out: [tokens, heads·head_dim]`, the gradient `d_qkv` at `qkv`. Per sequence
/// and head, with `P = softmax(scale·Q·Kᵀ)` recomputed and `M` the `dropout` mask of the
/// probabilities ([`attention_dropout`]; all ones without one):
/// `dV = (M ⊙ P)ᵀ·dO`, `dP = M ⊙ (dO·Vᵀ)`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = scale·dS·K`,
/// `dK = scale·dSᵀ·Q`. Sequences never see each other's rows, so nothing leaks across them.
pub fn attention_backward(
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    d_out: &[f32],
    dropout: Option<&DropoutMask>,
) -> Result<Vec<f32>> {
    let mut d_qkv = vec![0.0f32; qkv.len()];
    attention_backward_into(qkv, layout, spec, d_out, dropout, &mut d_qkv)?;
    Ok(d_qkv)
}

/// [`attention_backward`] written into `d_qkv` (whatever it held), one task per (sequence,
/// head), so that a single long sequence keeps every thread busy.
pub fn attention_backward_into(
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    d_out: &[f32],
    dropout: Option<&DropoutMask>,
    d_qkv: &mut [f32],
) -> Result<()> {
    check_bidirectional("attention_backward", spec)?;
    let (heads, hd) = (spec.heads, spec.head_dim);
    let (width, out_width) = (spec.qkv_width(), heads * hd);
    let tokens = layout.num_tokens();
    assert_eq!(qkv.len(), tokens * width, "attention_backward: qkv shape");
    assert_eq!(
        d_out.len(),
        tokens * out_width,
        "attention_backward: d_out shape"
    );
    assert_eq!(d_qkv.len(), qkv.len(), "attention_backward: d_qkv shape");
    head_tasks(d_qkv, layout, heads, hd).for_each_init(
        HeadScratch::default,
        |scratch, (s, h, mut pieces)| {
            let rows = layout.range(s);
            scratch.gather(qkv, spec, &rows, h);
            gather_rows(&mut scratch.d_o, d_out, out_width, &rows, h * hd, hd);
            let masked = dropout.is_some();
            if let Some(m) = dropout {
                scratch.fill_mask(m, &rows, heads, h);
            }
            head_backward_wide(scratch, spec.scale, masked, &mut pieces);
        },
    );
    Ok(())
}

/// Bidirectional attention with its probabilities dropped by `mask` (transformers' attention
/// dropout in train mode) over packed sequences, written into `out: [tokens, heads·head_dim]`
/// (whatever it held): per sequence and head `O = (M ⊙ P)·V` with `P = softmax(scale·Q·Kᵀ)` and
/// `M[i, j] = mask.factor(t_i·heads + h, j)` for the packed row `t_i` of query `i` and key
/// position `j` in the sequence. Computes `P` as [`attention_backward`] recomputes it: a
/// training-step reference, not the fast path of inference.
pub fn attention_dropout(
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    mask: &DropoutMask,
    out: &mut [f32],
) -> Result<()> {
    check_bidirectional("attention_dropout", spec)?;
    let (heads, hd) = (spec.heads, spec.head_dim);
    let (width, out_width) = (spec.qkv_width(), heads * hd);
    let tokens = layout.num_tokens();
    assert_eq!(qkv.len(), tokens * width, "attention_dropout: qkv shape");
    assert_eq!(
        out.len(),
        tokens * out_width,
        "attention_dropout: out shape"
    );
    head_tasks(out, layout, heads, hd).for_each_init(
        HeadScratch::default,
        |scratch, (s, h, mut pieces)| {
            let rows = layout.range(s);
            scratch.gather(qkv, spec, &rows, h);
            scratch.fill_mask(mask, &rows, heads, h);
            head_dropout_wide(scratch, spec.scale, &mut pieces);
        },
    );
    Ok(())
}

/// An error unless `spec` is bidirectional attention without grouped heads, the only attention
/// with a backward pass (and training dropout).
fn check_bidirectional(op: &str, spec: &AttentionSpec) -> Result<()> {
    if spec.causal || spec.window.is_some() || spec.kv_heads != spec.heads {
        return Err(Error::input(format!(
            "{op}: only bidirectional attention without grouped heads is supported (the only \
             attention with a backward pass)"
        )));
    }
    Ok(())
}

/// The tasks of the per-head attention ops writing `out` (`[tokens, kinds·heads·hd]`: `d_qkv`,
/// or the context): `(sequence, head, pieces)` with `pieces` the `hd`-wide parts of the
/// sequence's rows that belong to the head, row by row and, within a row, kind by kind (q, k, v).
/// Heads of one sequence run in parallel too, so a single long sequence keeps every thread busy.
fn head_tasks<'a>(
    out: &'a mut [f32],
    layout: &'a SeqLayout,
    heads: usize,
    hd: usize,
) -> impl ParallelIterator<Item = (usize, usize, Vec<&'a mut [f32]>)> + 'a {
    let width = if layout.num_tokens() == 0 {
        0
    } else {
        out.len() / layout.num_tokens()
    };
    split_sequences(out, layout, width)
        .into_par_iter()
        .enumerate()
        .flat_map(move |(s, block)| {
            let mut by_head: Vec<Vec<&mut [f32]>> = (0..heads)
                .map(|_| Vec::with_capacity(block.len() / (heads * hd).max(1)))
                .collect();
            // A row is its kinds one after the other, each the heads' pieces in order.
            for (i, piece) in block.chunks_exact_mut(hd.max(1)).enumerate() {
                by_head[i % heads].push(piece);
            }
            by_head
                .into_par_iter()
                .enumerate()
                .map(move |(h, pieces)| (s, h, pieces))
        })
}

/// `dst ← rows` of `src` (`width` wide), columns `col..col + hd`: one head's rows contiguous.
fn gather_rows(
    dst: &mut Vec<f32>,
    src: &[f32],
    width: usize,
    rows: &Range<usize>,
    col: usize,
    hd: usize,
) {
    dst.clear();
    for t in rows.clone() {
        dst.extend_from_slice(&src[t * width + col..t * width + col + hd]);
    }
}

/// One thread's working set for one (sequence, head) of the attention ops: the head's `Q`, `K`,
/// `V` and `dO` rows gathered contiguous (`[len, hd]`), and its `[len, len]` probabilities,
/// score gradients and dropout factors; kept across the thread's tasks, so that a task allocates
/// none (`3·len²` values: 3 MiB at 512 tokens).
#[derive(Default)]
pub(super) struct HeadScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
    p: Vec<f32>,
    ds: Vec<f32>,
    mask: Vec<f32>,
    len: usize,
    hd: usize,
}

impl HeadScratch {
    /// Gathers head `h`'s queries, keys and values of sequence `rows` from the packed `qkv` of
    /// `spec`.
    fn gather(&mut self, qkv: &[f32], spec: &AttentionSpec, rows: &Range<usize>, h: usize) {
        let (hd, width, out_width) = (spec.head_dim, spec.qkv_width(), spec.heads * spec.head_dim);
        (self.len, self.hd) = (rows.len(), hd);
        for (dst, kind) in [&mut self.q, &mut self.k, &mut self.v].into_iter().zip(0..) {
            gather_rows(dst, qkv, width, rows, kind * out_width + h * hd, hd);
        }
        let square = rows.len() * rows.len();
        for m in [&mut self.p, &mut self.ds] {
            m.clear();
            m.resize(square, 0.0);
        }
    }

    /// `mask[i, j] = m.factor(t_i·heads + h, j)` for head `h` of sequence `rows`, each entry
    /// hashed once for its two uses in the backward pass.
    fn fill_mask(&mut self, m: &DropoutMask, rows: &Range<usize>, heads: usize, h: usize) {
        let len = rows.len();
        self.mask.clear();
        for t in rows.clone() {
            let query_row = (t * heads + h) as u64;
            self.mask
                .extend((0..len as u64).map(|j| m.factor(query_row, j)));
        }
    }
}

with_wide_simd! {
    /// [`head_backward`], as wide as the CPU allows.
    pub(super) avx512 fn head_backward_wide => head_backward(scratch: &mut HeadScratch, scale: f32, masked: bool, out: &mut [&mut [f32]])
}

with_wide_simd! {
    /// [`head_dropout`], as wide as the CPU allows.
    pub(super) avx512 fn head_dropout_wide => head_dropout(scratch: &mut HeadScratch, scale: f32, out: &mut [&mut [f32]])
}

/// One (sequence, head) of [`attention_backward`] from the gathered rows (and the mask when
/// `masked`), written into its `out` pieces (`3·len`: q, k, v of each row); each output value
/// summed in registers over the sequence, written once.
#[inline(always)]
fn head_backward(scratch: &mut HeadScratch, scale: f32, masked: bool, out: &mut [&mut [f32]]) {
    let HeadScratch {
        q,
        k,
        v,
        d_o,
        p,
        ds,
        mask,
        len,
        hd,
    } = scratch;
    let (len, hd) = (*len, *hd);
    probabilities(q, k, scale, len, p);
    let scale = f64::from(scale);
    for i in 0..len {
        let (p, ds) = (&p[i * len..(i + 1) * len], &mut ds[i * len..(i + 1) * len]);
        // dP[i] = M[i] ⊙ (dO[i]·Vᵀ)
        row_dots_portable(ds, &d_o[i * hd..(i + 1) * hd], v);
        if masked {
            let mask = &mask[i * len..(i + 1) * len];
            ds.iter_mut().zip(mask).for_each(|(d, &m)| *d *= m);
        }
        // scale·dS[i] = scale·P[i] ⊙ (dP[i] − P[i]·dP[i]), the centre in f64.
        let centre = lane_sum_pairs_f64(p, ds, |p, d| p * d);
        ds.iter_mut()
            .zip(p)
            .for_each(|(d, &p)| *d = (scale * f64::from(p) * (f64::from(*d) - centre)) as f32);
    }
    let (p, ds, mask) = (&*p, &*ds, &*mask);
    for (j, pieces) in out.chunks_exact_mut(3).enumerate() {
        let [dq, dk, dv] = pieces else {
            unreachable!("chunks of three")
        };
        // dQ[j] = Σ_i scale·dS[j, i]·K[i];  dK[j] = Σ_i scale·dS[i, j]·Q[i]
        combine_rows(dq, k, |i| ds[j * len + i]);
        combine_rows(dk, q, |i| ds[i * len + j]);
        // dV[j] = Σ_i M[i, j]·P[i, j]·dO[i]
        match masked {
            true => combine_rows(dv, d_o, |i| mask[i * len + j] * p[i * len + j]),
            false => combine_rows(dv, d_o, |i| p[i * len + j]),
        }
    }
}

/// One (sequence, head) of [`attention_dropout`] from the gathered rows and mask, written into
/// its `out` pieces (one a row).
#[inline(always)]
fn head_dropout(scratch: &mut HeadScratch, scale: f32, out: &mut [&mut [f32]]) {
    let len = scratch.len;
    probabilities(&scratch.q, &scratch.k, scale, len, &mut scratch.p);
    let (p, mask) = (&scratch.p, &scratch.mask);
    for (i, o) in out.iter_mut().enumerate() {
        combine_rows(o, &scratch.v, |j| mask[i * len + j] * p[i * len + j]);
    }
}

/// `p = softmax(scale·Q·Kᵀ)` row by row, `[len, len]`, from the head's gathered `q` and `k`.
#[inline(always)]
fn probabilities(q: &[f32], k: &[f32], scale: f32, len: usize, p: &mut [f32]) {
    let hd = q.len() / len.max(1);
    for (i, row) in p.chunks_exact_mut(len.max(1)).take(len).enumerate() {
        row_dots_portable(row, &q[i * hd..(i + 1) * hd], k);
        row.iter_mut().for_each(|r| *r *= scale);
        let inv = 1.0 / activation::exp_row(row);
        row.iter_mut().for_each(|r| *r *= inv);
    }
}

/// Values of [`combine_rows`]'s output one sweep over the rows sums: sixty-four accumulators
/// stay in registers (four AVX-512 ones, enough in flight to hide the add latency).
const COMBINE_LANES: usize = 64;

/// `out = Σ_j weight(j)·rows[j]` for the `out.len()`-wide rows `rows` (row-major), each value
/// summed in the order of `j`; in chunks of [`COMBINE_LANES`] held in registers over the sweep,
/// rather than an accumulator loaded and stored once a row.
#[inline(always)]
fn combine_rows(out: &mut [f32], rows: &[f32], weight: impl Fn(usize) -> f32) {
    let width = out.len();
    let full = width - width % COMBINE_LANES;
    for start in (0..full).step_by(COMBINE_LANES) {
        let mut acc = [0.0f32; COMBINE_LANES];
        for (j, row) in rows.chunks_exact(width).enumerate() {
            let (w, row): (f32, &[f32; COMBINE_LANES]) = (
                weight(j),
                row[start..start + COMBINE_LANES].try_into().expect("chunk"),
            );
            for l in 0..COMBINE_LANES {
                acc[l] += w * row[l];
            }
        }
        out[start..start + COMBINE_LANES].copy_from_slice(&acc);
    }
    let tail = &mut out[full..];
    tail.fill(0.0);
    if !tail.is_empty() {
        for (j, row) in rows.chunks_exact(width).enumerate() {
            let w = weight(j);
            tail.iter_mut()
                .zip(&row[full..])
                .for_each(|(a, &x)| *a += w * x);
        }
    }
}

/// Sums of the rows of each sequence, each row multiplied element-wise by its row of `weights`
/// when given: `values: [tokens, width]` → `[sequences, width]`, in f64 then rounded (a bias's
/// or, with the normalised rows as weights, a LayerNorm γ's per-sample gradient from its
/// per-token terms).
pub fn sequence_sums(
    values: &[f32],
    weights: Option<&[f32]>,
    layout: &SeqLayout,
    width: usize,
) -> Vec<f32> {
    assert_eq!(
        values.len(),
        layout.num_tokens() * width,
        "sequence_sums shape"
    );
    if let Some(w) = weights {
        assert_eq!(w.len(), values.len(), "sequence_sums weights shape");
    }
    (0..layout.num_sequences())
        .into_par_iter()
        .flat_map_iter(|s| {
            let mut sum = vec![0.0f64; width];
            let rows = layout.range(s).start * width..layout.range(s).end * width;
            for (t, row) in values[rows.clone()].chunks_exact(width.max(1)).enumerate() {
                match weights {
                    Some(w) => {
                        let w = &w[rows.start + t * width..rows.start + (t + 1) * width];
                        sum.iter_mut()
                            .zip(row.iter().zip(w))
                            .for_each(|(a, (&v, &w))| *a += v as f64 * w as f64);
                    }
                    None => sum.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64),
                }
            }
            sum.into_iter().map(|v| v as f32)
        })
        .collect()
}

/// The gradient of an embedding table `[rows, width]` from the gradient at its gathered rows:
/// `delta: [tokens, width]` scattered (added) at `ids` — a sample's table gradient when `ids`
/// and `delta` are that sample's tokens. An id past the table is an error.
pub fn scatter_rows(delta: &[f32], ids: &[u32], rows: usize, width: usize) -> Result<Vec<f32>> {
    assert_eq!(delta.len(), ids.len() * width, "scatter_rows shape");
    let mut table = vec![0.0f32; rows * width];
    for (&id, d) in ids.iter().zip(delta.chunks_exact(width.max(1))) {
        let id = id as usize;
        if id >= rows {
            return Err(Error::input(format!(
                "scatter_rows: id {id} is past the table's {rows} rows"
            )));
        }
        table[id * width..(id + 1) * width]
            .iter_mut()
            .zip(d)
            .for_each(|(t, &v)| *t += v);
    }
    Ok(table)
}

/// The [`crate::backend::Backend`] ops of the backward family on CPU tensors: shape checks, then
/// the host functions above on the tensors' values.
pub(super) mod on_tensors {
    use rayon::prelude::*;

    use super::super::common::{values, values_mut};
    use crate::backend::{shapes, Activation, AttentionSpec, DropoutMask, SeqLayout, Tensor};
    use crate::error::Result;

    pub(in crate::backend::cpu) fn activation_backward(
        pre: &Tensor,
        dy: &Tensor,
        act: Activation,
        out: &mut Tensor,
    ) -> Result<()> {
        shapes::activation_backward(pre, dy, out)?;
        super::activation_backward_into(act, values(pre)?, values(dy)?, values_mut(out)?);
        Ok(())
    }

    pub(in crate::backend::cpu) fn layer_norm_backward(
        pre: &Tensor,
        gamma: &Tensor,
        eps: f32,
        dy: &Tensor,
        dx: &mut Tensor,
        normed: &mut Tensor,
    ) -> Result<()> {
        shapes::layer_norm_backward(pre, gamma, dy, dx, normed)?;
        super::layer_norm_backward_into(
            values(pre)?,
            values(gamma)?,
            eps,
            values(dy)?,
            values_mut(dx)?,
            values_mut(normed)?,
        );
        Ok(())
    }

    pub(in crate::backend::cpu) fn attention_backward(
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        d_out: &Tensor,
        d_qkv: &mut Tensor,
    ) -> Result<()> {
        shapes::attention_backward(qkv, layout, spec, d_out, d_qkv)?;
        super::attention_backward_into(
            values(qkv)?,
            layout,
            spec,
            values(d_out)?,
            None,
            values_mut(d_qkv)?,
        )
    }

    pub(in crate::backend::cpu) fn attention_dropout(
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        mask: &DropoutMask,
        out: &mut Tensor,
    ) -> Result<()> {
        shapes::attention(qkv, layout, spec, out)?;
        super::attention_dropout(values(qkv)?, layout, spec, mask, values_mut(out)?)
    }

    pub(in crate::backend::cpu) fn attention_dropout_backward(
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        mask: &DropoutMask,
        d_out: &Tensor,
        d_qkv: &mut Tensor,
    ) -> Result<()> {
        shapes::attention_backward(qkv, layout, spec, d_out, d_qkv)?;
        super::attention_backward_into(
            values(qkv)?,
            layout,
            spec,
            values(d_out)?,
            Some(mask),
            values_mut(d_qkv)?,
        )
    }

    /// `out = x ⊙ mask (+ residual)`, entry `(r, c)` scaled by `mask.factor(r, c)`.
    pub(in crate::backend::cpu) fn dropout(
        x: &Tensor,
        mask: &DropoutMask,
        residual: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let d = shapes::dropout(x, residual, out)?;
        let (x, residual) = (values(x)?, residual.map(values).transpose()?);
        values_mut(out)?
            .par_chunks_mut(d.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let at = r * d;
                for (c, o) in row.iter_mut().enumerate() {
                    let dropped = x[at + c] * mask.factor(r as u64, c as u64);
                    *o = residual.map_or(dropped, |res| dropped + res[at + c]);
                }
            });
        Ok(())
    }

    pub(in crate::backend::cpu) fn sequence_sums(
        rows: &Tensor,
        weights: Option<&Tensor>,
        layout: &SeqLayout,
        out: &mut Tensor,
    ) -> Result<()> {
        let d = shapes::sequence_sums(rows, weights, layout, out)?;
        let weights = weights.map(values).transpose()?;
        let sums = super::sequence_sums(values(rows)?, weights, layout, d);
        values_mut(out)?.copy_from_slice(&sums);
        Ok(())
    }

    /// Each row's ids summed in order from zero, then added to the table when `accumulate`
    /// (the order the GPU kernels follow, so the backends round alike).
    pub(in crate::backend::cpu) fn scatter_rows(
        delta: &Tensor,
        ids: &[u32],
        accumulate: bool,
        table: &mut Tensor,
    ) -> Result<()> {
        let (rows, d) = shapes::scatter_rows(delta, ids, table)?;
        let sums = super::scatter_rows(values(delta)?, ids, rows, d)?;
        let table = values_mut(table)?;
        if accumulate {
            table.iter_mut().zip(&sums).for_each(|(t, s)| *t += s);
        } else {
            table.copy_from_slice(&sums);
        }
        Ok(())
    }
}
