//! Linear discriminant analysis over many stratified splits, as scikit-learn's
//! `LinearDiscriminantAnalysis` classifies: `--shrinkage none` is its `svd` solver (pooled
//! within-class covariance, rank decided on the standardised scatter with tol 1e-4), `auto` and
//! a number are its `eigen` solver with Ledoit–Wolf or fixed shrinkage of each class covariance.
//!
//! Both reduce to one linear rule per class, `score_k(x) = xᵀ Σ⁺ μ_k − ½ μ_kᵀ Σ⁺ μ_k + ln π_k`,
//! so a fit is: per-class moments → pooled `Σ` → one solve. The moments are where the rows are
//! read, so they are computed once per split and shared: the train part of a class is its
//! all-rows moments minus its test rows' moments (a GEMM over the test rows only), and every
//! pair of classes pools the same per-class terms (`Σ_ab` from `S_a`, `S_b`) instead of refitting
//! from raw rows. All problems of a split go to the backend as one batch.

use std::str::FromStr;

use rayon::prelude::*;

use super::splits::Split;
use crate::backend::{Backend, Matrix64, Moments, Tensor};
use crate::error::{Error, Result};

/// scikit-learn's `tol` for the svd solver: singular values of the standardised within-class
/// data at or below it count as rank deficiency.
const SVD_TOL: f64 = 1e-4;

/// How the class covariance is estimated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shrinkage {
    /// Pooled within-class covariance; a singular one is pseudo-inverted (scikit-learn's svd).
    None,
    /// Ledoit–Wolf shrinkage of each standardised class covariance (scikit-learn's `"auto"`).
    Auto,
    /// `(1 − α)·C + α·tr(C)/d·I` for each class covariance `C`, `α ∈ [0, 1]`.
    Fixed(f64),
}

impl FromStr for Shrinkage {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Shrinkage::None),
            "auto" => Ok(Shrinkage::Auto),
            _ => match s.parse::<f64>() {
                Ok(a) if (0.0..=1.0).contains(&a) => Ok(Shrinkage::Fixed(a)),
                _ => Err(format!("`{s}`: expected none, auto or a number in [0, 1]")),
            },
        }
    }
}

impl std::fmt::Display for Shrinkage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shrinkage::None => write!(f, "none"),
            Shrinkage::Auto => write!(f, "auto"),
            Shrinkage::Fixed(a) => write!(f, "{a}"),
        }
    }
}

/// The labelled rows, grouped by class; classes are the labels that have rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Classes {
    pub names: Vec<String>,
    /// `rows[k]`: the rows of class `k`, ascending.
    pub rows: Vec<Vec<u32>>,
}

impl Classes {
    /// Groups rows by label (`-1`: no label, left out). Needs two labels with rows, and two rows
    /// in each.
    pub fn from_labels(labels: &[i64], names: &[String]) -> Result<Classes> {
        let mut rows = vec![Vec::new(); names.len()];
        for (i, &l) in labels.iter().enumerate() {
            if l >= 0 {
                rows[l as usize].push(i as u32);
            }
        }
        let (names, rows): (Vec<String>, Vec<Vec<u32>>) = names
            .iter()
            .cloned()
            .zip(rows)
            .filter(|(_, r)| !r.is_empty())
            .unzip();
        if names.len() < 2 {
            return Err(Error::input(format!(
                "LDA needs at least two labels with rows, found {} ({names:?})",
                names.len()
            )));
        }
        if let Some(k) = rows.iter().position(|r| r.len() < 2) {
            return Err(Error::input(format!(
                "label `{}` has only 1 row (row {}): every label needs at least 2",
                names[k], rows[k][0]
            )));
        }
        Ok(Classes { names, rows })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Accuracy over the splits for every pair of classes (`K×K`, symmetric, NaN on the diagonal).
#[derive(Clone, Debug, PartialEq)]
pub struct PairwiseTable {
    pub accuracy_mean: Matrix64,
    pub accuracy_std: Matrix64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Test accuracy of each split.
    pub accuracies: Vec<f64>,
    /// `confusion[true][predicted]`, summed over the splits.
    pub confusion: Vec<Vec<u64>>,
    /// Test-row predictions of each split, class indices in the order of `Split::test`
    /// flattened (class 0's test rows, then class 1's, ...).
    pub predictions: Vec<Vec<usize>>,
    pub pairwise: Option<PairwiseTable>,
}

/// Mean and standard deviation (population, numpy's default) of a sample.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Fits on the train part and scores the test part of every split, for all classes together
/// and, with `pairwise`, for every pair of classes.
pub fn evaluate(
    backend: &dyn Backend,
    x: &Tensor,
    rows: &[f32],
    classes: &Classes,
    splits: &[Split],
    shrinkage: Shrinkage,
    pairwise: bool,
) -> Result<Evaluation> {
    let (_, d) = x.dims2("lda input")?;
    let k = classes.len();
    let groups: Vec<&[u32]> = classes.rows.iter().map(Vec::as_slice).collect();
    let all = backend.scatter(x, &groups)?;
    let problems: Vec<Vec<usize>> = std::iter::once((0..k).collect())
        .chain(
            (0..k)
                .flat_map(|a| (a + 1..k).map(move |b| vec![a, b]))
                .filter(|_| pairwise),
        )
        .collect();

    let mut accuracies = Vec::with_capacity(splits.len());
    let mut predictions = Vec::with_capacity(splits.len());
    let mut confusion = vec![vec![0u64; k]; k];
    let mut pair_accuracies = vec![Vec::with_capacity(splits.len()); problems.len() - 1];
    for (s, split) in splits.iter().enumerate() {
        let test_groups: Vec<&[u32]> = split.test.iter().map(Vec::as_slice).collect();
        let test = backend.scatter(x, &test_groups)?;
        let train: Vec<Moments> = all.iter().zip(&test).map(|(a, t)| remove(a, t)).collect();
        let terms: Vec<Matrix64> = train
            .par_iter()
            .zip(&split.train)
            .map(|(m, train_rows)| class_term(m, train_rows, rows, d, shrinkage))
            .collect();
        let rules = fit_rules(backend, &train, &terms, &problems, shrinkage)
            .map_err(|e| Error::input(format!("split {s}: {e}")))?;

        let (full, pairs) = rules.split_first().expect("the all-classes problem");
        let truths: Vec<(usize, u32)> = split
            .test
            .iter()
            .enumerate()
            .flat_map(|(truth, test_rows)| test_rows.iter().map(move |&r| (truth, r)))
            .collect();
        let predicted: Vec<usize> = truths
            .par_iter()
            .map(|&(_, r)| full.predict(row(rows, d, r)))
            .collect();
        let mut correct = 0;
        for (&(truth, _), &p) in truths.iter().zip(&predicted) {
            confusion[truth][p] += 1;
            correct += usize::from(p == truth);
        }
        accuracies.push(correct as f64 / predicted.len() as f64);
        predictions.push(predicted);
        let pair_scores: Vec<f64> = pairs
            .par_iter()
            .map(|rule| {
                let (mut right, mut total) = (0, 0);
                for &class in &rule.classes {
                    for &r in &split.test[class] {
                        right += usize::from(rule.predict(row(rows, d, r)) == class);
                        total += 1;
                    }
                }
                right as f64 / total as f64
            })
            .collect();
        for (acc, score) in pair_accuracies.iter_mut().zip(pair_scores) {
            acc.push(score);
        }
    }

    let pairwise = pairwise.then(|| {
        let mut mean = Matrix64 {
            rows: k,
            cols: k,
            data: vec![f64::NAN; k * k],
        };
        let mut std = mean.clone();
        for (problem, acc) in problems[1..].iter().zip(&pair_accuracies) {
            let (m, s) = mean_std(acc);
            let (a, b) = (problem[0], problem[1]);
            (*mean.at_mut(a, b), *mean.at_mut(b, a)) = (m, m);
            (*std.at_mut(a, b), *std.at_mut(b, a)) = (s, s);
        }
        PairwiseTable {
            accuracy_mean: mean,
            accuracy_std: std,
        }
    });
    Ok(Evaluation {
        accuracies,
        confusion,
        predictions,
        pairwise,
    })
}

fn row(rows: &[f32], d: usize, r: u32) -> &[f32] {
    &rows[r as usize * d..(r as usize + 1) * d]
}

/// Moments of `all` without the rows of `part` (Chan et al.'s pairwise update, run backwards):
/// `S_rest = S_all − S_part − (n_rest·n_part/n)·δδᵀ` with `δ = μ_rest − μ_part`.
fn remove(all: &Moments, part: &Moments) -> Moments {
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
fn class_term(
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
struct Rule {
    classes: Vec<usize>,
    /// `[d, classes]` row-major.
    weights: Matrix64,
    bias: Vec<f64>,
}

impl Rule {
    fn predict(&self, x: &[f32]) -> usize {
        let c = self.classes.len();
        let mut scores = self.bias.clone();
        for (xi, w) in x.iter().zip(self.weights.data.chunks_exact(c)) {
            scores
                .iter_mut()
                .zip(w)
                .for_each(|(s, w)| *s += *xi as f64 * w);
        }
        let best = (1..c).fold(0, |b, j| if scores[j] > scores[b] { j } else { b });
        self.classes[best]
    }
}

/// Pools the class terms of each problem (a set of classes) and solves for its rule, all
/// problems of a split in one backend batch.
fn fit_rules(
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
            .spd_solve(&pooled.into_iter().zip(means.iter().cloned()).collect::<Vec<_>>())
            .map_err(|e| {
                Error::input(format!(
                    "{e}: the shrunk class covariance is singular (a feature constant in every class?)"
                ))
            })?,
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

/// The covariance a problem's rule uses: `Σ S_k / (N − K)` without shrinkage (scikit-learn's
/// svd solver), else the prior-weighted class covariances `Σ π_k C_k` (its eigen solver).
fn pool(
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
fn rank_scale(train: &[Moments], classes: &[usize]) -> f64 {
    let n: f64 = classes.iter().map(|&c| train[c].count as f64).sum();
    n / (n - classes.len() as f64).max(1.0)
}

/// For each covariance `Σ`, a `[d, r]` matrix `W` with `W Wᵀ = Σ⁺`: `Σ` is standardised to a
/// correlation, directions whose eigenvalue times `rank_scales[i]` is at or below `SVD_TOL²` are
/// dropped (scikit-learn's rank rule), the rest scaled by `λ^-½`. One batched eigen call.
fn whiten(
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
fn matmul(a: &Matrix64, b: &Matrix64) -> Matrix64 {
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
fn matmul_tn(a: &Matrix64, b: &Matrix64) -> Matrix64 {
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

/// The discriminant directions of a fit on every labelled row, for plots: the generalised
/// eigenproblem `S_b v = λ Σ v` solved by whitening `Σ` (as in [`whiten`], so a singular `Σ`
/// works too) and an eigen of the whitened between-class scatter.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// Share of the between-class variance per direction (scikit-learn's
    /// `explained_variance_ratio_`).
    pub explained_variance_ratio: Vec<f64>,
    /// `[d, m]`, `m = min(K − 1, rank)` directions.
    pub directions: Matrix64,
    /// The weighted mean of the class means, the origin of the coordinates.
    pub centre: Vec<f64>,
}

impl Projection {
    pub fn fit(
        backend: &dyn Backend,
        x: &Tensor,
        rows: &[f32],
        classes: &Classes,
        shrinkage: Shrinkage,
    ) -> Result<Projection> {
        let (_, d) = x.dims2("lda input")?;
        let groups: Vec<&[u32]> = classes.rows.iter().map(Vec::as_slice).collect();
        let moments = backend.scatter(x, &groups)?;
        let terms: Vec<Matrix64> = moments
            .iter()
            .zip(&classes.rows)
            .map(|(m, r)| class_term(m, r, rows, d, shrinkage))
            .collect();
        let all: Vec<usize> = (0..classes.len()).collect();
        let sigma = pool(&moments, &terms, &all, shrinkage);
        let w = whiten(backend, vec![sigma], &[rank_scale(&moments, &all)])?.remove(0);
        let n: f64 = moments.iter().map(|m| m.count as f64).sum();
        let centre: Vec<f64> = (0..d)
            .map(|i| {
                moments
                    .iter()
                    .map(|m| m.count as f64 * m.mean[i])
                    .sum::<f64>()
                    / n
            })
            .collect();
        // Z = [K, r]: whitened class-mean offsets weighted by √n_k; S_b (whitened) = ZᵀZ. Its
        // eigenvectors come from the small K×K problem Z Zᵀ u = λ u, v = Zᵀu/√λ.
        let mut offsets = Matrix64::zeros(d, classes.len());
        for (k, m) in moments.iter().enumerate() {
            let weight = (m.count as f64).sqrt();
            for (i, (mean, c)) in m.mean.iter().zip(&centre).enumerate() {
                *offsets.at_mut(i, k) = weight * (mean - c);
            }
        }
        let z = matmul_tn(&offsets, &w); // [K, r]
        let mut gram = Matrix64::zeros(z.rows, z.rows);
        for a in 0..z.rows {
            for b in 0..z.rows {
                *gram.at_mut(a, b) = (0..z.cols).map(|j| z.at(a, j) * z.at(b, j)).sum();
            }
        }
        let eigen = backend.symmetric_eigen(&[gram])?.remove(0);
        let total: f64 = eigen.values.iter().filter(|&&l| l > 0.0).sum();
        let m = eigen
            .values
            .iter()
            .take(classes.len() - 1)
            .take_while(|&&l| l > SVD_TOL * eigen.values[0])
            .count();
        let mut y = Matrix64::zeros(z.cols, m); // whitened directions, [r, m]
        for j in 0..m {
            let inv = 1.0 / eigen.values[j].sqrt();
            for i in 0..z.cols {
                *y.at_mut(i, j) = inv
                    * (0..z.rows)
                        .map(|a| z.at(a, i) * eigen.vectors.at(a, j))
                        .sum::<f64>();
            }
        }
        Ok(Projection {
            explained_variance_ratio: eigen.values[..m].iter().map(|l| l / total).collect(),
            directions: matmul(&w, &y),
            centre,
        })
    }

    /// `[rows, m]` coordinates of `x` rows (row-major, `d` wide) along the directions.
    pub fn transform(&self, x: &[f32]) -> Vec<f64> {
        let (d, m) = (self.directions.rows, self.directions.cols);
        let mut out = vec![0.0; x.len() / d * m];
        out.par_chunks_mut(m.max(1))
            .zip(x.par_chunks(d))
            .for_each(|(o, x)| {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = (0..d)
                        .map(|i| (x[i] as f64 - self.centre[i]) * self.directions.at(i, j))
                        .sum();
                }
            });
        out
    }
}
