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

    // Upper 32 bits: the value in an order-preserving encoding; lower: the model id.
    let mut keys = vec![0u64; total];
    let mut rest = keys.as_mut_slice();
    let mut blocks = Vec::with_capacity(models);
    for c in candidates {
        let (block, tail) = rest.split_at_mut(c.len());
        blocks.push(block);
        rest = tail;
    }
    blocks
        .into_par_iter()
        .zip(candidates)
        .enumerate()
        .for_each(|(k, (block, c))| {
            for (key, &v) in block.iter_mut().zip(c.iter()) {
                *key = (u64::from(trim::order_bits(v)) << 32) | k as u64;
            }
        });
    radix_sort_upper(&mut keys);

    // One scan in pooled order fills every model's entries, already sorted by value.
    let mut entries = vec![Entry::default(); total];
    let mut cursor = offsets[..models].to_vec();
    let mut run_start = 0;
    while run_start < total {
        let upper = keys[run_start] >> 32;
        let run_end = run_start
            + keys[run_start..]
                .iter()
                .take_while(|&&k| k >> 32 == upper)
                .count();
        let value = trim::from_order_bits(upper as u32);
        for (pos, &key) in keys.iter().enumerate().take(run_end).skip(run_start) {
            let k = (key & 0xFFFF_FFFF) as usize;
            entries[cursor[k]] = Entry {
                value,
                pos: pos as u32,
                lt: run_start as u32,
                le: run_end as u32,
            };
            cursor[k] += 1;
        }
        run_start = run_end;
    }
    let pooled: Vec<f32> = keys
        .par_iter()
        .map(|&k| trim::from_order_bits((k >> 32) as u32))
        .collect();
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

/// Stable LSD radix sort by the upper 32 bits, a byte per pass (a pass is skipped when every key
/// shares its byte): stable, so equal values keep their model order.
fn radix_sort_upper(keys: &mut Vec<u64>) {
    const SHIFTS: [u32; 4] = [32, 40, 48, 56];
    let histograms = keys
        .par_chunks(1 << 16)
        .map(|chunk| {
            let mut h = [[0usize; 256]; 4];
            for &k in chunk {
                for (h, s) in h.iter_mut().zip(SHIFTS) {
                    h[(k >> s) as usize & 0xFF] += 1;
                }
            }
            h
        })
        .reduce(
            || [[0usize; 256]; 4],
            |mut a, b| {
                for (a, b) in a.iter_mut().zip(&b) {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                }
                a
            },
        );
    let mut buffer = vec![0u64; keys.len()];
    for (histogram, shift) in histograms.iter().zip(SHIFTS) {
        if histogram.contains(&keys.len()) {
            continue;
        }
        let mut next = [0usize; 256];
        let mut at = 0;
        for (slot, &count) in next.iter_mut().zip(histogram) {
            *slot = at;
            at += count;
        }
        for &k in keys.iter() {
            let b = (k >> shift) as usize & 0xFF;
            buffer[next[b]] = k;
            next[b] += 1;
        }
        std::mem::swap(keys, &mut buffer);
    }
}
