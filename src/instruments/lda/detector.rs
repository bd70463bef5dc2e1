//! A fitted LDA rule kept for new rows (`mscope lda --save`, `mscope classify`): the classifier
//! scikit-learn's `LinearDiscriminantAnalysis` fitted on every labelled row gives, as one linear
//! score per class, `score_k(x) = x·w_k + b_k`, with its probabilities (the softmax of the scores,
//! scikit-learn's `predict_proba`).
//!
//! File: safetensors with `weights` F64 `[dim, classes]`, `bias` F64 `[classes]`, `means` F64
//! `[classes, dim]`, `counts` I64 `[classes]`, and metadata `format` = `mscope-lda-detector`,
//! `labels` (JSON list), `model`, `dim`, `shrinkage`.

use std::collections::BTreeMap;
use std::path::Path;

use super::evaluation::row;
use super::fit::{class_term, fit_rules, linear_scores};
use super::{Classes, Shrinkage};
use crate::backend::{self, BackendKind, Matrix64, OpFamily};
use crate::error::{Error, Result};
use crate::io::embeddings::EmbeddingsFile;
use crate::io::tensor_file::{self, TensorFile, TensorOut};

const FORMAT: &str = "mscope-lda-detector";

#[derive(Clone, Debug, PartialEq)]
pub struct Detector {
    pub labels: Vec<String>,
    /// The embedding model the rule was fitted on.
    pub model: String,
    pub dim: usize,
    pub shrinkage: String,
    /// `[dim, classes]` row-major.
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
    /// `[classes, dim]` class means, and the rows each class was fitted on.
    pub means: Vec<f64>,
    pub counts: Vec<i64>,
}

impl Detector {
    /// Fits the rule on every labelled row of `file`.
    pub fn fit(backend: BackendKind, file: &EmbeddingsFile, shrinkage: Shrinkage) -> Result<Self> {
        let classes = Classes::from_labels(&file.labels, &file.label_names)?;
        let backend = backend::open(backend, OpFamily::Stats)?;
        let x = backend.upload(&[file.rows(), file.dim], &file.embeddings)?;
        let groups: Vec<&[u32]> = classes.rows.iter().map(Vec::as_slice).collect();
        let moments = backend.scatter(&x, &groups)?;
        let terms: Vec<Matrix64> = moments
            .iter()
            .zip(&classes.rows)
            .map(|(m, rows)| class_term(m, rows, &file.embeddings, file.dim, shrinkage))
            .collect();
        let all: Vec<usize> = (0..classes.len()).collect();
        let rule = fit_rules(backend.as_ref(), &moments, &terms, &[all], shrinkage)?
            .pop()
            .expect("one problem, one rule");
        Ok(Detector {
            labels: classes.names,
            model: file.model.clone(),
            dim: file.dim,
            shrinkage: shrinkage.to_string(),
            weights: rule.weights.data,
            bias: rule.bias,
            means: moments.iter().flat_map(|m| m.mean.clone()).collect(),
            counts: moments.iter().map(|m| m.count as i64).collect(),
        })
    }

    /// Each class's probability for each row of `rows` (`[rows, dim]`), `[rows, classes]`.
    pub fn probabilities(&self, rows: &[f32]) -> Vec<f64> {
        let k = self.labels.len();
        let n = rows.len() / self.dim;
        let mut out = Vec::with_capacity(n * k);
        for r in 0..n {
            let scores = linear_scores(&self.weights, &self.bias, row(rows, self.dim, r as u32));
            let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
            let total: f64 = exp.iter().sum();
            out.extend(exp.iter().map(|e| e / total));
        }
        out
    }

    /// Refuses embeddings of another dimension or, when both name one, another model.
    pub fn check_input(&self, file: &EmbeddingsFile, input: &Path) -> Result<()> {
        if file.dim != self.dim {
            return Err(Error::input(format!(
                "{}: {}-dimensional embeddings, but the detector was fitted on {} dims ({})",
                input.display(),
                file.dim,
                self.dim,
                self.model
            )));
        }
        if !self.model.is_empty() && !file.model.is_empty() && file.model != self.model {
            return Err(Error::input(format!(
                "{}: embeddings of {}, but the detector was fitted on embeddings of {}",
                input.display(),
                file.model,
                self.model
            )));
        }
        Ok(())
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let k = self.labels.len();
        let metadata = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            (
                "labels".to_string(),
                serde_json::to_string(&self.labels).expect("strings serialise"),
            ),
            ("model".to_string(), self.model.clone()),
            ("dim".to_string(), self.dim.to_string()),
            ("shrinkage".to_string(), self.shrinkage.clone()),
        ]);
        let tensors = vec![
            TensorOut::f64("weights", vec![self.dim, k], &self.weights),
            TensorOut::f64("bias", vec![k], &self.bias),
            TensorOut::f64("means", vec![k, self.dim], &self.means),
            TensorOut::i64("counts", vec![k], &self.counts),
        ];
        tensor_file::write(path, tensors, metadata)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let bad = |m: String| Error::input(format!("{}: {m}", path.display()));
        if file.metadata("format") != Some(FORMAT) {
            return Err(bad(format!(
                "not an LDA detector (metadata `format` is not {FORMAT:?}; write one with `mscope \
                 lda --save`)"
            )));
        }
        let labels: Vec<String> = serde_json::from_str(file.metadata("labels").unwrap_or(""))
            .map_err(|e| bad(format!("metadata `labels`: {e}")))?;
        let (ws, weights) = file.f64("weights")?;
        let (_, bias) = file.f64("bias")?;
        let (_, means) = file.f64("means")?;
        let (_, counts) = file.i64("counts")?;
        let k = labels.len();
        let dim = ws.first().copied().unwrap_or(0);
        if ws != [dim, k] || bias.len() != k || means.len() != k * dim || counts.len() != k {
            return Err(bad(format!(
                "tensor shapes disagree with {k} labels (weights {ws:?})"
            )));
        }
        Ok(Detector {
            labels,
            model: file.metadata("model").unwrap_or("").to_string(),
            dim,
            shrinkage: file.metadata("shrinkage").unwrap_or("").to_string(),
            weights,
            bias,
            means,
            counts,
        })
    }
}
