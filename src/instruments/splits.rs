//! Stratified shuffle splits: every split keeps each class's share of the rows in its test part,
//! and the same seed gives the same splits on every machine.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::random::SplitMix64;

/// One train/test split, kept per class (LDA fits per-class statistics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// `train[k]`: the rows of class `k` to fit on, ascending.
    pub train: Vec<Vec<u32>>,
    /// `test[k]`: the rows of class `k` to score, ascending.
    pub test: Vec<Vec<u32>>,
}

impl Split {
    /// The split whose test part is `test_rows` (any order), given every class's rows: how a
    /// split exported from another tool is replayed.
    pub fn from_test_rows(classes: &[Vec<u32>], test_rows: &[u32]) -> Self {
        let mut is_test = vec![
            false;
            classes
                .iter()
                .flatten()
                .map(|&r| r as usize + 1)
                .max()
                .unwrap_or(0)
        ];
        for &r in test_rows {
            if let Some(t) = is_test.get_mut(r as usize) {
                *t = true;
            }
        }
        let (train, test) = classes
            .iter()
            .map(|rows| rows.iter().partition(|&&r| !is_test[r as usize]))
            .unzip();
        Split { train, test }
    }
}

/// Rows of every class each part of a split keeps at least: a class with one training row adds
/// no within-class scatter (all of them at once leave LDA nothing to fit), and a one-row test
/// part makes the class's accuracy 0 or 1.
pub const MIN_PART_ROWS: usize = 2;

/// `splits` stratified splits of the classes' rows (`classes[k]`: the rows of class `k`). Each
/// class puts `round(test_fraction · n_k)` rows into the test part; a fraction that leaves
/// fewer than [`MIN_PART_ROWS`] of some class on either side is an error naming the class, not
/// silently moved.
pub fn stratified(
    classes: &[Vec<u32>],
    splits: usize,
    test_fraction: f64,
    seed: u64,
) -> Result<Vec<Split>> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(Error::input(format!(
            "test fraction {test_fraction}: must lie strictly between 0 and 1"
        )));
    }
    let test_rows = |n: usize| (test_fraction * n as f64).round() as usize;
    for (k, rows) in classes.iter().enumerate() {
        let (n, n_test) = (rows.len(), test_rows(rows.len()));
        if n_test < MIN_PART_ROWS || n - n_test < MIN_PART_ROWS {
            return Err(Error::input(format!(
                "test fraction {test_fraction} splits class {k}'s {n} rows into {n_test} test and \
                 {} training rows; each part needs at least {MIN_PART_ROWS} of every class",
                n - n_test
            )));
        }
    }
    Ok((0..splits)
        .map(|s| {
            let mut rng = SplitMix64::new(seed ^ (s as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            let (train, test) = classes
                .iter()
                .map(|rows| {
                    let n = rows.len();
                    let n_test = test_rows(n);
                    let mut shuffled = rows.clone();
                    // Fisher–Yates, stopped once the test part is drawn.
                    for i in 0..n_test {
                        let j = i + rng.below(n - i);
                        shuffled.swap(i, j);
                    }
                    let mut test = shuffled[..n_test].to_vec();
                    let mut train = shuffled[n_test..].to_vec();
                    test.sort_unstable();
                    train.sort_unstable();
                    (train, test)
                })
                .unzip();
            Split { train, test }
        })
        .collect())
}

/// One stratified split of a dataset into train and test parts; both keep the rows in their
/// original order.
pub fn split_dataset(data: &Dataset, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    let mut classes = vec![Vec::new(); data.num_classes()];
    for (row, &label) in data.y.iter().enumerate() {
        classes[label as usize].push(row as u32);
    }
    let split = stratified(&classes, 1, test_fraction, seed)?.remove(0);
    let rows = |part: &[Vec<u32>]| {
        let mut rows: Vec<usize> = part.iter().flatten().map(|&r| r as usize).collect();
        rows.sort_unstable();
        rows
    };
    Ok((
        data.select(&rows(&split.train)),
        data.select(&rows(&split.test)),
    ))
}
