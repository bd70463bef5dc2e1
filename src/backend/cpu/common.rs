//! What several CPU op families share: the host values behind a tensor (f32, or the half-precision
//! weights `linear` and `gather_rows` read), the split of packed sequences into disjoint row
//! blocks, the lane-wise row sums (the counterpart of `kernels/common.cuh`), scratch buffers
//! reused from task to task, and (from [`crate::backend::simd`]) the macro that compiles a row
//! loop for AVX2 or AVX-512 where the CPU has it.

use crate::backend::{SeqLayout, Storage, Tensor};
use crate::error::{Error, Result};
use crate::tensor::HalfMatrix;

/// `buffer[..len]`, grown (with default values) where it is shorter: a task's scratch, reused
/// by the next task, which writes what it reads (nothing is cleared between tasks).
pub(super) fn sized<T: Clone + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    &mut buffer[..len]
}

/// The f32 values of a CPU tensor, or the error naming the backend that holds it (or saying that
/// it holds half-precision weights, which only `linear` and `gather_rows` read).
pub(super) fn values(t: &Tensor) -> Result<&[f32]> {
    match &t.storage {
        Storage::Cpu(v) => Ok(v),
        Storage::CpuMapped(bytes) => Ok(bytes.as_f32().expect("checked by upload_mapped")),
        Storage::CpuHalf(m) => Err(Error::input(format!(
            "tensor of shape {:?} holds {:?} weights, which only linear (as weights) and \
             gather_rows (as the table) read on the cpu backend",
            t.shape,
            m.dtype()
        ))),
        _ => Err(t.foreign("cpu")),
    }
}

/// A matrix operand that may be half precision: `linear`'s weights, `gather_rows`' table.
pub(super) enum Matrix<'a> {
    F32(&'a [f32]),
    Half(&'a HalfMatrix),
}

/// The values behind a weight or table tensor, f32 or half precision.
pub(super) fn matrix(t: &Tensor) -> Result<Matrix<'_>> {
    match &t.storage {
        Storage::CpuHalf(m) => Ok(Matrix::Half(m)),
        _ => values(t).map(Matrix::F32),
    }
}

/// [`values`] for writing; drops the packed copy `linear` may keep of them.
pub(super) fn values_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    if matches!(t.storage, Storage::CpuMapped(_) | Storage::CpuHalf(_)) {
        return Err(Error::input(format!(
            "tensor of shape {:?} holds weights read in place from a checkpoint; no op writes them",
            t.shape
        )));
    }
    if !matches!(t.storage, Storage::Cpu(_)) {
        return Err(t.foreign("cpu"));
    }
    t.cpu_packed = Default::default();
    let Storage::Cpu(v) = &mut t.storage else {
        unreachable!("checked above")
    };
    Ok(v)
}

/// Splits `data` into the row blocks of each packed sequence, so sequences can be processed in
/// parallel with disjoint mutable borrows.
pub(super) fn split_sequences<'a>(
    mut data: &'a mut [f32],
    layout: &SeqLayout,
    width: usize,
) -> Vec<&'a mut [f32]> {
    let mut blocks = Vec::with_capacity(layout.num_sequences());
    for s in 0..layout.num_sequences() {
        let (head, tail) = data.split_at_mut(layout.range(s).len() * width);
        blocks.push(head);
        data = tail;
    }
    blocks
}

/// `Σ f(v)` in 32 independent lanes: sums the compiler keeps in registers (a single running f32
/// sum must be added in order, one element at a time), two AVX-512 or four AVX2 ones in flight
/// to hide the add latency (one register of eight lanes held RMSNorm's statistics sweep to an
/// add's latency per vector), and whose rounding error grows with `len / 32` instead of `len`.
/// The row statistics of the norm family, the L2 norm of the pool family and the softmax
/// denominator.
#[inline(always)]
pub(super) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = LaneSums::default();
    let chunks = values.chunks_exact(SUM_LANES);
    let tail = chunks.remainder();
    chunks.for_each(|chunk| lanes.add(chunk, &f));
    lanes.total(tail, f)
}

/// Lanes of [`lane_sum`]'s accumulators.
pub(super) const SUM_LANES: usize = 32;

/// [`lane_sum`]'s running lanes, for loops that add a row's values a chunk at a time beside other
/// work (RMSNorm sums the next row's squares while it scales this one), in the same order.
#[derive(Default)]
pub(super) struct LaneSums([f32; SUM_LANES]);

impl LaneSums {
    /// Adds `f` of each value of `chunk` (of [`SUM_LANES`] values) into its lane.
    #[inline(always)]
    pub(super) fn add(&mut self, chunk: &[f32], f: impl Fn(f32) -> f32) {
        self.0.iter_mut().zip(chunk).for_each(|(l, &v)| *l += f(v));
    }

    /// The lanes' sum, plus `f` of each value of the `tail` past the last whole chunk.
    #[inline(always)]
    pub(super) fn total(&self, tail: &[f32], f: impl Fn(f32) -> f32) -> f32 {
        self.0.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
    }
}

pub(super) use crate::backend::simd::with_wide_simd;

with_wide_simd! {
    /// [`super::add_widened`], as wide as the CPU allows.
    pub(super) avx512 fn add_widened_wide => add_widened_portable(sums: &mut [f64], row: &[f32])
}

with_wide_simd! {
    /// [`super::row_dots`], as wide as the CPU allows.
    pub(super) avx512 fn row_dots_wide => row_dots_portable(out: &mut [f32], row: &[f32], others: &[f32])
}

/// Lanes of [`row_dots_portable`]'s accumulators: fixed, so that every CPU adds the same
/// products in the same order (one AVX-512 register, two AVX2 ones).
const DOT_LANES: usize = 16;
/// Dot products one sweep over the row computes at once: their accumulators stay in registers
/// and each chunk of the row is loaded once for all of them.
const DOT_GROUP: usize = 8;

#[inline(always)]
pub(super) fn row_dots_portable(out: &mut [f32], row: &[f32], others: &[f32]) {
    let dim = row.len();
    assert_eq!(others.len(), out.len() * dim, "row_dots: sizes differ");
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    for (out, others) in out
        .chunks_mut(DOT_GROUP)
        .zip(others.chunks(DOT_GROUP * dim))
    {
        match out.len() {
            8 => group_dots::<8>(out, row, others),
            7 => group_dots::<7>(out, row, others),
            6 => group_dots::<6>(out, row, others),
            5 => group_dots::<5>(out, row, others),
            4 => group_dots::<4>(out, row, others),
            3 => group_dots::<3>(out, row, others),
            2 => group_dots::<2>(out, row, others),
            _ => group_dots::<1>(out, row, others),
        }
    }
}

/// `out[j] = row · others[j]` for `M` rows `others`, each product added into lane `i mod 16`
/// of its accumulator, the lanes then summed in order, the tail past the last full chunk last.
#[inline(always)]
fn group_dots<const M: usize>(out: &mut [f32], row: &[f32], others: &[f32]) {
    let dim = row.len();
    let full = dim - dim % DOT_LANES;
    let mut acc = [[0.0f32; DOT_LANES]; M];
    for start in (0..full).step_by(DOT_LANES) {
        let chunk: &[f32; DOT_LANES] = row[start..start + DOT_LANES].try_into().expect("chunk");
        for (j, acc) in acc.iter_mut().enumerate() {
            let other: &[f32; DOT_LANES] = others[j * dim + start..j * dim + start + DOT_LANES]
                .try_into()
                .expect("chunk");
            for l in 0..DOT_LANES {
                acc[l] += chunk[l] * other[l];
            }
        }
    }
    for (j, (o, acc)) in out.iter_mut().zip(&acc).enumerate() {
        let tail = (full..dim)
            .map(|i| row[i] * others[j * dim + i])
            .sum::<f32>();
        *o = acc.iter().sum::<f32>() + tail;
    }
}

fn add_widened_portable(sums: &mut [f64], row: &[f32]) {
    assert_eq!(sums.len(), row.len(), "add_widened: lengths differ");
    sums.iter_mut()
        .zip(row)
        .for_each(|(s, &v)| *s += f64::from(v));
}

/// `Σ f(v)` in f64, in 32 independent lanes: [`lane_sum`]'s counterpart for the row statistics
/// that need f64 (LayerNorm's mean and variance); [`lane_sum_pairs_f64`] over the slice paired
/// with itself, whose second loads the compiler drops.
#[inline(always)]
pub(super) fn lane_sum_f64(values: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    lane_sum_pairs_f64(values, values, |v, _| f(v))
}

/// `Σ f(a, b)` over the pairs of two equally long slices, in f64, in 32 independent lanes. It
/// vectorises to whole-register conversions and additions, with four AVX-512 sums in flight to
/// hide the add latency; one quantity a sweep, since two sums in one loop (a row's sum and sum of
/// squares) compiled to scalar conversions and shuffles (five instructions an element, LayerNorm
/// at half the triad).
#[inline(always)]
pub(super) fn lane_sum_pairs_f64(a: &[f32], b: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
    assert_eq!(a.len(), b.len(), "lane_sum_pairs_f64: lengths differ");
    let mut lanes = [0.0f64; 32];
    let (chunks_a, chunks_b) = (a.chunks_exact(32), b.chunks_exact(32));
    let (tail_a, tail_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (chunk_a, chunk_b) in chunks_a.zip(chunks_b) {
        for ((l, &x), &y) in lanes.iter_mut().zip(chunk_a).zip(chunk_b) {
            *l += f(f64::from(x), f64::from(y));
        }
    }
    let tail = tail_a.iter().zip(tail_b);
    let tail_sum: f64 = tail.map(|(&x, &y)| f(f64::from(x), f64::from(y))).sum();
    lanes.iter().sum::<f64>() + tail_sum
}

/// Rows of width `d` per rayon task of a row kernel: about 64 KiB of them, since one row of a
/// few KiB is less work than a task costs to schedule.
pub(super) fn rows_per_task(d: usize) -> usize {
    (16 * 1024 / d.max(1)).max(1)
}

/// Asks for every 64-byte line `values` touch with `_mm_prefetch`'s hint `HINT`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn prefetch_lines<const HINT: i32>(values: &[impl Sized]) {
    let first = values.as_ptr().cast::<i8>();
    let offset = first as usize % 64;
    for line in (0..offset + std::mem::size_of_val(values)).step_by(64) {
        // SAFETY: a prefetch never faults; these lines hold `values`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<HINT>(first.wrapping_sub(offset).wrapping_add(line))
        };
    }
}
