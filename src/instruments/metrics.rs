//! Classifier metrics reported beside α̂: soft decisions from logits, accuracy, churn and
//! expected calibration error, for an ensemble of `M` models scored on the same `N` points.

use rayon::prelude::*;

use crate::data::scores::Scores;

/// Per-model metrics of an ensemble; the serialised fields are keys of `mscope compare`'s
/// report.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelMetrics {
    /// Fraction of points labelled correctly (with labels).
    pub accuracy: Option<f64>,
    /// Mean over the other models of the fraction of points whose predicted labels differ.
    pub churn_mean: f64,
    /// Fraction of points whose predicted label differs from the ensemble's majority vote
    /// (all `M` models; ties go to the smaller label).
    pub churn_vs_majority: f64,
    /// Expected calibration error over [`ECE_BINS`] equal-width bins of top-label confidence
    /// (with labels).
    pub ece: Option<f64>,
}

/// Bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Accuracy, churn and ECE of every model; `labels` already checked by [`Scores::check_labels`].
pub fn model_metrics(scores: &Scores, labels: Option<&[i64]>) -> Vec<ModelMetrics> {
    let (m, n, k) = (scores.models, scores.points, scores.num_labels());
    // votes[p·k + c]: how many models predict class c at point p.
    // Counted a block of points per task (every model's labels at those points), in parallel.
    let mut votes = vec![0u32; n * k];
    let block = 4096;
    votes
        .par_chunks_mut(block * k)
        .enumerate()
        .for_each(|(b, votes)| {
            for model in 0..m {
                for (p, slot) in votes.chunks_exact_mut(k).enumerate() {
                    slot[scores.label(model, b * block + p)] += 1;
                }
            }
        });
    let majority: Vec<usize> = votes.chunks_exact(k).map(argmax_u32).collect();
    (0..m)
        .into_par_iter()
        .map(|model| {
            let row: Vec<(usize, f64)> = (0..n).map(|p| scores.predict(model, p)).collect();
            // The other models that disagree at p: M minus those voting for this model's label.
            let disagreements: u64 = row
                .iter()
                .enumerate()
                .map(|(p, &(c, _))| u64::from(m as u32 - votes[p * k + c]))
                .sum();
            let churn_mean = if m > 1 {
                disagreements as f64 / (n as f64 * (m - 1) as f64)
            } else {
                0.0
            };
            let off_majority = row.iter().zip(&majority).filter(|(a, b)| a.0 != **b);
            ModelMetrics {
                accuracy: labels.map(|y| {
                    let right = row.iter().zip(y).filter(|(a, &y)| a.0 as i64 == y);
                    right.count() as f64 / n as f64
                }),
                churn_mean,
                churn_vs_majority: off_majority.count() as f64 / n as f64,
                ece: labels.map(|y| ece(&row, y)),
            }
        })
        .collect()
}

fn argmax_u32(counts: &[u32]) -> usize {
    let max = counts.iter().copied().max().unwrap_or(0);
    counts.iter().position(|&c| c == max).unwrap_or(0)
}

/// `Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|` over [`ECE_BINS`] equal-width confidence bins
/// (bin b holds confidences in `(b/15, (b+1)/15]`).
fn ece(predictions: &[(usize, f64)], labels: &[i64]) -> f64 {
    let mut count = [0usize; ECE_BINS];
    let mut correct = [0.0f64; ECE_BINS];
    let mut confidence = [0.0f64; ECE_BINS];
    for (&(c, conf), &y) in predictions.iter().zip(labels) {
        let b = ((conf * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        count[b] += 1;
        correct[b] += f64::from(c as i64 == y);
        confidence[b] += conf;
    }
    let n = predictions.len() as f64;
    (0..ECE_BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| (correct[b] - confidence[b]).abs() / n)
        .sum()
}
