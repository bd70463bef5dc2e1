//! CPU kernel of the trim family: α̂, KS and trimmed W2 of many candidates at once
//! (definitions in [`crate::backend::trim`]).
//!
//! Leave-one-out over an ensemble of `M` models × `N` points would naively merge each model with
//! a freshly sorted pool of the other `M − 1`, O(M²·N). Instead the whole pool is sorted once,
//! tagged with model ids; one scan then records, for every point, its position and the pooled
//! ranks `< v` and `≤ v` of its value. A model's reference counts are the pooled counts minus its
//! own, so each model needs only its own `N` points afterwards, and models run in parallel.
//! Only the exact trimmed W2 needs the whole reference of each model (O(M·N) per model); the
//! candidate-grid approximation needs its `N` quantiles.
//!
//! Every pass over the pool runs on every core: the pool is cut into [`chunk_len`] blocks; the
//! radix sort counts digits per block and scatters each block from its own offsets (stable, so
//! the result is the one a serial sort gives), and the scan cuts the sorted pool at the start of a
//! run of equal values and gives each block its own cursor per model. Results do not depend on
//! the number of threads.

use rayon::prelude::*;

use crate::backend::trim::{self, Profile};
use crate::backend::{TrimReference, TrimResult, TrimSpec};
use crate::error::Result;

pub(super) fn trim_search(
    candidates: &[&[f32]],
    reference: TrimReference<'_>,
    spec: &TrimSpec,
) -> Result<Vec<TrimResult>> {
    trim::check_search(candidates, reference, spec)?;
    match reference {
        TrimReference::Sample(r) => Ok(against_sample(candidates, r, spec)),
        TrimReference::LeaveOneOut | TrimReference::LeaveOneOutPart { .. } => {
            leave_one_out(candidates, reference.compared(candidates.len()), spec)
        }
    }
}

fn against_sample(candidates: &[&[f32]], reference: &[f32], spec: &TrimSpec) -> Vec<TrimResult> {
    let reference = trim::sorted(reference);
    candidates
        .par_iter()
        .map(|c| {
            let c = trim::sorted(c);
            let profile = Profile::from_sorted(&c, &reference);
            trim::result(&profile, c.len(), reference.len(), spec, true, |alpha| {
                trim::trimmed_w2(&c, &reference, alpha)
            })
        })
        .collect()
}

/// One point of the pool as its model sees it: value, position in the pooled order, and the
/// pooled counts of values `< v` and `≤ v`.
#[derive(Clone, Copy, Default)]
struct Entry {
    value: f32,
    pos: u32,
    lt: u32,
    le: u32,
}

/// Pool positions per parallel block: a few blocks per thread so uneven blocks even out, none so
/// small that its per-block tables (a digit histogram, a cursor per model) outweigh its points.
fn chunk_len(total: usize) -> usize {
    total
        .div_ceil(4 * rayon::current_num_threads())
        .max(1 << 14)
}

/// A slice written by several tasks at once, each at positions no other task writes.
struct Shared<T>(*mut T);

// SAFETY: tasks write disjoint positions (each caller says why), so no element is shared.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn new(slice: &mut [T]) -> Self {
        Shared(slice.as_mut_ptr())
    }

    /// # Safety
    /// `i` lies inside the slice, and no other task writes or reads position `i` meanwhile.
    unsafe fn write(&self, i: usize, value: T) {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(i).write(value) }
    }
}

/// Every candidate against the pool of the others; results for the candidates `compared`.
fn leave_one_out(
    candidates: &[&[f32]],
    compared: std::ops::Range<usize>,
    spec: &TrimSpec,
) -> Result<Vec<TrimResult>> {
    let models = candidates.len();
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(candidates.iter().scan(0, |end, c| {
            *end += c.len();
            Some(*end)
        }))
        .collect();
    let total = offsets[models];
    let chunk = chunk_len(total);

    // Upper 32 bits: the value in an order-preserving encoding; lower: the model id. The digit
    // histograms of the sort are counted as the keys are written.
    let mut keys = vec![0u64; total];
    let histograms: Vec<DigitCounts> = keys
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(c, block)| {
            let start = c * chunk;
            let mut counts = DigitCounts::new();
            let mut k = offsets.partition_point(|&o| o <= start) - 1;
            let mut at = 0;
            while at < block.len() {
                let from = start + at - offsets[k];
                let take = (candidates[k].len() - from).min(block.len() - at);
                for (key, &v) in block[at..at + take]
                    .iter_mut()
                    .zip(&candidates[k][from..from + take])
                {
                    *key = (u64::from(trim::order_bits(v)) << 32) | k as u64;
                    counts.add(*key);
                }
                at += take;
                k += 1;
            }
            counts
        })
        .collect();
    radix_sort_by_value(&mut keys, histograms, chunk);

    let (entries, pooled) = scan(&keys, &offsets, chunk);
    drop(keys);

    let exact_w2 = spec.w2_grid.is_exact(models, total);
    Ok(compared
        .into_par_iter()
        .map(|k| {
            let own = &entries[offsets[k]..offsets[k + 1]];
            let (n, m) = (own.len(), total - own.len());
            let candidate: Vec<f32> = own.iter().map(|e| e.value).collect();
            let counts = trim::counts_from_ranks(
                &candidate,
                |i| (own[i].lt as usize, own[i].le as usize),
                true,
            );
            let profile = Profile::from_counts(n, m, counts);
            trim::result(&profile, n, m, spec, exact_w2, |alpha| {
                let positions: Vec<u32> = own.iter().map(|e| e.pos).collect();
                let reference = if exact_w2 {
                    trim::pool_without(&positions, &pooled)
                } else {
                    trim::pool_quantiles_without(&positions, &pooled)
                };
                trim::trimmed_w2(&candidate, &reference, alpha)
            })
        })
        .collect())
}

/// One scan of the sorted `keys` in pooled order: every model's entries (at `offsets`, already
/// sorted by value, equal values in pooled order) and the pooled values. Blocks start where a
/// run of equal values starts, so each run's counts are known inside its block; a block's cursor
/// for model `k` starts after the points of `k` in the blocks before it.
fn scan(keys: &[u64], offsets: &[usize], chunk: usize) -> (Vec<Entry>, Vec<f32>) {
    let (total, models) = (keys.len(), offsets.len() - 1);
    let value_at = |i: usize| keys[i] >> 32;
    let mut bounds = vec![0];
    while let Some(&last) = bounds.last() {
        let mut next = (last + chunk).min(total);
        while next < total && value_at(next) == value_at(next - 1) {
            next += 1;
        }
        bounds.push(next);
        if next == total {
            break;
        }
    }
    let blocks: Vec<std::ops::Range<usize>> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
    let per_block: Vec<Vec<u32>> = blocks
        .par_iter()
        .map(|block| {
            let mut counts = vec![0u32; models];
            for &key in &keys[block.clone()] {
                counts[(key & 0xFFFF_FFFF) as usize] += 1;
            }
            counts
        })
        .collect();
    let mut cursors = Vec::with_capacity(blocks.len());
    let mut next: Vec<usize> = offsets[..models].to_vec();
    for counts in &per_block {
        cursors.push(next.clone());
        next.iter_mut()
            .zip(counts)
            .for_each(|(n, &c)| *n += c as usize);
    }
    drop(per_block);

    let mut entries = Vec::<Entry>::with_capacity(total);
    let mut pooled = Vec::<f32>::with_capacity(total);
    let (entry_out, pooled_out) = (Shared(entries.as_mut_ptr()), Shared(pooled.as_mut_ptr()));
    blocks
        .into_par_iter()
        .zip(cursors)
        .for_each(|(block, mut cursor)| {
            let mut run_start = block.start;
            while run_start < block.end {
                let upper = value_at(run_start);
                let run_end = run_start
                    + keys[run_start..block.end]
                        .iter()
                        .take_while(|&&k| k >> 32 == upper)
                        .count();
                let value = trim::from_order_bits(upper as u32);
                for (pos, &key) in (run_start..run_end).zip(&keys[run_start..run_end]) {
                    let k = (key & 0xFFFF_FFFF) as usize;
                    let entry = Entry {
                        value,
                        pos: pos as u32,
                        lt: run_start as u32,
                        le: run_end as u32,
                    };
                    // SAFETY: block cursors partition each model's `offsets` range (counted
                    // above) and blocks partition the pool, so each position is written once.
                    unsafe {
                        entry_out.write(cursor[k], entry);
                        pooled_out.write(pos, value);
                    }
                    cursor[k] += 1;
                }
                run_start = run_end;
            }
        });
    // SAFETY: every one of the `total` positions of both was written above.
    unsafe {
        entries.set_len(total);
        pooled.set_len(total);
    }
    (entries, pooled)
}

/// Bits per radix digit of the 32-bit value (three passes: 11, 11, 10 bits).
const DIGIT_BITS: u32 = 11;
const BUCKETS: usize = 1 << DIGIT_BITS;
/// Shifts of the three digits inside a key, whose upper 32 bits are the value.
const SHIFTS: [u32; 3] = [32, 32 + DIGIT_BITS, 32 + 2 * DIGIT_BITS];

fn digit(key: u64, shift: u32) -> usize {
    (key >> shift) as usize & (BUCKETS - 1)
}

/// Counts of each digit value in a block of keys, for each of the three passes.
struct DigitCounts([Vec<u32>; 3]);

impl DigitCounts {
    fn new() -> Self {
        DigitCounts(std::array::from_fn(|_| vec![0; BUCKETS]))
    }

    #[inline(always)]
    fn add(&mut self, key: u64) {
        for (counts, shift) in self.0.iter_mut().zip(SHIFTS) {
            counts[digit(key, shift)] += 1;
        }
    }
}

/// Stable LSD radix sort by the upper 32 bits, [`DIGIT_BITS`] a pass: stable, so equal values
/// keep their model order. `histograms` holds the digit counts of each `chunk`-long block as the
/// keys stand; a pass whose digit every key shares is skipped. Each pass scatters the blocks in
/// parallel, block `c` writing digit `d` after the keys of digit `d` of blocks `0..c` — the
/// positions a serial pass gives.
fn radix_sort_by_value(keys: &mut Vec<u64>, mut histograms: Vec<DigitCounts>, chunk: usize) {
    let total = keys.len();
    let mut buffer = vec![0u64; total];
    let mut first = true;
    for (pass, shift) in SHIFTS.into_iter().enumerate() {
        // Digit totals do not change as keys move: any pass's counts say whether to skip.
        let mut totals = vec![0usize; BUCKETS];
        for h in &histograms {
            totals
                .iter_mut()
                .zip(&h.0[pass])
                .for_each(|(t, &c)| *t += c as usize);
        }
        if totals.contains(&total) {
            continue;
        }
        if !first {
            // The blocks' counts of this digit, as the previous pass left the keys.
            histograms
                .par_iter_mut()
                .zip(keys.par_chunks(chunk))
                .for_each(|(h, block)| {
                    let counts = &mut h.0[pass];
                    counts.fill(0);
                    for &key in block {
                        counts[digit(key, shift)] += 1;
                    }
                });
        }
        first = false;
        let mut starts: Vec<Vec<usize>> = vec![vec![0; BUCKETS]; histograms.len()];
        let mut at = 0;
        for b in 0..BUCKETS {
            for (start, h) in starts.iter_mut().zip(&histograms) {
                start[b] = at;
                at += h.0[pass][b] as usize;
            }
        }
        let out = Shared::new(&mut buffer);
        keys.par_chunks(chunk)
            .zip(starts)
            .for_each(|(block, mut next)| {
                for &key in block {
                    let d = digit(key, shift);
                    // SAFETY: the blocks' ranges per digit partition `0..total`.
                    unsafe { out.write(next[d], key) };
                    next[d] += 1;
                }
            });
        std::mem::swap(keys, &mut buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random keys as [`leave_one_out`] builds them: values from a few thousand levels (many
    /// ties, every digit used, negatives included), model ids increasing along the pool.
    fn keys(total: usize, models: usize) -> Vec<u64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..total)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let v = ((state >> 40) % 5000) as f32 * 0.37 - 900.0;
                let model = (i * models / total) as u64;
                (u64::from(trim::order_bits(v)) << 32) | model
            })
            .collect()
    }

    fn histograms(keys: &[u64], chunk: usize) -> Vec<DigitCounts> {
        keys.chunks(chunk)
            .map(|block| {
                let mut counts = DigitCounts::new();
                block.iter().for_each(|&k| counts.add(k));
                counts
            })
            .collect()
    }

    /// Blocks of every size, down to one key: the result is the stable order by value, which for
    /// these keys (model ids increasing along the pool) is the order of the whole key.
    #[test]
    fn radix_sort_is_the_stable_order_by_value() {
        for (total, chunk) in [(300_000, 1 << 14), (50_001, 977), (10, 1), (1, 1)] {
            let mut got = keys(total, 37);
            let mut want = got.clone();
            want.sort_unstable();
            let counts = histograms(&got, chunk);
            radix_sort_by_value(&mut got, counts, chunk);
            assert!(got == want, "{total} keys in blocks of {chunk}");
        }
    }

    /// The parallel scan against its definition: each model's entries are its points in pooled
    /// order, with their position and the pooled run of their value.
    #[test]
    fn scan_gives_each_model_its_sorted_points_and_ranks() {
        let models = 23;
        let mut sorted = keys(200_000, models);
        sorted.sort_unstable();
        let mut offsets = vec![0; models + 1];
        for &k in &sorted {
            offsets[(k & 0xFFFF_FFFF) as usize + 1] += 1;
        }
        for k in 0..models {
            offsets[k + 1] += offsets[k];
        }
        for chunk in [1, 1000, 1 << 14, 1 << 20] {
            let (entries, pooled) = scan(&sorted, &offsets, chunk);
            let mut seen = offsets[..models].to_vec();
            for (pos, &key) in sorted.iter().enumerate() {
                let upper = key >> 32;
                let value = trim::from_order_bits(upper as u32);
                assert_eq!(pooled[pos].to_bits(), value.to_bits());
                let lt = sorted.partition_point(|&k| k >> 32 < upper);
                let le = sorted.partition_point(|&k| k >> 32 <= upper);
                let k = (key & 0xFFFF_FFFF) as usize;
                let e = entries[seen[k]];
                seen[k] += 1;
                assert_eq!(
                    (
                        e.value.to_bits(),
                        e.pos as usize,
                        e.lt as usize,
                        e.le as usize
                    ),
                    (value.to_bits(), pos, lt, le),
                    "blocks of {chunk}, position {pos}"
                );
            }
        }
    }
}
