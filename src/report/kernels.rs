//! `mscope ntk-compare`'s plot and Markdown summary.

use std::path::{Path, PathBuf};

use super::{file_name, plot, sibling};
use crate::error::{Error, Result};
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
        &plot::Axes::new("eigenvalue index", "eigenvalue / trace"),
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

/// Where `--export-spectrum STEM.txt` writes the two spectra: `STEM.first.txt` and
/// `STEM.second.txt`. Text because every reader of samples (`mscope alpha`, NumPy's `loadtxt`)
/// takes it and the shortest round-trip decimal keeps each f64 exact.
pub fn spectrum_paths(path: &Path) -> Result<[PathBuf; 2]> {
    if path.extension().and_then(|e| e.to_str()) != Some("txt") {
        return Err(Error::input(format!(
            "--export-spectrum {}: give a .txt path (STEM.txt writes STEM.first.txt and \
             STEM.second.txt, one eigenvalue per line)",
            path.display()
        )));
    }
    Ok([sibling(path, "first"), sibling(path, "second")])
}

/// Each kernel's normalised spectrum to its path of [`spectrum_paths`], one value per line.
pub fn export_spectra(report: &KernelCompareReport, paths: &[PathBuf; 2]) -> Result<()> {
    for (spectrum, path) in report.comparison.spectra.iter().zip(paths) {
        let text: String = spectrum.iter().map(|v| format!("{v}\n")).collect();
        crate::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}
