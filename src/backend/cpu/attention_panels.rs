//! Softmax attention by query panels: the CPU's kernel for short heads (head_dim 32–128) over
//! packed sequences, any mask.
//!
//! A task is one key/value head of one sequence (with every query head that shares it), or a
//! run of its queries where sequences × key/value heads are too few to keep every thread busy.
//! It packs the keys its queries can see once — `Kᵀ` in panels of `NR` keys (by blocks
//! transposed in registers: 16 × 16 on AVX-512, 8 × 8 on AVX2), `V` as contiguous rows padded to
//! a multiple of `NR` columns — and then, for each query head and each panel of `MR` queries:
//!
//! 1. `S = scale·Q·Kᵀ` over the key panels the panel's queries see, on a register-tiled
//!    microkernel (8 × 32 on AVX-512, 6 × 16 on AVX2 with FMA) whose `A` rows are read where they
//!    are: the queries straight from `qkv`, so `Q` is never packed; the kernel stores each row
//!    scaled straight into the panel's score rows.
//! 2. Each row's softmax over its visible keys, in place: the maximum, then `exp(s − max)` and
//!    the sum in one sweep (an AVX-512 `exp2` on `vscalefps`; on AVX2 the portable exponential
//!    compiled for AVX2); keys the mask hides become 0.
//! 3. `O = P·V / Σ` on the same microkernel, `P`'s rows read where they are, the division applied
//!    to the output tile (head_dim values a row) as it is stored.
//!
//! Every helper a task calls runs compiled for the task's instruction set: passed as a closure
//! that calls a `#[target_feature]` function, never as a bare `fn` item, whose `Fn::call` shim
//! is compiled for the baseline (on AVX2 the exponential and the key packing ran as SSE code that
//! way, half of the samples of MiniLM's attention; BENCHMARKS.md, "session 23").
//!
//! While it computes, a task asks for the next task's `qkv` rows into L2, a share at each query
//! panel, and each panel for its output rows into L1 before its products: rows a whole `qkv` row
//! apart are beyond the hardware prefetchers, and without these requests the first key block of
//! every panel waited for its queries' lines from L3 or memory (BENCHMARKS.md, "branch h32a").
//!
//! The `MR` rows of scores (4 KiB at 128 keys, 16 KiB at 512) stay in L1 from their product to
//! their use; the packed `K` and `V` (32 KiB for a 128-token MiniLM head) in L1 or L2 for every
//! panel of every query head of the group. Against the two other CPU kernels
//! ([`super::attention`]'s faer blocks, which pack nothing but run faer's setup for every small
//! product, and its blocked kernel, which packs `K` and `V` for every 64-query block and `Q`
//! always) this packs the least and keeps the softmax next to its products; where it wins is in
//! BENCHMARKS.md ("Session h21m").

use rayon::prelude::*;

use super::activation;
use super::attention::visible_keys;
#[cfg(target_arch = "x86_64")]
use super::common::prefetch_lines;
use super::common::sized;
use super::gemm_packed::SharedOut;
use crate::backend::{AttentionSpec, SeqLayout};

/// An `MR × NR` tile of `A·B` over `kc` steps, each row times its factor stored where it goes:
/// row `i` of `A` is `kc` contiguous values at `a[i]`, row `p` of `B` is `NR` contiguous values
/// at `b + p·b_stride`, and `scales[i]` times row `i` of the tile is stored to its first `cols`
/// (at most `NR`) values at `dst[i]` — no tile is staged in memory between the registers and
/// the scores or the output.
type RowKernel<const MR: usize, const NR: usize> = unsafe fn(
    kc: usize,
    a: &[*const f32; MR],
    b: *const f32,
    b_stride: usize,
    dst: &[*mut f32; MR],
    scales: &[f32; MR],
    cols: usize,
);

/// The `K` rows of a task's keys: key `t`'s `hd` values at `qkv[first + t·width..]`.
struct KeyRows<'a> {
    qkv: &'a [f32],
    first: usize,
    width: usize,
    hd: usize,
    keys: usize,
}

impl KeyRows<'_> {
    fn row(&self, t: usize) -> &[f32] {
        &self.qkv[self.first + t * self.width..][..self.hd]
    }
}

/// `out: [tokens, heads·head_dim]` from the packed `qkv: [tokens, spec.qkv_width()]`, every
/// shape already checked, on the widest kernels this CPU runs.
pub(super) fn attention(qkv: &[f32], layout: &SeqLayout, spec: &AttentionSpec, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return tasks::<8>(qkv, layout, spec, out, |task, scratch| {
                // SAFETY: the CPU has AVX-512F (checked above).
                unsafe { task_avx512(task, scratch) }
            });
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return tasks::<6>(qkv, layout, spec, out, |task, scratch| {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { task_avx2(task, scratch) }
            });
        }
    }
    tasks::<6>(qkv, layout, spec, out, task_portable)
}

/// Splits the op into [`Task`]s and runs them on every thread with `run`.
fn tasks<const MR: usize>(
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &mut [f32],
    run: impl Fn(&Task<'_>, &mut Scratch) + Sync,
) {
    if spec.heads * spec.head_dim == 0 {
        return;
    }
    split::<MR>(qkv, layout, spec, SharedOut::new(out))
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, task| run(&task, scratch));
}

/// The op's [`Task`]s in order (queries cut into runs of whole `MR`-query panels), each naming
/// the next one's [`Footprint`].
fn split<'a, const MR: usize>(
    qkv: &'a [f32],
    layout: &SeqLayout,
    spec: &'a AttentionSpec,
    out: SharedOut,
) -> Vec<Task<'a>> {
    let sequences = layout.num_sequences();
    let wanted = 4 * rayon::current_num_threads();
    let runs = wanted.div_ceil((sequences * spec.kv_heads).max(1));
    let mut tasks = Vec::new();
    for s in 0..sequences {
        let rows = layout.range(s);
        let panels = rows.len().div_ceil(MR);
        if panels == 0 {
            continue;
        }
        let per_run = panels.div_ceil(runs.min(panels)) * MR;
        for kv in 0..spec.kv_heads {
            for first in (0..rows.len()).step_by(per_run) {
                tasks.push(Task {
                    qkv,
                    spec,
                    out,
                    row0: rows.start,
                    len: rows.len(),
                    kv,
                    queries: first..(first + per_run).min(rows.len()),
                    next: None,
                });
            }
        }
    }
    // A thread runs a contiguous run of tasks in order, so each task asks for the next one's
    // rows while it computes (a task on another thread only wastes the requests).
    for i in 1..tasks.len() {
        tasks[i - 1].next = Some(tasks[i].footprint());
    }
    tasks
}

/// The `qkv` values a task reads: its queries' rows at its query heads' columns, its keys' rows
/// at its key and value head's.
struct Footprint {
    queries: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
    q_cols: std::ops::Range<usize>,
    k_cols: std::ops::Range<usize>,
    v_cols: std::ops::Range<usize>,
}

/// The queries `queries` of one sequence (`len` tokens from row `row0` of `qkv`) for every query
/// head of key/value head `kv`; it alone writes their columns of `out`.
struct Task<'a> {
    qkv: &'a [f32],
    spec: &'a AttentionSpec,
    out: SharedOut,
    row0: usize,
    len: usize,
    kv: usize,
    queries: std::ops::Range<usize>,
    /// What the task after it reads: asked for into L2 while this one computes, since its rows,
    /// a whole `qkv` row apart (4.5 KB for MiniLM), are too far apart for the hardware
    /// prefetchers to follow.
    next: Option<Footprint>,
}

/// A worker's buffers, grown to the largest task it has run (only ever grown, never cleared).
#[derive(Default)]
struct Scratch {
    /// `Kᵀ` in `NR`-key panels: panel `kb`, column `c` at `(kb·head_dim + c)·NR`.
    k: Vec<f32>,
    /// `V`, a key a row of `head_dim` rounded up to a multiple of `NR`.
    v: Vec<f32>,
    /// One query panel's scores, then weights: `MR` rows of the task's keys rounded up to `NR`.
    s: Vec<f32>,
}

/// [`Task::run`] on the AVX-512 kernels, compiled for AVX-512 throughout.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn task_avx512(task: &Task<'_>, scratch: &mut Scratch) {
    task.run::<8, 32>(
        row_kernel_avx512,
        // SAFETY: as this function's.
        |rows, k| unsafe { pack_keys_avx512::<32>(rows, k) },
        // SAFETY: as this function's.
        |row| unsafe { exp_row_avx512(row) },
        scratch,
    )
}

/// [`Task::run`] on the AVX2 kernels, compiled for AVX2 and FMA throughout.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(task: &Task<'_>, scratch: &mut Scratch) {
    task.run::<6, 16>(
        row_kernel_avx2,
        // SAFETY: as this function's.
        |rows, k| unsafe { pack_keys_avx2::<16>(rows, k) },
        // SAFETY: as this function's.
        |row| unsafe { activation::exp_row_avx2(row) },
        scratch,
    )
}

/// [`Task::run`] on the plain-Rust kernels.
fn task_portable(task: &Task<'_>, scratch: &mut Scratch) {
    task.run::<6, 16>(
        row_kernel_portable::<6, 16>,
        pack_keys_portable::<16>,
        activation::exp_row,
        scratch,
    )
}

impl Task<'_> {
    /// Visible keys `[first, end)` of the sequence's query `i`.
    fn visible(&self, i: usize) -> (usize, usize) {
        visible_keys(self.spec, i, self.len)
    }

    /// What this task reads.
    fn footprint(&self) -> Footprint {
        let spec = self.spec;
        let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
        let group = heads / kv_heads;
        let keys = self.visible(self.queries.start).0..self.visible(self.queries.end - 1).1;
        let (k_col, v_col) = ((heads + self.kv) * hd, (heads + kv_heads + self.kv) * hd);
        Footprint {
            queries: self.row0 + self.queries.start..self.row0 + self.queries.end,
            keys: self.row0 + keys.start..self.row0 + keys.end.max(keys.start),
            q_cols: self.kv * group * hd..(self.kv + 1) * group * hd,
            k_cols: k_col..k_col + hd,
            v_cols: v_col..v_col + hd,
        }
    }

    /// Asks for part `part` of `parts` of the next task's rows into L2 (nothing off x86-64).
    #[inline(always)]
    fn prefetch_next(&self, part: usize, parts: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(next) = &self.next {
            use std::arch::x86_64::_MM_HINT_T1;
            let width = self.spec.qkv_width();
            let share = |rows: &std::ops::Range<usize>| {
                rows.start + part * rows.len() / parts..rows.start + (part + 1) * rows.len() / parts
            };
            for (rows, cols) in [
                (share(&next.queries), &next.q_cols),
                (share(&next.keys), &next.k_cols),
                (share(&next.keys), &next.v_cols),
            ] {
                for t in rows {
                    prefetch_lines::<_MM_HINT_T1>(&self.qkv[t * width..][cols.clone()]);
                }
            }
        }
    }

    /// Asks for head `h`'s output rows of the sequence's queries `rows` into L1, so that the
    /// panel's `P·V` stores find their lines there (read by no other core, they arrive
    /// exclusive) instead of each waiting for its line's read (nothing off x86-64).
    #[inline(always)]
    fn prefetch_outputs(&self, rows: std::ops::Range<usize>, h: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let (hd, out_width) = (self.spec.head_dim, self.spec.heads * self.spec.head_dim);
            for i in rows {
                let at = (self.row0 + i) * out_width + h * hd;
                // SAFETY: this task alone writes its queries' columns of head `h`.
                let values = unsafe { self.out.slice(at, hd) };
                prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }>(values);
            }
        }
    }

    #[inline(always)]
    fn run<const MR: usize, const NR: usize>(
        &self,
        kernel: RowKernel<MR, NR>,
        pack_keys: impl Fn(&KeyRows<'_>, &mut [f32]),
        exp_row: impl Fn(&mut [f32]) -> f32,
        scratch: &mut Scratch,
    ) {
        let spec = self.spec;
        let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
        let (width, out_width, group) = (spec.qkv_width(), heads * hd, heads / kv_heads);
        let queries = self.queries.clone();
        // Keys from the first query's first visible one to the last query's end; offsets below
        // count from `keys_first`.
        let keys_first = self.visible(queries.start).0;
        let keys = self.visible(queries.end - 1).1.saturating_sub(keys_first);
        if keys == 0 {
            // Only an empty window sees no key: its queries yield zeros.
            for i in queries {
                let at = (self.row0 + i) * out_width + self.kv * group * hd;
                // SAFETY: this task alone writes its queries' columns of its heads.
                unsafe { self.out.slice(at, group * hd) }.fill(0.0);
            }
            return;
        }
        let (key_panels, hd_padded) = (keys.div_ceil(NR), hd.div_ceil(NR) * NR);
        let s_stride = key_panels * NR;
        let Scratch { k, v, s } = scratch;
        let (k, v, s) = (
            sized(k, key_panels * hd * NR),
            sized(v, keys * hd_padded),
            sized(s, MR * s_stride),
        );
        // Pack K transposed and V.
        let (k_col, v_col) = ((heads + self.kv) * hd, (heads + kv_heads + self.kv) * hd);
        let first_row = self.row0 + keys_first;
        let key_rows = KeyRows {
            qkv: self.qkv,
            first: first_row * width + k_col,
            width,
            hd,
            keys,
        };
        pack_keys(&key_rows, k);
        for t in 0..keys {
            let row = &self.qkv[(first_row + t) * width + v_col..][..hd];
            v[t * hd_padded..][..hd].copy_from_slice(row);
        }
        // The last panel's keys past the end: never read as scores, but kept finite.
        for t in keys..s_stride {
            let panel = &mut k[(t / NR) * hd * NR..][..hd * NR];
            (0..hd).for_each(|c| panel[c * NR + t % NR] = 0.0);
        }
        let score_scales = [spec.scale; MR];
        // Where the output rows of a panel's padding rows go (their weights are 0).
        let mut spill = [0.0f32; NR];
        let panels = group * queries.len().div_ceil(MR);
        let mut panel = 0;
        for h in self.kv * group..(self.kv + 1) * group {
            for first in queries.clone().step_by(MR) {
                self.prefetch_next(panel, panels);
                panel += 1;
                let rows = (first + MR).min(queries.end) - first;
                self.prefetch_outputs(first..first + rows, h);
                // The panel's keys: its first query's first to its last query's end.
                let lo = self.visible(first).0 - keys_first;
                let hi = (self.visible(first + rows - 1).1 - keys_first).max(lo);
                // Rows past the panel's end repeat its last query (computed, never stored).
                let q_rows: [*const f32; MR] = std::array::from_fn(|i| {
                    let token = self.row0 + first + i.min(rows - 1);
                    self.qkv[token * width + h * hd..].as_ptr()
                });
                for kb in lo / NR..hi.div_ceil(NR) {
                    let s_at = s.as_mut_ptr().wrapping_add(kb * NR);
                    let dst: [*mut f32; MR] =
                        std::array::from_fn(|i| s_at.wrapping_add(i * s_stride));
                    // SAFETY: the kernel runs on this CPU (chosen by `attention`); each query
                    // row holds `hd` values, the key panel `hd` rows of NR, and each score row
                    // NR values from key `kb·NR` (its stride is a whole number of panels).
                    unsafe {
                        kernel(
                            hd,
                            &q_rows,
                            k[kb * hd * NR..].as_ptr(),
                            NR,
                            &dst,
                            &score_scales,
                            NR,
                        )
                    };
                }
                let mut inv_sums = [0.0f32; MR];
                for (r, (scores, inv)) in s
                    .chunks_exact_mut(s_stride)
                    .zip(&mut inv_sums)
                    .take(rows)
                    .enumerate()
                {
                    let (v_first, v_end) = self.visible(first + r);
                    let (v_first, v_end) = (v_first - keys_first, v_end - keys_first);
                    scores[lo..v_first].fill(0.0);
                    scores[v_end.max(v_first)..hi].fill(0.0);
                    if v_first < v_end {
                        *inv = 1.0 / exp_row(&mut scores[v_first..v_end]);
                    }
                }
                let p_rows: [*const f32; MR] =
                    std::array::from_fn(|i| s[i.min(rows - 1) * s_stride + lo..].as_ptr());
                for j in (0..hd).step_by(NR) {
                    let cols = NR.min(hd - j);
                    let dst: [*mut f32; MR] = std::array::from_fn(|r| {
                        if r < rows {
                            let at = (self.row0 + first + r) * out_width + h * hd + j;
                            // SAFETY: this task alone writes its queries' columns of head `h`.
                            unsafe { self.out.slice(at, cols) }.as_mut_ptr()
                        } else {
                            spill.as_mut_ptr()
                        }
                    });
                    // SAFETY: as above; each weight row holds the `hi − lo` keys from `lo`, V
                    // those keys' rows of `hd_padded` values from column `j` (none: the
                    // panel's queries see no key, and the kernel stores zeros), and each
                    // destination `cols` values.
                    unsafe {
                        kernel(
                            hi - lo,
                            &p_rows,
                            v.as_ptr().wrapping_add(lo * hd_padded + j),
                            hd_padded,
                            &dst,
                            &inv_sums,
                            cols,
                        )
                    }
                }
            }
        }
    }
}

/// [`activation::exp_row`] in sixteen lanes: `exp(x) = 2^n · 2^f` with `n = round(x·log₂e)`,
/// `2^f` (|f| ≤ ½) by a degree-6 polynomial (relative error 4.4·10⁻⁹, under f32's rounding;
/// the degree-7 Taylor polynomial it replaced erred by 6·10⁻⁹, one FMA more a vector) and the
/// `2^n` applied by `vscalefps`, which also flushes far-negative exponents to 0 (no clamp). `max·log₂e` is rounded once for the whole row: a factor common to every weight,
/// cancelled by the division by the sum. `t = s·log₂e − max·log₂e` is rounded to f32 too, a
/// relative error `|t|·2⁻²⁴` in `2^t`: below 1 ulp for the weights that matter (`t > −2`),
/// growing only where the weight itself vanishes (10⁻⁶ at `e^−20`).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_row_avx512(row: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    // 2^f on [−½, ½], degree 6 down to 1 (the constant is 1): the least-squares fit of the
    // relative error at Chebyshev weights (numpy's `chebfit`, weights 1/2^f), near-minimax.
    const POLY: [f32; 6] = [
        1.533_250_8e-4,
        1.339_470_2e-3,
        9.618_491e-3,
        5.550_342_4e-2,
        2.402_264_8e-1,
        std::f32::consts::LN_2,
    ];
    let len = row.len();
    let (full, tail) = (len / 16, len % 16);
    let tail_mask: __mmask16 = first_lanes(tail);
    let at = row.as_mut_ptr();
    // SAFETY: every access is to `row`: whole vectors below `16·full`, the masked tail after.
    unsafe {
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in 0..full {
            max = _mm512_max_ps(max, _mm512_loadu_ps(at.add(16 * i)));
        }
        let tail_values = _mm512_mask_loadu_ps(max, tail_mask, at.add(16 * full));
        let max = _mm512_reduce_max_ps(_mm512_max_ps(max, tail_values));
        let log2e = _mm512_set1_ps(std::f32::consts::LOG2_E);
        let shift = _mm512_set1_ps(max * std::f32::consts::LOG2_E);
        let exp = |x: __m512| {
            let t = _mm512_fmsub_ps(x, log2e, shift);
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let f = _mm512_sub_ps(t, n);
            let mut p = _mm512_set1_ps(POLY[0]);
            for c in &POLY[1..] {
                p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(*c));
            }
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
            _mm512_scalef_ps(p, n)
        };
        let mut sum = _mm512_setzero_ps();
        for i in 0..full {
            let e = exp(_mm512_loadu_ps(at.add(16 * i)));
            _mm512_storeu_ps(at.add(16 * i), e);
            sum = _mm512_add_ps(sum, e);
        }
        if tail > 0 {
            let e = exp(_mm512_maskz_loadu_ps(tail_mask, at.add(16 * full)));
            _mm512_mask_storeu_ps(at.add(16 * full), tail_mask, e);
            sum = _mm512_mask_add_ps(sum, tail_mask, sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }
}

/// The row microkernel in plain Rust (the compiler vectorises the `NR` loop for the target it
/// is inlined into).
///
/// # Safety
/// `a[i]` holds `kc` values, `b + p·b_stride` `NR` values for every `p < kc`, and `dst[i]`
/// `cols ≤ NR` values.
unsafe fn row_kernel_portable<const MR: usize, const NR: usize>(
    kc: usize,
    a: &[*const f32; MR],
    b: *const f32,
    b_stride: usize,
    dst: &[*mut f32; MR],
    scales: &[f32; MR],
    cols: usize,
) {
    let mut tile = [[0.0f32; NR]; MR];
    for p in 0..kc {
        // SAFETY: the caller's contract.
        let b = unsafe { std::slice::from_raw_parts(b.add(p * b_stride), NR) };
        for (acc, a) in tile.iter_mut().zip(a) {
            // SAFETY: the caller's contract.
            let a = unsafe { *a.add(p) };
            acc.iter_mut().zip(b).for_each(|(c, &b)| *c += a * b);
        }
    }
    for ((row, &dst), &scale) in tile.iter().zip(dst).zip(scales) {
        // SAFETY: the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, cols) };
        dst.iter_mut().zip(row).for_each(|(d, &t)| *d = scale * t);
    }
}

/// The row microkernel on AVX2 with FMA: the 6 × 16 tile in twelve registers.
///
/// # Safety
/// The CPU has AVX2 and FMA, and [`row_kernel_portable`]'s contract holds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_kernel_avx2(
    kc: usize,
    a: &[*const f32; 6],
    b: *const f32,
    b_stride: usize,
    dst: &[*mut f32; 6],
    scales: &[f32; 6],
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    for p in 0..kc {
        // SAFETY: the caller's contract.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * b_stride));
            let b1 = _mm256_loadu_ps(b.add(p * b_stride + 8));
            for (acc, a) in acc.iter_mut().zip(a) {
                let ai = _mm256_broadcast_ss(&*a.add(p));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
        }
    }
    for ((acc, &dst), &scale) in acc.iter().zip(dst).zip(scales) {
        let scale = _mm256_set1_ps(scale);
        let (low, high) = (_mm256_mul_ps(acc[0], scale), _mm256_mul_ps(acc[1], scale));
        // SAFETY: `dst` holds `cols` values: all 16, or a staged row's first `cols` are copied.
        unsafe {
            if cols == 16 {
                _mm256_storeu_ps(dst, low);
                _mm256_storeu_ps(dst.add(8), high);
            } else {
                let mut row = [0.0f32; 16];
                _mm256_storeu_ps(row.as_mut_ptr(), low);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), high);
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst, cols);
            }
        }
    }
}

/// The lanes of a sixteen-lane vector below `n`.
#[cfg(target_arch = "x86_64")]
fn first_lanes(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// The row microkernel on AVX-512: the 8 × 32 tile in sixteen registers, stored through lane
/// masks where `cols < 32`.
///
/// # Safety
/// The CPU has AVX-512F, and [`row_kernel_portable`]'s contract holds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_kernel_avx512(
    kc: usize,
    a: &[*const f32; 8],
    b: *const f32,
    b_stride: usize,
    dst: &[*mut f32; 8],
    scales: &[f32; 8],
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    for p in 0..kc {
        // SAFETY: the caller's contract.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * b_stride));
            let b1 = _mm512_loadu_ps(b.add(p * b_stride + 16));
            for (acc, a) in acc.iter_mut().zip(a) {
                let ai = _mm512_set1_ps(*a.add(p));
                acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
            }
        }
    }
    let (low, high) = (first_lanes(cols), first_lanes(cols.saturating_sub(16)));
    for ((acc, &dst), &scale) in acc.iter().zip(dst).zip(scales) {
        let scale = _mm512_set1_ps(scale);
        // SAFETY: `dst` holds `cols` values; the masks store no lane past them.
        unsafe {
            _mm512_mask_storeu_ps(dst, low, _mm512_mul_ps(acc[0], scale));
            _mm512_mask_storeu_ps(dst.wrapping_add(16), high, _mm512_mul_ps(acc[1], scale));
        }
    }
}

/// Stores columns `cols` of keys `keys` into `k`, `Kᵀ` in `NR`-key panels: key `t`'s column `c`
/// at `(t/NR·hd + c)·NR + t%NR`.
fn pack_keys_scalar<const NR: usize>(
    rows: &KeyRows<'_>,
    keys: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: &mut [f32],
) {
    let hd = rows.hd;
    for t in keys {
        let row = rows.row(t);
        let panel = &mut k[(t / NR) * hd * NR..][..hd * NR];
        for c in cols.clone() {
            panel[c * NR + t % NR] = row[c];
        }
    }
}

/// Every key's columns into `k` as [`pack_keys_scalar`] lays them out.
fn pack_keys_portable<const NR: usize>(rows: &KeyRows<'_>, k: &mut [f32]) {
    pack_keys_scalar::<NR>(rows, 0..rows.keys, 0..rows.hd, k)
}

/// [`pack_keys_portable`] by 16 × 16 blocks transposed in registers (16 row loads, 64 shuffles
/// and 16 stores where the scalar loop moves 256 values one by one); the keys and columns past
/// the last whole block one by one.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_keys_avx512<const NR: usize>(rows: &KeyRows<'_>, k: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(NR.is_multiple_of(16), "a 16-key block lies in one panel");
    let hd = rows.hd;
    let (block_keys, block_cols) = (rows.keys / 16 * 16, hd / 16 * 16);
    for t0 in (0..block_keys).step_by(16) {
        let panel = &mut k[(t0 / NR) * hd * NR..][..hd * NR];
        for c0 in (0..block_cols).step_by(16) {
            let mut block = [_mm512_setzero_ps(); 16];
            for (i, r) in block.iter_mut().enumerate() {
                let row = &rows.row(t0 + i)[c0..c0 + 16];
                // SAFETY: `row` holds 16 values.
                *r = unsafe { _mm512_loadu_ps(row.as_ptr()) };
            }
            for (c, column) in transpose16(block).into_iter().enumerate() {
                let dst = &mut panel[(c0 + c) * NR + t0 % NR..][..16];
                // SAFETY: `dst` holds 16 values.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), column) };
            }
        }
    }
    pack_keys_scalar::<NR>(rows, 0..block_keys, block_cols..hd, k);
    pack_keys_scalar::<NR>(rows, block_keys..rows.keys, 0..hd, k);
}

/// [`pack_keys_portable`] by 8 × 8 blocks transposed in registers (8 row loads, 24 shuffles and
/// 8 stores where the scalar loop moves 64 values one by one); the keys and columns past the
/// last whole block one by one.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_keys_avx2<const NR: usize>(rows: &KeyRows<'_>, k: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(NR.is_multiple_of(8), "an 8-key block lies in one panel");
    let hd = rows.hd;
    let (block_keys, block_cols) = (rows.keys / 8 * 8, hd / 8 * 8);
    for t0 in (0..block_keys).step_by(8) {
        let panel = &mut k[(t0 / NR) * hd * NR..][..hd * NR];
        for c0 in (0..block_cols).step_by(8) {
            let mut block = [_mm256_setzero_ps(); 8];
            for (i, r) in block.iter_mut().enumerate() {
                let row = &rows.row(t0 + i)[c0..c0 + 8];
                // SAFETY: `row` holds 8 values.
                *r = unsafe { _mm256_loadu_ps(row.as_ptr()) };
            }
            for (c, column) in transpose8(block).into_iter().enumerate() {
                let dst = &mut panel[(c0 + c) * NR + t0 % NR..][..8];
                // SAFETY: `dst` holds 8 values.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), column) };
            }
        }
    }
    pack_keys_scalar::<NR>(rows, 0..block_keys, block_cols..hd, k);
    pack_keys_scalar::<NR>(rows, block_keys..rows.keys, 0..hd, k);
}

/// The transpose of the 8 × 8 matrix whose rows are `r`: pairs of rows interleaved by 32-bit
/// values, then by 64-bit pairs (vector `4g + j`, 128-bit lane `l`: rows `4g..4g+4` of column
/// `4l + j`), then the two 128-bit lanes of vectors `j` and `4 + j` exchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm256_setzero_ps(); 8];
    for g in 0..2 {
        let (even, odd) = (_mm256_castps_pd(t[4 * g]), _mm256_castps_pd(t[4 * g + 1]));
        let (even2, odd2) = (
            _mm256_castps_pd(t[4 * g + 2]),
            _mm256_castps_pd(t[4 * g + 3]),
        );
        u[4 * g] = _mm256_castpd_ps(_mm256_unpacklo_pd(even, even2));
        u[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(even, even2));
        u[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(odd, odd2));
        u[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(odd, odd2));
    }
    let mut out = [_mm256_setzero_ps(); 8];
    for j in 0..4 {
        // Low lanes of rows 0–3 and 4–7: column j; high lanes: column 4 + j.
        out[j] = _mm256_permute2f128_ps::<0x20>(u[j], u[4 + j]);
        out[4 + j] = _mm256_permute2f128_ps::<0x31>(u[j], u[4 + j]);
    }
    out
}

/// The transpose of the 16 × 16 matrix whose rows are `r`: pairs of rows interleaved by 32-bit
/// values, then by 64-bit pairs (vector `4g + j`, 128-bit lane `l`: rows `4g..4g+4` of column
/// `4l + j`), then the 4 × 4 blocks of 128-bit lanes transposed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (even, odd) = (t[4 * g], t[4 * g + 1]);
        let (even2, odd2) = (
            _mm512_castps_pd(t[4 * g + 2]),
            _mm512_castps_pd(t[4 * g + 3]),
        );
        let (even, odd) = (_mm512_castps_pd(even), _mm512_castps_pd(odd));
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(even, even2));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(even, even2));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(odd, odd2));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(odd, odd2));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
        // Lanes (a0, a1, b0, b1), (a2, a3, b2, b3) and the same of c, d.
        let ab_low = _mm512_shuffle_f32x4::<0x44>(a, b);
        let ab_high = _mm512_shuffle_f32x4::<0xEE>(a, b);
        let cd_low = _mm512_shuffle_f32x4::<0x44>(c, d);
        let cd_high = _mm512_shuffle_f32x4::<0xEE>(c, d);
        // Lanes (a_l, b_l, c_l, d_l): column 4l + j.
        out[j] = _mm512_shuffle_f32x4::<0x88>(ab_low, cd_low);
        out[4 + j] = _mm512_shuffle_f32x4::<0xDD>(ab_low, cd_low);
        out[8 + j] = _mm512_shuffle_f32x4::<0x88>(ab_high, cd_high);
        out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(ab_high, cd_high);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::attention::tests::{check_kernels, specs, LENGTHS};

    /// Every kernel pair this CPU runs (the integration tests reach only the widest) against the
    /// f64 reference of the packed kernel's checks.
    #[test]
    fn every_kernel_matches_f64() {
        check_kernels(|qkv, layout, spec, check| {
            check("portable", &|out| {
                tasks::<6>(qkv, layout, spec, out, task_portable)
            });
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    check("avx2", &|out| {
                        tasks::<6>(qkv, layout, spec, out, |task, scratch| {
                            // SAFETY: the CPU has AVX2 and FMA (checked above).
                            unsafe { task_avx2(task, scratch) }
                        })
                    });
                }
                if std::is_x86_feature_detected!("avx512f") {
                    check("avx512", &|out| {
                        tasks::<8>(qkv, layout, spec, out, |task, scratch| {
                            // SAFETY: the CPU has AVX-512F (checked above).
                            unsafe { task_avx512(task, scratch) }
                        })
                    });
                }
            }
        });
    }

    /// A task's [`Footprint`] holds every `qkv` value it reads: with every other value NaN, each
    /// task writes exactly what it writes from the whole `qkv` (over the kernel checks' sequences
    /// and masks: partial panels, grouped heads, a causal window, an empty one and, on two threads
    /// or more, tasks cut into runs of queries).
    #[test]
    fn footprint_holds_what_a_task_reads() {
        let layout = SeqLayout::from_lengths(LENGTHS);
        let tokens = layout.num_tokens();
        for spec in specs() {
            let qkv: Vec<f32> = (0..tokens * spec.qkv_width())
                .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let out_len = tokens * spec.heads * spec.head_dim;
            let mut want = vec![f32::NAN; out_len];
            let footprints: Vec<_> = split::<6>(&qkv, &layout, &spec, SharedOut::new(&mut want))
                .into_iter()
                .map(|task| {
                    task_portable(&task, &mut Scratch::default());
                    task.footprint()
                })
                .collect();
            for (i, reads) in footprints.iter().enumerate() {
                let width = spec.qkv_width();
                let mut poisoned = vec![f32::NAN; qkv.len()];
                for (rows, cols) in [
                    (&reads.queries, &reads.q_cols),
                    (&reads.keys, &reads.k_cols),
                    (&reads.keys, &reads.v_cols),
                ] {
                    for t in rows.clone() {
                        let at = t * width + cols.start..t * width + cols.end;
                        poisoned[at.clone()].copy_from_slice(&qkv[at]);
                    }
                }
                let mut got = want.clone();
                let task =
                    split::<6>(&poisoned, &layout, &spec, SharedOut::new(&mut got)).swap_remove(i);
                task_portable(&task, &mut Scratch::default());
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{spec:?}: task {i} read past its footprint");
            }
        }
    }

    /// The AVX-512 and AVX2 packings of `Kᵀ` (16 × 16 and 8 × 8 blocks transposed in
    /// registers, the rest one by one) write exactly the scalar packing's panels, over key counts
    /// and head sizes with and without a partial block, from rows strided as in `qkv`.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_key_packings_match_scalar() {
        for (keys, hd) in [
            (128, 32),
            (37, 40),
            (16, 16),
            (5, 64),
            (33, 7),
            (8, 8),
            (23, 17),
        ] {
            let width = 3 * hd + 5;
            let qkv: Vec<f32> = (0..(keys + 1) * width).map(|i| i as f32).collect();
            let rows = KeyRows {
                qkv: &qkv,
                first: 3,
                width,
                hd,
                keys,
            };
            let packed = |nr: usize, pack: &dyn Fn(&mut [f32])| {
                let mut k = vec![-1.0; keys.div_ceil(nr) * hd * nr];
                pack(&mut k);
                k
            };
            if std::is_x86_feature_detected!("avx512f") {
                let want = packed(32, &|k| pack_keys_portable::<32>(&rows, k));
                // SAFETY: the CPU has AVX-512F (checked above).
                let got = packed(32, &|k| unsafe { pack_keys_avx512::<32>(&rows, k) });
                assert_eq!(got, want, "avx512: {keys} keys × {hd}");
            }
            if std::is_x86_feature_detected!("avx2") {
                let want = packed(16, &|k| pack_keys_portable::<16>(&rows, k));
                // SAFETY: the CPU has AVX2 (checked above).
                let got = packed(16, &|k| unsafe { pack_keys_avx2::<16>(&rows, k) });
                assert_eq!(got, want, "avx2: {keys} keys × {hd}");
            }
        }
    }

    /// The AVX-512 and AVX2 row exponentials against f64, over lengths with and without a tail
    /// and scores down to 80 below the maximum: each weight `w` within 3 ulp of `exp(s − max)`,
    /// plus the rounding of its exponent `t = (s − max)·log₂e` (relative `|t|·2⁻²⁴·ln 2`, which
    /// grows as `w` shrinks: at most `w·|ln w|·10⁻⁷` in any output), once the row's common factor
    /// (AVX-512: the rounding of `max·log₂e`) is divided out through the maximum's own weight;
    /// and the sum that of the weights.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_exp_rows_match_f64() {
        let check = |name: &str, exp_row: &dyn Fn(&mut [f32]) -> f32| {
            for len in [1, 7, 15, 16, 33, 200] {
                let scores: Vec<f32> = (0..len)
                    .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 40.0)
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let want: Vec<f64> = scores
                    .iter()
                    .map(|&s| (f64::from(s) - f64::from(max)).exp())
                    .collect();
                let mut got = scores.clone();
                let sum = exp_row(&mut got);
                let top = scores.iter().position(|&s| s == max).unwrap();
                let common = f64::from(got[top]);
                assert!(
                    (common - 1.0).abs() < 1e-6,
                    "{name} {len}: common factor {common}"
                );
                for (&g, &w) in got.iter().zip(&want) {
                    let g = f64::from(g) / common;
                    let exponent = w.ln().abs() * std::f64::consts::LOG2_E;
                    let bound = 3.6e-7 + (exponent + 1.0) * 2f64.powi(-24) * 2.0;
                    assert!((g - w).abs() <= bound * w, "{name} {len}: {g} against {w}");
                }
                let got_sum: f64 = got.iter().map(|&g| f64::from(g)).sum();
                assert!(
                    (f64::from(sum) / got_sum - 1.0).abs() < 1e-6,
                    "{name} {len}: sum"
                );
            }
        };
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            check("avx512", &|row| unsafe { exp_row_avx512(row) });
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            check("avx2", &|row| unsafe { activation::exp_row_avx2(row) });
        }
    }
}
