//! Scores of an ensemble of classifiers on shared points (logits or binary soft decisions), as
//! `mscope train` writes them and `alpha`, `compare` and the metrics read them.

use std::borrow::Cow;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::samples::{read_array, to_f32};
use crate::random::SplitMix64;

/// An ensemble's scores, row-major `[models, points, classes]`. `classes == 1` means binary soft
/// decisions: the logit (log-odds) of class 1, predicting class 1 when positive.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    pub values: Vec<f32>,
    pub models: usize,
    pub points: usize,
    pub classes: usize,
}

impl Scores {
    /// Number of labels a prediction can take: 2 for binary scores.
    pub fn num_labels(&self) -> usize {
        self.classes.max(2)
    }

    /// Checks every label indexes a class; `what` names the labels' source.
    pub fn check_labels(&self, labels: &[i64], what: &str) -> Result<()> {
        if labels.len() != self.points {
            return Err(Error::input(format!(
                "{what}: {} labels for {} scored points",
                labels.len(),
                self.points
            )));
        }
        let k = self.num_labels() as i64;
        match labels.iter().position(|&y| !(0..k).contains(&y)) {
            Some(i) => Err(Error::input(format!(
                "{what}: label {} at row {} is outside 0..{k}",
                labels[i],
                i + 1
            ))),
            None => Ok(()),
        }
    }

    /// The soft decision of every model at every point, `[models, points]`: the binary score
    /// itself, or for logits the margin of the true class (with `labels`) or else of the top
    /// class over the best other class.
    pub fn soft_decisions(&self, labels: Option<&[i64]>) -> Cow<'_, [f32]> {
        if self.classes == 1 {
            return Cow::Borrowed(&self.values);
        }
        let margin = |row: &[f32], p: usize| {
            let target = labels.map_or_else(|| argmax(row), |y| y[p] as usize);
            let other = row
                .iter()
                .enumerate()
                .filter(|&(c, _)| c != target)
                .map(|(_, &v)| v)
                .fold(f32::NEG_INFINITY, f32::max);
            row[target] - other
        };
        let rows = self.values.chunks_exact(self.classes);
        Cow::Owned(
            rows.enumerate()
                .map(|(i, row)| margin(row, i % self.points))
                .collect(),
        )
    }

    /// Model `k`'s scores: `points × classes` values, point after point.
    pub fn model(&self, k: usize) -> &[f32] {
        let len = self.points * self.classes;
        &self.values[k * len..(k + 1) * len]
    }
}

/// Predicted label of a binary score (class 1 when positive).
pub fn binary_label(score: f32) -> usize {
    usize::from(score > 0.0)
}

/// Predicted label of one point's logits and its confidence (top-label softmax probability).
pub fn logits_prediction(logits: &[f32]) -> (usize, f64) {
    let top = argmax(logits);
    let max = logits[top] as f64;
    let z: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    (top, 1.0 / z)
}

/// First index of the largest value; NaN is skipped (0 when nothing else is left).
pub fn argmax<T: PartialOrd + Copy>(row: &[T]) -> usize {
    let mut best: Option<(usize, T)> = None;
    for (c, &v) in row.iter().enumerate() {
        let better = best.map_or(v.partial_cmp(&v).is_some(), |(_, b)| v > b);
        if better {
            best = Some((c, v));
        }
    }
    best.map_or(0, |(c, _)| c)
}

/// An ensemble's scores: `scores` `[M, N]` (binary soft decisions) or `[M, N, C]` (logits).
pub fn read_scores(path: &Path) -> Result<Scores> {
    let array = read_array(path, "scores")?;
    let (models, points, classes) = match array.shape[..] {
        [m, n] => (m, n, 1),
        [m, n, c] if c >= 2 => (m, n, c),
        _ => {
            return Err(Error::input(format!(
                "{}: scores have shape {:?}, expected [models, points] or [models, points, classes ≥ 2]",
                path.display(),
                array.shape
            )))
        }
    };
    if models == 0 || points == 0 {
        return Err(Error::input(format!(
            "{}: scores have shape {:?}: no models or no points",
            path.display(),
            array.shape
        )));
    }
    Ok(Scores {
        values: to_f32(path, &array.values)?,
        models,
        points,
        classes,
    })
}

/// An error naming `--synthetic MODELSxPOINTS` when the ensemble does not fit in memory: its f32
/// scores and the sorted copy the comparison makes of them, 8 bytes per score at least.
pub fn check_synthetic_size(models: usize, points: usize) -> Result<()> {
    crate::limits::check_memory(
        &format!("--synthetic {models}x{points}"),
        models as f64 * points as f64 * 8.0,
    )
}

/// A seeded synthetic ensemble for benches and `compare --synthetic`: `models` binary classifiers scored on `points` points with labels 0/1.
/// Each point has a true logit `±(0.5 + |z|)` (sign from its label); every model adds its own
/// N(0, 0.8²) noise, except the last, which is overconfident (its scores scaled by 1.6), so
/// `compare` should single it out.
///
/// One seeded sequence: the labels, then the truths, then every model's noise in order; blocks
/// of the noise are drawn in parallel, each from its own place in the sequence.
pub fn synthetic_ensemble(models: usize, points: usize, seed: u64) -> (Scores, Vec<i64>) {
    let mut rng = SplitMix64::new(seed);
    let labels: Vec<i64> = (0..points).map(|_| (rng.next_u64() >> 63) as i64).collect();
    let truth: Vec<f64> = labels
        .iter()
        .map(|&y| (2 * y - 1) as f64 * (0.5 + rng.normal().abs()))
        .collect();
    let scale = |k: usize| {
        if k + 1 == models && models > 1 {
            1.6
        } else {
            1.0
        }
    };
    // Scores in model-major order; score `i` draws the sequence's normal `i` after the truths.
    let block = 1 << 16;
    let mut values = vec![0.0f32; models * points];
    values
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(b, out)| {
            let first = b * block;
            let mut rng = rng.ahead(2 * first as u64);
            let (mut k, mut p) = (first / points, first % points);
            for v in out {
                *v = (scale(k) * (truth[p] + 0.8 * rng.normal())) as f32;
                p += 1;
                if p == points {
                    (k, p) = (k + 1, 0);
                }
            }
        });
    let scores = Scores {
        values,
        models,
        points,
        classes: 1,
    };
    (scores, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel blocks against the sequence drawn in order, at sizes that cut models across
    /// blocks and blocks across models.
    #[test]
    fn synthetic_ensemble_is_the_sequence_drawn_in_order() {
        for (models, points) in [(2, 1), (3, 70_001), (5, 1 << 16), (40, 3_000)] {
            let (scores, labels) = synthetic_ensemble(models, points, 7);
            let mut rng = SplitMix64::new(7);
            let want_labels: Vec<i64> =
                (0..points).map(|_| (rng.next_u64() >> 63) as i64).collect();
            let truth: Vec<f64> = want_labels
                .iter()
                .map(|&y| (2 * y - 1) as f64 * (0.5 + rng.normal().abs()))
                .collect();
            let mut want = Vec::new();
            for k in 0..models {
                let scale = if k + 1 == models { 1.6 } else { 1.0 };
                want.extend(
                    truth
                        .iter()
                        .map(|&t| (scale * (t + 0.8 * rng.normal())) as f32),
                );
            }
            assert_eq!(labels, want_labels, "{models}x{points}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&scores.values) == bits(&want), "{models}x{points}");
        }
    }
}
