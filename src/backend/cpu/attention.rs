//! Softmax attention on the CPU: three kernels, numbered [`AttentionVariant`]s (7–9, chosen with
//! `MSCOPE_CPU_ATTENTION` or [`super::CpuBackend::with_attention`]); by default by the mask:
//!
//! - **Bidirectional** (encoders: MiniLM, BERT): variant 9, the query-panel kernel of
//!   [`attention_panels`] — `K` and `V` packed once per sequence and key/value head, then each
//!   panel of 8 queries' scores, softmax and `P·V` in L1. On the loaded development machine it
//!   ran MiniLM's attention (head_dim 32) 1.7× and BERT-base's 1.3× faster than variant 7
//!   (BENCHMARKS.md, "Session h21m").
//! - **Causal or windowed** (decoders): variant 8, blocked so that both products run on the
//!   packed GEMM's register-tiled microkernel ([`gemm_packed::with_microkernel`]: 8 × 32 on
//!   AVX-512, 6 × 16 on AVX2 with FMA), skipping the score tiles the mask hides — described
//!   below. Variant 9 skips them too, and measured level with it on the Mistral case at a load
//!   too high to separate them.
//! - Variant 7: two faer GEMMs per block of [`FAER_QUERY_BLOCK`] queries and head over the keys
//!   the block sees, the row softmax between them (the bidirectional default before variant 9).
//!
//! The blocked kernel (variant 8):
//!
//! A task is [`PANELS_PER_BLOCK`] row panels of `MR` queries (64 queries on AVX-512, 48 on
//! AVX2) of one sequence, with every head; the blocks of every sequence run in parallel, each
//! owning its rows of the output, so a single long sequence (a decoder's prompt) still uses every
//! core. Within a task:
//!
//! 1. `K` over the keys the block can see is packed into `MR`-key panels and `V` into `NR`-column
//!    panels, shared by the query heads of a grouped-query group, and `scale·Qᵀ` into `NR`-query
//!    panels — every head in one pass over the block's rows of `qkv`, each read whole and in
//!    order. (Packing one head's columns row after row, 9 KiB apart at BERT-base's width, missed
//!    the cache and the TLB on every row: perf found it the largest cost outside the
//!    microkernel.)
//! 2. For each query head, the scores are computed transposed, `Sᵀ = K·(scale·Qᵀ)`, tile by
//!    tile — only the key panels a query panel can see, so a causal or windowed mask skips the
//!    tiles it hides. A tile's rows (one key, `NR` queries) are stored in runs of `MR` queries:
//!    that is already the layout `P·V` reads `P` in (a row panel of `MR` queries, key after
//!    key), so `P` is never transposed.
//! 3. Row panel by row panel, the softmax runs down the keys in vertical lanes (lane `i` holds
//!    row `i mod MR`: maxima, `exp`, sums without a horizontal reduction, vectorised with
//!    [`with_wide_simd`]); masked keys are −∞ for the maximum and exactly 0 after `exp`. `P·V`
//!    runs on the microkernel over just the panel's visible keys, and the softmax division is
//!    applied to the output tile (`head_dim` values a row) instead of to the weights (one a key).
//!
//! The whole block's scores are kept (two passes, no online rescaling): at the model shapes (64
//! queries × up to ~600 keys) that is a few hundred KiB, in L2. The packed heads are the block's
//! `Q` and its visible `K`, `V` (BERT-base's 256 keys: 1.7 MiB; Mistral-7B's 576 of 8 key/value
//! heads: 5.7 MiB, in L3). Scratch buffers belong to a rayon worker and only grow; nothing is
//! allocated per head or tile.
//!
//! Against the faer path on the bench's causal, windowed, grouped-query Mistral-7B case it won 6
//! of 8 alternated runs on the loaded development machine (faer/blocked 0.82–1.38, median about
//! 1.15) — the tiles the mask hides are skipped; the tiles themselves are not faster. Both
//! measurements and the idle-machine rerun are BENCHMARKS.md's "Session h21a".

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::activation;
use super::attention_panels;
use super::common::{sized, split_sequences, values, values_mut, with_wide_simd};
use super::gemm_packed::{self, Microkernel, TileProgram};
use crate::backend::{shapes, AttentionSpec, AttentionVariant, SeqLayout, Tensor};
use crate::error::{Error, Result};

/// Row panels of queries per task: 64 queries on the AVX-512 tile, 48 on the AVX2 one — enough
/// for the packing of `K` and `V` (once per task) to be small against the products, few enough
/// that a 128-token sequence still makes two or three tasks.
const PANELS_PER_BLOCK: usize = 8;

/// Queries per task of the faer path: enough rows for faer's GEMMs to reach their kernels'
/// speed, few enough that a 256-token sequence still makes several tasks.
const FAER_QUERY_BLOCK: usize = 64;

/// Keys `[first, end)` that query `i` of a sequence of `len` tokens may attend to: the
/// contiguous range [`AttentionSpec::allows`] describes. Both ends are non-decreasing in `i`,
/// so a run of queries sees the keys from its first query's `first` to its last query's `end`.
pub(super) fn visible_keys(spec: &AttentionSpec, i: usize, len: usize) -> (usize, usize) {
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

/// `out: [tokens, heads·head_dim]` from the packed `qkv: [tokens, spec.qkv_width()]`, on
/// `variant` (`None`: the default for the mask, see the module docs).
pub(super) fn attention(
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &mut Tensor,
    variant: Option<AttentionVariant>,
) -> Result<()> {
    shapes::attention(qkv, layout, spec, out)?;
    let (qkv, out) = (values(qkv)?, values_mut(out)?);
    let variant = variant.unwrap_or(if spec.causal || spec.window.is_some() {
        AttentionVariant::Packed
    } else {
        AttentionVariant::Panels
    });
    match variant {
        AttentionVariant::Faer => faer(qkv, layout, spec, out),
        AttentionVariant::Packed => gemm_packed::with_microkernel(Attention {
            qkv,
            layout,
            spec,
            out,
        }),
        AttentionVariant::Panels => attention_panels::attention(qkv, layout, spec, out),
        cuda => {
            return Err(Error::input(format!(
                "attention variant {cuda} is a CUDA kernel; the CPU's are 7 (faer), 8 (packed) \
                 and 9 (panels)"
            )))
        }
    }
    Ok(())
}

/// Variant 7: faer's GEMMs, a task per block of [`FAER_QUERY_BLOCK`] queries of a sequence.
fn faer(qkv: &[f32], layout: &SeqLayout, spec: &AttentionSpec, out: &mut [f32]) {
    let out_width = spec.heads * spec.head_dim;
    let mut tasks = Vec::new();
    for (s, sequence) in split_sequences(out, layout, out_width)
        .into_iter()
        .enumerate()
    {
        for (b, rows) in sequence
            .chunks_mut(FAER_QUERY_BLOCK * out_width)
            .enumerate()
        {
            tasks.push((s, b * FAER_QUERY_BLOCK, rows));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(s, first_query, out_rows)| {
            faer_query_block(qkv, layout, spec, s, first_query, out_rows)
        });
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
    tasks
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, (s, first_query, out_rows)| {
            let task = QueryBlock::new(qkv, layout, spec, s, first_query, out_rows.len());
            task.run(kernel, scratch, out_rows);
        });
}

/// Lanes of the panel softmax's maximum and sum: a multiple of both tile heights (6 and 8), so
/// lane `i` of a `P` panel (`MR` values a key) always holds row `i % MR`.
const LANES: usize = 48;

with_wide_simd! {
    /// `lanes[i % LANES] ← max(lanes[i % LANES], values[i])`.
    fn lane_max => lane_max_portable(values: &[f32], lanes: &mut [f32; LANES])
}

#[inline(always)]
fn lane_max_portable(values: &[f32], lanes: &mut [f32; LANES]) {
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        lanes
            .iter_mut()
            .zip(chunk)
            .for_each(|(l, &v)| *l = l.max(v));
    }
    lanes.iter_mut().zip(tail).for_each(|(l, &v)| *l = l.max(v));
}

with_wide_simd! {
    /// `values[i] ← exp(values[i] − shift[i % LANES])`, summed into `sums[i % LANES]`.
    fn lane_exp => lane_exp_portable(
        values: &mut [f32],
        shift: &[f32; LANES],
        sums: &mut [f32; LANES]
    )
}

#[inline(always)]
fn lane_exp_portable(values: &mut [f32], shift: &[f32; LANES], sums: &mut [f32; LANES]) {
    let mut chunks = values.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for ((v, s), sum) in chunk.iter_mut().zip(shift).zip(sums.iter_mut()) {
            *v = activation::exp(*v - s);
            *sum += *v;
        }
    }
    let tail = chunks.into_remainder();
    for ((v, s), sum) in tail.iter_mut().zip(shift).zip(sums.iter_mut()) {
        *v = activation::exp(*v - s);
        *sum += *v;
    }
}

/// A worker's buffers, grown to the largest task it has run.
#[derive(Default)]
struct Scratch {
    /// `scale·Qᵀ` of every head, head after head, in `NR`-query panels: panel `qb`, column `c`
    /// at `(qb·hd + c)·NR` of its head's part.
    q: Vec<f32>,
    /// `K` of every key/value head in `MR`-key panels: panel `kb`, column `c` at
    /// `(kb·hd + c)·MR` of its head's part.
    k: Vec<f32>,
    /// `V` of every key/value head in `NR`-column panels: panel `j`, key `t` at
    /// `(j·keys + t)·NR` of its head's part.
    v: Vec<f32>,
    /// Scores, then weights, in `MR`-query row panels over each panel's visible keys: panel
    /// `pi`, its key `t` (from the panel's first) at `pi·keys·MR + t·MR`.
    p: Vec<f32>,
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

    /// Columns `columns` of the sequence's token `token`.
    fn row(&self, token: usize, columns: std::ops::Range<usize>) -> &'a [f32] {
        let start = (self.row0 + token) * self.spec.qkv_width();
        &self.qkv[start + columns.start..start + columns.end]
    }

    /// Visible keys `[first, end)` of the block's query `r`, as offsets from `keys_first`.
    fn visible(&self, r: usize) -> (usize, usize) {
        let (first, end) = visible_keys(self.spec, self.first_query + r, self.len);
        (first - self.keys_first, end - self.keys_first)
    }

    /// Visible keys of the queries `rows` (within the block): the first's first to the last's end.
    fn keys_of(&self, rows: std::ops::Range<usize>) -> (usize, usize) {
        let last = rows.end.min(self.queries) - 1;
        (self.visible(rows.start).0, self.visible(last).1)
    }

    fn run<const MR: usize, const NR: usize>(
        &self,
        kernel: Microkernel<MR, NR>,
        scratch: &mut Scratch,
        out_rows: &mut [f32],
    ) {
        debug_assert!(LANES.is_multiple_of(MR));
        let spec = self.spec;
        let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
        let (group, out_width, keys) = (heads / kv_heads, heads * hd, self.keys);
        let panels = self.queries.div_ceil(MR);
        let q_panels = self.queries.div_ceil(NR);
        let k_panels = keys.div_ceil(MR);
        let v_panels = hd.div_ceil(NR);
        // Each row panel's visible keys.
        let mut ranges = [(0, 0); PANELS_PER_BLOCK];
        for (pi, range) in ranges.iter_mut().enumerate().take(panels) {
            *range = self.keys_of(pi * MR..(pi + 1) * MR);
        }
        let (q_size, k_size, v_size) =
            (q_panels * hd * NR, k_panels * hd * MR, v_panels * keys * NR);
        let Scratch { q, k, v, p } = scratch;
        let q = sized(q, heads * q_size);
        let k = sized(k, kv_heads * k_size);
        let v = sized(v, kv_heads * v_size);
        let p = sized(p, panels * keys * MR);
        // Every head at once: each token's row of qkv is read whole, in order, where one head's
        // columns a row at a time would miss the cache (and the TLB) on every row.
        self.pack_q::<NR>(q, q_size);
        self.pack_kv::<MR, NR>(k, k_size, v, v_size);
        for kv in 0..kv_heads {
            let k = &k[kv * k_size..][..k_size];
            let v = &v[kv * v_size..][..v_size];
            for h in kv * group..(kv + 1) * group {
                let q_col = h * hd;
                let q = &q[h * q_size..][..q_size];
                // Sᵀ = K·(scale·Qᵀ) for the key panels each query panel sees; each tile row
                // (one key, NR queries) lands in the row panels of P in runs of MR queries.
                for qb in 0..q_panels {
                    let (lo, hi) = self.keys_of(qb * NR..(qb + 1) * NR);
                    let b = &q[qb * hd * NR..][..hd * NR];
                    for kb in lo / MR..hi.div_ceil(MR) {
                        let mut tile = [[0.0f32; NR]; MR];
                        // SAFETY: `with_microkernel` chose the kernel for this CPU; the key panel
                        // and `b` hold `hd` columns of MR and NR values.
                        unsafe { kernel(hd, &k[kb * hd * MR..][..hd * MR], b, &mut tile) };
                        for (t, row) in (kb * MR..keys).zip(&tile) {
                            let mut qq = 0;
                            while qq < NR && qb * NR + qq < self.queries {
                                let (pi, rr) = ((qb * NR + qq) / MR, (qb * NR + qq) % MR);
                                let run = (MR - rr).min(NR - qq);
                                let (p_lo, p_hi) = ranges[pi];
                                if (p_lo..p_hi).contains(&t) {
                                    let at = pi * keys * MR + (t - p_lo) * MR;
                                    if run == MR {
                                        p[at..at + MR].copy_from_slice(&row[qq..qq + MR]);
                                    } else {
                                        p[at + rr..at + rr + run]
                                            .copy_from_slice(&row[qq..qq + run]);
                                    }
                                }
                                qq += run;
                            }
                        }
                    }
                }
                for (pi, &(lo, hi)) in ranges.iter().enumerate().take(panels) {
                    let depth = hi - lo;
                    let panel = &mut p[pi * keys * MR..][..depth * MR];
                    let inv_sums = softmax_panel::<MR>(self, pi, lo, panel);
                    // O = P·V / Σ, one NR-column panel of V at a time.
                    for j in 0..v_panels {
                        let mut tile = [[0.0f32; NR]; MR];
                        // SAFETY: as above, with `depth` keys of P and of V.
                        unsafe {
                            kernel(
                                depth,
                                panel,
                                &v[(j * keys + lo) * NR..][..depth * NR],
                                &mut tile,
                            )
                        };
                        let width = NR.min(hd - j * NR);
                        for (rr, (t, inv)) in tile.iter().zip(inv_sums).enumerate() {
                            let r = pi * MR + rr;
                            if r >= self.queries {
                                break;
                            }
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

    /// `scale·Qᵀ` of every head, `size` values a head, in `NR`-query panels (queries past the
    /// block 0).
    fn pack_q<const NR: usize>(&self, q: &mut [f32], size: usize) {
        let (hd, heads, scale) = (self.spec.head_dim, self.spec.heads, self.spec.scale);
        for r in 0..size / hd {
            let (qb, qq) = (r / NR, r % NR);
            let row = (r < self.queries).then(|| self.row(self.first_query + r, 0..heads * hd));
            for h in 0..heads {
                let panel = &mut q[h * size + qb * hd * NR..][..hd * NR];
                match row {
                    Some(row) => {
                        for (c, &x) in row[h * hd..][..hd].iter().enumerate() {
                            panel[c * NR + qq] = scale * x;
                        }
                    }
                    None => (0..hd).for_each(|c| panel[c * NR + qq] = 0.0),
                }
            }
        }
    }

    /// `K` of every key/value head into `MR`-key panels (keys past the block 0) and `V` into
    /// `NR`-column panels (columns past `hd` 0), `k_size` and `v_size` values a head.
    fn pack_kv<const MR: usize, const NR: usize>(
        &self,
        k: &mut [f32],
        k_size: usize,
        v: &mut [f32],
        v_size: usize,
    ) {
        let (hd, heads, kv_heads) = (self.spec.head_dim, self.spec.heads, self.spec.kv_heads);
        for t in 0..k_size / hd {
            let (kb, kk) = (t / MR, t % MR);
            let row = (t < self.keys)
                .then(|| self.row(self.keys_first + t, heads * hd..(heads + 2 * kv_heads) * hd));
            for kv in 0..kv_heads {
                let panel = &mut k[kv * k_size + kb * hd * MR..][..hd * MR];
                let Some(row) = row else {
                    (0..hd).for_each(|c| panel[c * MR + kk] = 0.0);
                    continue;
                };
                for (c, &x) in row[kv * hd..][..hd].iter().enumerate() {
                    panel[c * MR + kk] = x;
                }
                let values = &row[(kv_heads + kv) * hd..][..hd];
                for (j, part) in values.chunks(NR).enumerate() {
                    let dst = &mut v[kv * v_size + (j * self.keys + t) * NR..][..NR];
                    dst[..part.len()].copy_from_slice(part);
                    dst[part.len()..].fill(0.0);
                }
            }
        }
    }
}

/// Row panel `pi` of `P` (its keys from `lo`, `MR` values a key): each row's scores become
/// `exp(s − max)` over the keys it sees and 0 elsewhere (rows past the block: all 0), in vertical
/// lanes with no transpose. Returns `1 / Σ` per row, 0 for a row that sees no key (an empty
/// window), whose output is then zero.
fn softmax_panel<const MR: usize>(
    block: &QueryBlock<'_>,
    pi: usize,
    lo: usize,
    panel: &mut [f32],
) -> [f32; MR] {
    let depth = panel.len() / MR;
    // Each row's visible keys from `lo`; the rest of the panel is masked with −∞ (those entries
    // may hold another head's values: the score tiles skip keys no row of theirs sees).
    let mut visible = [(0, 0); MR];
    for (rr, range) in visible.iter_mut().enumerate() {
        let r = pi * MR + rr;
        if r < block.queries {
            let (first, end) = block.visible(r);
            *range = (first - lo, end - lo);
        }
        let (first, end) = *range;
        for t in (0..first).chain(end..depth) {
            panel[t * MR + rr] = f32::NEG_INFINITY;
        }
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    lane_max(panel, &mut lanes);
    let mut max = [f32::NEG_INFINITY; MR];
    for (i, &l) in lanes.iter().enumerate() {
        max[i % MR] = max[i % MR].max(l);
    }
    // A row of −∞ only (no visible key) is shifted by 0, not by −∞ (no NaN).
    let shift: [f32; LANES] = std::array::from_fn(|i| {
        let m = max[i % MR];
        if m == f32::NEG_INFINITY {
            0.0
        } else {
            m
        }
    });
    let mut lane_sums = [0.0f32; LANES];
    // exp(−∞ − max) is clamped to e^−87, ~1e-38: below any row sum's resolution (its maximum
    // contributes 1), and set to exactly 0 below before P·V.
    lane_exp(panel, &shift, &mut lane_sums);
    let mut sums = [0.0f32; MR];
    for (i, &s) in lane_sums.iter().enumerate() {
        sums[i % MR] += s;
    }
    std::array::from_fn(|rr| {
        let (first, end) = visible[rr];
        for t in (0..first).chain(end..depth) {
            panel[t * MR + rr] = 0.0;
        }
        if first < end {
            1.0 / sums[rr]
        } else {
            0.0
        }
    })
}

/// The faer path: every head of the queries `first_query..` of sequence `s` whose output rows
/// are `out_rows`, as two faer GEMMs per head.
fn faer_query_block(
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    s: usize,
    first_query: usize,
    out_rows: &mut [f32],
) {
    let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
    let (width, out_width) = (spec.qkv_width(), heads * hd);
    let rows = layout.range(s);
    let len = rows.len();
    let queries = out_rows.len() / out_width;
    // The union of the block's visible keys: the first query's first to the last query's end.
    let keys_first = visible_keys(spec, first_query, len).0;
    let keys_end = visible_keys(spec, first_query + queries - 1, len).1;
    let keys = keys_end.saturating_sub(keys_first);
    if keys == 0 {
        // Only an empty window sees no key: its queries yield zeros.
        out_rows.fill(0.0);
        return;
    }
    let at = |token: usize, column: usize| (rows.start + token) * width + column;
    let mut scores = vec![0.0f32; queries * keys];
    let mut head_out = vec![0.0f32; queries * hd];
    for h in 0..heads {
        let kv = h / (heads / kv_heads);
        let q_col = h * hd;
        let k_col = heads * hd + kv * hd;
        let v_col = (heads + kv_heads) * hd + kv * hd;
        let q = MatRef::from_row_major_slice_with_stride(
            &qkv[at(first_query, q_col)..],
            queries,
            hd,
            width,
        );
        let k = MatRef::from_row_major_slice_with_stride(
            &qkv[at(keys_first, k_col)..],
            keys,
            hd,
            width,
        );
        let v = MatRef::from_row_major_slice_with_stride(
            &qkv[at(keys_first, v_col)..],
            keys,
            hd,
            width,
        );
        matmul(
            MatMut::from_row_major_slice_mut(&mut scores, queries, keys),
            Accum::Replace,
            q,
            k.transpose(),
            spec.scale,
            Par::Seq,
        );
        for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
            let (first, end) = visible_keys(spec, first_query + r, len);
            let (first, end) = (first - keys_first, end - keys_first);
            row[..first].fill(0.0);
            row[end..].fill(0.0);
            activation::softmax(&mut row[first..end]);
        }
        // Into a contiguous block, then copied: faer 0.24's small-matrix kernels store past the
        // last column of a strided destination (valgrind: 8-byte writes beyond the buffer).
        matmul(
            MatMut::from_row_major_slice_mut(&mut head_out, queries, hd),
            Accum::Replace,
            MatRef::from_row_major_slice(&scores, queries, keys),
            v,
            1.0,
            Par::Seq,
        );
        for (o, h_row) in out_rows
            .chunks_exact_mut(out_width)
            .zip(head_out.chunks_exact(hd))
        {
            o[q_col..q_col + hd].copy_from_slice(h_row);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
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

    /// The kernel checks' packed sequences: lengths that fill no query block, query panel or key
    /// panel exactly.
    pub(in crate::backend::cpu) const LENGTHS: [usize; 4] = [1, 70, 9, 131];

    /// The kernel checks' masks and heads: a causal window, grouped heads, a head_dim above one
    /// `NR` panel (and not a multiple of one) and an empty window.
    pub(in crate::backend::cpu) fn specs() -> [AttentionSpec; 3] {
        [
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
        ]
    }

    /// Runs `kernels(check)` for every spec of [`specs`] over [`LENGTHS`], where `check(name,
    /// run)` asserts that `run` writes the f64 reference's output within 1e-5 relative.
    pub(in crate::backend::cpu) fn check_kernels(
        kernels: impl Fn(&[f32], &SeqLayout, &AttentionSpec, &dyn Fn(&str, &dyn Fn(&mut [f32]))),
    ) {
        let layout = SeqLayout::from_lengths(LENGTHS);
        for spec in specs() {
            let tokens = layout.num_tokens();
            let qkv: Vec<f32> = (0..tokens * spec.qkv_width())
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
                .collect();
            let want = reference(&qkv, &LENGTHS, &spec);
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
            kernels(&qkv, &layout, &spec, &check);
        }
    }

    /// Every microkernel of the packed kernel this CPU runs (the integration tests reach only
    /// the widest), against f64.
    #[test]
    fn every_microkernel_matches_f64() {
        check_kernels(|qkv, layout, spec, check| {
            check("portable", &|out| {
                blocked::<6, 16>(microkernel_portable::<6, 16>, qkv, layout, spec, out)
            });
            #[cfg(target_arch = "x86_64")]
            {
                use crate::backend::cpu::gemm_packed::{microkernel_avx2, microkernel_avx512};
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    check("avx2", &|out| {
                        blocked::<6, 16>(microkernel_avx2, qkv, layout, spec, out)
                    });
                }
                if std::is_x86_feature_detected!("avx512f") {
                    check("avx512", &|out| {
                        blocked::<8, 32>(microkernel_avx512, qkv, layout, spec, out)
                    });
                }
            }
        });
    }
}
