//! The trimmed comparison (backend::trim and the `trim_search` op on every backend present):
//! the closed form of d(α) against a linear program solved from scratch, α̂ against bisection,
//! monotonicity, d(0) = KS, invariance under increasing transforms, population values, the
//! level of the test, leave-one-out against explicit pools, and bad input.

mod common;

use std::sync::Arc;

use common::{backend_tests, Rng};
use mscope::backend::trim::{self, Profile};
use mscope::backend::{Backend, TrimReference, TrimResult, TrimSpec, W2Grid};

backend_tests! {
    alpha_hat_is_the_smallest_level_within_the_threshold: Trim,
    trim_search_ks_is_the_ks_statistic: Trim,
    invariant_under_increasing_transforms: Trim,
    alpha_hat_of_large_samples_is_the_population_value: Trim,
    same_distribution_gives_zero_about_95_percent_of_the_time: Trim,
    leave_one_out_equals_explicit_pools: Trim,
    bad_input_is_an_error: Trim,
}

const SPEC: TrimSpec = TrimSpec {
    level: 0.05,
    w2_alpha: None,
    w2_grid: W2Grid::Auto,
};

/// Small samples: heavy ties (a few integers) on even cases, continuous values on odd ones.
fn small_sample(rng: &mut Rng, case: usize) -> Vec<f32> {
    let len = 1 + rng.below(7) as usize;
    (0..len)
        .map(|_| {
            if case.is_multiple_of(2) {
                rng.below(5) as f32
            } else {
                rng.uniform()
            }
        })
        .collect()
}

fn search(be: &dyn Backend, candidate: &[f32], reference: &[f32], spec: &TrimSpec) -> TrimResult {
    be.trim_search(&[candidate], TrimReference::Sample(reference), spec)
        .unwrap()[0]
}

fn profile(candidate: &[f32], reference: &[f32]) -> Profile {
    Profile::from_sorted(&trim::sorted(candidate), &trim::sorted(reference))
}

/// Dense two-phase simplex with Bland's rule: `min cᵀx` subject to `A x = b`, `x ≥ 0`, `b ≥ 0`.
fn simplex_min(c: &[f64], a: &[Vec<f64>], b: &[f64]) -> f64 {
    const EPS: f64 = 1e-12;
    let (rows, cols) = (a.len(), c.len());
    // Tableau rows: original columns, one artificial per row, right-hand side.
    let mut t: Vec<Vec<f64>> = (0..rows)
        .map(|i| {
            let mut r = a[i].clone();
            r.resize(cols + rows, 0.0);
            r[cols + i] = 1.0;
            r.push(b[i]);
            r
        })
        .collect();
    let mut basis: Vec<usize> = (cols..cols + rows).collect();
    let pivot = |t: &mut Vec<Vec<f64>>, basis: &mut Vec<usize>, r: usize, j: usize| {
        let p = t[r][j];
        t[r].iter_mut().for_each(|v| *v /= p);
        let row = t[r].clone();
        for (i, other) in t.iter_mut().enumerate() {
            let f = other[j];
            if i != r && f != 0.0 {
                other.iter_mut().zip(&row).for_each(|(v, w)| *v -= f * w);
            }
        }
        basis[r] = j;
    };
    let run = |t: &mut Vec<Vec<f64>>, basis: &mut Vec<usize>, cost: &[f64], enter: usize| loop {
        let rhs = cost.len();
        let reduced = |j: usize| cost[j] - (0..rows).map(|i| cost[basis[i]] * t[i][j]).sum::<f64>();
        let Some(j) = (0..enter).find(|&j| reduced(j) < -EPS) else {
            return;
        };
        let leave = (0..rows)
            .filter(|&i| t[i][j] > EPS)
            .min_by(|&x, &y| {
                let (rx, ry) = (t[x][rhs] / t[x][j], t[y][rhs] / t[y][j]);
                rx.total_cmp(&ry).then(basis[x].cmp(&basis[y]))
            })
            .expect("the trimming LP is bounded");
        pivot(t, basis, leave, j);
    };
    let phase1: Vec<f64> = (0..cols + rows).map(|j| f64::from(j >= cols)).collect();
    run(&mut t, &mut basis, &phase1, cols + rows);
    let infeasibility: f64 = (0..rows)
        .filter(|&i| basis[i] >= cols)
        .map(|i| t[i][cols + rows])
        .sum();
    assert!(infeasibility < 1e-9, "LP infeasible: {infeasibility}");
    // Drive zero-level artificials out; a row with no original coefficient left is redundant.
    for r in 0..rows {
        if basis[r] >= cols {
            if let Some(j) = (0..cols).find(|&j| t[r][j].abs() > EPS) {
                pivot(&mut t, &mut basis, r, j);
            }
        }
    }
    let mut cost = c.to_vec();
    cost.resize(cols + rows, 0.0);
    run(&mut t, &mut basis, &cost, cols);
    (0..rows).map(|i| cost[basis[i]] * t[i][cols + rows]).sum()
}

/// d(α) by brute force: the LP over the candidate atoms' trimmed weights `w_j ∈ [0, L·p_j]`,
/// `Σ w = 1`, minimising the largest |H − G| over the merged grid.
fn lp_distance(candidate: &[f32], reference: &[f32], alpha: f64) -> f64 {
    let mut atoms = candidate.to_vec();
    atoms.sort_by(f32::total_cmp);
    atoms.dedup();
    let mut grid: Vec<f32> = candidate.iter().chain(reference).copied().collect();
    grid.sort_by(f32::total_cmp);
    grid.dedup();
    let (k, g_len) = (atoms.len(), grid.len());
    let mass = |xs: &[f32], pred: &dyn Fn(f32) -> bool| {
        xs.iter().filter(|&&x| pred(x)).count() as f64 / xs.len() as f64
    };
    let l = 1.0 / (1.0 - alpha);
    // Columns: w (k), t, one slack per grid inequality (2·g_len), one per upper bound (k).
    let cols = k + 1 + 2 * g_len + k;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (gi, &x) in grid.iter().enumerate() {
        let g = mass(reference, &|v| v <= x);
        for (sign, slack) in [(-1.0, 1.0), (1.0, -1.0)] {
            // H − t + s = G  and  H + t − s = G.
            let mut row = vec![0.0; cols];
            for (j, &z) in atoms.iter().enumerate() {
                row[j] = f64::from(z <= x);
            }
            row[k] = sign;
            row[k + 1 + 2 * gi + usize::from(sign > 0.0)] = slack;
            a.push(row);
            b.push(g);
        }
    }
    for (j, &z) in atoms.iter().enumerate() {
        let mut row = vec![0.0; cols];
        row[j] = 1.0;
        row[k + 1 + 2 * g_len + j] = 1.0;
        a.push(row);
        b.push(l * mass(candidate, &|v| v == z));
    }
    let mut row = vec![0.0; cols];
    row[..k].fill(1.0);
    a.push(row);
    b.push(1.0);
    let mut c = vec![0.0; cols];
    c[k] = 1.0;
    simplex_min(&c, &a, &b)
}

#[test]
fn closed_form_matches_linear_program() {
    let mut rng = Rng::new(7);
    for case in 0..1500 {
        let candidate = small_sample(&mut rng, case);
        let reference = small_sample(&mut rng, case);
        let alpha = [0.0, 0.1, 0.25, 0.5, 0.8][case % 5] + 0.05 * rng.uniform().abs() as f64;
        let closed = profile(&candidate, &reference).distance(alpha);
        let lp = lp_distance(&candidate, &reference, alpha);
        assert!(
            (closed - lp).abs() < 1e-12,
            "case {case}: d({alpha}) closed form {closed} vs LP {lp} for {candidate:?} vs {reference:?}"
        );
    }
}

/// Bisection of `min{α : d(α) ≤ t}` to 1e-9, as the issue specifies α̂.
fn bisect_alpha(p: &Profile, t: f64) -> f64 {
    if p.distance(0.0) <= t {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while hi - lo > 1e-9 {
        let mid = 0.5 * (lo + hi);
        if p.distance(mid) <= t {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if p.distance(hi.min(1.0 - 1e-12)) <= t {
        hi
    } else {
        1.0
    }
}

fn alpha_hat_is_the_smallest_level_within_the_threshold(be: &Arc<dyn Backend>) {
    let mut rng = Rng::new(11);
    for case in 0..400usize {
        let (n, m) = (5 + rng.below(300) as usize, 5 + rng.below(300) as usize);
        let shift = 0.5 * rng.uniform();
        let tied = case.is_multiple_of(3);
        let draw = |rng: &mut Rng, s: f32| {
            let v = rng.uniform() + s;
            if tied {
                (v * 8.0).round()
            } else {
                v
            }
        };
        let candidate: Vec<f32> = (0..n).map(|_| draw(&mut rng, shift)).collect();
        let reference: Vec<f32> = (0..m).map(|_| draw(&mut rng, 0.0)).collect();
        let r = search(be.as_ref(), &candidate, &reference, &SPEC);
        let want = bisect_alpha(&profile(&candidate, &reference), r.threshold);
        assert!(
            (r.alpha_hat - want).abs() <= 1e-9,
            "{} case {case}: α̂ {} vs bisection {want}",
            be.name(),
            r.alpha_hat
        );
        assert_eq!((r.n_candidate, r.n_reference), (n, m));
    }
}

/// A candidate of `n` points and a reference of `m` by `shape`: both from one distribution (0),
/// the reference squeezed into the candidate's middle (1), the candidate shifted a little (2) or
/// past the whole reference (3); rounded to steps of `1/levels` where `tied` gives the levels.
fn sample_pair(
    rng: &mut Rng,
    n: usize,
    m: usize,
    shape: usize,
    tied: Option<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let (reference_scale, shift) = match shape {
        0 => (1.0, 0.0),
        1 => (0.5, 0.0),
        2 => (1.0, 0.3 * rng.uniform()),
        _ => (1.0, 2.0),
    };
    let draw = |rng: &mut Rng, scale: f32, shift: f32| {
        let v = rng.uniform() * scale + shift;
        tied.map_or(v, |levels| (v * levels).round())
    };
    let candidate = (0..n).map(|_| draw(rng, 1.0, shift)).collect();
    let reference = (0..m).map(|_| draw(rng, reference_scale, 0.0)).collect();
    (candidate, reference)
}

/// KS and α̂ from the shared passes: KS bit for bit `d(0)`, α̂ the bisection's, on samples that
/// agree (the linear bounds leave L = 1, the KS pass's draw-up is Newton's first), that differ
/// (L raised, Newton from there), with ties, and at thresholds from "no trimming helps" to
/// "none needed".
#[test]
fn ks_and_alpha_hat_match_distance_and_bisection() {
    let mut rng = Rng::new(17);
    for case in 0..600usize {
        let (n, m) = (1 + rng.below(200) as usize, 1 + rng.below(400) as usize);
        let tied = (case % 4 == 1).then_some(6.0);
        let (candidate, reference) = sample_pair(&mut rng, n, m, case % 3, tied);
        let p = profile(&candidate, &reference);
        // Thresholds off the ratios of counts that d(α) takes on its plateaus: at a threshold
        // equal to one, bisection's `d ≤ t` is a rounding tie and stops elsewhere than the root.
        let thresholds = [1e-3, 0.05, 0.2, 0.6].map(|t| t * std::f64::consts::SQRT_2);
        for t in thresholds.into_iter().chain([trim::threshold(0.05, n, m)]) {
            let (ks, alpha_hat) = p.ks_and_alpha_hat(t);
            assert_eq!(
                ks.to_bits(),
                p.distance(0.0).to_bits(),
                "case {case}, t {t}"
            );
            assert_eq!(ks.to_bits(), p.ks().to_bits(), "case {case}, t {t}");
            let want = bisect_alpha(&p, t);
            assert!(
                (alpha_hat - want).abs() <= 1e-9,
                "case {case}, t {t}: α̂ {alpha_hat} vs bisection {want}"
            );
        }
    }
}

/// The streamed pass over the ranked points gives the profile's KS and α̂ bit for bit, on
/// profiles of many blocks, of one block and less, with ties, against a separate reference and
/// against a pool holding the candidate (leave-one-out), and where α̂ needs Newton's further
/// passes (the shifted and squeezed references) or is 1 (disjoint samples); it folds every
/// point in order.
#[test]
fn ks_and_alpha_hat_of_ranks_are_the_profiles() {
    let mut rng = Rng::new(41);
    for case in 0..120usize {
        let (n, m) = (1 + rng.below(3000) as usize, 1 + rng.below(3000) as usize);
        let tied = (case % 3 == 1).then_some(50.0);
        let (candidate, reference) = sample_pair(&mut rng, n, m, case % 4, tied);
        let (candidate, reference) = (trim::sorted(&candidate), trim::sorted(&reference));
        let pool = trim::sorted(&[candidate.as_slice(), &reference].concat());
        let shares = trim::OwnShares::new(n);
        for own_in_reference in [false, true] {
            let ranked = if own_in_reference { &pool } else { &reference };
            let ranks = |i: usize| {
                let v = candidate[i];
                (
                    ranked.partition_point(|&r| r < v),
                    ranked.partition_point(|&r| r <= v),
                )
            };
            let counts = || trim::counts_from_ranks(&candidate, ranks, own_in_reference);
            let p = Profile::from_counts(n, m, counts());
            let points = trim::RankedPoints {
                value: |i: usize| candidate[i],
                ranks,
                own_in_reference,
            };
            for t in [1e-3, 0.05, trim::threshold(0.05, n, m), 0.6] {
                let (ks, alpha_hat) = p.ks_and_alpha_hat(t);
                let visit = |mut visited: Vec<(usize, f32)>, i, v| {
                    visited.push((i, v));
                    visited
                };
                let (streamed_ks, streamed_alpha_hat, visited) =
                    Profile::ks_and_alpha_hat_of_ranks(&shares, m, &points, t, Vec::new(), visit);
                assert_eq!(
                    (streamed_ks.to_bits(), streamed_alpha_hat.to_bits()),
                    (ks.to_bits(), alpha_hat.to_bits()),
                    "case {case}, t {t}, own in reference {own_in_reference}"
                );
                assert!(visited
                    .iter()
                    .copied()
                    .eq(candidate.iter().copied().enumerate()));
            }
        }
    }
}

/// The untrimmed W2 summed a point at a time is `trimmed_w2` against the quantiles bit for bit
/// where no piece is trimmed, and defers to it where some are.
#[test]
fn quantile_w2_sum_is_trimmed_w2() {
    let mut rng = Rng::new(43);
    for case in 0..200usize {
        let n = 1 + rng.below(2000) as usize;
        let tied = (case % 3 == 1).then_some(20.0);
        let (candidate, quantiles) = sample_pair(&mut rng, n, n, case % 4, tied);
        let (candidate, quantiles) = (trim::sorted(&candidate), trim::sorted(&quantiles));
        let mut sum = trim::QuantileW2::new(n);
        candidate
            .iter()
            .zip(&quantiles)
            .for_each(|(&c, &q)| sum.add(c, q));
        for alpha in [0.0, 1e-20, 0.1, 0.5, 1.0] {
            let want = trim::trimmed_w2(&candidate, &quantiles, alpha);
            match sum.untrimmed(alpha) {
                Some(got) => assert_eq!(got.to_bits(), want.to_bits(), "case {case} α {alpha}"),
                None => assert!(alpha > 1e-20, "case {case}: α {alpha} trims nothing"),
            }
        }
    }
}

#[test]
fn distance_is_non_increasing_in_alpha() {
    let mut rng = Rng::new(3);
    for case in 0..300 {
        let candidate = small_sample(&mut rng, case);
        let reference = small_sample(&mut rng, case + 1);
        let p = profile(&candidate, &reference);
        let mut previous = f64::INFINITY;
        for i in 0..200 {
            let alpha = i as f64 / 200.0;
            let d = p.distance(alpha);
            // Only the rounding of L·F (a few ulps of L = 1/(1−α)) may lift a plateau.
            let rounding = 4.0 * f64::EPSILON / (1.0 - alpha);
            assert!(
                d <= previous + rounding,
                "case {case}: d rises by {:e} at α = {}",
                d - previous,
                alpha
            );
            previous = d;
        }
    }
}

/// 500 pairs of small samples with their Kolmogorov–Smirnov statistic, from its definition.
fn samples_with_ks() -> Vec<(Vec<f32>, Vec<f32>, f64)> {
    let mut rng = Rng::new(5);
    (0..500)
        .map(|case| {
            let candidate = small_sample(&mut rng, case);
            let reference = small_sample(&mut rng, case);
            let ecdf = |xs: &[f32], x: f32| {
                xs.iter().filter(|&&v| v <= x).count() as f64 / xs.len() as f64
            };
            let ks = candidate
                .iter()
                .chain(&reference)
                .map(|&x| (ecdf(&candidate, x) - ecdf(&reference, x)).abs())
                .fold(0.0, f64::max);
            (candidate, reference, ks)
        })
        .collect()
}

#[test]
fn distance_at_zero_is_the_ks_statistic() {
    for (case, (candidate, reference, ks)) in samples_with_ks().iter().enumerate() {
        let p = profile(candidate, reference);
        assert!((p.distance(0.0) - ks).abs() < 1e-15, "case {case}");
    }
}

fn trim_search_ks_is_the_ks_statistic(be: &Arc<dyn Backend>) {
    for (case, (candidate, reference, ks)) in samples_with_ks().iter().enumerate() {
        let r = search(be.as_ref(), candidate, reference, &SPEC);
        assert!((r.ks - ks).abs() < 1e-15, "{} case {case}", be.name());
    }
}

fn invariant_under_increasing_transforms(be: &Arc<dyn Backend>) {
    // Multiples of 1/64 keep ties; the transform keeps every distinct value distinct in f32.
    let transform = |x: f32| (3.0 * (x as f64).exp() + (x as f64).powi(3)) as f32;
    let mut rng = Rng::new(13);
    for case in 0..50 {
        let grid = |rng: &mut Rng, s: i64| (rng.below(200) as i64 - 100 + s) as f32 / 64.0;
        let candidates: Vec<Vec<f32>> = (0..4)
            .map(|k| (0..150).map(|_| grid(&mut rng, 10 * k)).collect())
            .collect();
        let reference: Vec<f32> = (0..200).map(|_| grid(&mut rng, 0)).collect();
        let mapped: Vec<Vec<f32>> = candidates
            .iter()
            .map(|c| c.iter().map(|&x| transform(x)).collect())
            .collect();
        let mapped_ref: Vec<f32> = reference.iter().map(|&x| transform(x)).collect();
        for (a, b) in [
            (
                TrimReference::Sample(&reference),
                TrimReference::Sample(&mapped_ref),
            ),
            (TrimReference::LeaveOneOut, TrimReference::LeaveOneOut),
        ] {
            let before = be.trim_search(&views(&candidates), a, &SPEC).unwrap();
            let after = be.trim_search(&views(&mapped), b, &SPEC).unwrap();
            for (x, y) in before.iter().zip(&after) {
                assert_eq!(
                    (x.alpha_hat, x.ks),
                    (y.alpha_hat, y.ks),
                    "{} case {case}",
                    be.name()
                );
            }
        }
    }
}

fn views(rows: &[Vec<f32>]) -> Vec<&[f32]> {
    rows.iter().map(|r| r.as_slice()).collect()
}

fn phi(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// Sampling error of an ECDF difference at 200 000 points per sample: a few × √((n+m)/(n·m)) ≈
/// 0.003.
const POPULATION_TOL: f64 = 0.01;

/// `a` of the uniform pair of [`populations`].
const UNIFORM_SHIFT: f64 = 0.2;

/// Two pairs of 200 000-point samples (candidate, reference): candidate U(0, 1) against reference
/// U(0, 1 − a), whose d(α) = (a − α)/(1 − α) for α < a; and candidate 0.9·N(0,1) + 0.1·N(5,1)
/// against reference N(0,1).
#[allow(clippy::type_complexity)]
fn populations() -> [(Vec<f32>, Vec<f32>); 2] {
    let (n, m) = (200_000, 200_000);
    let mut rng = Rng::new(17);
    let unit = |rng: &mut Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let a = UNIFORM_SHIFT;
    let candidate: Vec<f32> = (0..n).map(|_| unit(&mut rng) as f32).collect();
    let reference: Vec<f32> = (0..m)
        .map(|_| ((1.0 - a) * unit(&mut rng)) as f32)
        .collect();
    let uniform = (candidate, reference);
    let candidate: Vec<f32> = (0..n)
        .map(|i: usize| (rng.normal() + if i.is_multiple_of(10) { 5.0 } else { 0.0 }) as f32)
        .collect();
    let reference: Vec<f32> = (0..m).map(|_| rng.normal() as f32).collect();
    [uniform, (candidate, reference)]
}

#[test]
fn population_values_with_large_samples() {
    let tol = POPULATION_TOL;
    let [(candidate, reference), mixture] = populations();
    let a = UNIFORM_SHIFT;
    let p = profile(&candidate, &reference);
    for alpha in [0.0, 0.05, 0.1, 0.15] {
        let want = (a - alpha) / (1.0 - alpha);
        let got = p.distance(alpha);
        assert!(
            (got - want).abs() < tol,
            "uniform: d({alpha}) = {got}, want {want}"
        );
    }

    let p = profile(&mixture.0, &mixture.1);
    let want = 0.1 * (2.0 * phi(2.5) - 1.0);
    assert!((want - 0.098758).abs() < 1e-6);
    assert!(
        (p.distance(0.0) - want).abs() < tol,
        "mixture: d(0) = {}",
        p.distance(0.0)
    );
    for alpha in [0.1, 0.2, 0.5] {
        assert!(
            p.distance(alpha) < tol,
            "mixture: d({alpha}) = {}",
            p.distance(alpha)
        );
    }
}

fn alpha_hat_of_large_samples_is_the_population_value(be: &Arc<dyn Backend>) {
    let tol = POPULATION_TOL;
    let [(candidate, reference), mixture] = populations();
    let a = UNIFORM_SHIFT;
    let r = search(be.as_ref(), &candidate, &reference, &SPEC);
    // d(α̂) = threshold ⇒ α̂ = (a − t)/(1 − t) in the population.
    let want = (a - r.threshold) / (1.0 - r.threshold);
    assert!(
        (r.alpha_hat - want).abs() < tol,
        "{} uniform: α̂ {} vs {want}",
        be.name(),
        r.alpha_hat
    );

    let r = search(be.as_ref(), &mixture.0, &mixture.1, &SPEC);
    assert!(
        r.alpha_hat > 0.05 && r.alpha_hat <= 0.1,
        "{} mixture: α̂ = {}",
        be.name(),
        r.alpha_hat
    );
}

fn same_distribution_gives_zero_about_95_percent_of_the_time(be: &Arc<dyn Backend>) {
    let mut rng = Rng::new(19);
    let seeds = 1000;
    let zero = (0..seeds)
        .filter(|_| {
            let c: Vec<f32> = (0..300).map(|_| rng.normal() as f32).collect();
            let r: Vec<f32> = (0..400).map(|_| rng.normal() as f32).collect();
            search(be.as_ref(), &c, &r, &SPEC).alpha_hat == 0.0
        })
        .count();
    let rate = zero as f64 / seeds as f64;
    // The asymptotic KS threshold at level 0.05; binomial sd over 1000 seeds ≈ 0.007.
    assert!(
        (0.93..=0.985).contains(&rate),
        "{}: α̂ = 0 in {rate}",
        be.name()
    );
}

fn leave_one_out_equals_explicit_pools(be: &Arc<dyn Backend>) {
    let mut rng = Rng::new(23);
    for case in 0..60usize {
        let models = 2 + rng.below(6) as usize;
        let tied = case.is_multiple_of(2);
        let rows: Vec<Vec<f32>> = (0..models)
            .map(|k| {
                let len = 1 + rng.below(40) as usize;
                (0..len)
                    .map(|_| {
                        let v = rng.uniform() + 0.1 * k as f32;
                        if tied {
                            (v * 4.0).round()
                        } else {
                            v
                        }
                    })
                    .collect()
            })
            .collect();
        let got = be
            .trim_search(&views(&rows), TrimReference::LeaveOneOut, &SPEC)
            .unwrap();
        for (k, g) in got.iter().enumerate() {
            let pool: Vec<f32> = rows
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != k)
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            let want = search(be.as_ref(), &rows[k], &pool, &SPEC);
            assert_eq!(
                (g.alpha_hat, g.ks, g.threshold, g.n_candidate, g.n_reference),
                (
                    want.alpha_hat,
                    want.ks,
                    want.threshold,
                    want.n_candidate,
                    want.n_reference
                ),
                "{} case {case} model {k}",
                be.name()
            );
            // Small ensembles get the exact trimmed W2 on the merged grid.
            assert!(g.w2_exact);
            assert_eq!(
                g.trimmed_w2,
                want.trimmed_w2,
                "{} case {case} model {k}",
                be.name()
            );
            // The candidate-grid approximation: the pool's quantiles at {i/n}.
            let approx = be
                .trim_search(
                    &views(&rows),
                    TrimReference::LeaveOneOut,
                    &TrimSpec {
                        w2_grid: W2Grid::Candidate,
                        ..SPEC
                    },
                )
                .unwrap();
            let (own, pool) = (trim::sorted(&rows[k]), trim::sorted(&pool));
            let (n, m) = (own.len(), pool.len());
            let quantiles: Vec<f32> = (1..=n).map(|i| pool[(i * m).div_ceil(n) - 1]).collect();
            let w2 = trim::trimmed_w2(&own, &quantiles, g.alpha_hat);
            assert!(!approx[k].w2_exact);
            assert_eq!(
                approx[k].trimmed_w2,
                w2,
                "{} case {case} model {k}",
                be.name()
            );
        }
    }
}

/// τ_α by brute force on the grid of cells of width 1/(n·m), finer than the merged grid.
fn brute_w2(candidate: &[f32], reference: &[f32], alpha: f64) -> f64 {
    let (c, r) = (trim::sorted(candidate), trim::sorted(reference));
    let (n, m) = (c.len(), r.len());
    let mut cells: Vec<f64> = (0..n * m)
        .map(|cell| {
            let diff = c[cell / m] as f64 - r[cell / n] as f64;
            diff * diff
        })
        .collect();
    cells.sort_by(f64::total_cmp);
    let mut keep = (1.0 - alpha) * (n * m) as f64;
    let mut cost = 0.0;
    for v in cells {
        let take = keep.min(1.0);
        cost += v * take;
        keep -= take;
        if keep <= 0.0 {
            break;
        }
    }
    cost / ((1.0 - alpha) * (n * m) as f64)
}

#[test]
fn trimmed_w2_matches_brute_force() {
    let mut rng = Rng::new(29);
    for case in 0..500 {
        let candidate = small_sample(&mut rng, case);
        let reference = small_sample(&mut rng, case + 1);
        let mut previous = f64::INFINITY;
        for alpha in [0.0, 0.1, 0.3, 0.5, 0.9] {
            let got = trim::trimmed_w2(&trim::sorted(&candidate), &trim::sorted(&reference), alpha);
            let want = brute_w2(&candidate, &reference, alpha);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "case {case} α {alpha}: {got} vs {want}"
            );
            assert!(got <= previous + 1e-15, "case {case}: τ rises at α {alpha}");
            previous = got;
        }
    }
}

fn bad_input_is_an_error(be: &Arc<dyn Backend>) {
    let be = be.as_ref();
    let ok = [1.0f32, 2.0, 3.0];
    // Non-finite values past the first parallel chunk of the finiteness check, in a later
    // candidate than the first: the first bad candidate and its first bad value are named.
    let mut long = vec![0.5f32; 200_000];
    (long[150_000], long[190_000]) = (f32::NEG_INFINITY, f32::NAN);
    let cases: [(&[&[f32]], TrimReference, TrimSpec, &str); 7] = [
        (
            &[&ok, &long, &[f32::NAN]],
            TrimReference::LeaveOneOut,
            SPEC,
            "candidate 1: value -inf at position 150001 is not finite",
        ),
        (
            &[&[]],
            TrimReference::Sample(&ok),
            SPEC,
            "candidate 0: empty sample",
        ),
        (
            &[&ok],
            TrimReference::Sample(&[]),
            SPEC,
            "reference: empty sample",
        ),
        (
            &[&[1.0, f32::NAN]],
            TrimReference::Sample(&ok),
            SPEC,
            "candidate 0: value NaN at position 2 is not finite",
        ),
        (
            &[&ok, &[f32::INFINITY]],
            TrimReference::LeaveOneOut,
            SPEC,
            "candidate 1: value inf at position 1",
        ),
        (
            &[&ok],
            TrimReference::LeaveOneOut,
            SPEC,
            "at least 2 models",
        ),
        (
            &[&ok],
            TrimReference::Sample(&ok),
            TrimSpec {
                level: 1.0,
                w2_alpha: None,
                w2_grid: W2Grid::Auto,
            },
            "level 1 is outside (0, 1)",
        ),
    ];
    for (candidates, reference, spec, needle) in cases {
        let err = be
            .trim_search(candidates, reference, &spec)
            .expect_err(needle)
            .to_string();
        assert!(
            err.contains(needle),
            "{}: {err:?} lacks {needle:?}",
            be.name()
        );
    }
}
