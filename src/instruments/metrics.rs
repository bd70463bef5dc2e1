//! Classifier metrics reported beside α̂: soft decisions from logits, accuracy, churn and
//! expected calibration error, for an ensemble of `M` models scored on the same `N` points.

use rayon::prelude::*;

pub use crate::backend::cpu::ECE_BINS;
use crate::backend::cpu::{add_calibration, binary_churn, logistic_confidences, MetricSums};
use crate::data::scores::{argmax, logits_prediction, Scores};

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

/// Points of one block of a model's predictions (8 KiB of f64 confidences), made and then
/// tallied while they are in L1.
const PREDICTION_BLOCK: usize = 1024;

/// Accuracy, churn and ECE of every model; `labels` already checked by [`Scores::check_labels`].
pub fn model_metrics(scores: &Scores, labels: Option<&[i64]>) -> Vec<ModelMetrics> {
    let n = scores.points;
    let sums = match scores.classes {
        1 => binary_sums(scores, labels),
        _ => logits_sums(scores, labels),
    };
    let m = scores.models;
    sums.into_iter()
        .map(|sums| ModelMetrics {
            accuracy: labels.map(|_| sums.right as f64 / n as f64),
            churn_mean: if m > 1 {
                sums.disagreements as f64 / (n as f64 * (m - 1) as f64)
            } else {
                0.0
            },
            churn_vs_majority: sums.off_majority as f64 / n as f64,
            ece: labels.map(|_| sums.ece(n)),
        })
        .collect()
}

/// Every binary model's sums: the positive votes at each point counted first (a block of points
/// per task, every model's scores at those points), then one pass per model, a block of points
/// at a time.
fn binary_sums(scores: &Scores, labels: Option<&[i64]>) -> Vec<MetricSums> {
    let (m, n) = (scores.models, scores.points);
    let block = 4096;
    let mut positive_votes = vec![0u32; n];
    positive_votes
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(b, votes)| {
            for model in 0..m {
                let row = &scores.model(model)[b * block..][..votes.len()];
                for (v, &s) in votes.iter_mut().zip(row) {
                    *v += u32::from(s > 0.0);
                }
            }
        });
    let positive_labels: Option<Vec<bool>> = labels.map(|y| y.iter().map(|&l| l == 1).collect());
    sums_by_block(scores, 1, |sums, first, block, confidences, right| {
        let points = first..first + block.len();
        binary_churn(sums, block, &positive_votes[points.clone()], m as u32);
        // The confidences (an `exp` per point) only where ECE needs them.
        if let Some(positive) = &positive_labels {
            logistic_confidences(confidences, block);
            for ((r, &s), &p) in right.iter_mut().zip(block).zip(&positive[points]) {
                *r = (s > 0.0) == p;
            }
            add_calibration(sums, confidences, right);
        }
    })
}

/// Every multi-class model's sums, as [`binary_sums`] with a vote per label.
fn logits_sums(scores: &Scores, labels: Option<&[i64]>) -> Vec<MetricSums> {
    let (m, n, k) = (scores.models, scores.points, scores.classes);
    // votes[p·k + l]: how many models predict label l at point p.
    let mut votes = vec![0u32; n * k];
    let block = 4096;
    votes
        .par_chunks_mut(block * k)
        .enumerate()
        .for_each(|(b, votes)| {
            for model in 0..m {
                let row = &scores.model(model)[b * block * k..];
                for (slot, point) in votes.chunks_exact_mut(k).zip(row.chunks_exact(k)) {
                    slot[argmax(point)] += 1;
                }
            }
        });
    let majority: Vec<usize> = votes.chunks_exact(k).map(argmax_u32).collect();
    sums_by_block(scores, k, |sums, first, block, confidences, right| {
        for ((p, point), (c, r)) in (first..)
            .zip(block.chunks_exact(k))
            .zip(confidences.iter_mut().zip(right.iter_mut()))
        {
            // The confidence (an `exp` per class) only where ECE needs it.
            let l = match labels {
                Some(y) => {
                    let (l, confidence) = logits_prediction(point);
                    (*c, *r) = (confidence, l as i64 == y[p]);
                    l
                }
                None => argmax(point),
            };
            sums.disagreements += u64::from(m as u32 - votes[p * k + l]);
            sums.off_majority += u64::from(l != majority[p]);
        }
        if labels.is_some() {
            add_calibration(sums, confidences, right);
        }
    })
}

/// Every model's sums, its scores a block of [`PREDICTION_BLOCK`] points (of `width` scores
/// each) at a time: `add(sums, first, block, confidences, right)` gets the block's first point
/// and buffers of one value per point of the block.
fn sums_by_block(
    scores: &Scores,
    width: usize,
    add: impl Fn(&mut MetricSums, usize, &[f32], &mut [f64], &mut [bool]) + Sync,
) -> Vec<MetricSums> {
    (0..scores.models)
        .into_par_iter()
        .map(|model| {
            let mut sums = MetricSums::default();
            let mut confidences = [0.0f64; PREDICTION_BLOCK];
            let mut right = [false; PREDICTION_BLOCK];
            for (b, block) in scores
                .model(model)
                .chunks(PREDICTION_BLOCK * width)
                .enumerate()
            {
                let points = block.len() / width;
                add(
                    &mut sums,
                    b * PREDICTION_BLOCK,
                    block,
                    &mut confidences[..points],
                    &mut right[..points],
                );
            }
            sums
        })
        .collect()
}

fn argmax_u32(counts: &[u32]) -> usize {
    let max = counts.iter().copied().max().unwrap_or(0);
    counts.iter().position(|&c| c == max).unwrap_or(0)
}
