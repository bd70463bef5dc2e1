//! `mscope ntk-compare`: how alike are two kernels over the same points? Centred kernel
//! alignment, the distance between their normalised spectra, effective ranks, and the relative
//! Frobenius difference.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::pca::file_name;
use crate::error::{Error, Result};
use crate::instruments::kernel_compare::compare;
use crate::io::kernel_file::KernelFile;
use crate::report::{self, plot};

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
    /// Both normalised spectra on a logarithmic axis.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// CPU threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: NtkCompareArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let first = read_square(&args.first)?;
    let second = read_square(&args.second)?;
    if first.rows != second.rows {
        return Err(Error::input(format!(
            "{} is over {} points but {} over {}: the kernels must cover the same points",
            args.first.display(),
            first.rows,
            args.second.display(),
            second.rows
        )));
    }
    let n = first.rows;
    let c = compare(&first.values, &second.values, n)?;
    let names = [
        args.first.display().to_string(),
        args.second.display().to_string(),
    ];

    if let Some(path) = &args.json {
        let describe = |path: &str, k: &KernelFile| {
            json!({
                "path": path,
                "kind": k.kind,
                "normalized": k.normalized,
                "projection_dim": k.projection_dim,
            })
        };
        report::write_json(
            path,
            &json!({
                "kernels": [describe(&names[0], &first), describe(&names[1], &second)],
                "n": n,
                "cka": c.cka,
                "spectrum_l1": c.spectrum_l1,
                "spectrum_l2": c.spectrum_l2,
                "effective_rank": c.effective_rank,
                "relative_frobenius": c.relative_frobenius,
            }),
        )?;
    }
    if let Some(path) = &args.plot {
        // Rounding leaves the tail of a low-rank spectrum at or below zero: off a log axis.
        let positive = |spectrum: &[f64]| -> Vec<(f64, f64)> {
            spectrum
                .iter()
                .enumerate()
                .filter(|(_, &p)| p > 0.0)
                .map(|(i, &p)| ((i + 1) as f64, p))
                .collect()
        };
        let (a, b) = (positive(&c.spectra[0]), positive(&c.spectra[1]));
        let labels = [file_name(&args.first), file_name(&args.second)];
        plot::lines_log_y(
            path,
            &format!("Normalised spectra, CKA = {:.4}", c.cka),
            "eigenvalue index",
            "eigenvalue / trace",
            &[
                plot::Series {
                    label: &labels[0],
                    points: &a,
                },
                plot::Series {
                    label: &labels[1],
                    points: &b,
                },
            ],
        )?;
    }

    println!(
        "# Kernel comparison over {n} points\n\n\
         | | {} | {} |\n|---|---|---|\n\
         | kind | {} | {} |\n\
         | effective rank | {:.2} | {:.2} |\n\n\
         | measure | value |\n|---|---|\n\
         | CKA | {:.6} |\n\
         | normalised spectra, L1 distance | {:.6} |\n\
         | normalised spectra, L2 distance | {:.6} |\n\
         | ‖K₁ − K₂‖ / ‖K₂‖ | {:.6} |",
        names[0],
        names[1],
        first.kind,
        second.kind,
        c.effective_rank[0],
        c.effective_rank[1],
        c.cka,
        c.spectrum_l1,
        c.spectrum_l2,
        c.relative_frobenius
    );
    Ok(())
}

fn read_square(path: &Path) -> Result<KernelFile> {
    let k = KernelFile::read(path)?;
    if k.rows != k.cols {
        return Err(Error::input(format!(
            "{}: the kernel is [{}, {}]; comparing needs square kernels over the same points",
            path.display(),
            k.rows,
            k.cols
        )));
    }
    Ok(k)
}
