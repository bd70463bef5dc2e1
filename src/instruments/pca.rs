//! Principal components of an embeddings matrix, as scikit-learn's `PCA(svd_solver="full")`
//! reports them: the covariance comes from the backend's scatter op (one GEMM), its eigenvectors
//! from the backend's symmetric eigen op. Then what each component means: per-label mean scores,
//! how well each component separates a label from the rest, and the rows at either end.

use crate::backend::{Backend, Matrix64, Tensor};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Pca {
    pub n: usize,
    pub dim: usize,
    pub mean: Vec<f64>,
    /// Variance along each kept component (eigenvalues of the covariance, largest first).
    pub explained_variance: Vec<f64>,
    /// `explained_variance` over the total variance (the covariance's trace).
    pub explained_variance_ratio: Vec<f64>,
    /// `[k, dim]`, one unit component per row, largest |entry| positive (scikit-learn's sign).
    pub components: Matrix64,
}

impl Pca {
    /// The first `k` principal components of the rows of `x: [n, dim]`.
    pub fn fit(backend: &dyn Backend, x: &Tensor, k: usize) -> Result<Pca> {
        let (n, dim) = x.dims2("pca input")?;
        if n < 2 {
            return Err(Error::input(format!(
                "PCA needs at least 2 rows, the embeddings have {n}"
            )));
        }
        if k == 0 || k > dim {
            return Err(Error::input(format!(
                "{k} components requested: must be between 1 and the embedding dimension {dim}"
            )));
        }
        let all: Vec<u32> = (0..n as u32).collect();
        let moments = backend.scatter(x, &[&all])?.remove(0);
        let mut cov = moments.scatter;
        cov.data.iter_mut().for_each(|v| *v /= (n - 1) as f64);
        let total: f64 = (0..dim).map(|i| cov.at(i, i)).sum();
        let eigen = backend
            .symmetric_eigen(std::slice::from_ref(&cov))?
            .remove(0);

        let mut components = Matrix64::zeros(k, dim);
        for c in 0..k {
            let column = |i: usize| eigen.vectors.at(i, c);
            let largest = (0..dim)
                .map(column)
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
            let sign = if largest < 0.0 { -1.0 } else { 1.0 };
            for i in 0..dim {
                *components.at_mut(c, i) = sign * column(i);
            }
        }
        let explained_variance = eigen.values[..k].to_vec();
        let explained_variance_ratio = explained_variance
            .iter()
            .map(|v| if total > 0.0 { v / total } else { 0.0 })
            .collect();
        Ok(Pca {
            n,
            dim,
            mean: moments.mean,
            explained_variance,
            explained_variance_ratio,
            components,
        })
    }

    pub fn k(&self) -> usize {
        self.components.rows
    }

    /// `[n, k]` row-major: each row's coordinates along the components (`(x − mean)·c`).
    pub fn scores(&self, rows: &[f32]) -> Vec<f64> {
        use rayon::prelude::*;
        let (k, dim) = (self.k(), self.dim);
        let mut scores = vec![0.0; rows.len() / dim * k];
        scores
            .par_chunks_mut(k)
            .zip(rows.par_chunks(dim))
            .for_each(|(s, x)| {
                for (c, s) in s.iter_mut().enumerate() {
                    *s = x
                        .iter()
                        .zip(&self.mean)
                        .zip(&self.components.data[c * dim..(c + 1) * dim])
                        .map(|((x, m), w)| (*x as f64 - m) * w)
                        .sum();
                }
            });
        scores
    }
}

/// How one label sits along the components.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelSeparation {
    pub label: String,
    pub rows: usize,
    /// Mean score of the label's rows, per component.
    pub mean_score: Vec<f64>,
    /// Per component, the probability that a row of this label scores higher than a row of
    /// another label (ROC AUC of the score for label-vs-rest; 0.5 = no separation).
    pub auc_vs_rest: Vec<f64>,
}

/// Per-label mean scores and label-vs-rest AUCs from `[n, k]` scores; rows labelled -1 are
/// left out, labels without rows are skipped.
pub fn separation(
    scores: &[f64],
    k: usize,
    labels: &[i64],
    names: &[String],
) -> Vec<LabelSeparation> {
    let labelled: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
    // Mid-ranks of the labelled rows' scores, per component (ties share their mean rank).
    let ranks: Vec<Vec<f64>> = (0..k)
        .map(|c| {
            mid_ranks(
                &labelled
                    .iter()
                    .map(|&i| scores[i * k + c])
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    names
        .iter()
        .enumerate()
        .filter_map(|(l, name)| {
            let mine: Vec<usize> = (0..labelled.len())
                .filter(|&j| labels[labelled[j]] == l as i64)
                .collect();
            if mine.is_empty() {
                return None;
            }
            let (pos, neg) = (mine.len() as f64, (labelled.len() - mine.len()) as f64);
            let mean_score = (0..k)
                .map(|c| {
                    mine.iter()
                        .map(|&j| scores[labelled[j] * k + c])
                        .sum::<f64>()
                        / pos
                })
                .collect();
            let auc_vs_rest = (0..k)
                .map(|c| {
                    if neg == 0.0 {
                        return 0.5;
                    }
                    let rank_sum: f64 = mine.iter().map(|&j| ranks[c][j]).sum();
                    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
                })
                .collect();
            Some(LabelSeparation {
                label: name.clone(),
                rows: mine.len(),
                mean_score,
                auc_vs_rest,
            })
        })
        .collect()
}

/// 1-based ranks with ties given their average rank (the Mann–Whitney convention).
fn mid_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        order[start..end].iter().for_each(|&i| ranks[i] = rank);
        start = end;
    }
    ranks
}

/// The rows at either end of one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extremes {
    /// Highest score first.
    pub highest: Vec<usize>,
    /// Lowest score first.
    pub lowest: Vec<usize>,
}

/// For each of the `k` components, the `count` rows with the highest and the lowest scores.
pub fn extremes(scores: &[f64], k: usize, count: usize) -> Vec<Extremes> {
    let n = scores.len() / k.max(1);
    (0..k)
        .map(|c| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| scores[b * k + c].total_cmp(&scores[a * k + c]));
            let count = count.min(n);
            Extremes {
                highest: order[..count].to_vec(),
                lowest: order.iter().rev().take(count).copied().collect(),
            }
        })
        .collect()
}
