//! `mscope ntk-compare`'s plot and Markdown summary.

use std::path::Path;

use super::{file_name, plot};
use crate::error::Result;
use crate::instruments::kernel_compare::KernelCompareReport;

/// Both normalised spectra on a logarithmic axis.
pub fn plot(report: &KernelCompareReport, path: &Path) -> Result<()> {
    let c = &report.comparison;
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
    let labels = report
        .kernels
        .each_ref()
        .map(|k| file_name(Path::new(&k.path)));
    plot::xy(
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
        plot::Style::LinesLogY,
    )
}

/// The two kernels side by side and the measures of their difference.
pub fn markdown(report: &KernelCompareReport) -> String {
    let (c, [first, second]) = (&report.comparison, &report.kernels);
    format!(
        "# Kernel comparison over {} points\n\n\
         | | {} | {} |\n|---|---|---|\n\
         | kind | {} | {} |\n\
         | effective rank | {:.2} | {:.2} |\n\n\
         | measure | value |\n|---|---|\n\
         | CKA | {:.6} |\n\
         | normalised spectra, L1 distance | {:.6} |\n\
         | normalised spectra, L2 distance | {:.6} |\n\
         | ‖K₁ − K₂‖ / ‖K₂‖ | {:.6} |\n",
        c.n,
        first.path,
        second.path,
        first.kind,
        second.kind,
        c.effective_rank[0],
        c.effective_rank[1],
        c.cka,
        c.spectrum_l1,
        c.spectrum_l2,
        c.relative_frobenius
    )
}
