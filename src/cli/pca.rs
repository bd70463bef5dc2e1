//! `mscope pca`: principal components of an embeddings file, what each one separates, plots.

use std::path::PathBuf;

use clap::Args;

use crate::backend::{self, BackendKind, OpFamily};
use crate::error::Result;
use crate::instruments::pca;
use crate::io::check_outputs;
use crate::report;

use super::embeddings_args::EmbeddingsArgs;

#[derive(Args)]
pub struct PcaArgs {
    #[command(flatten)]
    input: EmbeddingsArgs,
    /// Principal components to keep, at most the rank of the centred rows [default: 10, or the
    /// dimension or rows − 1 if smaller].
    #[arg(long)]
    components: Option<usize>,
    /// A label column to test every component against (repeatable: language × subject × …),
    /// from the --labels file's columns or the input's own label columns (.npz arrays, Parquet
    /// columns); the report gives each level's mean score and AUC vs rest. The first factor
    /// colours the plots and is what --only / --group select.
    #[arg(long = "factor", value_name = "FIELD", conflicts_with = "label_field")]
    factors: Vec<String>,
    /// JSON report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// PC1×PC2 scatter coloured by label (.png or .svg); STEM.pc2-pc3.EXT and
    /// STEM.variance.EXT beside it.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// List the N rows with the highest and the lowest score on each component, with their texts
    /// and the words over-represented at each end when `mscope embed`'s texts sidecar is there.
    #[arg(long, default_value_t = 0, value_name = "N")]
    explain: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: PcaArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &args.input.paths(),
        &[
            ("--out", args.out.as_deref()),
            ("--plot", args.plot.as_deref()),
        ],
    )?;
    let (file, texts, factors) = args.input.read_factored(args.explain > 0, &args.factors)?;
    let backend = backend::open(args.backend, OpFamily::Stats)?;
    let k = args
        .components
        .unwrap_or(file.dim.min(10).min(file.rows().saturating_sub(1)).max(1));
    let report = pca::report(
        backend.as_ref(),
        &file,
        &args.input.input,
        k,
        args.explain,
        texts.as_deref(),
        &factors,
    )?;
    if let Some(path) = &args.out {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        report::pca::plots(&report, path)?;
    }
    print!("{}", report::pca::markdown(&report));
    Ok(())
}
