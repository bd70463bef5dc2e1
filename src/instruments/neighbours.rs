//! Exact cosine k-nearest neighbours of every row among the rows of one matrix (`align`'s mutual
//! k-NN agreement), screened in cheap arithmetic and re-ranked exactly.
//!
//! **Definition** (the same on every CPU and with every variant): the similarity of rows `i` and
//! `j` is `s_ij = (Σ_t x_it·x_jt) · r_i · r_j` evaluated in f64 from the f32 inputs, with
//! `r_i = 1/‖x_i‖` (0 for a zero row, which is at similarity 0 to everything); row `i`'s
//! neighbours are the `k` rows `j ≠ i` of highest `s_ij`, ties to the lower index.
//!
//! **Screen, then re-rank.** All `n²` similarities are first *screened* in a cheaper arithmetic,
//! over `T × T` tiles on and above the diagonal only (the matrix is symmetric: a tile `(I, J)`
//! serves the rows of `I` along its rows and those of `J` along its columns), one
//! single-threaded tile product per rayon task:
//! - variant 1, [`NeighbourScreen::F32`]: f32 unit rows, faer's f32 GEMM (any CPU; the fallback);
//! - variant 2, [`NeighbourScreen::Bf16`]: bf16 unit rows, products accumulated in f32 by
//!   AVX512_BF16's `vdpbf16ps` (two multiply-adds per f32 lane: twice the f32 FMA rate);
//! - variant 3, [`NeighbourScreen::Int8`]: unit rows quantised to 8 bits with one scale per row,
//!   products summed exactly in i32 by AVX512_VNNI's `vpdpbusd` (four multiply-adds per lane: four
//!   times the f32 rate), with a wider bound (hundreds of candidates per row on 1 024-dim rows,
//!   which makes it slower than variant 2 overall today).
//!
//! Every screened value `ŝ_ij` is within a rigorous bound `E_i` of `s_ij` (below), so row `i`'s
//! `k`-th best exact similarity is at least `Ŝ_k(i) − E_i` (`Ŝ_k(i)` its `k`-th best screened
//! value) and every true neighbour has `ŝ_ij ≥ Ŝ_k(i) − 2·E_i`. Those candidates are kept (about
//! 16 per row at `k = 10` with bf16 on 1 024-dimensional embeddings, about `k` with f32), then
//! ranked by `s_ij` itself: the result is the exact neighbour lists, whichever the variant.
//!
//! **The bound.** With `u_i = x_i·r_i` (f64), `v_i` its screened copy (the f32 or bf16 values
//! as real numbers), `δ_i = ‖u_i − v_i‖` and `ν_i = ‖v_i‖`:
//! `u_i·u_j − v_i·v_j = (u_i − v_i)·u_j + v_i·(u_j − v_j)`, so by Cauchy–Schwarz
//! `|u_i·u_j − v_i·v_j| ≤ δ_i + ν_i·δ_j` (`‖u_j‖ ≤ 1`). Summing the (exact in f32: bf16 × bf16 has
//! 16 significant bits) products in f32, in any order and blocking, adds at most
//! `γ_m·Σ_t |v_it·v_jt| ≤ γ_m·ν_i·ν_j`, `γ_m = m·2⁻²⁴ / (1 − m·2⁻²⁴)`, where `m = 2·dim + 16`
//! bounds the roundings any product passes through. Taking the maxima over `j`,
//! `E_i = δ_i + ν_i·max δ + γ_m·ν_i·max ν + 10⁻⁹`; the last term covers the f64 rounding of
//! `s_ij`, `u_i`, `δ_i`, `ν_i` (each below 10⁻¹²) and the subnormal products `vdpbf16ps` flushes
//! to zero (below 2⁻¹²⁶ each; subnormal inputs are flushed when the rows are rounded to bf16).
//! Variant 3 sums its integer products exactly: its only rounding is the conversion and scaling
//! of the sum, `ŝ = fl(fl(Σ_t q_it·q_jt) · fl(σ_i·σ_j))` with `v_i = σ_i·q_i`, at most
//! `3.01·2⁻²⁴·ν_i·ν_j`, which replaces the `γ_m` term.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use crate::backend::cpu::{gemm_in_task, Operand};
use crate::error::{Error, Result};

/// How the similarities are screened before the exact re-rank (numbered like the GEMM variants:
/// `--neighbour-variant N`). Both give the same neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighbourScreen {
    /// 1 — f32 unit rows through faer's f32 GEMM: any CPU.
    F32,
    /// 2 — bf16 unit rows, products accumulated in f32 by `vdpbf16ps` (x86-64 with AVX-512F and
    /// AVX512_BF16).
    Bf16,
    /// 3 — 8-bit unit rows (one scale per row), exact i32 sums by `vpdpbusd` (x86-64 with
    /// AVX-512F and AVX512_VNNI). Rows wider than [`INT8_MAX_DIM`] run variant 2 or 1.
    Int8,
}

/// The widest rows variant 3 sums without overflowing i32 (`dim · 255 · 127 < 2³¹`).
pub const INT8_MAX_DIM: usize = 65_536;

impl NeighbourScreen {
    /// Every variant, in the order of its number.
    pub const ALL: [NeighbourScreen; 3] = [
        NeighbourScreen::F32,
        NeighbourScreen::Bf16,
        NeighbourScreen::Int8,
    ];

    pub fn number(self) -> u32 {
        match self {
            NeighbourScreen::F32 => 1,
            NeighbourScreen::Bf16 => 2,
            NeighbourScreen::Int8 => 3,
        }
    }

    /// The variant numbered `number`, if this CPU runs it.
    pub fn from_number(number: u32) -> Result<Self> {
        let screen = Self::ALL
            .into_iter()
            .find(|s| s.number() == number)
            .ok_or_else(|| {
                Error::input(format!(
                    "--neighbour-variant {number}: allowed are 1 (f32 screen, any CPU), 2 \
                     (bf16 screen, AVX512_BF16) and 3 (int8 screen, AVX512_VNNI)"
                ))
            })?;
        if !screen.supported() {
            return Err(Error::input(format!(
                "--neighbour-variant {number} needs AVX-512 instructions this CPU lacks \
                 (AVX512_BF16 for 2, AVX512_VNNI for 3); variant 1 runs anywhere"
            )));
        }
        Ok(screen)
    }

    /// Whether this CPU runs the variant.
    pub fn supported(self) -> bool {
        match self {
            NeighbourScreen::F32 => true,
            NeighbourScreen::Bf16 => avx512::bf16_supported(),
            NeighbourScreen::Int8 => avx512::int8_supported(),
        }
    }

    /// The fastest variant this CPU runs: 2, else 3, else 1. Variant 3 screens twice as fast as
    /// 2, but its wider bound leaves hundreds of candidates per row whose f64 re-rank (a cache
    /// miss per candidate row) costs more than that saves (BENCHMARKS.md).
    pub fn fastest() -> Self {
        [NeighbourScreen::Bf16, NeighbourScreen::Int8]
            .into_iter()
            .find(|s| s.supported())
            .unwrap_or(NeighbourScreen::F32)
    }
}

/// Each row's `k` nearest neighbours by cosine similarity (the module's definition), as sorted
/// indices. `values` is row-major `[rows, dim]`, `1 ≤ k < rows`.
pub fn cosine_neighbours(
    values: &[f32],
    dim: usize,
    k: usize,
    screen: NeighbourScreen,
) -> Result<Vec<Vec<u32>>> {
    let rows = values.len() / dim;
    if k == 0 || k >= rows {
        return Err(Error::input(format!(
            "k = {k} neighbours must be between 1 and rows − 1 = {}",
            rows.saturating_sub(1)
        )));
    }
    if !screen.supported() {
        return Err(Error::input(format!(
            "neighbour screen variant {} is not supported on this CPU",
            screen.number()
        )));
    }
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "row {} has a non-finite value ({}): cosine neighbours need finite embeddings",
            at / dim,
            values[at]
        )));
    }
    let inverse_norms: Vec<f64> = values
        .par_chunks_exact(dim)
        .map(|row| {
            let norm = dot_f64(row, row).sqrt();
            if norm > 0.0 {
                1.0 / norm
            } else {
                0.0
            }
        })
        .collect();
    let lists = match screen {
        NeighbourScreen::F32 => screen_f32(values, dim, &inverse_norms, k),
        NeighbourScreen::Int8 if dim <= INT8_MAX_DIM => screen_int8(values, dim, &inverse_norms, k),
        NeighbourScreen::Bf16 | NeighbourScreen::Int8 if avx512::bf16_supported() => {
            screen_bf16(values, dim, &inverse_norms, k)
        }
        NeighbourScreen::Bf16 | NeighbourScreen::Int8 => screen_f32(values, dim, &inverse_norms, k),
    };
    Ok(lists
        .into_par_iter()
        .enumerate()
        .map(|(i, list)| rerank(values, dim, &inverse_norms, i, &list, k))
        .collect())
}

/// `Σ a_t·b_t` in f64 with sixteen partial sums in a fixed order (the same value on every CPU
/// and at every SIMD width: Rust does not contract or reorder the additions).
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { dot_f64_avx512(a, b) };
    }
    dot_f64_lanes(a, b)
}

/// [`dot_f64`] compiled for AVX-512: two registers of partial sums instead of eight.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_f64_avx512(a: &[f32], b: &[f32]) -> f64 {
    dot_f64_lanes(a, b)
}

#[inline(always)]
fn dot_f64_lanes(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 16;
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let mut partial = [0.0f64; LANES];
    for (x, y) in ca.zip(cb) {
        for lane in 0..LANES {
            partial[lane] += f64::from(x[lane]) * f64::from(y[lane]);
        }
    }
    partial.iter().sum::<f64>() + tail
}

/// Row `i`'s `k` best candidates by the exact similarity, as sorted indices.
fn rerank(
    values: &[f32],
    dim: usize,
    inverse_norms: &[f64],
    i: usize,
    candidates: &[(f32, u32)],
    k: usize,
) -> Vec<u32> {
    let row = &values[i * dim..(i + 1) * dim];
    let mut scored: Vec<(f64, u32)> = candidates
        .iter()
        .map(|&(_, j)| {
            let other = &values[j as usize * dim..(j as usize + 1) * dim];
            let s = dot_f64(row, other) * inverse_norms[i] * inverse_norms[j as usize];
            (s, j)
        })
        .collect();
    scored.sort_unstable_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut best: Vec<u32> = scored[..k].iter().map(|e| e.1).collect();
    best.sort_unstable();
    best
}

/// `2·E_i` for every row from the screened rows' `δ_i` and `ν_i` (the module docs' bound), the
/// arithmetic of the screen adding at most `rounding·ν_i·ν_j`.
fn margins(stats: &[(f64, f64)], rounding: f64) -> Vec<f64> {
    let max_delta = stats.iter().map(|s| s.0).fold(0.0, f64::max);
    let max_norm = stats.iter().map(|s| s.1).fold(0.0, f64::max);
    stats
        .iter()
        .map(|&(delta, norm)| 2.0 * (delta + norm * max_delta + rounding * norm * max_norm + 1e-9))
        .collect()
}

/// `γ_m` for f32 sums of `dim` products in any order and blocking (`m = 2·dim + 16`).
fn f32_summation_bound(dim: usize) -> f64 {
    let m = (2 * dim + 16) as f64 * f64::from(f32::EPSILON) / 2.0;
    m / (1.0 - m)
}

/// `δ = ‖u − v‖` and `ν = ‖v‖` of one row from its f64 unit values `u` and screened values `v`.
fn screen_error(unit: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    let (delta, norm) = unit.fold((0.0, 0.0), |(d, n), (u, v)| {
        (d + (u - v) * (u - v), n + v * v)
    });
    (delta.sqrt(), norm.sqrt())
}

/// Rows per side of an f32 similarity tile: a tile's GEMM (`2·T²·dim` FLOPs) outweighs packing
/// its two `T × dim` operands, and its `T × T` similarities stay in the core's cache for the scans.
const F32_TILE: usize = 512;

/// Variant 1's candidate lists.
fn screen_f32(values: &[f32], dim: usize, inverse_norms: &[f64], k: usize) -> Vec<Vec<(f32, u32)>> {
    let unit: Vec<f32> = values
        .par_chunks_exact(dim)
        .zip(inverse_norms)
        .flat_map_iter(|(row, &r)| row.iter().map(move |&x| (f64::from(x) * r) as f32))
        .collect();
    let stats: Vec<(f64, f64)> = values
        .par_chunks_exact(dim)
        .zip(unit.par_chunks_exact(dim))
        .zip(inverse_norms)
        .map(|((row, screened), &r)| {
            screen_error(
                row.iter()
                    .zip(screened)
                    .map(|(&x, &v)| (f64::from(x) * r, f64::from(v))),
            )
        })
        .collect();
    let rows = inverse_norms.len();
    let margins = margins(&stats, f32_summation_bound(dim));
    screen_tiles(rows, k, &margins, F32_TILE, |sims, a, b| {
        let sims = &mut sims[..a.len() * b.len()];
        gemm_in_task(
            sims,
            Operand::plain(&unit[a.start * dim..a.end * dim], a.len(), dim),
            Operand::transposed(&unit[b.start * dim..b.end * dim], b.len(), dim),
            false,
        );
        b.len()
    })
}

/// Rows per side of a bf16 or int8 similarity tile (a multiple of the kernels' register block).
const AVX512_TILE: usize = 384;

/// `v` rounded to bf16 (to nearest, ties to even; `v` finite), subnormals flushed to zero as
/// `vdpbf16ps` reads them.
fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if rounded & 0x7F80 == 0 {
        rounded & 0x8000
    } else {
        rounded
    }
}

fn bf16_value(h: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(h) << 16))
}

/// Variant 2's candidate lists.
fn screen_bf16(
    values: &[f32],
    dim: usize,
    inverse_norms: &[f64],
    k: usize,
) -> Vec<Vec<(f32, u32)>> {
    let rows = inverse_norms.len();
    let padded_rows = rows.div_ceil(AVX512_TILE) * AVX512_TILE;
    let pairs = dim.div_ceil(2);
    // Panels of 16 rows: for each pair of coordinates, the 16 rows' (2p, 2p + 1) bf16 values as
    // one u32 each (low half 2p), so one 64-byte load is a `vdpbf16ps` operand of 16 rows and
    // one 4-byte broadcast that of a single row.
    let mut packed = vec![0u32; padded_rows * pairs];
    let stats: Vec<(f64, f64)> = packed
        .par_chunks_mut(16 * pairs)
        .enumerate()
        .flat_map_iter(|(panel, out)| {
            (0..16)
                .map(|lane| panel * 16 + lane)
                .take_while(|&row| row < rows)
                .map(|row| {
                    let (x, r) = (&values[row * dim..(row + 1) * dim], inverse_norms[row]);
                    let screened: Vec<u16> = x
                        .iter()
                        .map(|&v| to_bf16((f64::from(v) * r) as f32))
                        .collect();
                    for (p, pair) in screened.chunks(2).enumerate() {
                        let high = pair.get(1).copied().unwrap_or(0);
                        out[p * 16 + row % 16] = u32::from(pair[0]) | u32::from(high) << 16;
                    }
                    screen_error(
                        x.iter()
                            .zip(&screened)
                            .map(|(&v, &h)| (f64::from(v) * r, bf16_value(h))),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let margins = margins(&stats, f32_summation_bound(dim));
    screen_tiles(rows, k, &margins, AVX512_TILE, |sims, a, b| {
        // SAFETY: variant 2 runs only where `bf16_supported()`; tiles start at multiples of
        // AVX512_TILE inside `packed` (rows padded to a whole tile with zeros).
        unsafe { avx512::bf16_tile(&packed, pairs, a.start, b.start, AVX512_TILE, sims) };
        AVX512_TILE
    })
}

/// One row for variant 3: `σ = max|u|/127` (as f32), `q = round(u/σ)` in [−127, 127], `Σ q`,
/// and `(δ, ν)` of `σ·q`.
struct QuantisedRow {
    scale: f32,
    sum: i32,
    q: Vec<i8>,
    stats: (f64, f64),
}

/// Variant 3's candidate lists.
fn screen_int8(
    values: &[f32],
    dim: usize,
    inverse_norms: &[f64],
    k: usize,
) -> Vec<Vec<(f32, u32)>> {
    let rows = inverse_norms.len();
    let padded_rows = rows.div_ceil(AVX512_TILE) * AVX512_TILE;
    let quads = dim.div_ceil(4);
    let quantised: Vec<QuantisedRow> = values
        .par_chunks_exact(dim)
        .zip(inverse_norms)
        .map(|(x, &r)| {
            let unit: Vec<f64> = x.iter().map(|&v| f64::from(v) * r).collect();
            let scale = (unit.iter().fold(0.0f64, |m, u| m.max(u.abs())) / 127.0) as f32;
            let q: Vec<i8> = unit
                .iter()
                .map(|&u| {
                    if scale > 0.0 {
                        (u / f64::from(scale)).round().clamp(-127.0, 127.0) as i8
                    } else {
                        0
                    }
                })
                .collect();
            let sum = q.iter().map(|&v| i32::from(v)).sum();
            let stats = screen_error(
                unit.iter()
                    .zip(&q)
                    .map(|(&u, &v)| (u, f64::from(scale) * f64::from(v))),
            );
            QuantisedRow {
                scale,
                sum,
                q,
                stats,
            }
        })
        .collect();
    let mut scales = vec![0.0f32; padded_rows];
    let mut sums = vec![0i32; padded_rows];
    for (row, quantised) in quantised.iter().enumerate() {
        (scales[row], sums[row]) = (quantised.scale, quantised.sum);
    }
    // Panels of 16 rows as for bf16: four coordinates' 8-bit values per u32.
    let mut packed = vec![0u32; padded_rows * quads];
    packed
        .par_chunks_mut(16 * quads)
        .enumerate()
        .for_each(|(panel, out)| {
            for row in (panel * 16..panel * 16 + 16).take_while(|&row| row < rows) {
                for (p, quad) in quantised[row].q.chunks(4).enumerate() {
                    let mut bytes = [0u8; 4];
                    for (b, &v) in bytes.iter_mut().zip(quad) {
                        *b = v as u8;
                    }
                    out[p * 16 + row % 16] = u32::from_le_bytes(bytes);
                }
            }
        });
    let stats: Vec<(f64, f64)> = quantised.iter().map(|q| q.stats).collect();
    drop(quantised);
    // Conversion of the exact sum, σ_i·σ_j and their product: three f32 roundings.
    let margins = margins(&stats, 3.01 * f64::from(f32::EPSILON) / 2.0);
    screen_tiles(rows, k, &margins, AVX512_TILE, |sims, a, b| {
        // SAFETY: variant 3 runs only where `int8_supported()` and dim ≤ INT8_MAX_DIM; tiles
        // start at multiples of AVX512_TILE inside `packed`, `scales` and `sums`.
        unsafe {
            avx512::int8_tile(
                &packed,
                quads,
                (&scales, &sums),
                a.start,
                b.start,
                AVX512_TILE,
                sims,
            )
        };
        AVX512_TILE
    })
}

/// Every row's candidate list from screened tiles: `fill(sims, rows_a, rows_b)` writes the
/// screened similarities of rows `a` (along the rows) and `b` (along the columns) into `sims`
/// (room for `tile × tile`) and returns its row stride.
fn screen_tiles(
    rows: usize,
    k: usize,
    margins: &[f64],
    tile: usize,
    fill: impl Fn(&mut [f32], Range<usize>, Range<usize>) -> usize + Sync,
) -> Vec<Vec<(f32, u32)>> {
    let tiles = rows.div_ceil(tile);
    let span = |t: usize| t * tile..((t + 1) * tile).min(rows);
    // One lock per tile of rows: a task updates its two tiles' lists one after the other.
    let best: Vec<Mutex<Candidates>> = (0..tiles)
        .map(|t| Mutex::new(Candidates::new(&margins[span(t)], k)))
        .collect();
    let pairs: Vec<(usize, usize)> = (0..tiles)
        .flat_map(|i| (i..tiles).map(move |j| (i, j)))
        .collect();
    pairs.into_par_iter().for_each_init(
        || vec![0.0f32; tile * tile],
        |sims, (i, j)| {
            let (a, b) = (span(i), span(j));
            let stride = fill(sims, a.clone(), b.clone());
            let lock = |t: usize| best[t].lock().unwrap_or_else(PoisonError::into_inner);
            lock(i).offer_rows(sims, stride, a.clone(), b.clone());
            if i != j {
                lock(j).offer_columns(sims, stride, a, b.len());
            }
        },
    );
    best.into_iter()
        .flat_map(|t| {
            t.into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .into_lists()
        })
        .collect()
}

/// Lanes compared at once when scanning a tile (one AVX-512 register of f32).
const SCAN: usize = 16;

/// The screened candidates of a tile's rows: per row, the `k` best screened values (for
/// `Ŝ_k`), the admission floor `Ŝ_k − 2·E_i` and every `(ŝ, index)` offered at or above the
/// floor at the time (the floor only rises, so nothing a later floor admits is missing).
struct Candidates {
    k: usize,
    /// Each row's `k` best screened similarities, best first; −∞ until `k` were offered.
    best: Vec<f32>,
    margin: Vec<f64>,
    /// `Ŝ_k − 2·E_i` rounded down to f32; −∞ until `k` were offered.
    floor: Vec<f32>,
    lists: Vec<Vec<(f32, u32)>>,
    /// A list is pruned to its floor when it reaches this length.
    caps: Vec<usize>,
}

impl Candidates {
    fn new(margin: &[f64], k: usize) -> Self {
        let rows = margin.len();
        Candidates {
            k,
            best: vec![f32::NEG_INFINITY; rows * k],
            margin: margin.to_vec(),
            floor: vec![f32::NEG_INFINITY; rows],
            lists: vec![Vec::new(); rows],
            caps: vec![Self::min_cap(k); rows],
        }
    }

    fn min_cap(k: usize) -> usize {
        8 * k + 64
    }

    /// Offers `(sim, index)` to local row `row`; the caller checked `sim ≥ floor[row]`.
    fn offer(&mut self, row: usize, sim: f32, index: u32) {
        let k = self.k;
        let list = &mut self.lists[row];
        list.push((sim, index));
        let best = &mut self.best[row * k..(row + 1) * k];
        if sim > best[k - 1] {
            let at = best.iter().position(|&b| sim > b).expect("beats the last");
            best.copy_within(at..k - 1, at + 1);
            best[at] = sim;
            if best[k - 1] > f32::NEG_INFINITY {
                self.floor[row] = round_down(f64::from(best[k - 1]) - self.margin[row]);
            }
        }
        if list.len() >= self.caps[row] {
            let floor = self.floor[row];
            list.retain(|e| e.0 >= floor);
            self.caps[row] = (2 * list.len()).max(Self::min_cap(k));
        }
    }

    /// Rows of `sims` (row stride `stride`) offered to this tile's rows, which are `a`; columns
    /// are the rows `b`; a row's similarity to itself skipped.
    fn offer_rows(&mut self, sims: &[f32], stride: usize, a: Range<usize>, b: Range<usize>) {
        for r in 0..a.len() {
            let me = a.start + r;
            let line = &sims[r * stride..r * stride + b.len()];
            for (chunk_at, chunk) in line.chunks(SCAN).enumerate() {
                let floor = self.floor[r];
                if !chunk.iter().fold(false, |any, &s| any | (s >= floor)) {
                    continue;
                }
                for (c, &s) in chunk.iter().enumerate() {
                    let j = b.start + chunk_at * SCAN + c;
                    if s >= self.floor[r] && j != me {
                        self.offer(r, s, j as u32);
                    }
                }
            }
        }
    }

    /// Columns of `sims` (row stride `stride`, rows the global rows `a`) offered to this tile's
    /// rows, which are the `cols` columns (another tile than `a`).
    fn offer_columns(&mut self, sims: &[f32], stride: usize, a: Range<usize>, cols: usize) {
        for r in 0..a.len() {
            let line = &sims[r * stride..r * stride + cols];
            for (chunk_at, chunk) in line.chunks(SCAN).enumerate() {
                let c0 = chunk_at * SCAN;
                let floors = &self.floor[c0..c0 + chunk.len()];
                let any = chunk
                    .iter()
                    .zip(floors)
                    .fold(false, |any, (&s, &f)| any | (s >= f));
                if !any {
                    continue;
                }
                for (c, &s) in chunk.iter().enumerate() {
                    if s >= self.floor[c0 + c] {
                        self.offer(c0 + c, s, (a.start + r) as u32);
                    }
                }
            }
        }
    }

    /// The final lists, each pruned to its final floor.
    fn into_lists(self) -> Vec<Vec<(f32, u32)>> {
        self.lists
            .into_iter()
            .zip(self.floor)
            .map(|(mut list, floor)| {
                list.retain(|e| e.0 >= floor);
                list
            })
            .collect()
    }
}

/// The largest f32 at or below `x`.
fn round_down(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) > x {
        f.next_down()
    } else {
        f
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows per register block: half a 16-row panel, so the block's broadcasts share cache lines.
    const ROWS: usize = 8;
    /// 16-column panels per register block: `ROWS × PANELS` = 24 accumulators, 3 column
    /// registers and a broadcast of the 32 AVX-512 registers.
    const PANELS: usize = 3;
    /// Coordinate pairs per pass over a tile: a register block's column panels
    /// (`PANELS × 16 × 4` bytes per pair, 24 KiB) stay in L1 while every row block of the tile
    /// streams past them; the accumulators are stored and reloaded between passes.
    const PAIRS_PER_PASS: usize = 128;

    pub fn bf16_supported() -> bool {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }

    pub fn int8_supported() -> bool {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")
    }

    /// `sims[r·t + c]` = the f32 sum of bf16 products of packed rows `a0 + r` and `b0 + c`,
    /// for `r, c < t`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `a0`, `b0` and `t` are multiples of 16·PANELS and
    /// of ROWS, `packed` (panels of 16 rows, `pairs` u32 per row) holds rows up to `a0 + t` and
    /// `b0 + t`, and `sims` has room for `t × t`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_tile(
        packed: &[u32],
        pairs: usize,
        a0: usize,
        b0: usize,
        t: usize,
        sims: &mut [f32],
    ) {
        debug_assert!(packed.len() >= (a0.max(b0) + t) * pairs && sims.len() >= t * t);
        debug_assert!(
            a0.is_multiple_of(16)
                && b0.is_multiple_of(16 * PANELS)
                && t.is_multiple_of(16 * PANELS)
        );
        let base = packed.as_ptr();
        let out = sims.as_mut_ptr();
        for first in (0..pairs).step_by(PAIRS_PER_PASS) {
            let last = (first + PAIRS_PER_PASS).min(pairs);
            for cb in (0..t).step_by(16 * PANELS) {
                let mut b = [base; PANELS];
                for (n, panel) in b.iter_mut().enumerate() {
                    *panel = base.add((b0 + cb) / 16 * pairs * 16 + n * pairs * 16);
                }
                for rb in (0..t).step_by(ROWS) {
                    let row = a0 + rb;
                    let a = base.add(row / 16 * pairs * 16 + row % 16);
                    let mut acc = [[_mm512_setzero_ps(); PANELS]; ROWS];
                    if first > 0 {
                        for (m, acc_row) in acc.iter_mut().enumerate() {
                            for (n, v) in acc_row.iter_mut().enumerate() {
                                *v = _mm512_loadu_ps(out.add((rb + m) * t + cb + 16 * n));
                            }
                        }
                    }
                    for p in first..last {
                        let mut bv = [_mm512_setzero_si512(); PANELS];
                        for n in 0..PANELS {
                            bv[n] = _mm512_loadu_si512(b[n].add(p * 16).cast());
                        }
                        for (m, acc_row) in acc.iter_mut().enumerate() {
                            let av = _mm512_set1_epi32(*a.add(p * 16 + m) as i32);
                            for n in 0..PANELS {
                                acc_row[n] = _mm512_dpbf16_ps(
                                    acc_row[n],
                                    std::mem::transmute::<__m512i, __m512bh>(av),
                                    std::mem::transmute::<__m512i, __m512bh>(bv[n]),
                                );
                            }
                        }
                    }
                    for (m, acc_row) in acc.iter().enumerate() {
                        for (n, v) in acc_row.iter().enumerate() {
                            _mm512_storeu_ps(out.add((rb + m) * t + cb + 16 * n), *v);
                        }
                    }
                }
            }
        }
    }

    /// `sims[r·t + c]` = `Σ q·q` of rows `a0 + r` and `b0 + c` (8-bit values, four per u32 in
    /// `packed`'s panels), times `σ_r·σ_c` (`scales`), for `r, c < t`. The rows' bytes are
    /// flipped to `q + 128` (unsigned, as `vpdpbusd` wants one side) and `128·Σ_t q_ct`
    /// (`sums`) taken off each column's sum.
    ///
    /// # Safety
    /// As for [`bf16_tile`], with AVX512_VNNI for AVX512_BF16, `quads` u32 per row, `scales` and
    /// `sums` holding rows up to `a0 + t` and `b0 + t`, and `dim ≤ INT8_MAX_DIM`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn int8_tile(
        packed: &[u32],
        quads: usize,
        (scales, sums): (&[f32], &[i32]),
        a0: usize,
        b0: usize,
        t: usize,
        sims: &mut [f32],
    ) {
        debug_assert!(packed.len() >= (a0.max(b0) + t) * quads && sims.len() >= t * t);
        debug_assert!(scales.len() >= a0.max(b0) + t && sums.len() >= a0.max(b0) + t);
        let base = packed.as_ptr();
        let out = sims.as_mut_ptr();
        let flip = _mm512_set1_epi32(0x8080_8080_u32 as i32);
        for first in (0..quads).step_by(PAIRS_PER_PASS) {
            let last = (first + PAIRS_PER_PASS).min(quads);
            for cb in (0..t).step_by(16 * PANELS) {
                let mut b = [base; PANELS];
                for (n, panel) in b.iter_mut().enumerate() {
                    *panel = base.add((b0 + cb) / 16 * quads * 16 + n * quads * 16);
                }
                for rb in (0..t).step_by(ROWS) {
                    let row = a0 + rb;
                    let a = base.add(row / 16 * quads * 16 + row % 16);
                    let mut acc = [[_mm512_setzero_si512(); PANELS]; ROWS];
                    if first > 0 {
                        for (m, acc_row) in acc.iter_mut().enumerate() {
                            for (n, v) in acc_row.iter_mut().enumerate() {
                                *v = _mm512_loadu_si512(out.add((rb + m) * t + cb + 16 * n).cast());
                            }
                        }
                    }
                    for p in first..last {
                        let mut bv = [_mm512_setzero_si512(); PANELS];
                        for n in 0..PANELS {
                            bv[n] = _mm512_loadu_si512(b[n].add(p * 16).cast());
                        }
                        for (m, acc_row) in acc.iter_mut().enumerate() {
                            let av = _mm512_xor_si512(
                                _mm512_set1_epi32(*a.add(p * 16 + m) as i32),
                                flip,
                            );
                            for n in 0..PANELS {
                                acc_row[n] = _mm512_dpbusd_epi32(acc_row[n], av, bv[n]);
                            }
                        }
                    }
                    if last < quads {
                        // Partial integer sums, kept bit for bit until the next pass.
                        for (m, acc_row) in acc.iter().enumerate() {
                            for (n, v) in acc_row.iter().enumerate() {
                                _mm512_storeu_si512(out.add((rb + m) * t + cb + 16 * n).cast(), *v);
                            }
                        }
                        continue;
                    }
                    for n in 0..PANELS {
                        let col = b0 + cb + 16 * n;
                        let offset = _mm512_slli_epi32::<7>(_mm512_loadu_si512(
                            sums.as_ptr().add(col).cast(),
                        ));
                        let col_scales = _mm512_loadu_ps(scales.as_ptr().add(col));
                        for (m, acc_row) in acc.iter().enumerate() {
                            let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc_row[n], offset));
                            let scale = _mm512_mul_ps(_mm512_set1_ps(scales[row + m]), col_scales);
                            _mm512_storeu_ps(
                                out.add((rb + m) * t + cb + 16 * n),
                                _mm512_mul_ps(exact, scale),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub fn bf16_supported() -> bool {
        false
    }

    pub fn int8_supported() -> bool {
        false
    }

    /// Never called: [`bf16_supported`] is false off x86-64.
    ///
    /// # Safety
    /// None needed; it panics.
    pub unsafe fn bf16_tile(_: &[u32], _: usize, _: usize, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("the bf16 screen needs x86-64")
    }

    /// Never called: [`int8_supported`] is false off x86-64.
    ///
    /// # Safety
    /// None needed; it panics.
    pub unsafe fn int8_tile(
        _: &[u32],
        _: usize,
        _: (&[f32], &[i32]),
        _: usize,
        _: usize,
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("the int8 screen needs x86-64")
    }
}
