//! The tangent-kernel ops on the CPU: a layer's Gram contraction as two faer GEMMs and one fused
//! Hadamard pass; its sequence forms (token Grams summed per sample pair, embedding rows matched
//! by id, per-sample layer gradients); and the counter-based JL projection generated tile by tile
//! into a GEMM operand.

use std::ops::Range;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::common::{values, values_mut};
use super::gemm::{gemm, gemm_in_task, Operand};
use crate::backend::{shapes, JlSpec, SeqFactors, Tensor, TokenPairing};
use crate::error::Result;

pub(super) fn ntk_contract(
    delta_rows: &Tensor,
    delta_cols: &Tensor,
    acts: Option<(&Tensor, &Tensor)>,
    offset: f32,
    cols: Range<usize>,
    out: &mut Tensor,
) -> Result<()> {
    let n_r = shapes::ntk_contract(delta_rows, delta_cols, acts, &cols, out)?;
    let n_c = cols.len();
    let columns = |t| column_operand(t, &cols);
    let p = delta_rows.shape()[1];
    let row_grads = Operand::plain(values(delta_rows)?, n_r, p);
    let Some((a_r, a_c)) = acts else {
        let dc = &values(delta_cols)?[cols.start * p..cols.end * p];
        deep_gram(values_mut(out)?, (values(delta_rows)?, n_r), (dc, n_c), p);
        return Ok(());
    };
    let mut grad_gram = vec![0.0f32; n_r * n_c];
    gemm(&mut grad_gram, row_grads, columns(delta_cols)?, false);
    let mut act_gram = vec![0.0f32; n_r * n_c];
    let q = a_r.shape()[1];
    gemm(
        &mut act_gram,
        Operand::plain(values(a_r)?, n_r, q),
        columns(a_c)?,
        false,
    );
    let row = n_c.max(1);
    values_mut(out)?
        .par_chunks_mut(row)
        .zip(grad_gram.par_chunks(row))
        .zip(act_gram.par_chunks(row))
        .for_each(|((o, g), a)| {
            for ((o, g), a) in o.iter_mut().zip(g).zip(a) {
                *o += g * (a + offset);
            }
        });
    Ok(())
}

/// Entries of one token Gram chunk (`[row tokens, column tokens]`), bounding the two Grams a
/// Linear term holds at once to 16 MiB each.
const GRAM_CHUNK: usize = 1 << 22;

pub(super) fn ntk_contract_seq(
    rows: SeqFactors<'_>,
    cols: SeqFactors<'_>,
    pairing: TokenPairing<'_>,
    samples: Range<usize>,
    out: &mut Tensor,
) -> Result<()> {
    let (p, q) = shapes::ntk_contract_seq(&rows, &cols, &pairing, &samples, out)?;
    let (n_r, n_c) = (rows.layout.num_sequences(), samples.len());
    if n_r == 0 || n_c == 0 {
        return Ok(());
    }
    let r_starts = rows.layout.starts();
    // Column token ranges relative to the first column token of `samples`.
    let c_first = cols.layout.starts()[samples.start];
    let c_ranges: Vec<Range<usize>> = samples
        .clone()
        .map(|j| {
            let r = cols.layout.range(j);
            r.start - c_first..r.end - c_first
        })
        .collect();
    let col_tokens = c_first..cols.layout.starts()[samples.end];
    let t_c = col_tokens.len();
    let (dr, dc) = (values(rows.delta)?, values(cols.delta)?);
    let dc = &dc[col_tokens.start * p..col_tokens.end * p];
    let out = values_mut(out)?;

    if let TokenPairing::Embedding {
        rows: ids_r,
        cols: ids_c,
    } = pairing
    {
        // A sample's gradient of an embedding table is its δ rows summed per id, so a pair's
        // product is one dot per id both samples hold: a merge of two sorted id lists instead of
        // comparing every token pair (token types and positions match almost every pair).
        let row_ids: Vec<IdRows> = (0..n_r)
            .into_par_iter()
            .map(|i| IdRows::gather(rows.layout.range(i), ids_r, dr, p))
            .collect();
        let dc_all = values(cols.delta)?;
        let col_ids: Vec<IdRows> = samples
            .clone()
            .into_par_iter()
            .map(|j| IdRows::gather(cols.layout.range(j), ids_c, dc_all, p))
            .collect();
        out.par_chunks_mut(n_c).zip(&row_ids).for_each(|(o, r)| {
            for (o, c) in o.iter_mut().zip(&col_ids) {
                *o += r.dot(c, p) as f32;
            }
        });
        return Ok(());
    }
    let TokenPairing::Linear {
        rows: a_r,
        cols: a_c,
        offset,
    } = pairing
    else {
        unreachable!("the embedding form returned above")
    };
    let (ar, ac) = (values(a_r)?, values(a_c)?);
    let ac = &ac[col_tokens.start * q..col_tokens.end * q];
    let max_row_tokens = (GRAM_CHUNK / t_c.max(1)).max(1);
    let mut first = 0;
    while first < n_r {
        // The row samples whose tokens fit one chunk (at least one sample, however long).
        let mut last = first + 1;
        while last < n_r && r_starts[last + 1] - r_starts[first] <= max_row_tokens {
            last += 1;
        }
        let tokens = r_starts[first]..r_starts[last];
        let t_r = tokens.len();
        let mut gram = vec![0.0f32; t_r * t_c];
        gemm(
            &mut gram,
            Operand::plain(&dr[tokens.start * p..tokens.end * p], t_r, p),
            Operand::transposed(dc, t_c, p),
            false,
        );
        let mut act_gram = vec![0.0f32; t_r * t_c];
        gemm(
            &mut act_gram,
            Operand::plain(&ar[tokens.start * q..tokens.end * q], t_r, q),
            Operand::transposed(ac, t_c, q),
            false,
        );
        gram.par_iter_mut()
            .zip(&act_gram)
            .for_each(|(g, a)| *g *= a + offset);
        out[first * n_c..last * n_c]
            .par_chunks_mut(n_c)
            .zip(first..last)
            .for_each(|(o, i)| {
                let ts = r_starts[i] - tokens.start..r_starts[i + 1] - tokens.start;
                for (o, cs) in o.iter_mut().zip(&c_ranges) {
                    let sum: f64 = ts
                        .clone()
                        .flat_map(|t| &gram[t * t_c + cs.start..t * t_c + cs.end])
                        .map(|&v| v as f64)
                        .sum();
                    *o += sum as f32;
                }
            });
        first = last;
    }
    Ok(())
}

/// One sample's δ rows of an embedding table summed per distinct id, ids ascending.
struct IdRows {
    ids: Vec<u32>,
    /// `[ids.len(), p]`, row-major.
    sums: Vec<f32>,
}

impl IdRows {
    fn gather(tokens: Range<usize>, ids: &[u32], delta: &[f32], p: usize) -> Self {
        let mut order: Vec<usize> = tokens.collect();
        order.sort_by_key(|&t| ids[t]);
        let mut out = IdRows {
            ids: Vec::new(),
            sums: Vec::new(),
        };
        for t in order {
            let row = &delta[t * p..(t + 1) * p];
            if out.ids.last() == Some(&ids[t]) {
                let last = out.sums.len() - p;
                out.sums[last..]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(s, v)| *s += v);
            } else {
                out.ids.push(ids[t]);
                out.sums.extend_from_slice(row);
            }
        }
        out
    }

    /// `⟨g_self, g_other⟩`: the dot products of the rows whose ids both samples hold.
    fn dot(&self, other: &IdRows, p: usize) -> f64 {
        let (mut a, mut b, mut sum) = (0, 0, 0.0f64);
        while a < self.ids.len() && b < other.ids.len() {
            match self.ids[a].cmp(&other.ids[b]) {
                std::cmp::Ordering::Less => a += 1,
                std::cmp::Ordering::Greater => b += 1,
                std::cmp::Ordering::Equal => {
                    sum += dot(
                        &self.sums[a * p..(a + 1) * p],
                        &other.sums[b * p..(b + 1) * p],
                    );
                    a += 1;
                    b += 1;
                }
            }
        }
        sum
    }
}

/// An f64-accumulated dot product in eight independent lanes, so that it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] as f64 * y[l] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

pub(super) fn ntk_sample_gradients(
    factors: SeqFactors<'_>,
    acts: &Tensor,
    offset: f32,
    out: &mut Tensor,
) -> Result<()> {
    let (p, q) = shapes::ntk_sample_gradients(&factors, acts, offset, out)?;
    let (delta, acts) = (values(factors.delta)?, values(acts)?);
    let bias_input = offset.sqrt();
    let width = p * (q + 1);
    // One sample per task: each GEMM is too small to split across cores.
    let out = values_mut(out)?.par_chunks_exact_mut(width.max(1));
    out.enumerate().for_each(|(i, g)| {
        let tokens = factors.layout.range(i);
        // `[a_t, √offset]` per token: the bias column comes out of the same GEMM.
        let extended: Vec<f32> = tokens
            .clone()
            .flat_map(|t| {
                let a = &acts[t * q..(t + 1) * q];
                a.iter().copied().chain(std::iter::once(bias_input))
            })
            .collect();
        gemm_in_task(
            g,
            Operand::transposed(&delta[tokens.start * p..tokens.end * p], tokens.len(), p),
            Operand::plain(&extended, tokens.len(), q + 1),
            false,
        );
    });
    Ok(())
}

/// Depth of the contracted dimension per faer GEMM in [`deep_gram`].
const DEPTH_PANEL: usize = 4096;

/// `out += rows·colsᵀ` for row-major `[n_r, width]` and `[n_c, width]` factors, the contraction
/// cut into panels of [`DEPTH_PANEL`] columns: the materialised sequence form contracts
/// per-sample gradients of ~10⁶ entries between a few dozen samples, a shape one faer GEMM runs
/// tens of times slower than the same work in panels.
fn deep_gram(out: &mut [f32], rows: (&[f32], usize), cols: (&[f32], usize), width: usize) {
    let ((rows, n_r), (cols, n_c)) = (rows, cols);
    if width == 0 || n_r == 0 || n_c == 0 {
        return;
    }
    let rows = MatRef::from_row_major_slice(rows, n_r, width);
    let cols = MatRef::from_row_major_slice(cols, n_c, width);
    let mut out = MatMut::from_row_major_slice_mut(out, n_r, n_c);
    for start in (0..width).step_by(DEPTH_PANEL) {
        let depth = DEPTH_PANEL.min(width - start);
        matmul(
            out.as_mut(),
            Accum::Add,
            rows.subcols(start, depth),
            cols.subcols(start, depth).transpose(),
            1.0f32,
            Par::rayon(0),
        );
    }
}

/// Rows `cols` of a row-major `[_, width]` factor as a transposed GEMM operand.
fn column_operand<'a>(t: &'a Tensor, cols: &Range<usize>) -> Result<Operand<'a>> {
    let width = t.shape()[1];
    Ok(Operand::transposed(
        &values(t)?[cols.start * width..cols.end * width],
        cols.len(),
        width,
    ))
}

/// Columns of the projection generated per GEMM: a `[TILE, dim]` slab of `P`ᵀ stays in cache
/// for moderate `dim` and the generation cost is shared by every row of `x`.
const TILE: usize = 1024;

pub(super) fn jl_project(
    x: &Tensor,
    spec: &JlSpec,
    accumulate: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (n, d) = shapes::jl_project(x, spec.dim, out)?;
    let k = spec.dim;
    let (x, out) = (values(x)?, values_mut(out)?);
    if !accumulate {
        out.fill(0.0);
    }
    if n == 0 || d == 0 || k == 0 {
        return Ok(());
    }
    // Rows of `x` split across the cores, each slab's GEMM on one thread per part: faer runs
    // these shapes (a few hundred rows, k in the hundreds) on one thread.
    let part_rows = n.div_ceil(rayon::current_num_threads()).max(1);
    let mut slab = vec![0.0f32; TILE.min(d) * k];
    for start in (0..d).step_by(TILE) {
        let width = TILE.min(d - start);
        // Row c of the slab is column `start + c` of P: entries (j, start + c) for every j.
        slab[..width * k]
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(c, row)| {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = spec.entry(j, start + c));
            });
        let p_t = MatRef::from_row_major_slice(&slab[..width * k], width, k);
        out.par_chunks_mut(part_rows * k)
            .zip(x.par_chunks(part_rows * d))
            .for_each(|(out, x)| {
                let rows = out.len() / k;
                matmul(
                    MatMut::from_row_major_slice_mut(out, rows, k),
                    Accum::Add,
                    MatRef::from_row_major_slice(x, rows, d).subcols(start, width),
                    p_t,
                    1.0f32,
                    Par::Seq,
                );
            });
    }
    Ok(())
}
