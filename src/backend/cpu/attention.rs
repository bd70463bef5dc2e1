//! Softmax attention on the CPU, blocked so that both products run on the packed GEMM's
//! register-tiled microkernel ([`gemm_packed::with_microkernel`]: 8 × 32 on AVX-512, 6 × 16 on
//! AVX2 with FMA).
//!
//! A task is one block of [`PANELS_PER_BLOCK`] row panels of queries (64 on AVX-512, 48 on
//! AVX2) of one sequence, with every head; blocks of every sequence run in parallel, each owning
//! its rows of the output, so a single long sequence (a decoder's prompt) still uses every core.
//! Within a task, for each key/value head:
//!
//! 1. `Kᵀ` over the keys the block can see, and `V`, are packed once into the microkernel's
//!    `NR`-wide panels and shared by the query heads of a grouped-query group.
//! 2. For each query head, `scale·Q` is packed into `MR`-row panels and the scores
//!    `S = scale·Q·Kᵀ` are computed tile by tile — only the key panels a row panel can see, so a
//!    causal or windowed mask skips the tiles it hides — into a score block that stays in L2.
//! 3. Row panel by row panel, each row's visible scores become `exp(s − max)` (vectorised,
//!    [`activation::exp_from_max`]) and are packed as the `MR`-row panel of `P`; `P·V` runs on the
//!    microkernel over just the panel's visible keys, and the softmax division is applied to the
//!    output tile (`hd` values a row) instead of to the weights (one per key).
//!
//! Scores are kept for the block's whole key range (two passes, no online rescaling): at the
//! model shapes (up to 64 queries × ~600 keys) the block is a few hundred KiB at most. Scratch
//! buffers live per rayon worker and are only resized, never allocated per head or tile.
//!
//! The faer path this replaced (two faer GEMMs per block and head, the softmax normalising
//! every weight) ran the bench's attention cases 1.5–2.6× slower; see BENCHMARKS.md.

use rayon::prelude::*;

use super::activation;
use super::common::{split_sequences, values, values_mut};
use super::gemm_packed::{self, Microkernel, TileProgram};
use crate::backend::{shapes, AttentionSpec, SeqLayout, Tensor};
use crate::error::Result;

/// Row panels of queries per task: 64 queries on the AVX-512 tile, 48 on the AVX2 one — enough
/// for the packing of `K` and `V` (once per task) to be small against the products, few enough
/// that a 128-token sequence still makes two or three tasks.
const PANELS_PER_BLOCK: usize = 8;

/// Keys `[first, end)` that query `i` of a sequence of `len` tokens may attend to: the
/// contiguous range [`AttentionSpec::allows`] describes. Both ends are non-decreasing in `i`,
/// so a run of queries sees the keys from its first query's `first` to its last query's `end`.
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
    gemm_packed::with_microkernel(Attention {
        qkv: values(qkv)?,
        layout,
        spec,
        out: values_mut(out)?,
    });
    Ok(())
}

/// The whole op, run on the microkernel [`gemm_packed::with_microkernel`] picks.
struct Attention<'a> {
    qkv: &'a [f32],
    layout: &'a SeqLayout,
    spec: &'a AttentionSpec,
    out: &'a mut [f32],
}

impl TileProgram for Attention<'_> {
    fn run<const MR: usize, const NR: usize>(self, kernel: Microkernel<MR, NR>) {
        blocked(kernel, self.qkv, self.layout, self.spec, self.out)
    }
}

fn blocked<const MR: usize, const NR: usize>(
    kernel: Microkernel<MR, NR>,
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &mut [f32],
) {
    let out_width = spec.heads * spec.head_dim;
    if out_width == 0 {
        return;
    }
    let block = PANELS_PER_BLOCK * MR;
    let mut tasks = Vec::new();
    for (s, sequence) in split_sequences(out, layout, out_width)
        .into_iter()
        .enumerate()
    {
        for (b, rows) in sequence.chunks_mut(block * out_width).enumerate() {
            tasks.push((s, b * block, rows));
        }
    }
    tasks.into_par_iter().for_each_init(
        Scratch::default,
        |scratch, (s, first_query, out_rows)| {
            let task = QueryBlock::new(qkv, layout, spec, s, first_query, out_rows.len());
            task.run(kernel, scratch, out_rows);
        },
    );
}

/// A worker's buffers, grown to the largest task it has run.
#[derive(Default)]
struct Scratch {
    /// `scale·Q` of one head in `MR`-row panels: panel `pi`, column `c` at `(pi·hd + c)·MR`.
    q: Vec<f32>,
    /// `Kᵀ` of one key/value head in `NR`-key panels: panel `j`, column `c` at `(j·hd + c)·NR`.
    k: Vec<f32>,
    /// `V` in `NR`-column panels: panel `j`, key `t` at `(j·keys + t)·NR`.
    v: Vec<f32>,
    /// The scores, then `exp(s − max)`: query `r`, key `t` at `r·keys_padded + t`.
    scores: Vec<f32>,
    /// One row panel of `P` over its visible keys: key `t` at `t·MR`.
    p: Vec<f32>,
    /// `1 / Σ exp(s − max)` per query (0 where a query sees no key).
    inv_sums: Vec<f32>,
}

/// `buffer[..len]`, grown (with zeros) if it is shorter.
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// The queries `first_query..first_query + queries` of one sequence and the keys they see.
struct QueryBlock<'a> {
    qkv: &'a [f32],
    spec: &'a AttentionSpec,
    /// The sequence's first row in `qkv` and its length.
    row0: usize,
    len: usize,
    first_query: usize,
    queries: usize,
    /// The first key any query of the block sees; key offsets below count from it.
    keys_first: usize,
    /// Keys from `keys_first` to the last query's end.
    keys: usize,
}

impl<'a> QueryBlock<'a> {
    fn new(
        qkv: &'a [f32],
        layout: &SeqLayout,
        spec: &'a AttentionSpec,
        sequence: usize,
        first_query: usize,
        out_values: usize,
    ) -> Self {
        let rows = layout.range(sequence);
        let queries = out_values / (spec.heads * spec.head_dim);
        let keys_first = visible_keys(spec, first_query, rows.len()).0;
        let keys_end = visible_keys(spec, first_query + queries - 1, rows.len()).1;
        QueryBlock {
            qkv,
            spec,
            row0: rows.start,
            len: rows.len(),
            first_query,
            queries,
            keys_first,
            keys: keys_end.saturating_sub(keys_first),
        }
    }

    /// Columns `column..column + hd` of the sequence's token `token`.
    fn head_row(&self, token: usize, column: usize) -> &'a [f32] {
        let start = (self.row0 + token) * self.spec.qkv_width() + column;
        &self.qkv[start..start + self.spec.head_dim]
    }

    /// Visible keys `[first, end)` of the block's query `r`, as offsets from `keys_first`.
    fn visible(&self, r: usize) -> (usize, usize) {
        let (first, end) = visible_keys(self.spec, self.first_query + r, self.len);
        (first - self.keys_first, end - self.keys_first)
    }

    /// Visible keys of row panel `pi`: its first query's first to its last query's end.
    fn panel_keys<const MR: usize>(&self, pi: usize) -> (usize, usize) {
        let last = ((pi + 1) * MR).min(self.queries) - 1;
        (self.visible(pi * MR).0, self.visible(last).1)
    }

    fn run<const MR: usize, const NR: usize>(
        &self,
        kernel: Microkernel<MR, NR>,
        scratch: &mut Scratch,
        out_rows: &mut [f32],
    ) {
        let spec = self.spec;
        let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
        let group = heads / kv_heads;
        let out_width = heads * hd;
        let (panels, k_panels, v_panels) = (
            self.queries.div_ceil(MR),
            self.keys.div_ceil(NR),
            hd.div_ceil(NR),
        );
        let keys_padded = k_panels * NR;
        let Scratch {
            q,
            k,
            v,
            scores,
            p,
            inv_sums,
        } = scratch;
        let q = sized(q, panels * hd * MR);
        let k = sized(k, k_panels * hd * NR);
        let v = sized(v, v_panels * self.keys * NR);
        let scores = sized(scores, panels * MR * keys_padded);
        let p = sized(p, self.keys * MR);
        let inv_sums = sized(inv_sums, panels * MR);
        for kv in 0..kv_heads {
            self.pack_k::<NR>(heads * hd + kv * hd, k);
            self.pack_v::<NR>((heads + kv_heads) * hd + kv * hd, v);
            for h in kv * group..(kv + 1) * group {
                let q_col = h * hd;
                self.pack_q::<MR>(q_col, q);
                // S = scale·Q·Kᵀ over the key panels each row panel sees.
                for pi in 0..panels {
                    let (lo, hi) = self.panel_keys::<MR>(pi);
                    let a = &q[pi * hd * MR..][..hd * MR];
                    for j in lo / NR..hi.div_ceil(NR) {
                        let mut tile = [[0.0f32; NR]; MR];
                        // SAFETY: `with_microkernel` chose the kernel for this CPU; `a` and the
                        // key panel hold `hd` columns of MR and NR values.
                        unsafe { kernel(hd, a, &k[j * hd * NR..][..hd * NR], &mut tile) };
                        for (rr, t) in tile.iter().enumerate() {
                            scores[(pi * MR + rr) * keys_padded + j * NR..][..NR]
                                .copy_from_slice(t);
                        }
                    }
                }
                for pi in 0..panels {
                    let (lo, hi) = self.panel_keys::<MR>(pi);
                    let depth = hi - lo;
                    // Each row's weights exp(s − max) over its visible keys, zeros elsewhere
                    // in the panel's range (rows past the block: all zeros).
                    for rr in 0..MR {
                        let r = pi * MR + rr;
                        let row = &mut scores[r * keys_padded..][..keys_padded];
                        if r >= self.queries {
                            row[lo..hi].fill(0.0);
                            continue;
                        }
                        let (first, end) = self.visible(r);
                        let sum = activation::exp_from_max(&mut row[first..end]);
                        // Only an empty window has no key: its queries yield zeros.
                        inv_sums[r] = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                        row[lo..first].fill(0.0);
                        row[end..hi].fill(0.0);
                    }
                    // The row panel of P, column by column.
                    let panel_rows = &scores[pi * MR * keys_padded..][..MR * keys_padded];
                    for (t, column) in p[..depth * MR].chunks_exact_mut(MR).enumerate() {
                        for (rr, value) in column.iter_mut().enumerate() {
                            *value = panel_rows[rr * keys_padded + lo + t];
                        }
                    }
                    // O = P·V / Σ, one NR-column panel of V at a time.
                    for j in 0..v_panels {
                        let mut tile = [[0.0f32; NR]; MR];
                        // SAFETY: as above, with `depth` columns of P and rows of V.
                        unsafe {
                            kernel(
                                depth,
                                &p[..depth * MR],
                                &v[(j * self.keys + lo) * NR..][..depth * NR],
                                &mut tile,
                            )
                        };
                        let width = NR.min(hd - j * NR);
                        for (rr, t) in tile.iter().enumerate() {
                            let r = pi * MR + rr;
                            if r >= self.queries {
                                break;
                            }
                            let inv = inv_sums[r];
                            out_rows[r * out_width + q_col + j * NR..][..width]
                                .iter_mut()
                                .zip(t)
                                .for_each(|(o, &t)| *o = t * inv);
                        }
                    }
                }
            }
        }
    }

    /// `scale·Q` of the head at column `column` into `MR`-row panels (rows past the block 0).
    fn pack_q<const MR: usize>(&self, column: usize, q: &mut [f32]) {
        let (hd, scale) = (self.spec.head_dim, self.spec.scale);
        for (pi, panel) in q.chunks_exact_mut(hd * MR).enumerate() {
            for rr in 0..MR {
                let r = pi * MR + rr;
                if r >= self.queries {
                    (0..hd).for_each(|c| panel[c * MR + rr] = 0.0);
                    continue;
                }
                let row = self.head_row(self.first_query + r, column);
                for (c, &x) in row.iter().enumerate() {
                    panel[c * MR + rr] = scale * x;
                }
            }
        }
    }

    /// `Kᵀ` of the key head at column `column` into `NR`-key panels (keys past the block 0).
    fn pack_k<const NR: usize>(&self, column: usize, k: &mut [f32]) {
        let hd = self.spec.head_dim;
        for (j, panel) in k.chunks_exact_mut(hd * NR).enumerate() {
            for jj in 0..NR {
                let t = j * NR + jj;
                if t >= self.keys {
                    (0..hd).for_each(|c| panel[c * NR + jj] = 0.0);
                    continue;
                }
                let row = self.head_row(self.keys_first + t, column);
                for (c, &x) in row.iter().enumerate() {
                    panel[c * NR + jj] = x;
                }
            }
        }
    }

    /// `V` of the value head at column `column` into `NR`-column panels (columns past `hd` 0).
    fn pack_v<const NR: usize>(&self, column: usize, v: &mut [f32]) {
        for t in 0..self.keys {
            let row = self.head_row(self.keys_first + t, column);
            for (j, part) in row.chunks(NR).enumerate() {
                let dst = &mut v[(j * self.keys + t) * NR..][..NR];
                dst[..part.len()].copy_from_slice(part);
                dst[part.len()..].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gemm_packed::microkernel_portable;

    /// `softmax(scale·q·kᵀ + mask)·v` per sequence and head in f64, every query sees the keys
    /// [`AttentionSpec::allows`] lets it (none: zeros).
    fn reference(qkv: &[f32], lengths: &[usize], spec: &AttentionSpec) -> Vec<f64> {
        let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
        let width = spec.qkv_width();
        let tokens: usize = lengths.iter().sum();
        let mut out = vec![0.0f64; tokens * heads * hd];
        let mut row0 = 0;
        for &len in lengths {
            for h in 0..heads {
                let kv = h / (heads / kv_heads);
                let (qc, kc) = (h * hd, (heads + kv) * hd);
                let vc = (heads + kv_heads + kv) * hd;
                let x = |t: usize, c: usize| f64::from(qkv[(row0 + t) * width + c]);
                for i in 0..len {
                    let keys: Vec<usize> = (0..len).filter(|&j| spec.allows(i, j)).collect();
                    if keys.is_empty() {
                        continue;
                    }
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            let dot: f64 = (0..hd).map(|c| x(i, qc + c) * x(j, kc + c)).sum();
                            f64::from(spec.scale) * dot
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for c in 0..hd {
                        let o: f64 = keys
                            .iter()
                            .zip(&weights)
                            .map(|(&j, w)| w * x(j, vc + c))
                            .sum();
                        out[(row0 + i) * heads * hd + qc + c] = o / sum;
                    }
                }
            }
            row0 += len;
        }
        out
    }

    /// Every microkernel this CPU runs (the integration tests reach only the widest) on packed
    /// sequences whose lengths fill no query block or key panel exactly, with a causal window,
    /// grouped heads, a head_dim above one `NR` panel and an empty window, against f64.
    #[test]
    fn every_microkernel_matches_f64() {
        let lengths = [1, 70, 9, 131];
        let layout = SeqLayout::from_lengths(lengths);
        let specs = [
            AttentionSpec {
                kv_heads: 2,
                ..AttentionSpec::bidirectional(4, 33)
            },
            AttentionSpec {
                kv_heads: 1,
                causal: true,
                window: Some(50),
                ..AttentionSpec::bidirectional(3, 20)
            },
            AttentionSpec {
                window: Some(0),
                ..AttentionSpec::bidirectional(1, 8)
            },
        ];
        for spec in specs {
            let tokens = layout.num_tokens();
            let qkv: Vec<f32> = (0..tokens * spec.qkv_width())
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
                .collect();
            let want = reference(&qkv, &lengths, &spec);
            let check = |name: &str, run: &dyn Fn(&mut [f32])| {
                let mut out = vec![f32::NAN; tokens * spec.heads * spec.head_dim];
                run(&mut out);
                let err: f64 = out
                    .iter()
                    .zip(&want)
                    .map(|(&o, &r)| (f64::from(o) - r).powi(2))
                    .sum();
                let norm: f64 = want.iter().map(|r| r * r).sum::<f64>().max(1e-30);
                let rel = (err / norm).sqrt();
                assert!(rel < 1e-5, "{name} {spec:?}: relative error {rel:e}");
                if spec.window == Some(0) {
                    assert!(out.iter().all(|&o| o == 0.0), "{name}: empty window");
                }
            };
            check("portable", &|out| {
                blocked::<6, 16>(microkernel_portable::<6, 16>, &qkv, &layout, &spec, out)
            });
            #[cfg(target_arch = "x86_64")]
            {
                use crate::backend::cpu::gemm_packed::{microkernel_avx2, microkernel_avx512};
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    check("avx2", &|out| {
                        blocked::<6, 16>(microkernel_avx2, &qkv, &layout, &spec, out)
                    });
                }
                if std::is_x86_feature_detected!("avx512f") {
                    check("avx512", &|out| {
                        blocked::<8, 32>(microkernel_avx512, &qkv, &layout, &spec, out)
                    });
                }
            }
        }
    }
}
