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
//!
//! `evaluation` runs the splits, `fit` turns moments into rules, `projection` gives the
//! discriminant directions for plots; [`report`] gathers what `mscope lda` reports; [`detector`]
//! keeps the rule fitted on every row for new rows.

pub mod detector;
mod evaluation;
mod fit;
mod projection;

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;

use super::splits;
use crate::backend::{self, BackendKind, Matrix64, OpFamily};
use crate::error::{Error, Result};
use crate::io::embeddings::EmbeddingsFile;

pub use evaluation::{evaluate, Evaluation, PairwiseTable};
pub use projection::Projection;

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

/// Mean and standard deviation (population, numpy's default) of a sample.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// What `mscope lda` is asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LdaOptions {
    pub splits: usize,
    /// Share of each label's rows in the test part of a split.
    pub test_fraction: f64,
    pub seed: u64,
    pub shrinkage: Shrinkage,
    /// Also every pair of labels.
    pub pairwise: bool,
}

/// What `mscope lda` reports; the serialised fields are the JSON report's keys. The skipped
/// fields are what the Markdown summary and the plots need besides.
#[derive(Clone, Debug, Serialize)]
pub struct LdaReport {
    pub input: String,
    pub model: String,
    /// The label column whose levels are the classes, with several per row (`--factor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<String>,
    /// Labelled rows.
    pub n: usize,
    pub dim: usize,
    /// The labels that have rows, in the order of `confusion`.
    pub labels: Vec<String>,
    pub splits: usize,
    pub test_fraction: f64,
    pub seed: u64,
    pub shrinkage: String,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    pub accuracies: Vec<f64>,
    /// `confusion[true][predicted]`, summed over the splits.
    pub confusion: Vec<Vec<u64>>,
    /// Per label, from the confusion over all splits: the accuracy of the one-vs-rest decision
    /// "is it this label?" and the share of its rows predicted as it (recall).
    pub per_class: Vec<ClassAccuracy>,
    pub explained_variance_ratio: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairwise: Option<PairwiseReport>,
    /// Share of the labelled rows that carry the most frequent label.
    #[serde(skip)]
    pub majority: f64,
    /// `[rows, m]` row-major: every row of the file along the `m` discriminant directions.
    #[serde(skip)]
    pub coords: Vec<f64>,
    #[serde(skip)]
    pub directions: usize,
    /// The embeddings file's label index of each row (-1: none) and the label names.
    #[serde(skip)]
    pub row_labels: Vec<i64>,
    #[serde(skip)]
    pub label_names: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassAccuracy {
    pub label: String,
    pub one_vs_rest_accuracy: f64,
    pub recall: f64,
}

/// `mscope lda --factor`'s JSON report: one [`LdaReport`] per factor, in the order given.
#[derive(Serialize)]
pub struct FactorReports<'a> {
    pub factors: &'a [LdaReport],
}

/// One-vs-rest accuracy and recall of every label from a `[true][predicted]` confusion.
pub fn per_class(labels: &[String], confusion: &[Vec<u64>]) -> Vec<ClassAccuracy> {
    let total: u64 = confusion.iter().flatten().sum();
    labels
        .iter()
        .enumerate()
        .map(|(c, label)| {
            let row: u64 = confusion[c].iter().sum();
            let column: u64 = confusion.iter().map(|r| r[c]).sum();
            let hit = confusion[c][c];
            // Wrong one way or the other: rows of c called something else, rows called c.
            let wrong = (row - hit) + (column - hit);
            ClassAccuracy {
                label: label.clone(),
                one_vs_rest_accuracy: 1.0 - wrong as f64 / total.max(1) as f64,
                recall: hit as f64 / row.max(1) as f64,
            }
        })
        .collect()
}

/// The pairwise table as reported: `K×K` tables, null on the diagonal.
#[derive(Clone, Debug, Serialize)]
pub struct PairwiseReport {
    pub labels: Vec<String>,
    pub accuracy_mean: Vec<Vec<f64>>,
    pub accuracy_std: Vec<Vec<f64>>,
}

/// LDA of the labelled rows of `file` (read from `input`) over `options.splits` stratified
/// splits, on the backend `backend` opens once the labels and splits are known to be usable.
pub fn report(
    backend: BackendKind,
    file: &EmbeddingsFile,
    input: &Path,
    options: &LdaOptions,
) -> Result<LdaReport> {
    let in_file = |e: Error| Error::input(format!("{}: {e}", input.display()));
    let classes = Classes::from_labels(&file.labels, &file.label_names).map_err(in_file)?;
    let splits = splits::stratified(
        &classes.rows,
        options.splits,
        options.test_fraction,
        options.seed,
    )
    .map_err(|e| {
        let names = classes.names.join(", ");
        Error::input(format!("--test-fraction: {e} (classes 0.. are {names})"))
    })?;
    let backend = backend::open(backend, OpFamily::Stats)?;
    let x = backend.upload(&[file.rows(), file.dim], &file.embeddings)?;
    let rows = &file.embeddings;
    let eval = evaluate(
        backend.as_ref(),
        &x,
        rows,
        &classes,
        &splits,
        options.shrinkage,
        options.pairwise,
    )
    .map_err(in_file)?;
    let projection = Projection::fit(backend.as_ref(), &x, rows, &classes, options.shrinkage)
        .map_err(in_file)?;
    let (accuracy_mean, accuracy_std) = mean_std(&eval.accuracies);
    let n: usize = classes.rows.iter().map(Vec::len).sum();
    let table = |m: &Matrix64| m.data.chunks(m.cols).map(<[f64]>::to_vec).collect();
    Ok(LdaReport {
        input: input.display().to_string(),
        model: file.model.clone(),
        factor: None,
        n,
        dim: file.dim,
        splits: options.splits,
        test_fraction: options.test_fraction,
        seed: options.seed,
        shrinkage: options.shrinkage.to_string(),
        accuracy_mean,
        accuracy_std,
        accuracies: eval.accuracies,
        per_class: per_class(&classes.names, &eval.confusion),
        confusion: eval.confusion,
        explained_variance_ratio: projection.explained_variance_ratio.clone(),
        pairwise: eval.pairwise.map(|p| PairwiseReport {
            labels: classes.names.clone(),
            accuracy_mean: table(&p.accuracy_mean),
            accuracy_std: table(&p.accuracy_std),
        }),
        majority: classes.rows.iter().map(Vec::len).max().unwrap_or(0) as f64 / n as f64,
        coords: projection.transform(rows),
        directions: projection.directions.cols,
        row_labels: file.labels.clone(),
        label_names: file.label_names.clone(),
        labels: classes.names,
    })
}
