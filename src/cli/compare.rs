//! `mscope compare`: every model of an ensemble against the pooled others — α̂, KS, trimmed W2 —
//! beside accuracy, churn and ECE; a table sorted by α̂ singles out atypical models.
//!
//! With `--shard I/N` a run compares only shard `I`'s range of models (each still against the
//! pool of all the others) into `OUT.shard-I-of-N.safetensors` (OUT less its extension);
//! `mscope merge OUT` writes the JSON report one process writes, byte for byte, and prints its
//! table.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;

use crate::backend::trim;
use crate::backend::{BackendKind, TrimSpec, W2Grid};
use crate::data::scores::{check_synthetic_size, read_scores, synthetic_ensemble};
use crate::error::{Error, Result};
use crate::instruments::compare;
use crate::instruments::compare::{w2_grid_name, CompareReport, ModelReport};
use crate::io::check_outputs;
use crate::io::checkpoint::file_digest;
use crate::io::samples::read_labels;
use crate::io::shards::{self, Manifest, Shard, ShardFile};
use crate::report;

/// Metadata key of a compare shard's model rows (JSON).
const ROWS_KEY: &str = "mscope_compare_rows";

#[derive(Args)]
#[command(after_help = "\
Shards: --shard I/N (with --out OUT.json) compares shard I (0-based) of N's range of models, \
each against the pool of all the others, into OUT.shard-I-of-N.safetensors; after all N, \
`mscope merge OUT.json` writes the report one process writes, byte for byte, and prints its \
table.")]
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
    /// Plot α̂ against accuracy (or churn without labels) to this PNG or SVG (by extension).
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
    /// Compare only shard I (0-based) of N's models into OUT.shard-I-of-N.safetensors;
    /// `mscope merge OUT` writes the report.
    #[arg(long, value_name = "I/N", requires = "out", conflicts_with = "plot")]
    shard: Option<Shard>,
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
    let shard_path = args
        .shard
        .zip(args.out.as_ref())
        .map(|(s, out)| s.path(out));
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &[
            ("--scores", args.scores.as_deref()),
            ("--labels", args.labels.as_deref()),
        ],
        &[
            ("--out", shard_path.as_deref().or(args.out.as_deref())),
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
    crate::phases::mark("read or generate the scores");
    let spec = TrimSpec {
        level: args.level,
        w2_alpha: args.w2_alpha,
        w2_grid: args.w2_grid,
    };
    let models = match args.shard {
        Some(shard) => shard.units(&vec![1; scores.models]),
        None => 0..scores.models,
    };
    let report = compare::report(
        args.backend,
        &scores,
        labels.as_deref(),
        source,
        &spec,
        models.clone(),
    )?;
    if let (Some(shard), Some(path)) = (args.shard, &shard_path) {
        return write_shard(&args, &report, shard, models, path);
    }
    if let Some(path) = &args.out {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        report::compare::plot(&report, path)?;
    }
    out!("{}", report::compare::markdown(&report, args.top))?;
    crate::phases::mark("write the report");
    Ok(())
}

/// `--shard I/N`: the shard's model rows, with the report's header fields in the manifest.
fn write_shard(
    args: &CompareArgs,
    report: &CompareReport,
    shard: Shard,
    models: std::ops::Range<usize>,
    path: &std::path::Path,
) -> Result<()> {
    let digest = |p: &Option<PathBuf>| p.as_deref().map(file_digest).transpose();
    let job = serde_json::json!({
        "command": "compare",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": report.backend,
        "threads": rayon::current_num_threads(),
        "inputs": {
            "scores": digest(&args.scores)?,
            "labels": digest(&args.labels)?,
            "synthetic": args.synthetic.map(|s| format!("{}x{}", s.models, s.points)),
        },
        "level": args.level,
        "w2_alpha": args.w2_alpha,
        "w2_grid": format!("{:?}", args.w2_grid),
        "report": {
            "source": report.source,
            "n_models": report.n_models,
            "n_points": report.n_points,
            "classes": report.classes,
            "threshold": report.threshold,
            "w2_grid": report.w2_grid,
            "labelled": report.labelled,
        },
    });
    let manifest = Manifest {
        job,
        index: shard.index,
        count: shard.count,
        units: models.clone().map(|k| [k, k + 1]).collect(),
    };
    let rows = serde_json::json!({
        "models": report.models,
        "seconds": report.seconds,
        "trim_seconds": report.trim_seconds,
    });
    shards::write_with(path, &manifest, Vec::new(), [(ROWS_KEY, rows.to_string())])?;
    outln!(
        "compare shard {shard}: models {}..{} of {} on {} -> {}",
        models.start,
        models.end,
        report.n_models,
        report.backend,
        path.display()
    )?;
    Ok(())
}

/// `mscope merge` of `compare` shards (already checked to be complete and of one run): the
/// models' rows in order under the header the shards share, written and printed as one
/// process does.
pub(super) fn merge(out: &std::path::Path, shards: &[ShardFile]) -> Result<()> {
    let job = &shards[0].manifest.job;
    let header = &job["report"];
    let mut models: Vec<ModelReport> = Vec::new();
    // The time the shards spent, summed.
    let (mut seconds, mut trim_seconds) = (0.0, 0.0);
    for shard in shards {
        let rows = shard
            .file
            .metadata(ROWS_KEY)
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
        let parsed = rows.as_ref().and_then(|r| {
            let models: Vec<ModelReport> = serde_json::from_value(r["models"].clone()).ok()?;
            Some((models, r["seconds"].as_f64()?, r["trim_seconds"].as_f64()?))
        });
        let Some((rows, s, t)) = parsed else {
            return Err(shard
                .file
                .error(format!("no readable `{ROWS_KEY}` metadata")));
        };
        models.extend(rows);
        seconds += s;
        trim_seconds += t;
    }
    let n_models = header["n_models"].as_u64().unwrap_or(0) as usize;
    if let Some(at) = (0..n_models).find(|&k| models.get(k).map(|m| m.index) != Some(k)) {
        return Err(Error::input(format!(
            "{}: the shards do not hold model {at} exactly once, in order",
            out.display()
        )));
    }
    if models.len() != n_models {
        return Err(Error::input(format!(
            "{}: the shards hold {} model rows for {n_models} models",
            out.display(),
            models.len()
        )));
    }
    let exact = header["w2_grid"].as_str() == Some(w2_grid_name(true));
    let report = CompareReport {
        source: header["source"].as_str().unwrap_or("").to_string(),
        n_models,
        n_points: header["n_points"].as_u64().unwrap_or(0) as usize,
        classes: header["classes"].as_u64().unwrap_or(0) as usize,
        level: job["level"].as_f64().unwrap_or(0.0),
        threshold: header["threshold"].as_f64().unwrap_or(0.0),
        w2_alpha: job["w2_alpha"].as_f64(),
        w2_grid: w2_grid_name(exact),
        backend: job["backend"].as_str().unwrap_or("").to_string(),
        models,
        labelled: header["labelled"].as_bool() == Some(true),
        seconds,
        trim_seconds,
    };
    report::write_json(out, &report)?;
    out!("{}", report::compare::markdown(&report, 20))?;
    Ok(())
}
