//! Principal components of an embeddings matrix, as scikit-learn's `PCA(svd_solver="full")`
//! reports them: the covariance comes from the backend's scatter op (one GEMM), its eigenvectors
//! from the backend's symmetric eigen op. Then what each component means: per-label mean scores,
//! how well each component separates a label from the rest, the rows at either end and the words
//! over-represented there, gathered in the report `mscope pca` writes.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::backend::{Backend, Matrix64, Tensor};
use crate::error::{Error, Result};
use crate::io::embedding_inputs::LabelFactor;
use crate::io::embeddings::EmbeddingsFile;

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
        if k > n - 1 {
            return Err(Error::input(format!(
                "{k} components requested, but {n} centred rows span at most {} dimensions",
                n - 1
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
        // Components past the data's rank have no variance, only rounding noise for a direction:
        // refused rather than reported as if they meant something. The cut is numpy's
        // `matrix_rank` tolerance for f32 data (singular values below max(n, dim)·ε·σ_max),
        // squared because eigenvalues of the covariance are squared singular values.
        let cut = (n.max(dim) as f64 * f32::EPSILON as f64).powi(2) * eigen.values[0].max(0.0);
        if explained_variance[0] <= cut {
            return Err(Error::input(format!(
                "the {n} rows are all equal: no direction has any variance"
            )));
        }
        if let Some(c) = explained_variance.iter().position(|&v| v <= cut) {
            return Err(Error::input(format!(
                "{k} components requested, but the rows span only {c} dimensions (component {} \
                 has variance {:.3e}): ask for at most {c}",
                c + 1,
                explained_variance[c]
            )));
        }
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
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelSeparation {
    pub label: String,
    pub rows: usize,
    /// Mean score of the label's rows, per component.
    pub mean_score: Vec<f64>,
    /// Per component, the probability that a row of this label scores higher than a row of
    /// another label (ROC AUC of the score for label-vs-rest; 0.5 = no separation).
    pub auc_vs_rest: Vec<f64>,
}

/// How the levels of one factor (one of several labels per row) sit along the components.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FactorSeparation {
    pub factor: String,
    pub levels: Vec<LabelSeparation>,
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

/// A word and how much more often it occurs at one end of a component than at the other.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WordScore {
    pub word: String,
    /// Smoothed log-odds ratio, this end over the other (> 0: over-represented here).
    pub log_odds: f64,
}

/// Lowercase alphabetic words of at least 3 letters (any script), in order.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
}

/// The `count` words most over-represented in `high` against `low`, and in `low` against
/// `high`, by the add-one smoothed log-odds ratio
/// `log((c_high + 1) / (T_high + V)) − log((c_low + 1) / (T_low + V))`, where `c` counts a
/// word's occurrences, `T` all words at that end and `V` the vocabulary of both ends. Only
/// words with a positive ratio for their end are kept; ties go to the alphabetically first.
pub fn distinctive_words(
    high: &[&str],
    low: &[&str],
    count: usize,
) -> (Vec<WordScore>, Vec<WordScore>) {
    let tally = |texts: &[&str]| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        texts
            .iter()
            .flat_map(|t| words(t))
            .for_each(|w| *counts.entry(w).or_default() += 1);
        let total: usize = counts.values().sum();
        (counts, total as f64)
    };
    let ((high_counts, high_total), (low_counts, low_total)) = (tally(high), tally(low));
    let vocabulary: BTreeSet<&String> = high_counts.keys().chain(low_counts.keys()).collect();
    let v = vocabulary.len() as f64;
    let smoothed = |counts: &HashMap<String, usize>, total: f64, w: &String| {
        ((counts.get(w).copied().unwrap_or(0) as f64 + 1.0) / (total + v)).ln()
    };
    let scored: Vec<WordScore> = vocabulary
        .iter()
        .map(|&w| WordScore {
            word: w.clone(),
            log_odds: smoothed(&high_counts, high_total, w) - smoothed(&low_counts, low_total, w),
        })
        .collect();
    let best = |sign: f64| {
        let mut end: Vec<WordScore> = scored
            .iter()
            .filter(|s| sign * s.log_odds > 0.0)
            .map(|s| WordScore {
                word: s.word.clone(),
                log_odds: sign * s.log_odds,
            })
            .collect();
        // Stable sort over the alphabetical vocabulary: equal ratios stay alphabetical.
        end.sort_by(|a, b| b.log_odds.total_cmp(&a.log_odds));
        end.truncate(count);
        end
    };
    (best(1.0), best(-1.0))
}

/// What `mscope pca` reports; the serialised fields are the JSON report's keys. The skipped
/// fields are what the plots need besides.
#[derive(Clone, Debug, Serialize)]
pub struct PcaReport {
    pub input: String,
    pub model: String,
    pub n: usize,
    pub dim: usize,
    pub n_components: usize,
    pub explained_variance: Vec<f64>,
    pub explained_variance_ratio: Vec<f64>,
    /// `[k][dim]`, as [`Pca::components`].
    pub components: Vec<Vec<f64>>,
    pub mean: Vec<f64>,
    pub labels: Vec<LabelSeparation>,
    /// With several labels per row (`--factor`), each factor's levels as `labels` gives the
    /// first's; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub factors: Vec<FactorSeparation>,
    /// One entry per component when rows are explained, else none.
    pub explain: Vec<ComponentEnds>,
    /// Rows at each end whose words were counted (meaningful with texts only).
    #[serde(skip)]
    pub word_rows: usize,
    /// `[n, k]` row-major: each row's score on each component.
    #[serde(skip)]
    pub scores: Vec<f64>,
    /// The embeddings file's label index of each row (-1: none) and the label names.
    #[serde(skip)]
    pub row_labels: Vec<i64>,
    #[serde(skip)]
    pub label_names: Vec<String>,
}

/// The rows at either end of one component and, with texts, the words over-represented there.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentEnds {
    /// 1-based.
    pub component: usize,
    pub highest: Vec<EndRow>,
    pub lowest: Vec<EndRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highest_words: Option<Vec<WordScore>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lowest_words: Option<Vec<WordScore>>,
}

/// One row at an end of a component.
#[derive(Clone, Debug, Serialize)]
pub struct EndRow {
    pub row: usize,
    pub label: Option<String>,
    pub score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The first `k` principal components of `file`'s rows (read from `input`), what separates its
/// labels along them (and the levels of each of `factors`) and, with `explain > 0`, the
/// `explain` rows at either end of each component, with the words over-represented there when
/// the rows' `texts` are given.
pub fn report(
    backend: &dyn Backend,
    file: &EmbeddingsFile,
    input: &Path,
    k: usize,
    explain: usize,
    texts: Option<&[String]>,
    factors: &[LabelFactor],
) -> Result<PcaReport> {
    let x = backend.upload(&[file.rows(), file.dim], &file.embeddings)?;
    let pca =
        Pca::fit(backend, &x, k).map_err(|e| Error::input(format!("{}: {e}", input.display())))?;
    let scores = pca.scores(&file.embeddings);
    let labels = separation(&scores, k, &file.labels, &file.label_names);
    let factors = factors
        .iter()
        .map(|f| FactorSeparation {
            factor: f.name.clone(),
            levels: separation(&scores, k, &f.levels, &f.level_names),
        })
        .collect();
    // Words are counted over at least a tenth of the rows at each end (N rows say little about
    // word use), and the two ends never share a row.
    let word_rows = explain.max(pca.n / 10).min(pca.n / 2);
    let ends = if explain > 0 {
        extremes(&scores, k, explain.max(word_rows))
    } else {
        Vec::new()
    };
    let end_rows = |rows: &[usize], c: usize| -> Vec<EndRow> {
        rows[..explain.min(rows.len())]
            .iter()
            .map(|&r| EndRow {
                row: r,
                label: usize::try_from(file.labels[r])
                    .ok()
                    .map(|l| file.label_names[l].clone()),
                score: scores[r * k + c],
                text: texts.map(|texts| texts[r].clone()),
            })
            .collect()
    };
    let explain = ends
        .iter()
        .enumerate()
        .map(|(c, e)| {
            let words = texts.map(|texts| {
                let pick = |rows: &[usize]| -> Vec<&str> {
                    rows[..word_rows]
                        .iter()
                        .map(|&r| texts[r].as_str())
                        .collect()
                };
                distinctive_words(&pick(&e.highest), &pick(&e.lowest), 8)
            });
            let (highest_words, lowest_words) = words.unzip();
            ComponentEnds {
                component: c + 1,
                highest: end_rows(&e.highest, c),
                lowest: end_rows(&e.lowest, c),
                highest_words,
                lowest_words,
            }
        })
        .collect();
    Ok(PcaReport {
        input: input.display().to_string(),
        model: file.model.clone(),
        n: pca.n,
        dim: pca.dim,
        n_components: k,
        components: pca
            .components
            .data
            .chunks(pca.dim)
            .map(<[f64]>::to_vec)
            .collect(),
        explained_variance: pca.explained_variance,
        explained_variance_ratio: pca.explained_variance_ratio,
        mean: pca.mean,
        labels,
        factors,
        explain,
        word_rows,
        scores,
        row_labels: file.labels.clone(),
        label_names: file.label_names.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinctive_words_ranks_by_smoothed_log_odds() {
        let high = ["Apple apple pie", "the apple orchard, Äpfel"];
        let low = ["the river bank", "a river, the RIVER delta"];
        let (top, bottom) = distinctive_words(&high, &low, 8);
        // Words: high {apple×3, pie, the, orchard, äpfel} = 7; low {the×2, river×3, bank,
        // delta} = 7; "a" is too short. V = 8 (the is shared).
        let ln = |c: f64, t: f64| ((c + 1.0) / (t + 8.0)).ln();
        assert_eq!(top[0].word, "apple");
        assert!((top[0].log_odds - (ln(3.0, 7.0) - ln(0.0, 7.0))).abs() < 1e-12);
        assert_eq!(
            top.iter().map(|w| w.word.as_str()).collect::<Vec<_>>(),
            ["apple", "orchard", "pie", "äpfel"]
        );
        assert_eq!(bottom[0].word, "river");
        assert!((bottom[0].log_odds - (ln(3.0, 7.0) - ln(0.0, 7.0))).abs() < 1e-12);
        // "the" (1 high, 2 low) leans low; "bank" and "delta" lean lower still.
        assert_eq!(
            bottom.iter().map(|w| w.word.as_str()).collect::<Vec<_>>(),
            ["river", "bank", "delta", "the"]
        );
        assert_eq!(distinctive_words(&high, &low, 1).0.len(), 1);
    }
}
