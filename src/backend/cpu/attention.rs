//! Softmax attention on the CPU, flash-style: for each block of [`QUERY_BLOCK`] queries and each
//! head, the visible keys stream through in blocks of [`KEY_BLOCK`]; the block's scores
//! `S = Q·Kᵀ` and its share of the output `P·V` are two small GEMMs on the packed GEMM's
//! register-tiled microkernel ([`gemm_packed::with_microkernel`]), and the softmax is kept
//! online per query row (running maximum and sum, the output rescaled when the maximum grows),
//! so no row of scores longer than a key block is ever stored. Query blocks of every sequence
//! run in parallel, each owning its rows of the output, so a single long sequence (a decoder's
//! prompt) still uses every core.

use rayon::prelude::*;

use super::activation;
use super::common::{split_sequences, values, values_mut};
use super::gemm_packed::{self, Microkernel, TileProgram};
use crate::backend::{shapes, AttentionSpec, SeqLayout, Tensor};
use crate::error::Result;

/// Queries per task: a multiple of both microkernels' tile heights (6 and 8), few enough that
/// a 128-token sequence still makes several tasks.
const QUERY_BLOCK: usize = 48;
/// Keys per streamed block: a multiple of both tile widths (16 and 32); its scores and
/// packed K, V stay in L1 next to the query panels.
const KEY_BLOCK: usize = 64;

/// Keys `[first, end)` that query `i` of a sequence of `len` tokens may attend to: the
/// contiguous range [`AttentionSpec::allows`] describes.
fn visible_keys(spec: &AttentionSpec, i: usize, len: usize) -> (usize, usize) {
    let end = if spec.causal { i + 1 } else { len };
    match spec.window {
        Some(w) => {
            let first = (i + 1).saturating_sub(w);
            let end = end.min(i + w);
            (first, end.max(first))
        }
        None => (0, end),
    }
}

/// `out: [tokens, heads·head_dim]` from the packed `qkv: [tokens, spec.qkv_width()]`.
pub(super) fn attention(
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &mut Tensor,
) -> Result<()> {
    shapes::attention(qkv, layout, spec, out)?;
    let qkv = values(qkv)?;
    let out_width = spec.heads * spec.head_dim;
    let mut tasks = Vec::new();
    for (s, sequence) in split_sequences(values_mut(out)?, layout, out_width)
        .into_iter()
        .enumerate()
    {
        for (b, rows) in sequence.chunks_mut(QUERY_BLOCK * out_width).enumerate() {
            tasks.push(QueryBlock {
                sequence: s,
                first_query: b * QUERY_BLOCK,
                out_rows: rows,
            });
        }
    }
    gemm_packed::with_microkernel(Flash {
        qkv,
        layout,
        spec,
        tasks,
    });
    Ok(())
}

/// The queries `first_query..` of a sequence and their rows of the output.
struct QueryBlock<'a> {
    sequence: usize,
    first_query: usize,
    out_rows: &'a mut [f32],
}

/// Every query block, on the microkernel [`gemm_packed::with_microkernel`] picks.
struct Flash<'a> {
    qkv: &'a [f32],
    layout: &'a SeqLayout,
    spec: &'a AttentionSpec,
    tasks: Vec<QueryBlock<'a>>,
}

impl TileProgram for Flash<'_> {
    fn run<const MR: usize, const NR: usize>(self, kernel: Microkernel<MR, NR>) {
        let Flash {
            qkv,
            layout,
            spec,
            tasks,
        } = self;
        tasks.into_par_iter().for_each(|task| {
            let block = Block::<MR, NR>::new(kernel, qkv, layout, spec, &task);
            block.run(task.out_rows);
        });
    }
}

/// One query block's work: where its heads read `qkv`, and its scratch (packed panels, scores,
/// the online softmax's state and the unnormalised output).
struct Block<'a, const MR: usize, const NR: usize> {
    kernel: Microkernel<MR, NR>,
    qkv: &'a [f32],
    spec: &'a AttentionSpec,
    /// First row of the sequence in `qkv`, its length, and the block's first query.
    row0: usize,
    len: usize,
    first_query: usize,
    queries: usize,
    /// The union of the block's visible keys.
    keys: std::ops::Range<usize>,
}

impl<'a, const MR: usize, const NR: usize> Block<'a, MR, NR> {
    fn new(
        kernel: Microkernel<MR, NR>,
        qkv: &'a [f32],
        layout: &SeqLayout,
        spec: &'a AttentionSpec,
        task: &QueryBlock<'_>,
    ) -> Self {
        let rows = layout.range(task.sequence);
        let queries = task.out_rows.len() / (spec.heads * spec.head_dim);
        let first = visible_keys(spec, task.first_query, rows.len()).0;
        let end = visible_keys(spec, task.first_query + queries - 1, rows.len()).1;
        Block {
            kernel,
            qkv,
            spec,
            row0: rows.start,
            len: rows.len(),
            first_query: task.first_query,
            queries,
            keys: first..end.max(first),
        }
    }

    /// Column `column..column + width` of token `token` of the sequence.
    fn at(&self, token: usize, column: usize, width: usize) -> &'a [f32] {
        let start = (self.row0 + token) * self.spec.qkv_width() + column;
        &self.qkv[start..start + width]
    }

    fn run(&self, out_rows: &mut [f32]) {
        let (hd, heads, kv_heads) = (self.spec.head_dim, self.spec.heads, self.spec.kv_heads);
        let out_width = heads * hd;
        let (panels, v_panels) = (self.queries.div_ceil(MR), hd.div_ceil(NR));
        let hd_padded = v_panels * NR;
        let mut q = vec![0.0f32; panels * MR * hd];
        let mut k = vec![0.0f32; KEY_BLOCK * hd];
        let mut v = vec![0.0f32; KEY_BLOCK * hd_padded];
        let mut scores = vec![0.0f32; panels * MR * KEY_BLOCK];
        let mut p = vec![0.0f32; panels * MR * KEY_BLOCK];
        let mut acc = vec![0.0f32; panels * MR * hd_padded];
        let (mut max, mut sum) = (vec![0.0f32; self.queries], vec![0.0f32; self.queries]);
        for h in 0..heads {
            let kv = h / (heads / kv_heads);
            let q_col = h * hd;
            let k_col = heads * hd + kv * hd;
            let v_col = (heads + kv_heads) * hd + kv * hd;
            // Q's row panels: panel `pi`, column `c` at `(pi·hd + c)·MR`; rows past the block 0.
            for r in 0..self.queries {
                let row = self.at(self.first_query + r, q_col, hd);
                let (pi, rr) = (r / MR, r % MR);
                for (c, &x) in row.iter().enumerate() {
                    q[(pi * hd + c) * MR + rr] = x;
                }
            }
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            acc.fill(0.0);
            for kb in self.keys.clone().step_by(KEY_BLOCK) {
                let kn = KEY_BLOCK.min(self.keys.end - kb);
                let k_panels = kn.div_ceil(NR);
                // Kᵀ's column panels: panel `j`, depth `c` at `(j·hd + c)·NR`; keys past `kn` 0.
                k[..k_panels * NR * hd].fill(0.0);
                for key in 0..kn {
                    let (j, jj) = (key / NR, key % NR);
                    for (c, &x) in self.at(kb + key, k_col, hd).iter().enumerate() {
                        k[(j * hd + c) * NR + jj] = x;
                    }
                }
                // V's column panels: panel `j`, key `c` at `(j·kn + c)·NR`; columns past hd 0.
                for key in 0..kn {
                    let row = self.at(kb + key, v_col, hd);
                    for j in 0..v_panels {
                        let dst = &mut v[(j * kn + key) * NR..][..NR];
                        let cols = j * NR..((j + 1) * NR).min(hd);
                        dst[..cols.len()].copy_from_slice(&row[cols.clone()]);
                        dst[cols.len()..].fill(0.0);
                    }
                }
                // S = Q·Kᵀ for the block, tile by tile.
                for pi in 0..panels {
                    let a = &q[pi * hd * MR..][..hd * MR];
                    for j in 0..k_panels {
                        let mut tile = [[0.0f32; NR]; MR];
                        // SAFETY: the kernel was chosen for this CPU; `a` and `b` hold `hd`
                        // columns of MR and NR values.
                        unsafe { (self.kernel)(hd, a, &k[j * hd * NR..][..hd * NR], &mut tile) };
                        for (rr, t) in tile.iter().enumerate() {
                            let row = &mut scores[(pi * MR + rr) * KEY_BLOCK..][..KEY_BLOCK];
                            let width = NR.min(kn - j * NR);
                            row[j * NR..j * NR + width].copy_from_slice(&t[..width]);
                        }
                    }
                }
                // The online softmax, row by row, into P's row panels (depth `kn`).
                for r in 0..self.queries {
                    let (first, end) = visible_keys(self.spec, self.first_query + r, self.len);
                    let (first, end) = (first.max(kb) - kb, end.min(kb + kn).saturating_sub(kb));
                    let row = &mut scores[r * KEY_BLOCK..][..kn];
                    let (pi, rr) = (r / MR, r % MR);
                    let mut weights = |row: &[f32]| {
                        for (c, &x) in row.iter().enumerate() {
                            p[(pi * kn + c) * MR + rr] = x;
                        }
                    };
                    if first >= end {
                        row.fill(0.0);
                        weights(row);
                        continue;
                    }
                    let new_max = activation::online_softmax_block(
                        &mut row[first..end],
                        self.spec.scale,
                        &mut max[r],
                        &mut sum[r],
                    );
                    if let Some(rescale) = new_max {
                        acc[r * hd_padded..][..hd_padded]
                            .iter_mut()
                            .for_each(|o| *o *= rescale);
                    }
                    row[..first].fill(0.0);
                    row[end..].fill(0.0);
                    weights(row);
                }
                // O += P·V, tile by tile.
                for pi in 0..panels {
                    let a = &p[pi * kn * MR..][..kn * MR];
                    for j in 0..v_panels {
                        let mut tile = [[0.0f32; NR]; MR];
                        // SAFETY: as above, with `kn` columns.
                        unsafe { (self.kernel)(kn, a, &v[j * kn * NR..][..kn * NR], &mut tile) };
                        for (rr, t) in tile.iter().enumerate() {
                            let row = &mut acc[(pi * MR + rr) * hd_padded + j * NR..][..NR];
                            row.iter_mut().zip(t).for_each(|(o, t)| *o += t);
                        }
                    }
                }
            }
            for (r, o) in out_rows.chunks_exact_mut(out_width).enumerate() {
                // A query that sees no key (an empty window) yields zeros.
                let inv = if sum[r] > 0.0 { 1.0 / sum[r] } else { 0.0 };
                o[q_col..q_col + hd]
                    .iter_mut()
                    .zip(&acc[r * hd_padded..][..hd])
                    .for_each(|(o, a)| *o = a * inv);
            }
        }
    }
}
