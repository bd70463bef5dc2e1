//! `mscope lda`: do the labels separate? LDA accuracy over stratified splits, the confusion
//! matrix, and with `--pairwise` the accuracy of every pair of labels.

use std::path::PathBuf;

use clap::Args;

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::instruments::lda::detector::Detector;
use crate::instruments::lda::{self, LdaOptions, Shrinkage};
use crate::io::check_outputs;
use crate::report;

use super::embeddings_args::EmbeddingsArgs;

#[derive(Args)]
pub struct LdaArgs {
    #[command(flatten)]
    input: EmbeddingsArgs,
    /// Stratified train/test splits.
    #[arg(long, default_value_t = 50)]
    splits: usize,
    /// Share of each label's rows in the test part.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// none (scikit-learn's svd solver), auto (Ledoit–Wolf) or a number in [0, 1].
    #[arg(long, default_value = "none")]
    shrinkage: Shrinkage,
    /// Also the accuracy of every pair of labels (a K×K table).
    #[arg(long)]
    pairwise: bool,
    /// A label column whose levels are the classes, LDA run once per factor (repeatable), from
    /// the --labels file's columns or the input's own label columns (.npz arrays, Parquet
    /// columns). --out then holds `factors: [report, …]`; the first factor's plots go to --plot,
    /// each further factor's to STEM.FACTOR.EXT. --only / --group select levels of the first.
    #[arg(
        long = "factor",
        value_name = "FIELD",
        conflicts_with_all = ["label_field", "save"]
    )]
    factors: Vec<String>,
    /// JSON report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also fit the rule on every labelled row and write it as a detector for `mscope classify`.
    #[arg(long, value_name = "DETECTOR")]
    save: Option<PathBuf>,
    /// LD1×LD2 scatter coloured by label (.png or .svg), STEM.ld2-ld3.EXT beside it; with
    /// --pairwise also STEM.pairwise.EXT (heat map of mean ± sd over splits).
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: LdaArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &args.input.paths(),
        &[
            ("--out", args.out.as_deref()),
            ("--plot", args.plot.as_deref()),
            ("--save", args.save.as_deref()),
        ],
    )?;
    if args.splits == 0 {
        return Err(Error::input("--splits must be at least 1"));
    }
    let (mut file, _, factors) = args.input.read_factored(false, &args.factors)?;
    let options = LdaOptions {
        splits: args.splits,
        test_fraction: args.test_fraction,
        seed: args.seed,
        shrinkage: args.shrinkage,
        pairwise: args.pairwise,
    };
    if !factors.is_empty() {
        let mut reports = Vec::new();
        for factor in &factors {
            file.labels.clone_from(&factor.levels);
            file.label_names.clone_from(&factor.level_names);
            let mut report = lda::report(args.backend, &file, &args.input.input, &options)
                .map_err(|e| Error::input(format!("--factor {}: {e}", factor.name)))?;
            report.factor = Some(factor.name.clone());
            reports.push(report);
        }
        if let Some(path) = &args.out {
            report::write_json(path, &lda::FactorReports { factors: &reports })?;
        }
        if let Some(path) = &args.plot {
            for (i, report) in reports.iter().enumerate() {
                let factor_path = match i {
                    0 => path.clone(),
                    _ => report::sibling(path, &file_safe(&factors[i].name)),
                };
                report::lda::plots(report, &factor_path)?;
            }
        }
        for report in &reports {
            print!("{}", report::lda::markdown(report));
        }
        return Ok(());
    }
    let report = lda::report(args.backend, &file, &args.input.input, &options)?;
    if let Some(path) = &args.out {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.save {
        Detector::fit(args.backend, &file, args.shrinkage)?.write(path)?;
    }
    if let Some(path) = &args.plot {
        report::lda::plots(&report, path)?;
    }
    out!("{}", report::lda::markdown(&report))?;
    Ok(())
}

/// A factor's name as part of a file name: characters other than letters, digits, `-` and `_`
/// become `_`.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
