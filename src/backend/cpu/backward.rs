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
    lane_sum_f64, lane_sum_pairs_f64, rows_per_task, split_sequences, with_wide_simd,
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
    avx512 fn layer_norm_backward_rows => layer_norm_backward_rows_portable(x: &[f32], gamma: &[f32], eps: f32, dy: &[f32], dx: &mut [f32], normed: &mut [f32])
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
    let mut d_qkv = vec![0.0f32; tokens * width];
    let blocks = split_sequences(&mut d_qkv, layout, width);
    blocks.into_par_iter().enumerate().for_each(|(s, d_block)| {
        let rows = layout.range(s);
        let len = rows.len();
        let at = |t: usize, c: usize| (rows.start + t) * width + c;
        let mut p = vec![0.0f32; len * len];
        // M and M ⊙ P of the head, each mask entry hashed once rather than once per use.
        let mut mask = vec![1.0f32; len * len];
        let mut masked_p = vec![0.0f32; len * len];
        for h in 0..heads {
            let (qc, kc, vc) = (h * hd, out_width + h * hd, 2 * out_width + h * hd);
            softmax_probabilities(qkv, spec, &rows, (qc, kc), &mut p);
            if let Some(m) = dropout {
                for (i, row) in mask.chunks_exact_mut(len).enumerate() {
                    let query_row = ((rows.start + i) * heads + h) as u64;
                    for (j, f) in row.iter_mut().enumerate() {
                        *f = m.factor(query_row, j as u64);
                    }
                }
            }
            for ((mp, &p), &f) in masked_p.iter_mut().zip(&p).zip(&mask) {
                *mp = p * f;
            }
            let d_o = |t: usize, e: usize| d_out[(rows.start + t) * out_width + h * hd + e];
            // dV[j] = Σ_i M[i, j]·P[i, j]·dO[i]
            for j in 0..len {
                for e in 0..hd {
                    let v: f32 = (0..len).map(|i| masked_p[i * len + j] * d_o(i, e)).sum();
                    d_block[j * width + vc + e] = v;
                }
            }
            // dS[i, j] = P[i, j]·(dP[i, j] − Σ_k P[i, k]·dP[i, k]), dP[i, j] = M[i, j]·dO[i]·V[j]
            let mut ds = vec![0.0f32; len * len];
            for i in 0..len {
                let dp: Vec<f32> = (0..len)
                    .map(|j| {
                        let dot: f32 = (0..hd).map(|e| d_o(i, e) * qkv[at(j, vc + e)]).sum();
                        mask[i * len + j] * dot
                    })
                    .collect();
                let centre: f64 = (0..len).map(|j| p[i * len + j] as f64 * dp[j] as f64).sum();
                for j in 0..len {
                    ds[i * len + j] = (p[i * len + j] as f64 * (dp[j] as f64 - centre)) as f32;
                }
            }
            // dQ[i] = scale·Σ_j dS[i, j]·K[j];  dK[j] = scale·Σ_i dS[i, j]·Q[i]
            for i in 0..len {
                for e in 0..hd {
                    let dq: f32 = (0..len).map(|j| ds[i * len + j] * qkv[at(j, kc + e)]).sum();
                    let dk: f32 = (0..len).map(|j| ds[j * len + i] * qkv[at(j, qc + e)]).sum();
                    d_block[i * width + qc + e] = spec.scale * dq;
                    d_block[i * width + kc + e] = spec.scale * dk;
                }
            }
        }
    });
    Ok(d_qkv)
}

/// Bidirectional attention with its probabilities dropped by `mask` (transformers' attention
/// dropout in train mode) over packed sequences: `out: [tokens, heads·head_dim]`, per sequence
/// and head `O = (M ⊙ P)·V` with `P = softmax(scale·Q·Kᵀ)` and
/// `M[i, j] = mask.factor(t_i·heads + h, j)` for the packed row `t_i` of query `i` and key
/// position `j` in the sequence. Computes `P` as [`attention_backward`] recomputes it: a
/// training-step reference, not the fast path of inference.
pub fn attention_dropout(
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    mask: &DropoutMask,
) -> Result<Vec<f32>> {
    check_bidirectional("attention_dropout", spec)?;
    let (heads, hd) = (spec.heads, spec.head_dim);
    let (width, out_width) = (spec.qkv_width(), heads * hd);
    let tokens = layout.num_tokens();
    assert_eq!(qkv.len(), tokens * width, "attention_dropout: qkv shape");
    let mut out = vec![0.0f32; tokens * out_width];
    let blocks = split_sequences(&mut out, layout, out_width);
    blocks.into_par_iter().enumerate().for_each(|(s, block)| {
        let rows = layout.range(s);
        let len = rows.len();
        let mut p = vec![0.0f32; len * len];
        for h in 0..heads {
            let (qc, kc, vc) = (h * hd, out_width + h * hd, 2 * out_width + h * hd);
            softmax_probabilities(qkv, spec, &rows, (qc, kc), &mut p);
            for i in 0..len {
                let query_row = ((rows.start + i) * heads + h) as u64;
                for (j, pj) in p[i * len..(i + 1) * len].iter_mut().enumerate() {
                    *pj *= mask.factor(query_row, j as u64);
                }
                for e in 0..hd {
                    block[i * out_width + h * hd + e] = (0..len)
                        .map(|j| p[i * len + j] * qkv[(rows.start + j) * width + vc + e])
                        .sum();
                }
            }
        }
    });
    Ok(out)
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

/// `p = softmax(scale·Q·Kᵀ)` row by row, `[len, len]`, for the packed sequence `rows` of `qkv`
/// and the head whose queries and keys start at columns `(qc, kc)`.
fn softmax_probabilities(
    qkv: &[f32],
    spec: &AttentionSpec,
    rows: &Range<usize>,
    (qc, kc): (usize, usize),
    p: &mut [f32],
) {
    let (width, hd, len) = (spec.qkv_width(), spec.head_dim, rows.len());
    let at = |t: usize, c: usize| (rows.start + t) * width + c;
    for i in 0..len {
        let row = &mut p[i * len..(i + 1) * len];
        for (j, r) in row.iter_mut().enumerate() {
            let dot: f32 = (0..hd)
                .map(|e| qkv[at(i, qc + e)] * qkv[at(j, kc + e)])
                .sum();
            *r = spec.scale * dot;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for r in row.iter_mut() {
            *r = (*r - max).exp();
            sum += *r as f64;
        }
        row.iter_mut().for_each(|r| *r = (*r as f64 / sum) as f32);
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
        let grad = super::attention_backward(values(qkv)?, layout, spec, values(d_out)?, None)?;
        values_mut(d_qkv)?.copy_from_slice(&grad);
        Ok(())
    }

    pub(in crate::backend::cpu) fn attention_dropout(
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        mask: &DropoutMask,
        out: &mut Tensor,
    ) -> Result<()> {
        shapes::attention(qkv, layout, spec, out)?;
        let context = super::attention_dropout(values(qkv)?, layout, spec, mask)?;
        values_mut(out)?.copy_from_slice(&context);
        Ok(())
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
        let grad =
            super::attention_backward(values(qkv)?, layout, spec, values(d_out)?, Some(mask))?;
        values_mut(d_qkv)?.copy_from_slice(&grad);
        Ok(())
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
