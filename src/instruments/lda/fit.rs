//! Fitting LDA rules from class moments: removing the test rows' moments, each class's
//! covariance term (scatter, or a shrunk covariance), pooling the terms of a problem and solving
//! for its linear rule, with scikit-learn's rank rule for a singular covariance.

use rayon::prelude::*;

use super::evaluation::row;
use super::Shrinkage;
use crate::backend::{Backend, Matrix64, Moments};
use crate::error::{Error, Result};

/// scikit-learn's `tol` for the svd solver: singular values of the standardised within-class
/// data at or below it count as rank deficiency.
pub(super) const SVD_TOL: f64 = 1e-4;

/// Moments of `all` without the rows of `part` (Chan et al.'s pairwise update, run backwards):
/// `S_rest = S_all − S_part − (n_rest·n_part/n)·δδᵀ` with `δ = μ_rest − μ_part`.
pub(super) fn remove(all: &Moments, part: &Moments) -> Moments {
    let (n, n_part) = (all.count as f64, part.count as f64);
    let n_rest = n - n_part;
    let mean: Vec<f64> = all
        .mean
        .iter()
        .zip(&part.mean)
        .map(|(a, p)| (n * a - n_part * p) / n_rest)
        .collect();
    let delta: Vec<f64> = mean.iter().zip(&part.mean).map(|(r, p)| r - p).collect();
    let w = n_rest * n_part / n;
    let d = mean.len();
    let mut scatter = all.scatter.clone();
    scatter
        .data
        .par_chunks_mut(d)
        .zip(part.scatter.data.par_chunks(d))
        .enumerate()
        .for_each(|(i, (s, p))| {
            for j in 0..d {
                s[j] -= p[j] + w * delta[i] * delta[j];
            }
        });
    Moments {
        count: all.count - part.count,
        mean,
        scatter,
    }
}

/// One class's contribution to the pooled covariance: its scatter (none), or its own
/// covariance estimate (scikit-learn's `_cov` of the class, shrunk).
pub(super) fn class_term(
    m: &Moments,
    train_rows: &[u32],
    rows: &[f32],
    d: usize,
    shrinkage: Shrinkage,
) -> Matrix64 {
    let n = m.count as f64;
    let mut cov = m.scatter.clone();
    if shrinkage == Shrinkage::None {
        return cov;
    }
    cov.data.iter_mut().for_each(|v| *v /= n);
    let var: Vec<f64> = (0..d).map(|i| cov.at(i, i)).collect();
    let (alpha, target) = match shrinkage {
        Shrinkage::Fixed(alpha) => (alpha, vec![var.iter().sum::<f64>() / d as f64; d]),
        _ => {
            let (alpha, mu) = ledoit_wolf(&cov, &var, m, train_rows, rows);
            // The shrunk standardised covariance, scaled back: the target is μ·diag(scale²).
            let scale2: Vec<f64> = var.iter().map(|&v| if v > 0.0 { v } else { 1.0 }).collect();
            (alpha, scale2.iter().map(|s| mu * s).collect())
        }
    };
    cov.data.iter_mut().for_each(|v| *v *= 1.0 - alpha);
    for (i, t) in target.iter().enumerate() {
        *cov.at_mut(i, i) += alpha * t;
    }
    cov
}

/// scikit-learn's `ledoit_wolf` on the class's standardised rows (`StandardScaler` then
/// `ledoit_wolf_shrinkage`): returns the shrinkage and the target's scale `μ = tr(R)/d`, where
/// `R` is the standardised covariance. Its `β` needs `Σ_n ‖z_n‖⁴`, one pass over the rows.
fn ledoit_wolf(
    cov: &Matrix64,
    var: &[f64],
    m: &Moments,
    train_rows: &[u32],
    rows: &[f32],
) -> (f64, f64) {
    let d = var.len();
    let n = m.count as f64;
    let inv_var: Vec<f64> = var
        .iter()
        .map(|&v| if v > 0.0 { 1.0 / v } else { 1.0 })
        .collect();
    let trace: f64 = var.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).sum();
    let mu = trace / d as f64;
    // ‖R‖²_F with R_ij = C_ij / (s_i s_j).
    let r_norm2: f64 = (0..d)
        .map(|i| {
            (0..d)
                .map(|j| cov.at(i, j).powi(2) * inv_var[i] * inv_var[j])
                .sum::<f64>()
        })
        .sum();
    let fourth: f64 = train_rows
        .par_iter()
        .map(|&r| {
            let z2: f64 = row(rows, d, r)
                .iter()
                .zip(&m.mean)
                .zip(&inv_var)
                .map(|((x, mean), iv)| (*x as f64 - mean).powi(2) * iv)
                .sum();
            z2 * z2
        })
        .sum();
    let beta = (fourth / n - r_norm2) / (d as f64 * n);
    let delta = (r_norm2 - 2.0 * mu * trace + d as f64 * mu * mu) / d as f64;
    let beta = beta.min(delta);
    let alpha = if beta == 0.0 || delta <= 0.0 {
        0.0
    } else {
        beta / delta
    };
    (alpha, mu)
}

/// A linear rule over some classes: `score_j(x) = x·w_j + b_j`, the highest score wins (the
/// first on a tie, as numpy's argmax).
pub(super) struct Rule {
    pub(super) classes: Vec<usize>,
    /// `[d, classes]` row-major.
    pub(super) weights: Matrix64,
    pub(super) bias: Vec<f64>,
}

impl Rule {
    pub(super) fn predict(&self, x: &[f32]) -> usize {
        let scores = linear_scores(&self.weights.data, &self.bias, x);
        let c = scores.len();
        let best = (1..c).fold(0, |b, j| if scores[j] > scores[b] { j } else { b });
        self.classes[best]
    }
}

/// `x·W + b` for `W` `[d, classes]` row-major: one score per class.
pub(super) fn linear_scores(weights: &[f64], bias: &[f64], x: &[f32]) -> Vec<f64> {
    let mut scores = bias.to_vec();
    for (xi, w) in x.iter().zip(weights.chunks_exact(bias.len().max(1))) {
        scores
            .iter_mut()
            .zip(w)
            .for_each(|(s, w)| *s += f64::from(*xi) * w);
    }
    scores
}

/// Pools the class terms of each problem (a set of classes) and solves for its rule, all
/// problems of a split in one backend batch.
pub(super) fn fit_rules(
    backend: &dyn Backend,
    train: &[Moments],
    terms: &[Matrix64],
    problems: &[Vec<usize>],
    shrinkage: Shrinkage,
) -> Result<Vec<Rule>> {
    let d = train[0].mean.len();
    let pooled: Vec<Matrix64> = problems
        .par_iter()
        .map(|classes| pool(train, terms, classes, shrinkage))
        .collect();
    let means: Vec<Matrix64> = problems
        .iter()
        .map(|classes| {
            let mut m = Matrix64::zeros(d, classes.len());
            for (j, &c) in classes.iter().enumerate() {
                for i in 0..d {
                    *m.at_mut(i, j) = train[c].mean[i];
                }
            }
            m
        })
        .collect();
    let weights = match shrinkage {
        Shrinkage::None => {
            let rank_scales: Vec<f64> = problems.iter().map(|c| rank_scale(train, c)).collect();
            let whitenings = whiten(backend, pooled, &rank_scales)?;
            whitenings
                .iter()
                .zip(&means)
                .map(|(w, m)| matmul(w, &matmul_tn(w, m)))
                .collect()
        }
        _ => backend
            .spd_solve(
                &pooled
                    .into_iter()
                    .zip(means.iter().cloned())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| singular_covariance(e, train, problems, shrinkage))?,
    };
    Ok(problems
        .iter()
        .zip(weights)
        .zip(&means)
        .map(|((classes, weights), means)| {
            let n: f64 = classes.iter().map(|&c| train[c].count as f64).sum();
            let bias = (0..classes.len())
                .map(|j| {
                    let quad: f64 = (0..d).map(|i| means.at(i, j) * weights.at(i, j)).sum();
                    -0.5 * quad + (train[classes[j]].count as f64 / n).ln()
                })
                .collect();
            Rule {
                classes: classes.clone(),
                weights,
                bias,
            }
        })
        .collect())
}

/// The error for a shrunk covariance that is still singular, with its likely cause. Ledoit–Wolf
/// (as scikit-learn's) does not shrink a class of two rows at all — their standardised rows are
/// opposite, so its `β` is 0 — and a class of n rows spans at most n − 1 directions.
fn singular_covariance(
    e: Error,
    train: &[Moments],
    problems: &[Vec<usize>],
    shrinkage: Shrinkage,
) -> Error {
    let d = train[0].mean.len();
    let fewest = problems
        .iter()
        .flatten()
        .map(|&c| train[c].count)
        .min()
        .unwrap_or(0);
    let cause = match shrinkage {
        Shrinkage::Auto if fewest < d => format!(
            "the smallest class has {fewest} training rows in {d} dimensions, too few for \
             Ledoit–Wolf to make its covariance invertible (it does not shrink a class of 2 rows \
             at all); give --shrinkage a fixed value such as 0.1, or more rows per class (a \
             smaller --test-fraction)"
        ),
        _ => "the shrunk class covariance is singular (a feature constant in every class?)"
            .to_string(),
    };
    Error::input(format!("{e}: {cause}"))
}

/// The covariance a problem's rule uses: `Σ S_k / (N − K)` without shrinkage (scikit-learn's
/// svd solver), else the prior-weighted class covariances `Σ π_k C_k` (its eigen solver).
pub(super) fn pool(
    train: &[Moments],
    terms: &[Matrix64],
    classes: &[usize],
    shrinkage: Shrinkage,
) -> Matrix64 {
    let n: f64 = classes.iter().map(|&c| train[c].count as f64).sum();
    let d = train[0].mean.len();
    let mut sigma = Matrix64::zeros(d, d);
    for &c in classes {
        let w = match shrinkage {
            Shrinkage::None => 1.0 / (n - classes.len() as f64).max(1.0),
            _ => train[c].count as f64 / n,
        };
        sigma
            .data
            .par_iter_mut()
            .zip(&terms[c].data)
            .for_each(|(s, t)| *s += w * t);
    }
    sigma
}

/// scikit-learn's svd solver standardises the within-class rows by their std over all `N` rows
/// and scales by `1/(N − K)`: its matrix is the within-class correlation times `N/(N − K)`.
pub(super) fn rank_scale(train: &[Moments], classes: &[usize]) -> f64 {
    let n: f64 = classes.iter().map(|&c| train[c].count as f64).sum();
    n / (n - classes.len() as f64).max(1.0)
}

/// For each covariance `Σ`, a `[d, r]` matrix `W` with `W Wᵀ = Σ⁺`: `Σ` is standardised to a
/// correlation, directions whose eigenvalue times `rank_scales[i]` is at or below `SVD_TOL²` are
/// dropped (scikit-learn's rank rule), the rest scaled by `λ^-½`. One batched eigen call.
pub(super) fn whiten(
    backend: &dyn Backend,
    covariances: Vec<Matrix64>,
    rank_scales: &[f64],
) -> Result<Vec<Matrix64>> {
    let scales: Vec<Vec<f64>> = covariances
        .iter()
        .map(|c| {
            (0..c.rows)
                .map(|i| {
                    if c.at(i, i) > 0.0 {
                        c.at(i, i).sqrt()
                    } else {
                        1.0
                    }
                })
                .collect()
        })
        .collect();
    let standardised: Vec<Matrix64> = covariances
        .into_iter()
        .zip(&scales)
        .map(|(mut c, s)| {
            let d = c.rows;
            c.data.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                row.iter_mut().zip(s).for_each(|(v, sj)| *v /= s[i] * sj);
            });
            c
        })
        .collect();
    let eigens = backend.symmetric_eigen(&standardised)?;
    Ok(eigens
        .iter()
        .zip(&scales)
        .zip(rank_scales)
        .map(|((e, s), rank_scale)| {
            let d = s.len();
            let r = e
                .values
                .iter()
                .take_while(|&&l| l * rank_scale > SVD_TOL * SVD_TOL)
                .count();
            let mut w = Matrix64::zeros(d, r);
            for (i, si) in s.iter().enumerate() {
                for j in 0..r {
                    *w.at_mut(i, j) = e.vectors.at(i, j) / (si * e.values[j].sqrt());
                }
            }
            w
        })
        .collect())
}

/// `A·B`.
pub(super) fn matmul(a: &Matrix64, b: &Matrix64) -> Matrix64 {
    let mut c = Matrix64::zeros(a.rows, b.cols);
    c.data
        .par_chunks_mut(b.cols)
        .enumerate()
        .for_each(|(i, c)| {
            for p in 0..a.cols {
                let x = a.at(i, p);
                c.iter_mut()
                    .zip(&b.data[p * b.cols..(p + 1) * b.cols])
                    .for_each(|(c, b)| *c += x * b);
            }
        });
    c
}

/// `Aᵀ·B`.
pub(super) fn matmul_tn(a: &Matrix64, b: &Matrix64) -> Matrix64 {
    let mut c = Matrix64::zeros(a.cols, b.cols);
    for p in 0..a.rows {
        for i in 0..a.cols {
            let x = a.at(p, i);
            for j in 0..b.cols {
                *c.at_mut(i, j) += x * b.at(p, j);
            }
        }
    }
    c
}
