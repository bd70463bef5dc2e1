//! `mscope alpha`: the trimmed comparison of one candidate sample with a reference sample.

use std::path::PathBuf;

use clap::Args;

use crate::backend::{self, BackendKind, OpFamily};
use crate::error::Result;
use crate::instruments::alpha;
use crate::io::check_outputs;
use crate::io::samples::read_sample;
use crate::report;

#[derive(Args)]
pub struct AlphaArgs {
    /// Candidate sample: text (one number per line), .npy or .safetensors.
    #[arg(long)]
    candidate: PathBuf,
    /// Reference sample, same formats.
    #[arg(long)]
    reference: PathBuf,
    /// Test level in (0, 1).
    #[arg(long, default_value_t = 0.05)]
    level: f64,
    /// Trimming level of the trimmed W2 cost [default: α̂].
    #[arg(long)]
    w2_alpha: Option<f64>,
    /// Print JSON instead of the Markdown summary.
    #[arg(long)]
    json: bool,
    /// Also give d(α) at α = i/STEPS, i = 0..STEPS (STEPS at most 100 000).
    #[arg(long, num_args = 0..=1, default_missing_value = "20", value_name = "STEPS")]
    curve: Option<usize>,
    /// Plot d(α) with the threshold and α̂ to this PNG or SVG (by extension).
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
}

pub fn run(args: AlphaArgs) -> Result<()> {
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &[
            ("--candidate", Some(&args.candidate)),
            ("--reference", Some(&args.reference)),
        ],
        &[("--plot", args.plot.as_deref())],
    )?;
    let candidate = read_sample(&args.candidate)?;
    let reference = read_sample(&args.reference)?;
    let backend = backend::open(args.backend, OpFamily::Trim)?;
    let report = alpha::report(
        backend.as_ref(),
        &candidate,
        &reference,
        (args.level, args.w2_alpha),
        (args.curve, args.plot.is_some()),
    )?;
    if let Some(path) = &args.plot {
        report::alpha::plot(&report, path, (&args.candidate, &args.reference))?;
    }
    if args.json {
        outln!("{}", report::json_text(&report))?;
    } else {
        out!(
            "{}",
            report::alpha::markdown(&report, &args.candidate, &args.reference)
        )?;
    }
    Ok(())
}
