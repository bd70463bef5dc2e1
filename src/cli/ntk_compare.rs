//! `mscope ntk-compare`: how alike are two kernels over the same points? Centred kernel
//! alignment, the distance between their normalised spectra, effective ranks, and the relative
//! Frobenius difference.

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::instruments::kernel_compare;
use crate::io::check_outputs;
use crate::io::kernel_inputs::read_square_pair;
use crate::report;

#[derive(Args)]
pub struct NtkCompareArgs {
    /// First kernel: square [N, N] (`mscope ntk` output).
    first: PathBuf,
    /// Second kernel over the same N points, in the same order; the Frobenius difference is
    /// relative to it.
    second: PathBuf,
    /// JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Both normalised spectra on a logarithmic axis (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Each kernel's normalised spectrum (eigenvalues / trace, descending), one number per
    /// line, to `STEM.first.txt` and `STEM.second.txt` for PATH `STEM.txt`: samples that
    /// `mscope alpha --candidate … --reference …` compares.
    #[arg(long, value_name = "PATH")]
    export_spectrum: Option<PathBuf>,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: NtkCompareArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let spectrum_paths = args
        .export_spectrum
        .as_deref()
        .map(report::kernels::spectrum_paths)
        .transpose()?;
    let [first_spectrum, second_spectrum] = match &spectrum_paths {
        Some([a, b]) => [Some(a.as_path()), Some(b.as_path())],
        None => [None, None],
    };
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &[
            ("--first", Some(&args.first)),
            ("--second", Some(&args.second)),
        ],
        &[
            ("--json", args.json.as_deref()),
            ("--plot", args.plot.as_deref()),
            ("--export-spectrum", first_spectrum),
            ("--export-spectrum", second_spectrum),
        ],
    )?;
    let kernels = read_square_pair(&args.first, &args.second)?;
    let report = kernel_compare::report([&args.first, &args.second], &kernels)?;
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        report::kernels::plot(&report, path)?;
    }
    if let Some(paths) = &spectrum_paths {
        report::kernels::export_spectra(&report, paths)?;
    }
    out!("{}", report::kernels::markdown(&report))?;
    if let Some([a, b]) = &spectrum_paths {
        outln!(
            "\nSpectra written to {} and {}: `mscope alpha --candidate {} --reference {}` \
             compares them.",
            a.display(),
            b.display(),
            a.display(),
            b.display()
        )?;
    }
    Ok(())
}
