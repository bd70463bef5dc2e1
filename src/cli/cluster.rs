//! `mscope cluster`: does unsupervised k-means recreate the labels?

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::instruments::cluster::{self, ClusterOptions};
use crate::io::check_outputs;
use crate::report;

use super::embeddings_args::EmbeddingsArgs;

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    input: EmbeddingsArgs,
    /// Clusters [default: the number of labels].
    #[arg(long)]
    k: Option<usize>,
    /// k-means++ restarts; the lowest inertia is kept.
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    #[arg(long, default_value_t = 300)]
    max_iter: usize,
    /// Stop when the squared centre shift falls to this times the data's mean variance.
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Heat map of each label's share in each cluster (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: ClusterArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &args.input.paths(),
        &[
            ("--json", args.json.as_deref()),
            ("--plot", args.plot.as_deref()),
        ],
    )?;
    let (file, _) = args.input.read(false)?;
    let k = match args.k {
        Some(k) => k,
        None if !file.label_names.is_empty() => file.label_names.len(),
        None => return Err(Error::input("--k is needed: the embeddings have no labels")),
    };
    let options = ClusterOptions {
        k,
        restarts: args.restarts,
        max_iter: args.max_iter,
        tol: args.tol,
        seed: args.seed,
    };
    let input = args.input.input.display().to_string();
    let report = cluster::report(&file, &input, &options)?;
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        report::cluster::plot(&report, path)?;
    }
    out!("{}", report::cluster::markdown(&report))?;
    Ok(())
}
