//! `mscope alpha`'s plot and Markdown summary.

use std::path::Path;

use super::{file_name, plot};
use crate::error::Result;
use crate::instruments::alpha::AlphaReport;

/// `d(α)` with the threshold and α̂ marked; the title names the two samples.
pub fn plot(
    report: &AlphaReport,
    path: &Path,
    (candidate, reference): (&Path, &Path),
) -> Result<()> {
    let curve: Vec<(f64, f64)> = report
        .curve
        .points
        .iter()
        .map(|p| (p.alpha, p.distance))
        .collect();
    let threshold = [(0.0, report.threshold), (1.0, report.threshold)];
    let marker = [(report.alpha_hat, 0.0), (report.alpha_hat, report.ks)];
    let alpha_label = format!("α-hat = {:.4}", report.alpha_hat);
    // α lives in [0, 1]; d(α) from 0 to a little above its largest value.
    let top = curve
        .iter()
        .map(|p| p.1)
        .fold(report.threshold.max(report.ks), f64::max);
    plot::xy(
        path,
        &format!(
            "α-trimmings of {} against {}",
            file_name(candidate),
            file_name(reference)
        ),
        &plot::Axes::new("trimming level α", "Kolmogorov distance d(α)")
            .x_range(plot::UNIT)
            .y_range(0.0..1.08 * top.max(1e-12)),
        &[
            plot::Series {
                label: "d(α)",
                points: &curve,
            },
            plot::Series {
                label: "threshold",
                points: &threshold,
            },
            plot::Series {
                label: &alpha_label,
                points: &marker,
            },
        ],
        plot::Style::Lines,
    )
}

/// One table row of the comparison of `candidate` with `reference`, and the curve when asked
/// for.
pub fn markdown(report: &AlphaReport, candidate: &Path, reference: &Path) -> String {
    let mut md = format!(
        "## α̂: {} vs {}\n\n\
         | α̂ | KS d(0) | threshold (level {}) | trimmed W2 at α = {:.4} | n | m |\n\
         |---|---|---|---|---|---|\n\
         | {:.6} | {:.6} | {:.6} | {:.6} | {} | {} |\n",
        candidate.display(),
        reference.display(),
        report.level,
        report.w2_alpha,
        report.alpha_hat,
        report.ks,
        report.threshold,
        report.trimmed_w2,
        report.n_candidate,
        report.n_reference
    );
    if report.curve.reported {
        md += "\n| α | d(α) |\n|---|---|\n";
        for p in &report.curve.points {
            md += &format!("| {:.3} | {:.6} |\n", p.alpha, p.distance);
        }
    }
    md
}
