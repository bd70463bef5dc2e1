//! `mscope compare`: every model of an ensemble against the pooled others — α̂, KS, trimmed W2 —
//! beside accuracy, churn and ECE; a table sorted by α̂ singles out atypical models.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::backend::trim;
use crate::backend::{self, BackendKind, OpFamily, TrimReference, TrimResult, TrimSpec, W2Grid};
use crate::data::scores::Scores;
use crate::data::scores::{read_scores, synthetic_ensemble};
use crate::error::{Error, Result};
use crate::instruments::metrics::{model_metrics, ModelMetrics};
use crate::io::samples::read_labels;
use crate::report::{self, plot};

#[derive(Args)]
pub struct CompareArgs {
    /// Scores: safetensors `scores` F32 [models, points] (binary soft decisions) or
    /// [models, points, classes] (logits); .npy of the same shapes.
    #[arg(
        long,
        required_unless_present = "synthetic",
        conflicts_with = "synthetic"
    )]
    scores: Option<PathBuf>,
    /// True labels, one integer per point (text, .npy or safetensors).
    #[arg(long, requires = "scores")]
    labels: Option<PathBuf>,
    /// Instead of files, the seeded synthetic ensemble of `data::scores::synthetic_ensemble`
    /// (MODELSxPOINTS, e.g. 20x10000): binary classifiers, the last one overconfident.
    #[arg(long, value_name = "MODELSxPOINTS")]
    synthetic: Option<Shape>,
    /// Test level in (0, 1).
    #[arg(long, default_value_t = 0.05)]
    level: f64,
    /// Trimming level of the trimmed W2 cost [default: each model's α̂].
    #[arg(long)]
    w2_alpha: Option<f64>,
    /// Grid of the trimmed W2 cost: the exact merged grid (O(M²·N) for the ensemble), the
    /// candidate's grid (O(M·N), approximate), or auto (exact up to M²·N = 2·10⁸).
    #[arg(long, value_enum, default_value_t = W2Grid::Auto)]
    w2_grid: W2Grid,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Plot α̂ against accuracy (or churn without labels) to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Rows of the Markdown table (the models with the largest α̂).
    #[arg(long, default_value_t = 20)]
    top: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// `MODELSxPOINTS`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    models: usize,
    points: usize,
}

impl FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parsed = s
            .split_once('x')
            .and_then(|(m, n)| Some((m.parse().ok()?, n.parse().ok()?)));
        match parsed {
            Some((models, points)) if models >= 2 && points >= 1 => Ok(Shape { models, points }),
            _ => Err(format!(
                "`{s}`: expected MODELSxPOINTS with at least 2 models, e.g. 20x10000"
            )),
        }
    }
}

pub fn run(args: CompareArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    trim::check_level(args.level)?;
    let (scores, labels, source) = match (&args.scores, args.synthetic) {
        (Some(path), _) => {
            let scores = read_scores(path)?;
            let labels = match &args.labels {
                Some(p) => {
                    let y = read_labels(p)?;
                    scores.check_labels(&y, &p.display().to_string())?;
                    Some(y)
                }
                None => None,
            };
            (scores, labels, path.display().to_string())
        }
        (None, Some(shape)) => {
            let (scores, labels) = synthetic_ensemble(shape.models, shape.points, 0);
            let source = format!("synthetic ensemble {}x{}", shape.models, shape.points);
            (scores, Some(labels), source)
        }
        (None, None) => return Err(Error::input("give --scores FILE or --synthetic MxN")),
    };
    if scores.models < 2 {
        return Err(Error::input(format!(
            "{source}: {} model(s); leave-one-out comparison needs at least 2",
            scores.models
        )));
    }
    let backend = backend::open(args.backend, OpFamily::Trim)?;
    let spec = TrimSpec {
        level: args.level,
        w2_alpha: args.w2_alpha,
        w2_grid: args.w2_grid,
    };

    let start = Instant::now();
    let decisions = scores.soft_decisions(labels.as_deref());
    let rows: Vec<&[f32]> = decisions.chunks_exact(scores.points).collect();
    let trims = backend.trim_search(&rows, TrimReference::LeaveOneOut, &spec)?;
    let trim_seconds = start.elapsed().as_secs_f64();
    let metrics = model_metrics(&scores, labels.as_deref());
    let seconds = start.elapsed().as_secs_f64();

    let models: Vec<serde_json::Value> = trims
        .iter()
        .zip(&metrics)
        .enumerate()
        .map(|(index, (t, m))| {
            json!({
                "index": index,
                "alpha_hat": t.alpha_hat,
                "ks": t.ks,
                "trimmed_w2": t.trimmed_w2,
                "trimmed_w2_exact": t.w2_exact,
                "accuracy": m.accuracy,
                "churn_mean": m.churn_mean,
                "churn_vs_majority": m.churn_vs_majority,
                "ece": m.ece,
            })
        })
        .collect();
    if let Some(path) = &args.out {
        let report = json!({
            "source": source,
            "n_models": scores.models,
            "n_points": scores.points,
            "classes": scores.classes,
            "level": args.level,
            "threshold": trims[0].threshold,
            "w2_alpha": args.w2_alpha,
            "w2_grid": w2_grid_name(&trims),
            "backend": backend.name(),
            "models": models,
        });
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        draw(path, &trims, &metrics, labels.is_some())?;
    }
    print_summary(
        &args,
        &source,
        &scores,
        &trims,
        &metrics,
        seconds,
        trim_seconds,
    );
    Ok(())
}

fn draw(
    path: &std::path::Path,
    trims: &[TrimResult],
    metrics: &[ModelMetrics],
    with_labels: bool,
) -> Result<()> {
    let x = |m: &ModelMetrics| {
        if with_labels {
            m.accuracy.unwrap_or(f64::NAN)
        } else {
            m.churn_mean
        }
    };
    let (mut typical, mut atypical) = (Vec::new(), Vec::new());
    for (t, m) in trims.iter().zip(metrics) {
        let group = if t.alpha_hat > 0.0 {
            &mut atypical
        } else {
            &mut typical
        };
        group.push((x(m), t.alpha_hat));
    }
    plot::scatter(
        path,
        "Trimmed comparison of each model with the pooled others",
        if with_labels {
            "accuracy"
        } else {
            "mean churn"
        },
        "α-hat",
        &[
            plot::Series {
                label: "α-hat = 0",
                points: &typical,
            },
            plot::Series {
                label: "α-hat > 0",
                points: &atypical,
            },
        ],
    )
}

fn print_summary(
    args: &CompareArgs,
    source: &str,
    scores: &Scores,
    trims: &[TrimResult],
    metrics: &[ModelMetrics],
    seconds: f64,
    trim_seconds: f64,
) {
    let atypical = trims.iter().filter(|t| t.alpha_hat > 0.0).count();
    println!("## compare: {source}\n");
    println!(
        "{} models × {} points{}; level {}, KS threshold {:.6}; {atypical} model(s) with α̂ > 0. \
         Trimmed W2 on the {} grid. {:.2} s ({:.2} s trimmed search).\n",
        scores.models,
        scores.points,
        if scores.classes > 1 {
            format!(" × {} classes", scores.classes)
        } else {
            String::new()
        },
        args.level,
        trims[0].threshold,
        w2_grid_name(trims),
        seconds,
        trim_seconds,
    );
    let mut order: Vec<usize> = (0..trims.len()).collect();
    order.sort_by(|&a, &b| trims[b].alpha_hat.total_cmp(&trims[a].alpha_hat));
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    println!("| model | α̂ | KS | trimmed W2 | accuracy | churn (mean) | churn vs majority | ECE |");
    println!("|---|---|---|---|---|---|---|---|");
    for &i in order.iter().take(args.top) {
        let (t, m) = (&trims[i], &metrics[i]);
        println!(
            "| {i} | {:.4} | {:.4} | {:.4} | {} | {:.4} | {:.4} | {} |",
            t.alpha_hat,
            t.ks,
            t.trimmed_w2,
            cell(m.accuracy),
            m.churn_mean,
            m.churn_vs_majority,
            cell(m.ece)
        );
    }
    if trims.len() > args.top {
        println!(
            "\n({} more models; `--out` writes them all)",
            trims.len() - args.top
        );
    }
}

/// The grid the trimmed W2 costs were computed on (the same for every model of a run).
fn w2_grid_name(trims: &[TrimResult]) -> &'static str {
    if trims[0].w2_exact {
        "merged"
    } else {
        "candidate (approximate)"
    }
}
