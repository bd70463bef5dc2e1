//! CPU kernel of the trim family: α̂, KS and trimmed W2 of many candidates at once
//! (definitions in [`crate::instruments::trim`]).
//!
//! Leave-one-out over an ensemble of `M` models × `N` points would naively merge each model with
//! a freshly sorted pool of the other `M − 1`, O(M²·N). Instead the whole pool is sorted once,
//! tagged with model ids; one scan then records, for every point, its position and the pooled
//! ranks `< v` and `≤ v` of its value. A model's reference counts are the pooled counts minus its
//! own, so each model needs only its own `N` points afterwards, and models run in parallel.
//! Only the exact trimmed W2 needs the whole reference of each model (O(M·N) per model); the
//! candidate-grid approximation needs its `N` quantiles.

use rayon::prelude::*;

use crate::backend::{TrimReference, TrimResult, TrimSpec};
use crate::error::{Error, Result};
use crate::instruments::trim::{self, Counts, Profile};

pub fn trim_search(
    candidates: &[&[f32]],
    reference: TrimReference<'_>,
    spec: &TrimSpec,
) -> Result<Vec<TrimResult>> {
    trim::check_level(spec.level)?;
    if let Some(a) = spec.w2_alpha {
        if !(0.0..1.0).contains(&a) {
            return Err(Error::input(format!(
                "W2 trimming level {a} is outside [0, 1)"
            )));
        }
    }
    for (k, c) in candidates.iter().enumerate() {
        trim::check_sample(&format!("candidate {k}"), c)?;
    }
    match reference {
        TrimReference::Sample(r) => {
            trim::check_sample("reference", r)?;
            Ok(against_sample(candidates, r, spec))
        }
        TrimReference::LeaveOneOut => leave_one_out(candidates, spec),
    }
}

fn against_sample(candidates: &[&[f32]], reference: &[f32], spec: &TrimSpec) -> Vec<TrimResult> {
    let reference = trim::sorted(reference);
    candidates
        .par_iter()
        .map(|c| {
            let c = trim::sorted(c);
            let profile = Profile::from_sorted(&c, &reference);
            solve(&profile, c.len(), reference.len(), spec, true, |alpha| {
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

fn leave_one_out(candidates: &[&[f32]], spec: &TrimSpec) -> Result<Vec<TrimResult>> {
    let models = candidates.len();
    if models < 2 {
        return Err(Error::input(format!(
            "leave-one-out comparison needs at least 2 models, got {models}"
        )));
    }
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(candidates.iter().scan(0, |end, c| {
            *end += c.len();
            Some(*end)
        }))
        .collect();
    let total = offsets[models];
    if total >= u32::MAX as usize {
        return Err(Error::input(format!(
            "{total} pooled points: leave-one-out supports fewer than 2^32"
        )));
    }

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
                *key = (u64::from(order_bits(v)) << 32) | k as u64;
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
        let value = from_order_bits(upper as u32);
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
        .map(|&k| from_order_bits((k >> 32) as u32))
        .collect();
    drop(keys);

    let exact_w2 = spec.w2_grid.is_exact(models, total);
    Ok((0..models)
        .into_par_iter()
        .map(|k| {
            let own = &entries[offsets[k]..offsets[k + 1]];
            let (n, m) = (own.len(), total - own.len());
            // Per distinct value (a run of equal `lt`): own counts from the run's place in
            // `own`, reference counts as pooled minus own.
            let mut t = 0;
            let counts = std::iter::from_fn(|| {
                let first = own.get(t)?;
                let run = own[t..].iter().take_while(|e| e.lt == first.lt).count();
                let c = Counts {
                    own_lt: t as u64,
                    own_le: (t + run) as u64,
                    ref_lt: u64::from(first.lt) - t as u64,
                    ref_le: u64::from(first.le) - (t + run) as u64,
                };
                t += run;
                Some(c)
            });
            let profile = Profile::from_counts(n, m, counts);
            solve(&profile, n, m, spec, exact_w2, |alpha| {
                let candidate: Vec<f32> = own.iter().map(|e| e.value).collect();
                let reference = if exact_w2 {
                    others(own, &pooled)
                } else {
                    reference_quantiles(own, m, &pooled)
                };
                trim::trimmed_w2(&candidate, &reference, alpha)
            })
        })
        .collect())
}

/// The pooled reference itself, sorted: the pool without the model's own positions.
fn others(own: &[Entry], pooled: &[f32]) -> Vec<f32> {
    let mut reference = Vec::with_capacity(pooled.len() - own.len());
    let mut from = 0;
    for e in own {
        reference.extend_from_slice(&pooled[from..e.pos as usize]);
        from = e.pos as usize + 1;
    }
    reference.extend_from_slice(&pooled[from..]);
    reference
}

/// The pooled reference's quantiles `G⁻¹(i/n)`, `i = 1..n`: its order statistics `⌈i·m/n⌉`,
/// found in the pooled order by skipping the model's own positions.
fn reference_quantiles(own: &[Entry], m: usize, pooled: &[f32]) -> Vec<f32> {
    let n = own.len();
    let mut skipped = 0;
    (1..=n)
        .map(|i| {
            let j = (i * m).div_ceil(n);
            // The j-th reference point sits at j − 1 plus the own points before it.
            while skipped < n && own[skipped].pos as usize <= j - 1 + skipped {
                skipped += 1;
            }
            pooled[j - 1 + skipped]
        })
        .collect()
}

fn solve(
    profile: &Profile,
    n: usize,
    m: usize,
    spec: &TrimSpec,
    w2_exact: bool,
    trimmed_w2: impl FnOnce(f64) -> f64,
) -> TrimResult {
    let threshold = trim::threshold(spec.level, n, m);
    let alpha_hat = profile.alpha_hat(threshold);
    TrimResult {
        alpha_hat,
        ks: profile.ks(),
        threshold,
        n_candidate: n,
        n_reference: m,
        trimmed_w2: trimmed_w2(spec.w2_alpha.unwrap_or(alpha_hat)),
        w2_exact,
    }
}

/// Maps finite floats to `u32` preserving order, with −0 and +0 equal.
fn order_bits(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn from_order_bits(b: u32) -> f32 {
    f32::from_bits(if b >> 31 == 1 { b & 0x7FFF_FFFF } else { !b })
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
