//! Classifier metrics reported beside α̂: soft decisions from logits, accuracy, churn and
//! expected calibration error, for an ensemble of `M` models scored on the same `N` points.

use rayon::prelude::*;

use crate::backend::cpu::logistic_confidences;
use crate::data::scores::{argmax, binary_label, logits_prediction, Scores};

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

/// Points whose predictions [`model_metrics`] makes before it tallies them (4 KiB of them).
const PREDICTION_BLOCK: usize = 256;

/// Accuracy, churn and ECE of every model; `labels` already checked by [`Scores::check_labels`].
pub fn model_metrics(scores: &Scores, labels: Option<&[i64]>) -> Vec<ModelMetrics> {
    match scores.classes {
        1 => metrics_of(
            scores,
            labels,
            |block, predicted, confidences| {
                for (l, &s) in predicted.iter_mut().zip(block) {
                    *l = binary_label(s);
                }
                logistic_confidences(confidences, block);
            },
            |point| binary_label(point[0]),
        ),
        _ => metrics_of(
            scores,
            labels,
            |block, predicted, confidences| {
                let points = block.chunks_exact(scores.classes);
                for ((l, c), point) in predicted.iter_mut().zip(confidences).zip(points) {
                    (*l, *c) = logits_prediction(point);
                }
            },
            argmax::<f32>,
        ),
    }
}

/// [`model_metrics`] with the predictions (labels and confidences) of a block of points and the
/// label of one point as functions of their scores, so that each kind of score gets its own
/// inlined loops.
fn metrics_of(
    scores: &Scores,
    labels: Option<&[i64]>,
    predict: impl Fn(&[f32], &mut [usize], &mut [f64]) + Sync,
    label: impl Fn(&[f32]) -> usize + Sync,
) -> Vec<ModelMetrics> {
    let (m, n, k, c) = (
        scores.models,
        scores.points,
        scores.num_labels(),
        scores.classes,
    );
    // votes[p·k + l]: how many models predict label l at point p.
    // Counted a block of points per task (every model's labels at those points), in parallel.
    let mut votes = vec![0u32; n * k];
    let block = 4096;
    votes
        .par_chunks_mut(block * k)
        .enumerate()
        .for_each(|(b, votes)| {
            for model in 0..m {
                let row = &scores.model(model)[b * block * c..];
                for (slot, point) in votes.chunks_exact_mut(k).zip(row.chunks_exact(c)) {
                    slot[label(point)] += 1;
                }
            }
        });
    let majority: Vec<u32> = votes
        .chunks_exact(k)
        .map(|v| argmax_u32(v) as u32)
        .collect();
    (0..m)
        .into_par_iter()
        .map(|model| {
            // One pass per model, nothing kept per point: the other models that disagree at
            // p (M minus those voting for this model's label), the points off the majority,
            // and with labels the right ones and the ECE bins. The confidences (an `exp` per
            // point, most of the cost) only where ECE needs them.
            let mut disagreements = 0u64;
            let mut off_majority = 0usize;
            let mut tally = Tally::default();
            match labels {
                Some(y) => {
                    // The predictions a block at a time (their `exp`s in vector registers),
                    // then their tally.
                    let mut predicted = [0usize; PREDICTION_BLOCK];
                    let mut confidences = [0.0f64; PREDICTION_BLOCK];
                    for (b, block) in scores.model(model).chunks(PREDICTION_BLOCK * c).enumerate() {
                        let points = block.len() / c;
                        let (predicted, confidences) =
                            (&mut predicted[..points], &mut confidences[..points]);
                        predict(block, predicted, confidences);
                        let first = b * PREDICTION_BLOCK;
                        for (p, (&l, &confidence)) in
                            (first..).zip(predicted.iter().zip(&*confidences))
                        {
                            disagreements += u64::from(m as u32 - votes[p * k + l]);
                            off_majority += usize::from(l as u32 != majority[p]);
                            tally.add(p, confidence, l as i64 == y[p]);
                        }
                    }
                }
                None => {
                    for (p, point) in scores.model(model).chunks_exact(c).enumerate() {
                        let l = label(point);
                        disagreements += u64::from(m as u32 - votes[p * k + l]);
                        off_majority += usize::from(l as u32 != majority[p]);
                    }
                }
            }
            let churn_mean = if m > 1 {
                disagreements as f64 / (n as f64 * (m - 1) as f64)
            } else {
                0.0
            };
            ModelMetrics {
                accuracy: labels.map(|_| tally.right() as f64 / n as f64),
                churn_mean,
                churn_vs_majority: off_majority as f64 / n as f64,
                ece: labels.map(|_| tally.ece(n)),
            }
        })
        .collect()
}

fn argmax_u32(counts: &[u32]) -> usize {
    let max = counts.iter().copied().max().unwrap_or(0);
    counts.iter().position(|&c| c == max).unwrap_or(0)
}

/// One model's predictions in [`ECE_BINS`] equal-width bins of top-label confidence (bin b
/// holds confidences in `(b/15, (b+1)/15]`), added point by point into [`TALLY_LANES`] partial
/// tallies, point `p` into lane `p mod 4`: consecutive points in one bin would otherwise wait on
/// each other's sums. The lanes are combined in a fixed order, so the result does not depend on
/// the threads or the CPU.
#[derive(Default)]
struct Tally {
    lanes: [BinSums; TALLY_LANES],
}

const TALLY_LANES: usize = 4;

#[derive(Default, Clone, Copy)]
struct BinSums {
    count: [usize; ECE_BINS],
    right: [usize; ECE_BINS],
    confidence: [f64; ECE_BINS],
}

impl Tally {
    fn add(&mut self, point: usize, confidence: f64, right: bool) {
        let lane = &mut self.lanes[point % TALLY_LANES];
        let b = ece_bin(confidence);
        lane.count[b] += 1;
        lane.right[b] += usize::from(right);
        lane.confidence[b] += confidence;
    }

    fn right(&self) -> usize {
        self.lanes.iter().flat_map(|l| l.right).sum()
    }

    /// `Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|` over the bins, `n` points in all.
    fn ece(&self, n: usize) -> f64 {
        let [a, b, c, d] = &self.lanes;
        (0..ECE_BINS)
            .map(|i| {
                let count = a.count[i] + b.count[i] + c.count[i] + d.count[i];
                let right = a.right[i] + b.right[i] + c.right[i] + d.right[i];
                let confidence =
                    (a.confidence[i] + b.confidence[i]) + (c.confidence[i] + d.confidence[i]);
                (count, right, confidence)
            })
            .filter(|&(count, _, _)| count > 0)
            .map(|(_, right, confidence)| (right as f64 - confidence).abs() / n as f64)
            .sum()
    }
}

/// The bin of a confidence, `⌈15·confidence⌉ − 1` kept in `0..15`. The ceiling is taken as a
/// truncation plus one where it dropped a fraction: on the baseline x86-64 target `f64::ceil`
/// is a libm call, one per point.
fn ece_bin(confidence: f64) -> usize {
    let scaled = confidence * ECE_BINS as f64;
    let truncated = (scaled as usize).min(ECE_BINS);
    let ceiling = truncated + usize::from((truncated as f64) < scaled);
    ceiling.clamp(1, ECE_BINS) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The truncated ceiling against `f64::ceil` at bin edges, their neighbours and odd values.
    #[test]
    fn ece_bin_is_the_ceiling_bin() {
        let by_ceil = |c: f64| ((c * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        let mut confidences = vec![0.0, -0.0, 1e-300, 0.5, 1.0, 2.0, f64::INFINITY, f64::NAN];
        for b in 0..=ECE_BINS {
            let edge = b as f64 / ECE_BINS as f64;
            confidences.extend([edge, edge.next_down(), edge.next_up()]);
        }
        confidences.extend((0..10_000).map(|i| i as f64 / 9_999.0));
        for c in confidences {
            assert_eq!(ece_bin(c), by_ceil(c), "confidence {c:e}");
        }
    }
}
