//! `mscope pca`: principal components of an embeddings file, what each one separates, plots,
//! and for image embeddings a contact sheet of the images at either end of each component.

use std::path::PathBuf;

use clap::Args;

use crate::backend::{self, BackendKind, OpFamily};
use crate::error::{Error, Result};
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
    /// With `--explain N` on image embeddings (`mscope embed --images`): a PNG of the N images
    /// at either end of each component, a row per component, lowest scores left, highest right,
    /// each captioned with its score and label.
    #[arg(long, value_name = "PNG")]
    contact_sheet: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: PcaArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    report::plot::check_format("--plot", args.plot.as_deref())?;
    if let Some(sheet) = &args.contact_sheet {
        let is_png = sheet
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png {
            return Err(Error::input(format!(
                "--contact-sheet {}: a contact sheet is written as PNG (.png)",
                sheet.display()
            )));
        }
        if args.explain == 0 {
            return Err(Error::input(
                "--contact-sheet shows the images at either end of each component: give \
                 --explain N (N images per end)",
            ));
        }
    }
    check_outputs(
        &args.input.paths(),
        &[
            ("--out", args.out.as_deref()),
            ("--plot", args.plot.as_deref()),
            ("--contact-sheet", args.contact_sheet.as_deref()),
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
    if let Some(path) = &args.contact_sheet {
        report::pca::contact_sheet(&report, path)?;
    }
    out!("{}", report::pca::markdown(&report))?;
    Ok(())
}
