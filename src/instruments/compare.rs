//! Every model of an ensemble against the pooled others (`mscope compare`): the trimmed
//! comparison (α̂, KS, trimmed W2) beside accuracy, churn and ECE.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::{self, BackendKind, OpFamily, TrimReference, TrimSpec};
use crate::data::scores::Scores;
use crate::error::{Error, Result};
use crate::instruments::metrics::{model_metrics, ModelMetrics};

/// What `mscope compare` reports; the serialised fields are the JSON report's keys.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// The scores file, or the synthetic ensemble's description.
    pub source: String,
    pub n_models: usize,
    pub n_points: usize,
    pub classes: usize,
    pub level: f64,
    /// The KS threshold at `level` (the same for every model).
    pub threshold: f64,
    /// The trimming level of the W2 costs, when one was given (else each model's α̂).
    pub w2_alpha: Option<f64>,
    /// The grid the W2 costs were computed on.
    pub w2_grid: &'static str,
    pub backend: String,
    pub models: Vec<ModelReport>,
    /// Whether accuracy and ECE are known (the labels were given).
    #[serde(skip)]
    pub labelled: bool,
    /// The whole comparison and its trimmed search alone.
    #[serde(skip)]
    pub seconds: f64,
    #[serde(skip)]
    pub trim_seconds: f64,
}

/// One model against the pooled others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelReport {
    pub index: usize,
    pub alpha_hat: f64,
    pub ks: f64,
    pub trimmed_w2: f64,
    pub trimmed_w2_exact: bool,
    #[serde(flatten)]
    pub metrics: ModelMetrics,
}

/// Compares the models `models` of `scores` (from `source`; `labels` already checked against
/// them) with the pooled others on the backend `backend` opens, at the trimmed comparison
/// `spec`. The report lists those models only (all of them for `0..scores.models`); a model's
/// row is the same whichever range it is computed in, so shards of models make one report.
pub fn report(
    backend: BackendKind,
    scores: &Scores,
    labels: Option<&[i64]>,
    source: String,
    spec: &TrimSpec,
    models: std::ops::Range<usize>,
) -> Result<CompareReport> {
    if scores.models < 2 {
        return Err(Error::input(format!(
            "{source}: {} model(s); leave-one-out comparison needs at least 2",
            scores.models
        )));
    }
    let backend = backend::open(backend, OpFamily::Trim)?;
    let start = Instant::now();
    let decisions = scores.soft_decisions(labels);
    let rows: Vec<&[f32]> = decisions.chunks_exact(scores.points).collect();
    let part = TrimReference::LeaveOneOutPart {
        start: models.start,
        end: models.end,
    };
    let trims = backend.trim_search(&rows, part, spec)?;
    let trim_seconds = start.elapsed().as_secs_f64();
    crate::phases::mark("trimmed search");
    let metrics = model_metrics(scores, labels);
    crate::phases::mark("accuracy, churn, ECE");
    let metrics = metrics.into_iter().skip(models.start).take(models.len());
    let seconds = start.elapsed().as_secs_f64();
    Ok(CompareReport {
        source,
        n_models: scores.models,
        n_points: scores.points,
        classes: scores.classes,
        level: spec.level,
        // Every model has `points` points against `(models − 1)·points` pooled ones.
        threshold: crate::backend::trim::threshold(
            spec.level,
            scores.points,
            (scores.models - 1) * scores.points,
        ),
        w2_alpha: spec.w2_alpha,
        w2_grid: w2_grid_name(
            spec.w2_grid
                .is_exact(scores.models, scores.models * scores.points),
        ),
        backend: backend.name().to_string(),
        models: trims
            .iter()
            .zip(metrics)
            .zip(models)
            .map(|((t, metrics), index)| ModelReport {
                index,
                alpha_hat: t.alpha_hat,
                ks: t.ks,
                trimmed_w2: t.trimmed_w2,
                trimmed_w2_exact: t.w2_exact,
                metrics,
            })
            .collect(),
        labelled: labels.is_some(),
        seconds,
        trim_seconds,
    })
}

/// The grid the trimmed W2 costs were computed on (the same for every model of a run).
pub fn w2_grid_name(exact: bool) -> &'static str {
    if exact {
        "merged"
    } else {
        "candidate (approximate)"
    }
}
