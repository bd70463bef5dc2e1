//! Trimmed comparison of two distributions: the op's parameters and results, and the definitions
//! every trim kernel is tested against (and shares where WGSL, without f64, cannot match them).
//!
//! Source: P. C. Álvarez-Esteban, E. del Barrio, J. A. Cuesta-Albertos, C. Matrán,
//! "Trimmed comparison of distributions", JASA 103 (2008) 697–704, and "Similarity of samples
//! and trimming", Bernoulli 18 (2012) 606–634.
//!
//! Let `F` be the candidate's empirical CDF (`n` points) and `G` the reference's (`m` points). An
//! α-trimming of `F` is a distribution with density at most `L = 1/(1−α)` with respect to `F`; in
//! CDF terms `h∘F` with `h(0) = 0`, `h(1) = 1`, `0 ≤ h' ≤ L`. The Kolmogorov distance from `G` to
//! the α-trimmings of `F` has a closed form on the merged sorted grid of both samples
//! (right-continuous ECDFs, ties handled):
//!
//! ```text
//! d(α) = max(A, B, C),  A = max_x (G − L·F)⁺,  B = max_x (L·(F − α) − G)⁺,
//!                       C = ½·max_{x<y} [(G(y) − G(x)) − L·(F(y) − F(x))]⁺
//! ```
//!
//! `d(0)` is the two-sample KS statistic and `d` is non-increasing in α. The discrepancy is
//! `α̂ = min{α ∈ [0, 1) : d(α) ≤ c·√((n+m)/(n·m))}` with `c = √(−ln(level/2)/2)`; it is 1 when no
//! trimming reaches the threshold (G puts more than the threshold's mass where F has none).

use rayon::prelude::*;

use super::simd::with_wide_simd;
use crate::error::{Error, Result};

/// What each candidate of [`Backend::trim_search`](crate::backend::Backend::trim_search) is compared with.
#[derive(Clone, Copy, Debug)]
pub enum TrimReference<'a> {
    /// One reference sample shared by every candidate.
    Sample(&'a [f32]),
    /// The pooled other candidates (leave-one-out): an ensemble's models against the rest.
    LeaveOneOut,
    /// Leave-one-out over the whole pool, but only candidates `start..end` compared and
    /// returned — a shard of an ensemble's comparison; each result is bit for bit the one
    /// `LeaveOneOut` gives that candidate.
    LeaveOneOutPart { start: usize, end: usize },
}

impl<'a> TrimReference<'a> {
    /// The samples whose pooled points every candidate is ranked in: the reference sample, or
    /// for leave-one-out every candidate (each one's own points are taken out after ranking).
    pub fn pool<'c>(&self, candidates: &[&'c [f32]]) -> Vec<&'c [f32]>
    where
        'a: 'c,
    {
        match *self {
            TrimReference::Sample(r) => vec![r],
            _ => candidates.to_vec(),
        }
    }

    /// The candidates compared: all of them but for [`TrimReference::LeaveOneOutPart`].
    pub fn compared(&self, models: usize) -> std::ops::Range<usize> {
        match *self {
            TrimReference::LeaveOneOutPart { start, end } => start..end,
            _ => 0..models,
        }
    }

    /// Whether each candidate's reference is the pool of the others.
    pub fn leave_one_out(&self) -> bool {
        !matches!(self, TrimReference::Sample(_))
    }
}

/// Parameters of [`Backend::trim_search`](crate::backend::Backend::trim_search).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrimSpec {
    /// Test level in (0, 1); sets the KS threshold α̂ is searched against.
    pub level: f64,
    /// Trimming level of the W2 cost; `None` uses each candidate's own α̂.
    pub w2_alpha: Option<f64>,
    /// Grid of the leave-one-out W2 cost (a single reference sample is always exact).
    pub w2_grid: W2Grid,
}

/// Where the leave-one-out trimmed W2 compares quantile functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum W2Grid {
    /// The exact merged grid `{i/n} ∪ {j/m}` (issue definition): O(M·N) per model, O(M²·N) for
    /// the ensemble.
    Merged,
    /// The pooled reference's quantiles at the candidate's grid `{i/n}` only: O(N) per model, an
    /// approximation that ignores the reference's spread inside each `1/n` step.
    Candidate,
    /// Merged while the ensemble's work `M²·N` stays under [`W2Grid::AUTO_MERGED_LIMIT`], else
    /// candidate.
    Auto,
}

impl W2Grid {
    /// `M²·N` up to which `Auto` stays exact: about 3 s on two cores (≈ 15 ns per grid piece).
    pub const AUTO_MERGED_LIMIT: usize = 200_000_000;

    /// Whether an ensemble of `models` models with `pooled` points in all is compared exactly.
    pub fn is_exact(self, models: usize, pooled: usize) -> bool {
        match self {
            W2Grid::Merged => true,
            W2Grid::Candidate => false,
            W2Grid::Auto => models.saturating_mul(pooled) <= Self::AUTO_MERGED_LIMIT,
        }
    }
}

/// One candidate's comparison with its reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrimResult {
    /// Smallest trimming level whose KS distance is within the threshold (1 if none is).
    pub alpha_hat: f64,
    /// Two-sample KS statistic, `d(0)`.
    pub ks: f64,
    /// `c(level)·√((n+m)/(n·m))`.
    pub threshold: f64,
    pub n_candidate: usize,
    pub n_reference: usize,
    /// Trimmed W2 cost τ at `w2_alpha` (or α̂), on the grid [`TrimResult::w2_exact`] says.
    pub trimmed_w2: f64,
    /// Whether `trimmed_w2` is exact on the merged grid (always against a
    /// [`TrimReference::Sample`]; leave-one-out as [`TrimSpec::w2_grid`] decides).
    pub w2_exact: bool,
}

/// `c·√((n+m)/(n·m))` with `c = √(−ln(level/2)/2)`: the two-sample KS critical value
/// (1.3581·√((n+m)/(n·m)) at level 0.05).
pub fn threshold(level: f64, n: usize, m: usize) -> f64 {
    let c = (-(level / 2.0).ln() / 2.0).sqrt();
    let (n, m) = (n as f64, m as f64);
    c * ((n + m) / (n * m)).sqrt()
}

/// Checks a test level lies in (0, 1).
pub fn check_level(level: f64) -> Result<()> {
    if level > 0.0 && level < 1.0 {
        Ok(())
    } else {
        Err(Error::input(format!("level {level} is outside (0, 1)")))
    }
}

/// Checks a sample is non-empty and finite; `what` names it in the error (file, model index).
pub fn check_sample(what: &str, values: &[f32]) -> Result<()> {
    if values.is_empty() {
        return Err(Error::input(format!("{what}: empty sample")));
    }
    if all_finite(values) {
        return Ok(());
    }
    let i = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(Error::input(format!(
        "{what}: value {} at position {} is not finite",
        values[i],
        i + 1
    )))
}

/// Whether every value is finite, on every core.
fn all_finite(values: &[f32]) -> bool {
    values.par_chunks(1 << 16).all(finite)
}

/// Whether none of `values` is infinite or NaN: their largest magnitude's bits below those of
/// infinity (a maximum vectorises; a search for the first non-finite value stops at each point
/// and took 0.09 s of `compare`'s 10⁸ points).
pub fn finite(values: &[f32]) -> bool {
    const INFINITY_BITS: u32 = 0x7f80_0000;
    let largest = values.iter().map(|v| v.to_bits() & 0x7fff_ffff).max();
    largest.unwrap_or(0) < INFINITY_BITS
}

/// Checks the arguments of a [`Backend::trim_search`](crate::backend::Backend::trim_search) call
/// the way every backend reports them: [`check_search_shape`], then every candidate finite.
pub fn check_search(
    candidates: &[&[f32]],
    reference: TrimReference<'_>,
    spec: &TrimSpec,
) -> Result<()> {
    check_search_shape(candidates, reference, spec)?;
    check_candidates_finite(candidates)
}

/// Every candidate's values finite, all at once; the first non-finite value of the first
/// candidate that has one is reported.
pub fn check_candidates_finite(candidates: &[&[f32]]) -> Result<()> {
    match candidates.par_iter().position_first(|c| !all_finite(c)) {
        Some(k) => check_sample(&format!("candidate {k}"), candidates[k]),
        None => Ok(()),
    }
}

/// [`check_search`] but for the candidates' values, which a backend that reads each of them
/// anyway may check as it goes ([`check_candidates_finite`] then names the culprit): level, W2
/// trimming level, no empty candidate, the reference sample, and a leave-one-out pool of at
/// least two models with fewer than 2³² points.
pub fn check_search_shape(
    candidates: &[&[f32]],
    reference: TrimReference<'_>,
    spec: &TrimSpec,
) -> Result<()> {
    check_level(spec.level)?;
    if let Some(a) = spec.w2_alpha {
        if !(0.0..1.0).contains(&a) {
            return Err(Error::input(format!(
                "W2 trimming level {a} is outside [0, 1)"
            )));
        }
    }
    if let Some(k) = candidates.iter().position(|c| c.is_empty()) {
        return Err(Error::input(format!("candidate {k}: empty sample")));
    }
    match reference {
        TrimReference::Sample(r) => check_sample("reference", r),
        TrimReference::LeaveOneOut | TrimReference::LeaveOneOutPart { .. } => {
            let models = candidates.len();
            let part = reference.compared(models);
            if part.start > part.end || part.end > models {
                return Err(Error::input(format!(
                    "leave-one-out candidates {}..{} outside the {models} models",
                    part.start, part.end
                )));
            }
            if models < 2 {
                return Err(Error::input(format!(
                    "leave-one-out comparison needs at least 2 models, got {models}"
                )));
            }
            let total: usize = candidates.iter().map(|c| c.len()).sum();
            if total >= u32::MAX as usize {
                return Err(Error::input(format!(
                    "{total} pooled points: leave-one-out supports fewer than 2^32"
                )));
            }
            Ok(())
        }
    }
}

/// Maps finite floats to `u32` preserving order, with −0 and +0 equal: sort keys for the
/// kernels that sort integers (radix on the CPU, bitonic on GPUs).
pub fn order_bits(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The inverse of [`order_bits`].
pub fn from_order_bits(b: u32) -> f32 {
    f32::from_bits(if b >> 31 == 1 { b & 0x7FFF_FFFF } else { !b })
}

/// The [`Counts`] at each distinct value of a sorted sample, from each point's ranks in a sorted
/// reference, `ranks(i) = (#reference < vᵢ, #reference ≤ vᵢ)`. With `own_in_reference` the
/// reference is a pool that holds the sample itself (leave-one-out), whose own counts are taken
/// out of the pooled ones.
pub fn counts_from_ranks<'a>(
    sorted: &'a [f32],
    ranks: impl Fn(usize) -> (usize, usize) + 'a,
    own_in_reference: bool,
) -> impl Iterator<Item = Counts> + 'a {
    // Yielded one run at a time: the profile is built from them directly, no list in between.
    let mut t = 0;
    std::iter::from_fn(move || {
        let v = *sorted.get(t)?;
        let run = sorted[t..].iter().take_while(|&&x| x == v).count();
        let (lt, le) = ranks(t);
        let (own_lt, own_le) = (t, t + run);
        let (ref_lt, ref_le) = if own_in_reference {
            (lt - own_lt, le - own_le)
        } else {
            (lt, le)
        };
        t += run;
        Some(Counts {
            own_lt: own_lt as u64,
            own_le: own_le as u64,
            ref_lt: ref_lt as u64,
            ref_le: ref_le as u64,
        })
    })
}

/// One candidate's [`TrimResult`] from what a GPU kernel counted: its values sorted, and for each
/// its ranks in the sorted reference, `ranks[2i]` reference points `< valuesᵢ` and
/// `ranks[2i + 1]` `≤ valuesᵢ`. With `leave_one_out` the reference is the pool of every
/// candidate, `sorted_reference`, which holds this candidate's own points: they are taken out of
/// the counts and, for the W2 cost, out of the pool. The CPU backend's result bit for bit.
pub fn result_of_ranks(
    values: &[f32],
    ranks: &[u32],
    sorted_reference: &[f32],
    leave_one_out: bool,
    spec: &TrimSpec,
    w2_exact: bool,
) -> TrimResult {
    let n = values.len();
    let m = sorted_reference.len() - if leave_one_out { n } else { 0 };
    let rank = |i: usize| (ranks[2 * i] as usize, ranks[2 * i + 1] as usize);
    let shares = OwnShares::new(n);
    result_from(
        n,
        m,
        spec,
        w2_exact,
        |t| {
            let points = RankedPoints {
                value: |i| values[i],
                ranks: rank,
                own_in_reference: leave_one_out,
            };
            Profile::ks_and_alpha_hat_of_ranks(&shares, m, &points, t, (), |(), _, _| ())
        },
        |alpha, ()| {
            if !leave_one_out {
                return trimmed_w2(values, sorted_reference, alpha);
            }
            let positions = pool_positions(values, rank);
            let reference = if w2_exact {
                pool_without(&positions, sorted_reference)
            } else {
                pool_quantiles_without(&positions, sorted_reference)
            };
            trimmed_w2(values, &reference, alpha)
        },
    )
}

/// Positions in the sorted pool for a model's sorted own points from their pooled ranks: equal
/// values are interchangeable, so a run of equal own values takes the first slots of its value's
/// run in the pool.
fn pool_positions(values: &[f32], rank: impl Fn(usize) -> (usize, usize)) -> Vec<u32> {
    let mut run_start = 0;
    (0..values.len())
        .map(|i| {
            if values[i] != values[run_start] {
                run_start = i;
            }
            (rank(i).0 + i - run_start) as u32
        })
        .collect()
}

/// A leave-one-out reference itself, sorted: the sorted pool without the model's own points at
/// `positions` (increasing).
pub fn pool_without(positions: &[u32], pooled: &[f32]) -> Vec<f32> {
    let mut reference = Vec::with_capacity(pooled.len() - positions.len());
    let mut from = 0;
    for &p in positions {
        reference.extend_from_slice(&pooled[from..p as usize]);
        from = p as usize + 1;
    }
    reference.extend_from_slice(&pooled[from..]);
    reference
}

/// A leave-one-out reference's quantiles `G⁻¹(i/n)`, `i = 1..n` for the `n` own points at
/// `positions` of the sorted pool: its order statistics `⌈i·m/n⌉`, found in the pool by skipping
/// the own positions, O(n) where [`pool_without`] is O(pool).
pub fn pool_quantiles_without(positions: &[u32], pooled: &[f32]) -> Vec<f32> {
    let n = positions.len();
    let m = pooled.len() - n;
    let mut skipped = 0;
    let at: Vec<usize> = (1..=n)
        .map(|i| {
            let j = (i * m).div_ceil(n);
            // The j-th reference point sits at j − 1 plus the own points before it.
            while skipped < n && positions[skipped] as usize <= j - 1 + skipped {
                skipped += 1;
            }
            j - 1 + skipped
        })
        .collect();
    // Gathered apart from the walk, whose branches would otherwise cut short the overlap of
    // these (mostly cache-missing) loads.
    at.iter().map(|&p| pooled[p]).collect()
}

/// One candidate's [`TrimResult`] from its [`Profile`]; `trimmed_w2` gives the W2 cost at a
/// trimming level (computed only once α̂ is known when the spec leaves the level to it).
pub fn result(
    profile: &Profile,
    n: usize,
    m: usize,
    spec: &TrimSpec,
    w2_exact: bool,
    trimmed_w2: impl FnOnce(f64) -> f64,
) -> TrimResult {
    result_from(
        n,
        m,
        spec,
        w2_exact,
        |t| {
            let (ks, alpha_hat) = profile.ks_and_alpha_hat(t);
            (ks, alpha_hat, ())
        },
        |alpha, ()| trimmed_w2(alpha),
    )
}

/// [`result`] with `(d(0), α̂)` from `ks_and_alpha_hat(threshold)`: for kernels that do not
/// build the whole profile ([`Profile::ks_and_alpha_hat_of_ranks`]). Whatever else that pass
/// gathers (a sum over the points, say) is handed on to `trimmed_w2` with the trimming level.
pub fn result_from<S>(
    n: usize,
    m: usize,
    spec: &TrimSpec,
    w2_exact: bool,
    ks_and_alpha_hat: impl FnOnce(f64) -> (f64, f64, S),
    trimmed_w2: impl FnOnce(f64, S) -> f64,
) -> TrimResult {
    let threshold = threshold(spec.level, n, m);
    let (ks, alpha_hat, gathered) = ks_and_alpha_hat(threshold);
    TrimResult {
        alpha_hat,
        ks,
        threshold,
        n_candidate: n,
        n_reference: m,
        trimmed_w2: trimmed_w2(spec.w2_alpha.unwrap_or(alpha_hat), gathered),
        w2_exact,
    }
}

/// `values` sorted ascending, −0 turned into +0 so equal values are adjacent and compare equal.
pub fn sorted(values: &[f32]) -> Vec<f32> {
    let mut v: Vec<f32> = values.iter().map(|&x| x + 0.0).collect();
    v.par_sort_unstable_by(f32::total_cmp);
    v
}

/// The pair of ECDFs `(F, G)` at the grid points where `d(α)` can attain its maximum: just
/// before and at every distinct candidate value, then `(1, 1)`. Between two candidate values
/// `F` is constant and `G` grows, so `G − L·F` peaks just before the next candidate value,
/// `L·(F − α) − G` right at the last one, and a draw-up of `G − L·F` runs from a candidate value
/// to a point just before one; every other grid point is dominated. Built from counts,
/// so kernels that count by other means (merged sorts, leave-one-out pools) share it.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    f: Vec<f64>,
    g: Vec<f64>,
}

/// Counts at one distinct candidate value `v`: candidate points `< v` and `≤ v`, reference points
/// `< v` and `≤ v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub own_lt: u64,
    pub own_le: u64,
    pub ref_lt: u64,
    pub ref_le: u64,
}

impl Profile {
    /// From the counts at each distinct candidate value, in increasing order of the value.
    pub fn from_counts(n: usize, m: usize, counts: impl IntoIterator<Item = Counts>) -> Self {
        // Two states per distinct value, at most `n` of them, and the final `(1, 1)`.
        let mut p = Profile {
            f: Vec::with_capacity(2 * n + 1),
            g: Vec::with_capacity(2 * n + 1),
        };
        state_blocks(n, m, counts, |f, g| {
            p.f.extend_from_slice(f);
            p.g.extend_from_slice(g);
        });
        p.f.push(1.0);
        p.g.push(1.0);
        p
    }

    /// `Profile::from_counts(n, m, counts_from_ranks(..)).ks_and_alpha_hat(t)` bit for bit for a
    /// model's sorted `points` (`n = shares.n()`), in one pass over them that holds a block of the
    /// profile at a time: the whole profile is built only where α̂ needs Newton's further passes
    /// (samples that disagree, the rare case). `visit(gathered, i, value)` folds every point in
    /// order into `gathered` (from `init`), for a caller's own sums over them in the same pass;
    /// the fold is returned third. Threaded by value, it stays in registers through the pass.
    pub fn ks_and_alpha_hat_of_ranks<V, R, S>(
        shares: &OwnShares,
        m: usize,
        points: &RankedPoints<V, R>,
        t: f64,
        init: S,
        visit: impl FnMut(S, usize, f32) -> S,
    ) -> (f64, f64, S)
    where
        V: Fn(usize) -> f32,
        R: Fn(usize) -> (usize, usize),
    {
        let mut scan = FirstPass::new(t);
        let gathered =
            rank_state_blocks(shares, m, points, init, visit, |f, g| scan.push_block(f, g));
        scan.push_block(&[1.0], &[1.0]);
        let mut profile = None;
        let (ks, alpha_hat) = scan.finish(|l| {
            profile
                .get_or_insert_with(|| {
                    let n = shares.n();
                    let values: Vec<f32> = (0..n).map(&points.value).collect();
                    let counts = counts_from_ranks(&values, &points.ranks, points.own_in_reference);
                    Profile::from_counts(n, m, counts)
                })
                .max_rise(l)
        });
        (ks, alpha_hat, gathered)
    }

    /// From both samples sorted ascending (a merge, O(n + m)).
    pub fn from_sorted(candidate: &[f32], reference: &[f32]) -> Self {
        let mut counts = Vec::new();
        let (mut i, mut ref_lt) = (0, 0);
        while i < candidate.len() {
            let v = candidate[i];
            let run = candidate[i..].iter().take_while(|&&x| x == v).count();
            while ref_lt < reference.len() && reference[ref_lt] < v {
                ref_lt += 1;
            }
            let ref_le = ref_lt + reference[ref_lt..].iter().take_while(|&&x| x == v).count();
            counts.push(Counts {
                own_lt: i as u64,
                own_le: (i + run) as u64,
                ref_lt: ref_lt as u64,
                ref_le: ref_le as u64,
            });
            i += run;
            ref_lt = ref_le;
        }
        Profile::from_counts(candidate.len(), reference.len(), counts)
    }

    fn states(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.f.iter().copied().zip(self.g.iter().copied())
    }

    /// `d(α)`, the Kolmogorov distance from `G` to the α-trimmings of `F`, for α in [0, 1).
    pub fn distance(&self, alpha: f64) -> f64 {
        let l = 1.0 / (1.0 - alpha);
        // Start at x = −∞ where F = G = 0, so D = G − L·F = 0.
        let (mut a, mut b, mut rise, mut low) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (f, g) in self.states() {
            let d = g - l * f;
            a = a.max(d);
            // L·(F − α) − G, written so that F = 1 gives 1 − G without rounding.
            b = b.max((1.0 - g) - l * (1.0 - f));
            rise = rise.max(d - low);
            low = low.min(d);
        }
        a.max(b).max(rise / 2.0)
    }

    /// The two-sample Kolmogorov–Smirnov statistic, `d(0)`.
    pub fn ks(&self) -> f64 {
        self.distance(0.0)
    }

    /// `α̂ = min{α ∈ [0, 1) : d(α) ≤ t}`, or 1 when no α qualifies.
    ///
    /// Solved exactly in `L = 1/(1−α)` rather than by bisection: `A ≤ t` and `B ≤ t` are one
    /// linear lower bound on `L` per grid point, and `C ≤ t` asks the largest draw-up of
    /// `G − L·F` (convex and non-increasing in `L`, a maximum of affine functions) to stay below
    /// `2t`, which Newton's method from the left solves in a few passes without overshooting.
    pub fn alpha_hat(&self, t: f64) -> f64 {
        self.ks_and_alpha_hat(t).1
    }

    /// `(d(0), α̂)`: [`Profile::ks`] and [`Profile::alpha_hat`] bit for bit, sharing passes over
    /// the profile. The linear bounds of α̂ are found in the KS pass; where they leave `L = 1`
    /// (samples that agree, the usual case) that pass's largest draw-up is also Newton's first,
    /// so one pass gives both.
    pub fn ks_and_alpha_hat(&self, t: f64) -> (f64, f64) {
        let mut scan = FirstPass::new(t);
        scan.push_block(&self.f, &self.g);
        scan.finish(|l| self.max_rise(l))
    }

    /// Largest draw-up `max_{x<y} D(y) − D(x)` of `D = G − L·F` with the `(ΔG, ΔF)` of the pair
    /// attaining it.
    fn max_rise(&self, l: f64) -> (f64, f64, f64) {
        let (mut best, mut best_dg, mut best_df) = (0.0f64, 0.0, 0.0);
        let (mut low, mut low_f, mut low_g) = (0.0f64, 0.0, 0.0);
        for (f, g) in self.states() {
            let d = g - l * f;
            if d - low > best {
                (best, best_dg, best_df) = (d - low, g - low_g, f - low_f);
            }
            if d < low {
                (low, low_f, low_g) = (d, f, g);
            }
        }
        (best, best_dg, best_df)
    }
}

/// States per block of [`state_blocks`]: two blocks of them stay in L1.
const STATE_BLOCK: usize = 512;

/// The profile's states `(F, G)` from the counts, without the final `(1, 1)`, handed to `block`
/// a block at a time in order. Divided apart from the counting, in loops the compiler
/// vectorises: the same correctly rounded quotients, several per instruction.
fn state_blocks(
    n: usize,
    m: usize,
    counts: impl IntoIterator<Item = Counts>,
    mut block: impl FnMut(&[f64], &[f64]),
) {
    let (n, m) = (n as f64, m as f64);
    let (mut f, mut g) = ([0.0f64; STATE_BLOCK], [0.0f64; STATE_BLOCK]);
    let mut len = 0;
    let mut flush = |f: &mut [f64], g: &mut [f64]| {
        divide(f, n);
        divide(g, m);
        block(f, g);
    };
    for c in counts {
        [f[len], f[len + 1]] = [c.own_lt as f64, c.own_le as f64];
        [g[len], g[len + 1]] = [c.ref_lt as f64, c.ref_le as f64];
        len += 2;
        if len == STATE_BLOCK {
            flush(&mut f, &mut g);
            len = 0;
        }
    }
    flush(&mut f[..len], &mut g[..len]);
}

with_wide_simd! {
    /// Divides every value by `by`, as wide as the CPU allows: the profile's states are two
    /// correctly rounded quotients a point, and the baseline target divides two at a time.
    avx512 fn divide => divide_portable(values: &mut [f64], by: f64)
}

#[inline(always)]
fn divide_portable(values: &mut [f64], by: f64) {
    values.iter_mut().for_each(|v| *v /= by);
}

/// A model's points sorted ascending (−0 as +0), with each one's ranks in the sorted reference:
/// `ranks(i) = (#reference < value(i), #reference ≤ value(i))`. With `own_in_reference` the
/// reference is a pool that holds the model itself (leave-one-out), whose own points are taken
/// out of the pooled ranks (as in [`counts_from_ranks`]).
pub struct RankedPoints<V, R> {
    pub value: V,
    pub ranks: R,
    pub own_in_reference: bool,
}

/// `t / n` for `t = 0..=n`: a model's own ECDF at each count, shared by the models of `n` points
/// instead of divided again for each.
pub struct OwnShares(Vec<f64>);

impl OwnShares {
    pub fn new(n: usize) -> Self {
        let n_f = n as f64;
        OwnShares((0..=n).map(|t| t as f64 / n_f).collect())
    }

    /// The model size `n` the shares are for.
    pub fn n(&self) -> usize {
        self.0.len() - 1
    }
}

/// [`state_blocks`] of `counts_from_ranks(points)` straight from the points, without a run
/// search per value: point `i` starts a run of equal values when `value(i − 1)` differs, giving
/// the state before its value `(i, lt − own)`, and ends one when `value(i + 1)` differs, giving
/// the state at it `(i + 1, le − own)`; both are written and kept (the length advanced) only
/// where they apply, so ties cost no branch. `visit` folds the points into `init`, returned.
fn rank_state_blocks<V, R, S>(
    shares: &OwnShares,
    m: usize,
    points: &RankedPoints<V, R>,
    init: S,
    mut visit: impl FnMut(S, usize, f32) -> S,
    mut block: impl FnMut(&[f64], &[f64]),
) -> S
where
    V: Fn(usize) -> f32,
    R: Fn(usize) -> (usize, usize),
{
    let (n, m) = (shares.n(), m as f64);
    let own_f = &shares.0;
    let own_in_reference = i64::from(points.own_in_reference);
    // One point writes two states past the kept ones: room for them after a full block.
    let (mut f, mut g) = ([0.0f64; STATE_BLOCK + 2], [0.0f64; STATE_BLOCK + 2]);
    let mut len = 0;
    let mut flush = |f: &[f64], g: &mut [f64]| {
        divide(g, m);
        block(f, g);
    };
    let mut starts = true;
    let Some(mut next) = (n > 0).then(|| (points.value)(0)) else {
        return init;
    };
    let mut gathered = init;
    for i in 0..n {
        let v = next;
        gathered = visit(gathered, i, v);
        let (lt, le) = (points.ranks)(i);
        let ends = if i + 1 < n {
            next = (points.value)(i + 1);
            next != v
        } else {
            true
        };
        // Signed: a state that is not kept may go below zero (a point inside a run of ties).
        // Counts below 2³², so the conversions from i64 are exact (and one instruction).
        let own = own_in_reference * i as i64;
        f[len] = own_f[i];
        g[len] = (lt as i64 - own) as f64;
        len += usize::from(starts);
        f[len] = own_f[i + 1];
        g[len] = (le as i64 - own - own_in_reference) as f64;
        len += usize::from(ends);
        starts = ends;
        if len >= STATE_BLOCK {
            flush(&f[..len], &mut g[..len]);
            len = 0;
        }
    }
    flush(&f[..len], &mut g[..len]);
    gathered
}

/// `l.max(num / den)` for `den > 0` is taken only when the bound may raise `l`: if
/// `num ≤ l·den·SHY` as rounded, then `num < l·den` exactly, so the rounded quotient is at most
/// `l` and the maximum stays `l` bit for bit. Most grid points bound nothing.
const SHY: f64 = 1.0 - 1.0 / (1u64 << 40) as f64;

/// The first pass of [`Profile::ks_and_alpha_hat`] over the states in order: the KS terms, the
/// linear bounds of α̂ and the largest draw-up at `L = 1`.
#[derive(Clone, Copy)]
struct FirstPass {
    t: f64,
    /// The largest linear lower bound on `L` so far.
    l: f64,
    /// Whether some grid point rules out every trimming.
    hopeless: bool,
    a: f64,
    b: f64,
    /// `max_rise(1)` so far: the draw-up and its `(ΔG, ΔF)`.
    rise_at_one: (f64, f64, f64),
    /// The lowest `G − F` so far and its `(F, G)`.
    low: (f64, f64, f64),
}

impl FirstPass {
    fn new(t: f64) -> Self {
        FirstPass {
            t,
            l: 1.0,
            hopeless: false,
            a: 0.0,
            b: 0.0,
            rise_at_one: (0.0, 0.0, 0.0),
            low: (0.0, 0.0, 0.0),
        }
    }

    fn push_block(&mut self, fs: &[f64], gs: &[f64]) {
        if !push_quiet(self, fs, gs) {
            self.push_each(fs, gs);
        }
    }

    /// Pushes the states one at a time.
    fn push_each(&mut self, fs: &[f64], gs: &[f64]) {
        let raise = |l: f64, num: f64, den: f64| {
            if num > l * den * SHY {
                l.max(num / den)
            } else {
                l
            }
        };
        // A copy in locals, so the loop keeps it in registers.
        let mut s = *self;
        for (&f, &g) in fs.iter().zip(gs) {
            // KS: `distance(0)`'s terms, its draw-up tracked as `max_rise(1)` does.
            let d = g - f;
            s.a = s.a.max(d);
            s.b = s.b.max((1.0 - g) - (1.0 - f));
            if d - s.low.0 > s.rise_at_one.0 {
                s.rise_at_one = (d - s.low.0, g - s.low.2, f - s.low.1);
            }
            if d < s.low.0 {
                s.low = (d, f, g);
            }
            if s.hopeless {
                continue;
            }
            // A: g − L·f ≤ t.
            if f > 0.0 {
                s.l = raise(s.l, g - s.t, f);
            } else if g > s.t {
                s.hopeless = true;
            }
            // B: L·(f − α) − g = L·(f − 1) + 1 − g ≤ t.
            if f < 1.0 {
                s.l = raise(s.l, 1.0 - g - s.t, 1.0 - f);
            } else if 1.0 - g > s.t {
                s.hopeless = true;
            }
        }
        *self = s;
    }

    /// `(d(0), α̂)` once every state has been pushed; `max_rise` is [`Profile::max_rise`] of the
    /// whole profile, called only where the first pass leaves α̂ open.
    fn finish(self, mut max_rise: impl FnMut(f64) -> (f64, f64, f64)) -> (f64, f64) {
        let t = self.t;
        let ks = self.a.max(self.b).max(self.rise_at_one.0 / 2.0);
        if self.hopeless {
            return (ks, 1.0);
        }
        let mut l = self.l;
        let mut known_rise = (l == 1.0).then_some(self.rise_at_one);
        loop {
            let (rise, dg, df) = known_rise.take().unwrap_or_else(|| max_rise(l));
            if rise <= 2.0 * t {
                break;
            }
            if df == 0.0 {
                // G rises by more than 2t where F is flat: no trimming helps.
                return (ks, 1.0);
            }
            let next = (dg - 2.0 * t) / df;
            if next <= l || !next.is_finite() {
                // Rounding: `l` is the root to within an ulp.
                break;
            }
            l = next;
        }
        let alpha_hat = if l.is_finite() { 1.0 - 1.0 / l } else { 1.0 };
        (ks, alpha_hat)
    }
}

/// Lanes of [`QuietLanes`]: one AVX-512 register per running extreme (their chains are shorter
/// than the work).
const LANES: usize = 8;

/// The running extremes of a block's states, lane by lane, that [`push_quiet`] reduces: the
/// highest and lowest `G − F`, the highest KS `B` term, and the largest margin by which a state
/// fails [`FirstPass::push_each`]'s tests (positive where one is met: `x > y` exactly where the
/// rounded `x − y > 0`). All plain f64 maxima and minima, so the lanes' order does not matter.
#[derive(Clone, Copy)]
struct QuietLanes {
    high: [f64; LANES],
    low: [f64; LANES],
    b: [f64; LANES],
    loud: [f64; LANES],
}

impl QuietLanes {
    fn new() -> Self {
        QuietLanes {
            high: [f64::NEG_INFINITY; LANES],
            low: [f64::INFINITY; LANES],
            b: [f64::NEG_INFINITY; LANES],
            loud: [f64::NEG_INFINITY; LANES],
        }
    }

    /// Folds the state `(f, g)` into lane `k`, for a block pushed at threshold `t` and bound `l`.
    #[inline(always)]
    fn push(&mut self, k: usize, f: f64, g: f64, t: f64, l: f64) {
        let d = g - f;
        self.high[k] = if d > self.high[k] { d } else { self.high[k] };
        self.low[k] = if d < self.low[k] { d } else { self.low[k] };
        let b_term = (1.0 - g) - (1.0 - f);
        self.b[k] = if b_term > self.b[k] {
            b_term
        } else {
            self.b[k]
        };
        // `push_each`'s tests at this block's `l`, without its branches: a bound that raises
        // `l`, or a state that rules out every trimming (at `f = 0` the first test is
        // `g − t > 0`, i.e. `g > t`; at `f = 1` the second is `1 − g > t` the same way).
        let raises_a = (g - t) - l * f * SHY;
        let raises_b = ((1.0 - g) - t) - l * (1.0 - f) * SHY;
        let margin = if raises_a > raises_b {
            raises_a
        } else {
            raises_b
        };
        self.loud[k] = if margin > self.loud[k] {
            margin
        } else {
            self.loud[k]
        };
    }
}

/// Pushes into `scan` a block whose states leave α̂'s bounds and the largest draw-up as they
/// are (most blocks), reducing its KS maxima and lowest `G − F` in independent lanes rather
/// than one state after another; false, with nothing pushed, where some state may change them.
/// Exact: maxima and minima do not depend on the order, and the checks are the ones
/// [`FirstPass::push_each`] makes, with bounds that only grow. The lanes run as AVX-512
/// instructions where the CPU has them ([`quiet_lanes_avx512`]: the compiler left alone
/// splits them into pairs and shuffles), else as [`quiet_lanes_narrow`]: the same bits.
fn push_quiet(scan: &mut FirstPass, fs: &[f64], gs: &[f64]) -> bool {
    assert_eq!(fs.len(), gs.len(), "push_quiet: lengths differ");
    let (t, l) = (scan.t, scan.l);
    let mut lanes = QuietLanes::new();
    // The states the AVX-512 lanes take (whole lanes of them), where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    let whole = if std::is_x86_feature_detected!("avx512f") {
        let (f_whole, g_whole) = (fs.as_chunks().0, gs.as_chunks().0);
        // SAFETY: the CPU has AVX-512F (checked above).
        unsafe { quiet_lanes_avx512(&mut lanes, f_whole, g_whole, t, l) };
        f_whole.len() * LANES
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let whole = 0;
    quiet_lanes_narrow(&mut lanes, &fs[whole..], &gs[whole..], t, l);
    let QuietLanes { high, low, b, loud } = lanes;
    let high = high.into_iter().fold(f64::NEG_INFINITY, f64::max);
    let low = low.into_iter().fold(f64::INFINITY, f64::min);
    // No draw-up in the block can beat the largest so far: every one is at most its highest
    // `G − F` less the lowest before it (both rounded subtractions are monotone).
    let rise_quiet = high - scan.low.0.min(low) <= scan.rise_at_one.0;
    if loud.iter().any(|&margin| margin > 0.0) || !rise_quiet {
        return false;
    }
    scan.a = scan.a.max(high);
    scan.b = b.into_iter().fold(scan.b, f64::max);
    if low < scan.low.0 {
        // The sequential pass keeps the first state that reaches the block's lowest.
        let j = (0..fs.len()).find(|&j| gs[j] - fs[j] == low).unwrap();
        scan.low = (low, fs[j], gs[j]);
    }
    true
}

with_wide_simd! {
    /// [`quiet_lanes_portable`] compiled for AVX2 where the CPU has it.
    fn quiet_lanes_narrow => quiet_lanes_portable(
        lanes: &mut QuietLanes,
        fs: &[f64],
        gs: &[f64],
        t: f64,
        l: f64
    )
}

/// Folds the states into `lanes`, state `i` into lane `i mod LANES` (whole lanes first, in the
/// shape the compiler vectorises).
#[inline(always)]
fn quiet_lanes_portable(lanes: &mut QuietLanes, fs: &[f64], gs: &[f64], t: f64, l: f64) {
    let ((f_whole, f_rest), (g_whole, g_rest)) = (fs.as_chunks::<LANES>(), gs.as_chunks::<LANES>());
    for (f, g) in f_whole.iter().zip(g_whole) {
        for k in 0..LANES {
            lanes.push(k, f[k], g[k], t, l);
        }
    }
    for (k, (&f, &g)) in f_rest.iter().zip(g_rest).enumerate() {
        lanes.push(k, f, g, t, l);
    }
}

/// [`quiet_lanes_portable`] over whole lanes of states, each extreme one register: `vmaxpd`
/// and `vminpd` are exactly the comparisons of [`QuietLanes::push`] (`a > b ? a : b`, the
/// second operand where either is NaN), and the products and differences are rounded in the
/// same order (no fused multiply-add).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quiet_lanes_avx512(
    lanes: &mut QuietLanes,
    fs: &[[f64; LANES]],
    gs: &[[f64; LANES]],
    t: f64,
    l: f64,
) {
    use std::arch::x86_64::*;
    let (t, l, one, shy) = (
        _mm512_set1_pd(t),
        _mm512_set1_pd(l),
        _mm512_set1_pd(1.0),
        _mm512_set1_pd(SHY),
    );
    let mut high = _mm512_loadu_pd(lanes.high.as_ptr());
    let mut low = _mm512_loadu_pd(lanes.low.as_ptr());
    let mut b = _mm512_loadu_pd(lanes.b.as_ptr());
    let mut loud = _mm512_loadu_pd(lanes.loud.as_ptr());
    for (f, g) in fs.iter().zip(gs) {
        let (f, g) = (_mm512_loadu_pd(f.as_ptr()), _mm512_loadu_pd(g.as_ptr()));
        let d = _mm512_sub_pd(g, f);
        high = _mm512_max_pd(d, high);
        low = _mm512_min_pd(d, low);
        let (rest_g, rest_f) = (_mm512_sub_pd(one, g), _mm512_sub_pd(one, f));
        b = _mm512_max_pd(_mm512_sub_pd(rest_g, rest_f), b);
        let raises_a = _mm512_sub_pd(_mm512_sub_pd(g, t), _mm512_mul_pd(_mm512_mul_pd(l, f), shy));
        let raises_b = _mm512_sub_pd(
            _mm512_sub_pd(rest_g, t),
            _mm512_mul_pd(_mm512_mul_pd(l, rest_f), shy),
        );
        loud = _mm512_max_pd(_mm512_max_pd(raises_a, raises_b), loud);
    }
    _mm512_storeu_pd(lanes.high.as_mut_ptr(), high);
    _mm512_storeu_pd(lanes.low.as_mut_ptr(), low);
    _mm512_storeu_pd(lanes.b.as_mut_ptr(), b);
    _mm512_storeu_pd(lanes.loud.as_mut_ptr(), loud);
}

/// The trimmed Wasserstein-2 cost `τ_α = min_h ∫₀¹ (F⁻¹(t) − G⁻¹(t))² h'(t) dt` over the
/// α-trimmings `h` (Álvarez-Esteban et al. 2008): on the merged grid `{i/n} ∪ {j/m}` both
/// quantile functions are constant, so the optimal `h' = L` keeps the smallest `(1−α)` share of
/// squared quantile differences; the kept integral is divided by `(1−α)`. Both samples sorted
/// ascending; α in [0, 1], where α = 1 gives the limit, the smallest squared difference.
pub fn trimmed_w2(candidate: &[f32], reference: &[f32], alpha: f64) -> f64 {
    let (n, m) = (candidate.len() as u64, reference.len() as u64);
    // Pieces of the merged grid as (squared difference, length in units of 1/(n·m)).
    let (mut i, mut j, mut at) = (1u64, 1u64, 0u64);
    let pieces = std::iter::from_fn(|| {
        if i > n || j > m {
            return None;
        }
        let (end_f, end_g) = (i * m, j * n);
        let end = end_f.min(end_g);
        let diff = candidate[i as usize - 1] as f64 - reference[j as usize - 1] as f64;
        let piece = (diff * diff, end - at);
        at = end;
        i += u64::from(end_f == end);
        j += u64::from(end_g == end);
        Some(piece)
    });
    if alpha >= 1.0 {
        return pieces.map(|p| p.0).fold(f64::INFINITY, f64::min);
    }
    if let Some(keep) = keeps_every_piece(n, m, alpha) {
        return pieces.map(|p| p.0 * p.1 as f64).sum::<f64>() / keep;
    }
    let keep = (1.0 - alpha) * (n * m) as f64;
    let mut pieces: Vec<(f64, u64)> = pieces.collect();
    smallest_share(&mut pieces, keep) / keep
}

/// The kept length `(1 − α)·n·m` of [`trimmed_w2`] where it keeps every piece, in order, with no
/// list: the lengths add up to n·m, as f64 exactly the total while every partial sum is an
/// integer below 2⁵³, so keeping at least the total keeps them all.
fn keeps_every_piece(n: u64, m: u64, alpha: f64) -> Option<f64> {
    let total = (n * m) as f64;
    let keep = (1.0 - alpha) * total;
    (alpha < 1.0 && keep >= total && n * m <= 1 << f64::MANTISSA_DIGITS).then_some(keep)
}

/// [`trimmed_w2`] of a candidate against `n` quantiles of its reference (as many as its own
/// points), summed a point at a time by a pass that reads them anyway: with equal lengths the
/// merged grid's pieces are the `n` pairs, each of length `n`.
pub struct QuantileW2 {
    n: u64,
    sum: f64,
}

impl QuantileW2 {
    pub fn new(n: usize) -> Self {
        QuantileW2 {
            n: n as u64,
            sum: 0.0,
        }
    }

    /// Adds the pair of the candidate's next point and the quantile at it.
    pub fn add(&mut self, candidate: f32, quantile: f32) {
        let diff = candidate as f64 - quantile as f64;
        self.sum += diff * diff * self.n as f64;
    }

    /// `trimmed_w2(candidate, quantiles, alpha)` bit for bit once every pair is added, where
    /// `alpha` keeps every piece (no trimming: the usual case); `None` where the pieces must be
    /// selected.
    pub fn untrimmed(&self, alpha: f64) -> Option<f64> {
        keeps_every_piece(self.n, self.n, alpha).map(|keep| self.sum / keep)
    }
}

/// `Σ value·length` over the smallest-valued pieces whose lengths add up to `keep` (the last
/// one taken in part): a weighted quickselect, O(pieces) where a sort would be O(p·log p).
fn smallest_share(mut pieces: &mut [(f64, u64)], mut keep: f64) -> f64 {
    let mass = |ps: &[(f64, u64)]| ps.iter().map(|p| p.1 as f64).sum::<f64>();
    let cost = |ps: &[(f64, u64)]| ps.iter().map(|p| p.0 * p.1 as f64).sum::<f64>();
    let mut total = 0.0;
    if keep >= mass(pieces) {
        return cost(pieces); // nothing trimmed: no need to order the pieces
    }
    while !pieces.is_empty() && keep > 0.0 {
        let mid = pieces.len() / 2;
        let (left, pivot, right) = pieces.select_nth_unstable_by(mid, |a, b| a.0.total_cmp(&b.0));
        let left_mass = mass(left);
        if left_mass >= keep {
            pieces = left;
            continue;
        }
        total += cost(left);
        keep -= left_mass;
        let take = (pivot.1 as f64).min(keep);
        total += pivot.0 * take;
        keep -= take;
        pieces = right;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SplitMix64;

    fn lane_bits(lanes: &QuietLanes) -> Vec<u64> {
        [lanes.high, lanes.low, lanes.b, lanes.loud]
            .iter()
            .flatten()
            .map(|v| v.to_bits())
            .collect()
    }

    fn scan_bits(s: &FirstPass) -> Vec<u64> {
        let (r, w) = (s.rise_at_one, s.low);
        [s.l, s.a, s.b, r.0, r.1, r.2, w.0, w.1, w.2]
            .iter()
            .map(|v| v.to_bits())
            .chain([u64::from(s.hopeless)])
            .collect()
    }

    /// Monotone profile states `(F, G)` from 0 towards 1, `G − F` a random walk of steps up to
    /// `step`.
    fn states(rng: &mut SplitMix64, len: usize, step: f64) -> (Vec<f64>, Vec<f64>) {
        let (mut f, mut g) = (0.0f64, 0.0f64);
        (0..len)
            .map(|_| {
                let d = g - f + step * (2.0 * rng.next_f64() - 1.0);
                f = (f + 2.0 * rng.next_f64() / len as f64).min(1.0);
                g = (f + d).clamp(g, 1.0);
                (f, g)
            })
            .unzip()
    }

    #[test]
    fn wide_lanes_are_the_portable_lanes_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            let mut rng = SplitMix64::new(7);
            for len in [0, 8, 64, 512] {
                // Any values, not only profiles: every comparison and rounding is exercised.
                let value = |rng: &mut SplitMix64| 2.5 * rng.next_f64() - 0.75;
                let fs: Vec<f64> = (0..len).map(|_| value(&mut rng)).collect();
                let gs: Vec<f64> = (0..len).map(|_| value(&mut rng)).collect();
                let (t, l) = (0.2 * rng.next_f64(), 1.0 + 3.0 * rng.next_f64());
                let (mut wide, mut portable) = (QuietLanes::new(), QuietLanes::new());
                // SAFETY: the CPU has AVX-512F (checked above).
                unsafe { quiet_lanes_avx512(&mut wide, fs.as_chunks().0, gs.as_chunks().0, t, l) };
                quiet_lanes_portable(&mut portable, &fs, &gs, t, l);
                assert_eq!(lane_bits(&wide), lane_bits(&portable), "{len} states");
            }
            return;
        }
        eprintln!("skipped: no AVX-512F on this CPU (the portable lanes are all that run)");
    }

    #[test]
    fn quiet_blocks_push_what_each_state_pushes() {
        let mut rng = SplitMix64::new(11);
        let (mut quiet, mut loud) = (0, 0);
        for case in 0..60 {
            let (t, step) = (
                [0.005, 0.02, 0.1][case % 3],
                [1e-4, 1e-3, 1e-2][case / 3 % 3],
            );
            let (fs, gs) = states(&mut rng, 20_000, step);
            let (mut blocks, mut each) = (FirstPass::new(t), FirstPass::new(t));
            let mut at = 0;
            for len in [1, 7, 8, 13, 512, 515].iter().cycle() {
                let end = (at + len).min(fs.len());
                let (f, g) = (&fs[at..end], &gs[at..end]);
                let before = scan_bits(&blocks);
                if push_quiet(&mut blocks, f, g) {
                    quiet += 1;
                } else {
                    loud += 1;
                    // Nothing pushed: the block goes state by state.
                    assert_eq!(
                        scan_bits(&blocks),
                        before,
                        "case {case}, states {at}..{end}"
                    );
                    blocks.push_each(f, g);
                }
                each.push_each(f, g);
                assert_eq!(
                    scan_bits(&blocks),
                    scan_bits(&each),
                    "case {case}, states {at}.."
                );
                if end == fs.len() {
                    break;
                }
                at = end;
            }
        }
        // Both outcomes were checked.
        assert!(
            quiet > 1000 && loud > 1000,
            "{quiet} quiet blocks, {loud} loud ones"
        );
    }
}
