//! `mscope compare`: every model of an ensemble against the pooled others — α̂, KS, trimmed W2 —
//! beside accuracy, churn and ECE; a table sorted by α̂ singles out atypical models.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;

use crate::backend::trim;
use crate::backend::{BackendKind, TrimSpec, W2Grid};
use crate::data::scores::{check_synthetic_size, read_scores, synthetic_ensemble};
use crate::error::{Error, Result};
use crate::instruments::compare;
use crate::io::check_outputs;
use crate::io::samples::read_labels;
use crate::report;

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
    /// CPU threads, at most 4 per core [default: one per core].
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
    check_outputs(
        &[
            ("--scores", args.scores.as_deref()),
            ("--labels", args.labels.as_deref()),
        ],
        &[
            ("--out", args.out.as_deref()),
            ("--plot", args.plot.as_deref()),
        ],
    )?;
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
            check_synthetic_size(shape.models, shape.points)?;
            let (scores, labels) = synthetic_ensemble(shape.models, shape.points, 0);
            let source = format!("synthetic ensemble {}x{}", shape.models, shape.points);
            (scores, Some(labels), source)
        }
        (None, None) => return Err(Error::input("give --scores FILE or --synthetic MxN")),
    };
    let spec = TrimSpec {
        level: args.level,
        w2_alpha: args.w2_alpha,
        w2_grid: args.w2_grid,
    };
    let report = compare::report(args.backend, &scores, labels.as_deref(), source, &spec)?;
    if let Some(path) = &args.out {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        report::compare::plot(&report, path)?;
    }
    print!("{}", report::compare::markdown(&report, args.top));
    Ok(())
}
