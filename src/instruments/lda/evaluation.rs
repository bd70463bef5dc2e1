//! LDA fitted on the train part and scored on the test part of every split: the moments of each
//! class are computed once over all its rows and once over its test rows per split, and every
//! problem of a split (all classes, each pair) is fitted from them in one backend batch.

use rayon::prelude::*;

use super::fit::{class_term, fit_rules, remove};
use super::{mean_std, Classes, Shrinkage};
use crate::backend::{Backend, Matrix64, Moments, Tensor};
use crate::error::{Error, Result};
use crate::instruments::splits::Split;

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

/// Row `r` of row-major `rows`, `d` wide.
pub(super) fn row(rows: &[f32], d: usize, r: u32) -> &[f32] {
    &rows[r as usize * d..(r as usize + 1) * d]
}
