//! CPU kernel of the trim family: α̂, KS and trimmed W2 of many candidates at once
//! (definitions in [`crate::backend::trim`]).
//!
//! Leave-one-out over an ensemble of `M` models × `N` points would naively merge each model with
//! a freshly sorted pool of the other `M − 1`, O(M²·N). Instead the whole pool is sorted once,
//! tagged with model ids; one scan then records, for every point, the pooled ranks `< v` and
//! `≤ v` of its value. A model's reference counts are the pooled counts minus its own, so each
//! model needs only its own `N` points afterwards, and models run in parallel. Only the exact
//! trimmed W2 needs the whole reference of each model (O(M·N) per model: the sorted pool and the
//! model's positions in it); the candidate-grid approximation needs its `N` reference quantiles,
//! which the scan picks out of the sorted pool as it goes ([`Wanted`]).
//!
//! The pool's sort moves it through DRAM once: one scatter into cache-sized buckets of value
//! ranges chosen from the data's own histogram, then each bucket is sorted and scanned while it
//! is in cache ([`entries_and_pool`]). The keys are scattered into the map the entries go to,
//! each bucket's where its own entries are written later, so no map is allocated for them: the
//! kernel's backing of a fresh page costs more than the pass that fills it. Every pass runs on
//! every core, cut into blocks of at most [`chunk_len`] points; results do not depend on the
//! number of threads.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::common::prefetch_lines;
use super::common::sized;
use crate::backend::simd::with_wide_simd;
use crate::backend::trim::{self, OwnShares, Profile, QuantileW2, RankedPoints};
use crate::backend::{TrimReference, TrimResult, TrimSpec};
use crate::error::{Error, Result};
use crate::phases;

pub(super) fn trim_search(
    candidates: &[&[f32]],
    reference: TrimReference<'_>,
    spec: &TrimSpec,
) -> Result<Vec<TrimResult>> {
    trim::check_search_shape(candidates, reference, spec)?;
    match reference {
        TrimReference::Sample(r) => {
            trim::check_candidates_finite(candidates)?;
            Ok(against_sample(candidates, r, spec))
        }
        // Its count pass reads every value: it checks them there.
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

/// One point of the pool as its model sees it: value and the pooled counts of values `< v` and
/// `≤ v` (12 bytes: the position in the pooled order is kept only where it is needed, see
/// [`SortedPool`]).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Entry {
    value: f32,
    lt: u32,
    le: u32,
}

// SAFETY: three plain numbers, for which all-zero bytes are a valid value.
unsafe impl bytemuck::Zeroable for Entry {}

/// 4-byte words of an [`Entry`]: where a bucket's entries go, its scattered keys (a word each)
/// lie before.
const ENTRY_WORDS: usize = std::mem::size_of::<Entry>() / 4;

/// Zero-filled memory for `len` values, mapped anonymously: the kernel supplies zero pages as
/// they are first touched (by the parallel passes that fill them), so nothing writes zeros first.
/// Transparent huge pages were tried and dropped: the kernel compacted memory at first touch and
/// system time went from 1.8 s to 18 s at 10⁸ points on the idle machine.
struct ZeroedMap<T> {
    map: memmap2::MmapMut,
    len: usize,
    values: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Zeroable> ZeroedMap<T> {
    fn zeroed(len: usize) -> Result<Self> {
        let bytes = len * std::mem::size_of::<T>();
        let map = memmap2::MmapOptions::new()
            .len(bytes.max(1))
            .map_anon()
            .map_err(|e| {
                Error::input(format!(
                    "cannot allocate {bytes} bytes for a pool of {len} points: {e}"
                ))
            })?;
        Ok(ZeroedMap {
            map,
            len,
            values: std::marker::PhantomData,
        })
    }
}

/// Backs `maps` with pages now, every core taking its share: the kernel hands out and zeroes
/// pages faster this way than at first touch inside the passes that fill them, where each fault
/// also takes a page's worth of their data out of the cache (BENCHMARKS.md, 2026-12-07).
/// Kernels without `MADV_POPULATE_WRITE` (before Linux 5.14) and other systems leave the pages
/// to be faulted in as they are written, as before.
fn populate(maps: &[&memmap2::MmapMut]) {
    /// Bytes per populate call: enough calls for every core, each a few thousand pages.
    const CHUNK: usize = 1 << 24;
    #[cfg(target_os = "linux")]
    maps.par_iter()
        .flat_map(|m| {
            let len = m.len();
            (0..len)
                .into_par_iter()
                .step_by(CHUNK)
                .map(move |at| (m, at, CHUNK.min(len - at)))
        })
        .for_each(|(m, at, len)| {
            // Only a hint: a failure leaves the pages to the faults.
            let _ = m.advise_range(memmap2::Advice::PopulateWrite, at, len);
        });
    #[cfg(not(target_os = "linux"))]
    let _ = maps;
}

impl<T> std::ops::Deref for ZeroedMap<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the map is page-aligned, holds `len` values of `T` and starts zero-filled,
        // which `T: Zeroable` (the only way to build one) makes valid.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.len) }
    }
}

impl<T> std::ops::DerefMut for ZeroedMap<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, borrowed mutably through the map.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.len) }
    }
}

/// Drops `maps` on a thread of their own: unmapping the GB of a pool of 10⁸ points is a serial
/// fraction of a second, which the caller's next work (the next phase, `compare`'s metrics) can
/// run beside. Where no thread can be started, the closure and the maps drop here.
fn unmap_in_background<T: Send + 'static>(maps: T) {
    let _ = std::thread::Builder::new()
        .name("mscope-unmap".into())
        .spawn(move || drop(maps));
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

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Shared<T> {}

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

    /// The same slice from position `at` on (`at` at most its length).
    fn offset(self, at: usize) -> Self {
        Shared(self.0.wrapping_add(at))
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
    let exact_w2 = spec.w2_grid.is_exact(models, total);
    let wanted = if exact_w2 {
        Wanted::Pool
    } else {
        Wanted::Quantiles
    };
    let pool = entries_and_pool(candidates, &offsets, bucket_target(total, models), wanted)?;
    let (values, positions) = (&pool.values, &pool.positions);

    let results = compared
        .into_par_iter()
        // Each thread keeps the own shares of the model size it last saw (usually every model's)
        // and a buffer for a model's entries.
        .map_init(
            || (OwnShares::new(0), Vec::new()),
            |(shares, own), k| {
                pool.model_entries(k, &offsets, own);
                let own = &own[..];
                let (n, m) = (own.len(), total - own.len());
                if shares.n() != n {
                    *shares = OwnShares::new(n);
                }
                let points = RankedPoints {
                    value: |i: usize| own[i].value,
                    ranks: |i: usize| (own[i].lt as usize, own[i].le as usize),
                    own_in_reference: true,
                };
                let candidate = || own.iter().map(|e| e.value).collect::<Vec<f32>>();
                match wanted {
                    Wanted::Pool => trim::result_from(
                        n,
                        m,
                        spec,
                        exact_w2,
                        |t| {
                            let no_sums = |(), _, _| ();
                            Profile::ks_and_alpha_hat_of_ranks(shares, m, &points, t, (), no_sums)
                        },
                        |alpha, ()| {
                            let own_positions = &positions[offsets[k]..offsets[k + 1]];
                            let reference = trim::pool_without(own_positions, values);
                            trim::trimmed_w2(&candidate(), &reference, alpha)
                        },
                    ),
                    Wanted::Quantiles => {
                        // The untrimmed W2 (the usual case) is summed in the KS/α̂ pass.
                        let quantiles = &values[offsets[k]..offsets[k + 1]];
                        let add_pair = |mut w2: QuantileW2, i: usize, v: f32| {
                            w2.add(v, quantiles[i]);
                            w2
                        };
                        trim::result_from(
                            n,
                            m,
                            spec,
                            exact_w2,
                            |t| {
                                let w2 = QuantileW2::new(n);
                                Profile::ks_and_alpha_hat_of_ranks(
                                    shares, m, &points, t, w2, add_pair,
                                )
                            },
                            |alpha, w2| {
                                w2.untrimmed(alpha).unwrap_or_else(|| {
                                    trim::trimmed_w2(&candidate(), quantiles, alpha)
                                })
                            },
                        )
                    }
                }
            },
        )
        .collect();
    phases::mark("trim: every model's profile, α̂, KS, W2");
    unmap_in_background(pool);
    Ok(results)
}

/// What [`entries_and_pool`] writes beside the entries, `total` values either way.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wanted {
    /// The sorted pool (the exact W2 takes each model's whole reference out of it).
    Pool,
    /// Each model's reference quantiles `G⁻¹(i/n)`, `i = 1..n`, at the model's `offsets`
    /// ([`trim::pool_quantiles_without`]); found bucket by bucket while the bucket is in cache,
    /// where gathering them from the sorted pool afterwards misses the cache at every one.
    Quantiles,
}

/// The pool sorted, as [`leave_one_out`] needs it.
struct SortedPool {
    /// Every point's entry, bucket after bucket and, within a bucket, model after model, each
    /// model's sorted by value, equal values in pooled order: model `k`'s entries of bucket `b`
    /// are `entries[segments[k · buckets + b]..]`, as many as it has points in the bucket
    /// ([`SortedPool::model_entries`]). Laid out by bucket, each bucket's entries leave its task
    /// as one run of whole lines, and the keys scattered into the bucket before can lie where
    /// its entries go (a third of the bytes), so no map of their own is allocated and zeroed.
    entries: ZeroedMap<Entry>,
    /// Where each model's entries of each bucket start, `[models × buckets]`.
    segments: Vec<u32>,
    /// Where each model's points of each bucket start in the model's sorted order, with the
    /// model's offset added, `[models × buckets]` (the segments' lengths are the differences).
    cursors: Vec<u32>,
    /// The values [`Wanted`].
    values: ZeroedMap<f32>,
    /// With [`Wanted::Pool`], the positions in the sorted pool of each model's points, in its
    /// sorted order at its `offsets` (none otherwise: the quantiles need them only bucket by
    /// bucket, while the bucket is in cache).
    positions: ZeroedMap<u32>,
}

impl SortedPool {
    /// Model `k`'s entries in its sorted order (its points at `offsets[k]..offsets[k + 1]`),
    /// gathered from its segments into `out`.
    fn model_entries(&self, k: usize, offsets: &[usize], out: &mut Vec<Entry>) {
        /// Segments asked for ahead of the one copied: each lies elsewhere in DRAM, where the
        /// hardware prefetcher would find it only after its first misses.
        const AHEAD: usize = 4;
        let buckets = self.segments.len() / (offsets.len() - 1);
        let segment = |b: usize| {
            let at = k * buckets + b;
            let end = if b + 1 < buckets {
                self.cursors[at + 1] as usize
            } else {
                offsets[k + 1]
            };
            let start = self.segments[at] as usize;
            &self.entries[start..start + end - self.cursors[at] as usize]
        };
        out.clear();
        for b in 0..buckets {
            #[cfg(target_arch = "x86_64")]
            if b + AHEAD < buckets {
                prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }>(segment(b + AHEAD));
            }
            out.extend_from_slice(segment(b));
        }
    }
}

/// The pool sorted once, as each model needs it: every model's entries and the values `wanted`
/// (the sorted pool, or every model's reference quantiles).
///
/// One scatter moves the pool through DRAM; the rest is done a cache-sized bucket at a time. The
/// buckets are ranges of the top [`PREFIX_BITS`] of the values' order bits, merged greedily up to
/// `target` keys each from a histogram of (a sample of) the actual data (scores that are all
/// probabilities, or all near zero, share their top bits: fixed digits would leave a few huge
/// buckets). Each bucket is then sorted by the value bits its keys differ in and scanned while in
/// cache. A run of equal values never crosses a bucket, so each run's pooled ranks are known
/// inside it. Scattering a model's points in pool order and sorting buckets stably keeps equal
/// values in pooled order: the result is the one a serial stable sort gives, whatever the thread
/// count.
fn entries_and_pool(
    candidates: &[&[f32]],
    offsets: &[usize],
    target: usize,
    wanted: Wanted,
) -> Result<SortedPool> {
    let (models, total) = (candidates.len(), offsets[candidates.len()]);
    let pieces = pieces(candidates, chunk_len(total));
    // Bucket sizes only set the speed, so the histogram may count a sample; the exact counts
    // per bucket come from the count below. Few splits: each makes and adds up a 1 MiB
    // histogram.
    let sampled = total >= SAMPLE_FROM;
    let prefix_counts = pieces
        .par_iter()
        .with_min_len(pieces.len().div_ceil(2 * rayon::current_num_threads()))
        .fold(
            || vec![0u32; PREFIXES],
            |mut counts, p| {
                let mut count = |values: &[f32]| {
                    for &v in values {
                        counts[prefix(trim::order_bits(v))] += 1;
                    }
                };
                if sampled {
                    sample_blocks(p, candidates).for_each(count);
                } else {
                    count(p.values(candidates));
                }
                counts
            },
        )
        .reduce(
            || vec![0u32; PREFIXES],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, &b)| *a += b);
                a
            },
        );
    let counted: usize = prefix_counts.iter().map(|&c| c as usize).sum();
    phases::mark("trim: histogram of the values' top bits");
    let bucket_of = buckets(
        &prefix_counts,
        (target as u128 * counted as u128).div_ceil(total.max(1) as u128) as usize,
    );
    let buckets = bucket_of[PREFIXES - 1] as usize + 1;
    let bucket = |bits: u32| bucket_of[prefix(bits)] as usize;

    // Each piece's keys per bucket.
    // The first pass that reads every value also checks that each is finite (a piece at a time,
    // from cache after its count): a check of its own, before, would read the pool once more.
    let counted: Option<Vec<Vec<u32>>> = pieces
        .par_iter()
        .map(|p| {
            let values = p.values(candidates);
            let mut counts = vec![0u32; buckets];
            for &v in values {
                counts[bucket(trim::order_bits(v))] += 1;
            }
            trim::finite(values).then_some(counts)
        })
        .collect();
    let Some(piece_counts) = counted else {
        trim::check_candidates_finite(candidates)?;
        unreachable!("a piece holds a value that is not finite, which the check found nowhere");
    };
    // Where model `k`'s points of bucket `b` start in its sorted order, its offset added
    // (`cursors[k · buckets + b]`): after its points of the buckets before. Pieces of a model
    // are consecutive.
    let mut cursors = vec![0u32; models * buckets];
    cursors
        .par_chunks_mut(buckets)
        .enumerate()
        .for_each(|(k, row)| {
            let first = pieces.partition_point(|p| p.model < k);
            let last = pieces.partition_point(|p| p.model <= k);
            let mut at = offsets[k] as u32;
            for (b, cursor) in row.iter_mut().enumerate() {
                *cursor = at;
                at += piece_counts[first..last].iter().map(|c| c[b]).sum::<u32>();
            }
        });
    let mut bucket_starts = vec![0usize; buckets + 1];
    for counts in &piece_counts {
        for (size, &n) in bucket_starts[1..].iter_mut().zip(counts) {
            *size += n as usize;
        }
    }
    for b in 0..buckets {
        bucket_starts[b + 1] += bucket_starts[b];
    }
    // Each bucket's keys (the values' order bits only: a bucket holds its models' points model
    // after model, so the bucket pass knows each point's model from where it lies) go to the
    // first of the words its entries take later, piece after piece.
    let mut at: Vec<usize> = bucket_starts[..buckets]
        .iter()
        .map(|&s| ENTRY_WORDS * s)
        .collect();
    let piece_next: Vec<Vec<usize>> = piece_counts
        .iter()
        .map(|counts| {
            counts
                .iter()
                .zip(at.iter_mut())
                .map(|(&n, at)| {
                    *at += n as usize;
                    *at - n as usize
                })
                .collect()
        })
        .collect();
    let mut entries = ZeroedMap::<Entry>::zeroed(total)?;
    let mut values = ZeroedMap::<f32>::zeroed(total)?;
    let mut positions = ZeroedMap::<u32>::zeroed(if wanted == Wanted::Pool { total } else { 0 })?;
    // Backed up front: on the Zen 3 VM the faults inside the scatter cost about three times what
    // populating costs (0.25 s against 0.09 s).
    populate(&[&entries.map, &values.map, &positions.map]);
    let entry_out = Shared::new(&mut entries);
    let words = Shared(entry_out.0.cast::<u32>());
    pieces.par_iter().zip(piece_next).for_each(|(p, next)| {
        let mut lines = StagedScatter::new(words, next);
        for &v in p.values(candidates) {
            let bits = trim::order_bits(v);
            // SAFETY: the pieces' ranges per bucket partition the buckets' first words.
            unsafe { lines.push(bucket(bits), bits) };
        }
        // SAFETY: as for the pushes.
        unsafe { lines.finish() };
    });

    phases::mark("trim: count and scatter into buckets");
    let mut segments = vec![0u32; models * buckets];
    let segments_out = Shared::new(&mut segments);
    let (values_out, positions_out) = (Shared::new(&mut values), Shared::new(&mut positions));
    (0..buckets).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        |(keys, scratch, own, staged, following), b| {
            let (start, len) = (bucket_starts[b], bucket_starts[b + 1] - bucket_starts[b]);
            // SAFETY: the bucket's keys, scattered above to the first `len` of the words its
            // entries take; only this task reads or writes those words, and it is done reading
            // them before it writes its entries there.
            let region = unsafe {
                std::slice::from_raw_parts(words.offset(ENTRY_WORDS * start).0.cast_const(), len)
            };
            // Model `k`'s entries of this bucket go to `first[k]..`; its keys are found at
            // `local_first[k]..` of the bucket's keys grouped by model.
            let first: Vec<usize> = (0..models)
                .map(|k| cursors[k * buckets + b] as usize)
                .collect();
            let mut local_first = Vec::with_capacity(models + 1);
            local_first.push(0);
            for k in 0..models {
                let end = if b + 1 < buckets {
                    cursors[k * buckets + b + 1] as usize
                } else {
                    offsets[k + 1]
                };
                local_first.push(local_first[k] + end - first[k]);
            }
            // Upper 32 bits of a key: the value's order bits; lower: the model id.
            let keys = sized(keys, len);
            for (k, w) in local_first.windows(2).enumerate() {
                for (key, &bits) in keys[w[0]..w[1]].iter_mut().zip(&region[w[0]..w[1]]) {
                    *key = (u64::from(bits) << 32) | k as u64;
                }
            }
            let (lo, hi) = region.iter().fold((u32::MAX, 0), |(lo, hi), &bits| {
                (lo.min(bits), hi.max(bits))
            });
            let scratch = sized(scratch, len);
            sort_by_value(keys, scratch, lo, hi);
            // The sort's buffer is free now. Its first half: each key's run end (its `le` less
            // `start`), found backward without a branch per key (the runs' lengths vary at
            // random); its second: the bucket's values in order, for the quantile walk.
            let (ends, sorted) = bytemuck::cast_slice_mut::<u64, u32>(scratch).split_at_mut(len);
            let mut end = len as u32;
            let mut after = u64::MAX;
            for (i, (run_end, &key)) in ends.iter_mut().zip(keys.iter()).enumerate().rev() {
                let upper = key >> 32;
                end = if upper == after { end } else { i as u32 + 1 };
                *run_end = end;
                after = upper;
            }
            // Forward, each key's run start; the scan scatters each key's index (`own`) and its
            // entry (`staged`) to its model's next slot, so that each model's keys and entries
            // lie in order at `local_first[k]..` and the entries leave for the map as whole
            // lines (gathered model by model from the sorted keys instead, each entry cost two
            // loads from all over the bucket).
            let (own, staged) = (sized(own, len), sized(staged, len));
            let mut local_cursor = local_first.clone();
            let (mut run_start, mut before) = (0u32, u64::MAX);
            let sorted: &mut [f32] = bytemuck::cast_slice_mut(&mut sorted[..len]);
            for (i, (&run_end, &key)) in ends.iter().zip(keys.iter()).enumerate() {
                let upper = key >> 32;
                run_start = if upper == before { run_start } else { i as u32 };
                before = upper;
                let k = (key & 0xFFFF_FFFF) as usize;
                let at = local_cursor[k];
                own[at] = i as u32;
                let value = trim::from_order_bits(upper as u32);
                sorted[i] = value;
                staged[at] = Entry {
                    value,
                    lt: (start + run_start as usize) as u32,
                    le: (start + run_end as usize) as u32,
                };
                local_cursor[k] = at + 1;
                if wanted == Wanted::Pool {
                    // SAFETY: the buckets partition the pool, so each position is written once.
                    unsafe { values_out.write(start + i, value) }
                }
            }
            // SAFETY: the buckets partition the pool, so no other task writes these entries.
            unsafe { write_streaming(entry_out.offset(start), staged) }
            store_fence();
            for k in 0..models {
                // SAFETY: one slot per model and bucket, written by the bucket's task.
                unsafe { segments_out.write(k * buckets + b, (start + local_first[k]) as u32) }
                let own = &own[local_first[k]..local_first[k + 1]];
                match wanted {
                    Wanted::Pool => {
                        for (t, &i) in own.iter().enumerate() {
                            // SAFETY: the buckets' cursors partition each model's `offsets` range
                            // (counted above), so no other task writes these positions.
                            unsafe {
                                positions_out.write(first[k] + t, (start + i as usize) as u32)
                            }
                        }
                    }
                    Wanted::Quantiles => {
                        let (n, own_before) = (offsets[k + 1] - offsets[k], first[k] - offsets[k]);
                        // A copy in a register: the walk's stores cannot then make it reload
                        // the map and the offset at every quantile.
                        let quantiles_out = values_out.offset(offsets[k]);
                        let refs_before = start - own_before;
                        quantiles_in_bucket(
                            n,
                            total - n,
                            refs_before,
                            own,
                            sorted,
                            following,
                            |i, v| {
                                // SAFETY: each model's quantile indices are cut into the buckets by
                                // the reference points before each (see `quantiles_in_bucket`):
                                // each is written by one bucket's task only.
                                unsafe { quantiles_out.write(i, v) }
                            },
                        );
                    }
                }
            }
        },
    );
    phases::mark("trim: sort and scan each bucket");
    Ok(SortedPool {
        entries,
        segments,
        cursors,
        values,
        positions,
    })
}

/// The reference quantiles `G⁻¹(i/n)` of one model (`n` own points, `m` reference points) that
/// lie in a bucket of the sorted pool: the bucket's `sorted` values (half the bytes of its sort
/// keys, so more of them stay in cache), among which the model has its points at the indices
/// `own`, with `refs_before` reference points in the buckets before. Calls `write(i − 1,
/// G⁻¹(i/n))` once for each, the values [`trim::pool_quantiles_without`] gives (`following` is
/// scratch).
///
/// The quantile `G⁻¹(i/n)` is the reference's `j = ⌈i·m/n⌉`-th point; the bucket holds the
/// reference points `R₀ < j ≤ R₁` (`R₀` = `refs_before`), so its quantiles are
/// `⌊R₀·n/m⌋ < i ≤ ⌊R₁·n/m⌋`, the buckets share the `i` out without overlap, and within the
/// bucket the `j`-th reference point sits at `j − 1 − R₀` plus the own points before it. An own
/// point with `g` reference points before it precedes the `j`-th exactly when `g < j`, that is
/// for the quantiles `i > ⌊g·n/m⌋`: each own point is noted in the slot of its first following
/// quantile ([`QuantilesBefore::first_following`], for all of them at once), and the quantiles
/// then carry the count forward as they go. Neither loop branches on the data or waits on a
/// load of the other (a merge of the quantiles with the own points, one step each, waited on
/// its own load at every step).
fn quantiles_in_bucket(
    n: usize,
    m: usize,
    refs_before: usize,
    own: &[u32],
    sorted: &[f32],
    following: &mut Vec<u32>,
    mut write: impl FnMut(usize, f32),
) {
    /// Quantiles counted per pass: a few cache lines of counts to clear.
    const SLOTS: usize = 64;
    let (n64, m64) = (n as u64, m as u64);
    let quantiles_before = QuantilesBefore::new(n, m);
    let refs_to_end = refs_before + sorted.len() - own.len();
    let (mut i, last) = (
        quantiles_before.of(refs_before) + 1,
        quantiles_before.of(refs_to_end).min(n64),
    );
    if i > last {
        return;
    }
    let following = sized(following, own.len());
    quantiles_before.first_following(refs_before, own, following);
    // `i·m = q·n + r`, stepped by `m` without dividing (a division per quantile cost as much
    // as the rest of the walk).
    let (step_q, step_r) = (m64 / n64, m64 % n64);
    let (mut q, mut r) = (i * m64 / n64, i * m64 % n64);
    // `passed[u]`: how many own points come before the pass's `u`-th quantile, where one's slot
    // is `u` (else 0: the running maximum fills the rest). The slots rise with the own points, so
    // the last store to a slot holds its count, and no store waits on the one before.
    let mut passed = [0usize; SLOTS];
    let (mut counted, mut own_passed) = (0, 0);
    while i <= last {
        let slots = (last + 1 - i).min(SLOTS as u64) as usize;
        passed[..slots].fill(0);
        // The own points whose first following quantile is one of these (they come in order:
        // the first left over belongs to a later pass).
        for (t, &first) in following.iter().enumerate().skip(counted) {
            let slot = (u64::from(first) - i) as usize;
            if slot >= slots {
                break;
            }
            passed[slot] = t + 1;
            counted += 1;
        }
        for &passed in &passed[..slots] {
            own_passed = own_passed.max(passed);
            let j = (q + u64::from(r > 0)) as usize;
            write(i as usize - 1, sorted[j - 1 - refs_before + own_passed]);
            i += 1;
            (q, r) = (q + step_q, r + step_r);
            if r >= n64 {
                (q, r) = (q + 1, r - n64);
            }
        }
    }
}

/// `⌊g·n/m⌋` for counts `g ≤ m` (`n`, `m` below 2³²): how many of a model's `n` reference
/// quantiles come at or before its `g`-th reference point (see [`quantiles_in_bucket`]).
#[derive(Clone, Copy)]
struct QuantilesBefore {
    n: u64,
    m: u64,
    ratio: f64,
    /// Whether `g·n + m` stays below 2⁵², so that every product and difference below is exact in
    /// f64 and the whole computation vectorises.
    in_f64: bool,
}

impl QuantilesBefore {
    fn new(n: usize, m: usize) -> Self {
        QuantilesBefore {
            n: n as u64,
            m: m as u64,
            ratio: n as f64 / m as f64,
            in_f64: m as f64 * (n as f64 + 1.0) < (1u64 << 52) as f64,
        }
    }

    /// One: the product in f64 is off by at most one (it is below n < 2³²), and the exact
    /// remainder says which way.
    fn of(self, g: usize) -> u64 {
        let g = g as u64;
        let guess = (g as f64 * self.ratio) as u64;
        let remainder = (g * self.n).wrapping_sub(guess * self.m) as i64;
        guess - u64::from(remainder < 0) + u64::from(remainder >= self.m as i64)
    }

    /// `out[t] = ⌊g·n/m⌋ + 1` for the own point `t` at index `own[t]` of a bucket that has
    /// `refs_before` reference points before it (`g = refs_before + own[t] − t`): the first
    /// quantile it precedes. Several points per instruction where the products are exact in f64.
    fn first_following(self, refs_before: usize, own: &[u32], out: &mut [u32]) {
        if self.in_f64 {
            // `refs_before < 2³²` as every count here (positions are `u32`).
            first_following_wide(
                refs_before as u32,
                own,
                self.n as f64,
                self.m as f64,
                self.ratio,
                out,
            );
        } else {
            for (t, (out, &p)) in out.iter_mut().zip(own).enumerate() {
                *out = (self.of(refs_before + p as usize - t) + 1) as u32;
            }
        }
    }
}

with_wide_simd! {
    /// [`QuantilesBefore::first_following`] in f64, as wide as the CPU allows.
    avx512 fn first_following_wide => first_following_f64(
        refs_before: u32,
        own: &[u32],
        n: f64,
        m: f64,
        ratio: f64,
        out: &mut [u32]
    )
}

/// [`QuantilesBefore::of`] in f64 (exact while `g·n + m < 2⁵²`): the guess `⌊g·n/m⌋` off by
/// at most one, corrected by the remainder's sign, for each own point.
#[inline(always)]
fn first_following_f64(refs_before: u32, own: &[u32], n: f64, m: f64, ratio: f64, out: &mut [u32]) {
    for (t, (out, &p)) in out.iter_mut().zip(own).enumerate() {
        // `g ≤ m < 2³²`: the wrapping sum and difference are exact.
        let g = f64::from(refs_before.wrapping_add(p).wrapping_sub(t as u32));
        let guess = (g * ratio).floor();
        let remainder = g * n - guess * m;
        let below = if remainder < 0.0 {
            guess - 1.0
        } else if remainder >= m {
            guess + 1.0
        } else {
            guess
        };
        // SAFETY: `0 ≤ below ≤ n < 2³²`, an integer (the checked `as` does not vectorise).
        *out = unsafe { below.to_int_unchecked::<u32>() } + 1;
    }
}

/// Keys per bucket [`entries_and_pool`] aims at: a bucket, its sort buffer and its scan's
/// tables within a core's L2 or a slice of L3 (1 024 buckets at 10⁸ points: on the Zen 3 VM, 512
/// KiB of L2, they scattered 0.12 s faster than 2 048 and sorted no slower; on the Xeon, 2 MiB of
/// L2, buckets of twice its old target were within the noise), few enough for the scatter to
/// stage a line for each, and few enough that the cursors (a `u32` per model and bucket) take no
/// more than the pool (many small models get fewer, larger buckets).
fn bucket_target(total: usize, models: usize) -> usize {
    let buckets = (total / (4 * models)).clamp(1, 1024);
    total.div_ceil(buckets).max(1 << 15)
}

/// Top bits of the order bits that the buckets are cut by: fine enough that one prefix of
/// dense scores (1/512 of a binade) holds far fewer keys than a bucket's target, so no bucket
/// outgrows it by much.
const PREFIX_BITS: u32 = 18;
const PREFIXES: usize = 1 << PREFIX_BITS;

fn prefix(bits: u32) -> usize {
    (bits >> (32 - PREFIX_BITS)) as usize
}

/// Consecutive prefixes merged into buckets of at most `target` counted keys (a single prefix
/// may hold more): the bucket of each prefix.
fn buckets(prefix_counts: &[u32], target: usize) -> Vec<u32> {
    let mut bucket_of = vec![0u32; prefix_counts.len()];
    let (mut bucket, mut size) = (0, 0);
    for (of, &count) in bucket_of.iter_mut().zip(prefix_counts) {
        if size > 0 && size + count as usize > target {
            bucket += 1;
            size = 0;
        }
        // At most one bucket per prefix: the index fits 32 bits.
        *of = bucket;
        size += count as usize;
    }
    bucket_of
}

/// Pools of at least this many points are sampled for the histogram of [`entries_and_pool`]:
/// 1/16 of them, blocks of 64 consecutive values in every 1 024 of each model (a whole 4 KiB
/// page read of 16, where single values 16 apart would read every cache line). Smaller pools
/// cost little to count whole.
const SAMPLE_FROM: usize = 1 << 22;
const SAMPLE_BLOCK: usize = 64;
const SAMPLE_EVERY: usize = 1024;

/// The parts of the histogram's sample blocks in `piece`: the blocks are aligned to its
/// model's start, so the sample does not depend on how the models are cut into pieces.
fn sample_blocks<'a>(piece: &Piece, candidates: &[&'a [f32]]) -> impl Iterator<Item = &'a [f32]> {
    let model = candidates[piece.model];
    let range = piece.range.clone();
    (range.start / SAMPLE_EVERY * SAMPLE_EVERY..range.end)
        .step_by(SAMPLE_EVERY)
        .map(move |s| &model[s.max(range.start)..(s + SAMPLE_BLOCK).clamp(range.start, range.end)])
}

/// A run of one model's points, at most a block long: the unit of the parallel passes over the
/// pool, so that a few large models still keep every core busy.
struct Piece {
    model: usize,
    range: std::ops::Range<usize>,
}

impl Piece {
    fn values<'a>(&self, candidates: &[&'a [f32]]) -> &'a [f32] {
        &candidates[self.model][self.range.clone()]
    }
}

/// Every model cut into pieces of at most `chunk` points, in pool order.
fn pieces(candidates: &[&[f32]], chunk: usize) -> Vec<Piece> {
    candidates
        .iter()
        .enumerate()
        .flat_map(|(model, c)| {
            (0..c.len()).step_by(chunk).map(move |s| Piece {
                model,
                range: s..(s + chunk).min(c.len()),
            })
        })
        .collect()
}

/// Largest radix digit of the in-bucket sort: 2 048 counters stay in L1.
const MAX_DIGIT_BITS: u32 = 11;

/// Keys of one bucket staged for the scatter: sixteen, one cache line of the destination.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// One piece's scatter into the buckets, staged a cache line at a time: each bucket's keys go to
/// a line of their own (in L1/L2 however many buckets there are), placed as in the destination
/// line, and a line is written out when its last slot is filled — whole lines with non-temporal
/// stores (no read of the line first). Stored straight to their buckets, the keys keep a
/// thousand destination lines and pages open at once, most stores a cache and a TLB miss.
struct StagedScatter {
    out: Shared<u32>,
    /// Where the piece's keys of each bucket start.
    first: Vec<usize>,
    /// Where its next key of each bucket goes.
    next: Vec<usize>,
    lines: Vec<Line>,
}

impl StagedScatter {
    /// Positions count from `out`, which is 64-byte aligned (a map's first page).
    fn new(out: Shared<u32>, next: Vec<usize>) -> Self {
        debug_assert_eq!(out.0.align_offset(64), 0);
        StagedScatter {
            out,
            first: next.clone(),
            lines: vec![Line([0; 16]); next.len()],
            next,
        }
    }

    /// # Safety
    /// The piece's range of bucket `b` in `out` has room for the key, and no other task writes
    /// or reads it meanwhile.
    #[inline(always)]
    unsafe fn push(&mut self, b: usize, key: u32) {
        let at = self.next[b];
        self.lines[b].0[at % 16] = key;
        self.next[b] = at + 1;
        if (at + 1).is_multiple_of(16) {
            // SAFETY: the caller's contract.
            unsafe { self.write(b, at + 1) };
        }
    }

    /// Writes bucket `b`'s staged keys before `end` (in `end`'s line, or the line before when
    /// `end` starts one) that are the piece's own.
    ///
    /// # Safety
    /// As for [`push`](Self::push).
    unsafe fn write(&self, b: usize, end: usize) {
        let line_start = (end - 1) / 16 * 16;
        let from = line_start.max(self.first[b]);
        let to = self.out.offset(from);
        let line = &self.lines[b];
        if from == line_start && end == line_start + 16 {
            // SAFETY: the whole line is in the piece's range of bucket `b`, and 64-byte aligned
            // (`out` is, and the line starts at a multiple of 16 keys).
            unsafe { stream_line(to.0.cast(), line.0.as_ptr().cast()) }
        } else {
            let slots = &line.0[from - line_start..end - line_start];
            // SAFETY: `from..end` is in the piece's range of bucket `b`; plain stores, since
            // other pieces write the rest of the line.
            unsafe { copy_short(to.0.cast(), slots.as_ptr().cast(), 4 * slots.len()) }
        }
    }

    /// Writes the keys still staged (each bucket's last, partial line) and orders the
    /// non-temporal stores before the task's end.
    ///
    /// # Safety
    /// As for [`push`](Self::push).
    unsafe fn finish(self) {
        for (b, &end) in self.next.iter().enumerate() {
            if !end.is_multiple_of(16) && end > self.first[b] {
                // SAFETY: the caller's contract.
                unsafe { self.write(b, end) };
            }
        }
        store_fence();
    }
}

/// Copies `values` to `to`: the whole 64-byte lines of the destination with non-temporal
/// stores (no read of the line first, nor a place in the cache for it: the values are read
/// again only after the whole pool is done), its ragged ends, which another task may share,
/// with plain ones. [`store_fence`] orders the non-temporal stores before others.
///
/// # Safety
/// `to` has room for `values.len()` entries that no other task writes or reads meanwhile.
unsafe fn write_streaming(to: Shared<Entry>, values: &[Entry]) {
    let (to, from) = (to.0.cast::<u8>(), values.as_ptr().cast::<u8>());
    let len = std::mem::size_of_val(values);
    let head = to.align_offset(64).min(len);
    let lines = (len - head) / 64;
    let tail = head + 64 * lines;
    // SAFETY: every byte copied lies in `values` and in the caller's room at `to`; the lines
    // from `head` are 64-byte aligned at `to`.
    unsafe {
        copy_short(to, from, head);
        for at in (head..tail).step_by(64) {
            stream_line(to.add(at), from.add(at));
        }
        copy_short(to.add(tail), from.add(tail), len - tail);
    }
}

/// Copies `len` bytes (fewer than 64, a multiple of 4) in at most four moves of a constant size,
/// which the compiler inlines: the part of a line that other tasks share ([`write_streaming`]'s
/// ragged ends, a staged line a piece only partly fills), where `copy_nonoverlapping` of a
/// variable length is a call to libc's `memmove`, two per model and bucket in the scatter.
///
/// # Safety
/// `from` and `to` each have `len` bytes, which do not overlap.
#[inline(always)]
unsafe fn copy_short(to: *mut u8, from: *const u8, len: usize) {
    debug_assert!(len < 64 && len.is_multiple_of(4));
    let mut at = 0;
    // SAFETY (each move): `at + size <= len`, the caller's bytes.
    unsafe {
        if len & 32 != 0 {
            std::ptr::copy_nonoverlapping(from, to, 32);
            at = 32;
        }
        if len & 16 != 0 {
            std::ptr::copy_nonoverlapping(from.add(at), to.add(at), 16);
            at += 16;
        }
        if len & 8 != 0 {
            std::ptr::copy_nonoverlapping(from.add(at), to.add(at), 8);
            at += 8;
        }
        if len & 4 != 0 {
            std::ptr::copy_nonoverlapping(from.add(at), to.add(at), 4);
        }
    }
}

/// Writes the 64-byte line at `from` to `to` with non-temporal stores.
///
/// # Safety
/// `to` is 64-byte aligned, with room for the line that no other task writes or reads
/// meanwhile; `from` has 64 bytes.
#[inline(always)]
unsafe fn stream_line(to: *mut u8, from: *const u8) {
    #[cfg(target_arch = "x86_64")]
    for at in (0..64).step_by(16) {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        // SAFETY: `to + at` is 16-byte aligned; the caller's bytes.
        unsafe {
            _mm_stream_si128(
                to.add(at).cast::<__m128i>(),
                _mm_loadu_si128(from.add(at).cast()),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(from, to, 64)
    };
}

/// Orders the non-temporal stores of [`stream_line`] before the task's later stores (the thread
/// pool's signal that the task is done among them).
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2, which every x86-64 processor has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// Stable LSD radix sort of `keys` by their upper 32 bits (the value's order bits, all within
/// `lo..=hi`), on only the bits between `lo` and `hi`, in digits of at most [`MAX_DIGIT_BITS`]
/// (`scratch`, as long as `keys`, is its buffer); a digit every key shares is skipped. Every
/// pass's digit counts come from one read of the keys.
fn sort_by_value(keys: &mut [u64], scratch: &mut [u64], lo: u32, hi: u32) {
    let bits = u32::BITS - (hi - lo).leading_zeros();
    if bits == 0 {
        return;
    }
    let passes = bits.div_ceil(MAX_DIGIT_BITS);
    let digit_bits = bits.div_ceil(passes);
    let radix = 1usize << digit_bits;
    let digit = |k: u64, shift: u32| ((((k >> 32) as u32 - lo) >> shift) as usize) & (radix - 1);
    let mut counts = [0u32; 3 << MAX_DIGIT_BITS];
    let counts = &mut counts[..passes as usize * radix];
    match passes {
        1 => count_digits::<1>(keys, counts, radix, digit_bits, digit),
        2 => count_digits::<2>(keys, counts, radix, digit_bits, digit),
        _ => count_digits::<3>(keys, counts, radix, digit_bits, digit),
    }
    let (mut from, mut to) = (&mut *keys, &mut *scratch);
    let mut in_scratch = false;
    for (pass, counts) in counts.chunks_exact_mut(radix).enumerate() {
        if counts.contains(&(from.len() as u32)) {
            continue;
        }
        let shift = pass as u32 * digit_bits;
        let mut at = 0;
        for c in counts.iter_mut() {
            (*c, at) = (at, at + *c);
        }
        for &k in from.iter() {
            let d = digit(k, shift);
            to[counts[d] as usize] = k;
            counts[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
        in_scratch = !in_scratch;
    }
    if in_scratch {
        keys.copy_from_slice(scratch);
    }
}

/// The counts of each of `PASSES` digits of `keys` (`radix` counters a pass, pass `p` the digit
/// at `p · digit_bits`), in one read of the keys.
#[inline(always)]
fn count_digits<const PASSES: usize>(
    keys: &[u64],
    counts: &mut [u32],
    radix: usize,
    digit_bits: u32,
    digit: impl Fn(u64, u32) -> usize,
) {
    for &k in keys {
        for pass in 0..PASSES {
            counts[pass * radix + digit(k, pass as u32 * digit_bits)] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random samples: values from `levels` levels (ties when few), both signs, −0 and
    /// +0 both present; model sizes uneven.
    fn ensemble(models: usize, levels: u64, seed: u64) -> Vec<Vec<f32>> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..models)
            .map(|k| {
                let n = 1 + (next() % 3000) as usize + 100 * k;
                (0..n)
                    .map(|_| match next() % levels {
                        0 => -0.0,
                        l => (l as f32 - levels as f32 / 2.0) * 0.37,
                    })
                    .collect()
            })
            .collect()
    }

    /// The definition: the pool sorted stably by value, each point's pooled run and position,
    /// each model's points in pooled order.
    fn brute_entries_and_pool(candidates: &[&[f32]]) -> (Vec<Entry>, Vec<u32>, Vec<f32>) {
        let mut pool: Vec<(f32, usize)> = candidates
            .iter()
            .enumerate()
            .flat_map(|(k, c)| c.iter().map(move |&v| (v + 0.0, k)))
            .collect();
        pool.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut per_model = vec![Vec::new(); candidates.len()];
        for (pos, &(value, k)) in pool.iter().enumerate() {
            let lt = pool.partition_point(|p| p.0 < value) as u32;
            let le = pool.partition_point(|p| p.0 <= value) as u32;
            per_model[k].push((Entry { value, lt, le }, pos as u32));
        }
        let (entries, positions) = per_model.concat().into_iter().unzip();
        let pooled = pool.iter().map(|p| p.0).collect();
        (entries, positions, pooled)
    }

    fn offsets(candidates: &[&[f32]]) -> Vec<usize> {
        std::iter::once(0)
            .chain(candidates.iter().scan(0, |end, c| {
                *end += c.len();
                Some(*end)
            }))
            .collect()
    }

    /// Every model's entries, model after model.
    fn bits(pool: &SortedPool, offsets: &[usize]) -> Vec<(u32, u32, u32)> {
        let mut own = Vec::new();
        (0..offsets.len() - 1)
            .flat_map(|k| {
                pool.model_entries(k, offsets, &mut own);
                own.iter()
                    .map(|e| (e.value.to_bits(), e.lt, e.le))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn check(candidates: &[&[f32]], what: &str) {
        let (want_entries, want_positions, want_pooled) = brute_entries_and_pool(candidates);
        let want_entries: Vec<(u32, u32, u32)> = want_entries
            .iter()
            .map(|e| (e.value.to_bits(), e.lt, e.le))
            .collect();
        let offsets = offsets(candidates);
        let total = offsets[candidates.len()];
        // Buckets of one key up to one bucket for everything.
        for target in [
            1,
            7,
            1000,
            bucket_target(total, candidates.len()),
            usize::MAX,
        ] {
            let sorted = entries_and_pool(candidates, &offsets, target, Wanted::Pool).unwrap();
            assert!(
                bits(&sorted, &offsets) == want_entries,
                "{what}, buckets of {target}"
            );
            assert!(
                *sorted.positions == want_positions,
                "{what}, buckets of {target}: positions"
            );
            let pooled: Vec<u32> = sorted.values.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = want_pooled.iter().map(|v| v.to_bits()).collect();
            assert!(pooled == want, "{what}, buckets of {target}: pooled values");

            // The quantiles against the walk over the whole sorted pool.
            let sorted = entries_and_pool(candidates, &offsets, target, Wanted::Quantiles).unwrap();
            assert!(
                bits(&sorted, &offsets) == want_entries,
                "{what}, buckets of {target}, with quantiles"
            );
            for (k, w) in offsets.windows(2).enumerate() {
                let want: Vec<u32> =
                    trim::pool_quantiles_without(&want_positions[w[0]..w[1]], &want_pooled)
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                let got: Vec<u32> = sorted.values[w[0]..w[1]]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert!(
                    got == want,
                    "{what}, buckets of {target}: model {k}'s quantiles"
                );
            }
        }
    }

    /// Many levels (few ties, every bucket used), a few (ties everywhere), one value only.
    #[test]
    fn entries_and_pool_match_the_definition() {
        for (models, levels) in [(23, 1 << 40), (9, 5), (4, 1)] {
            let samples = ensemble(models, levels, levels);
            let views: Vec<&[f32]> = samples.iter().map(|s| s.as_slice()).collect();
            check(&views, &format!("{models} models, {levels} levels"));
        }
    }

    /// One point per model; the extremes of the finite floats; −0 and +0 (equal, stored as +0);
    /// subnormals; values whose order bits differ only in the lowest bit.
    #[test]
    fn entries_and_pool_at_the_edges() {
        let tiny = f32::from_bits(1);
        let next_up = f32::from_bits(1.0f32.to_bits() + 1);
        let cases: [&[&[f32]]; 4] = [
            &[&[3.0], &[3.0]],
            &[&[1.0], &[-2.0], &[0.5]],
            &[
                &[f32::MAX, -f32::MAX, 0.0],
                &[-0.0, f32::MIN_POSITIVE, -tiny],
                &[tiny, 0.0],
            ],
            &[&[1.0, next_up, 1.0], &[next_up, next_up, 1.0, -0.0]],
        ];
        for (i, candidates) in cases.iter().enumerate() {
            check(candidates, &format!("case {i}"));
        }
    }

    /// Many models of one to three points, tied on 11 levels: most buckets hold no point of most
    /// models, so each bucket's points must be told apart by model from the counts alone.
    #[test]
    fn entries_and_pool_of_many_tiny_models() {
        let samples: Vec<Vec<f32>> = (0..61)
            .map(|k| {
                (0..1 + k % 3)
                    .map(|i| ((k * 7 + i * 3) % 11) as f32 * 0.3 - 1.5)
                    .collect()
            })
            .collect();
        let views: Vec<&[f32]> = samples.iter().map(|s| s.as_slice()).collect();
        check(&views, "61 tiny models");
    }

    /// `⌊g·n/m⌋ + 1` against exact integers: model sizes where f64 is exact (up to its edge,
    /// `m·(n + 1)` just under 2⁵²) and where it is not (the integer path), at reference counts
    /// `g` from 0 to `m`, including the multiples of `m/n` where the floor steps (at `g = 22` of
    /// `n = 15`, `m = 22` the f64 product falls just under 15).
    #[test]
    fn first_following_quantiles_are_exact() {
        for (n, m) in [
            (100_000u64, 99_900_000u64),
            (7, 3),
            (15, 22),
            ((1 << 20) - 1, u32::MAX as u64),
            (3_000_000_000, 4_000_000_000),
        ] {
            let before = QuantilesBefore::new(n as usize, m as usize);
            let steps = (1..200).map(|i| i * m / 200);
            let mut counts: Vec<u64> = [0, 1, m - 1, m].into_iter().chain(steps).collect();
            counts.extend(counts.clone().iter().filter_map(|&g| g.checked_sub(1)));
            counts.extend((1..50).map(|i| (i * m).div_ceil(n).min(m)));
            counts.sort_unstable();
            // Own point `t` at index `g − refs_before + t` has `g` reference points before it.
            let refs_before = counts[0] as usize;
            let own: Vec<u32> = counts
                .iter()
                .enumerate()
                .map(|(t, &g)| (g as usize - refs_before + t) as u32)
                .collect();
            let mut got = vec![0u32; own.len()];
            before.first_following(refs_before, &own, &mut got);
            for (&g, &got) in counts.iter().zip(&got) {
                let want = (u128::from(g) * u128::from(n) / u128::from(m)) as u32 + 1;
                assert_eq!(got, want, "n {n}, m {m}, g {g}");
            }
        }
    }

    /// The in-bucket sort against a stable sort, at sizes 0, 1, not a multiple of anything, with
    /// ties, one value only, and values spread over all 32 bits (three digits).
    #[test]
    fn sort_by_value_is_the_stable_order_by_value() {
        for samples in [
            ensemble(1, 1 << 40, 3),
            ensemble(1, 7, 4),
            ensemble(1, 1, 5),
            vec![vec![f32::MAX, -f32::MAX, 0.0, 1.0, f32::from_bits(1)]],
            vec![vec![2.5]],
            vec![vec![]],
        ] {
            let values = &samples[0];
            // The low bits number the keys, so a stable order is the order of the whole key.
            let mut keys: Vec<u64> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| (u64::from(trim::order_bits(v)) << 32) | i as u64)
                .collect();
            let mut want = keys.clone();
            want.sort_unstable();
            let upper = || keys.iter().map(|&k| (k >> 32) as u32);
            let (lo, hi) = (upper().min().unwrap_or(0), upper().max().unwrap_or(0));
            let mut scratch = vec![0; keys.len()];
            sort_by_value(&mut keys, &mut scratch, lo, hi);
            assert!(keys == want, "{} values", values.len());
        }
    }
}
