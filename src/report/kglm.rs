//! `mscope kglm`'s plot and Markdown summary.

use std::path::Path;

use super::plot;
use crate::error::Result;
use crate::instruments::kglm::KglmReport;

/// The surrogate's against the network's probability of the correct class at each test point;
/// nothing without the network.
pub fn plot(report: &KglmReport, path: &Path) -> Result<()> {
    let Some(f) = &report.faithfulness else {
        return Ok(());
    };
    let points: Vec<(f64, f64)> = f
        .correct_class_probability
        .iter()
        .map(|&(surrogate, network)| (network, surrogate))
        .collect();
    plot::xy(
        path,
        &format!("kGLM against the network, Kendall τ = {:.3}", f.kendall_tau),
        &plot::Axes::new(
            "network: probability of the correct class",
            "kGLM: probability of the correct class",
        )
        .x_range(plot::UNIT)
        .y_range(plot::UNIT),
        &[plot::Series {
            label: "test points",
            points: &points,
        }],
        plot::Style::Scatter,
    )
}

/// The fit, and the surrogate's accuracy or its faithfulness to the network.
pub fn markdown(report: &KglmReport) -> String {
    let kernel = if report.projection_dim == 0 {
        "exact".to_string()
    } else {
        format!("projected to {} dims", report.projection_dim)
    };
    let mut md = format!(
        "# kGLM on {}\n\nKernel `{}` ({}normalised, {kernel}); {} training points, \
         {} test points, {} classes; λ = {}.\n\nL-BFGS: {} iterations, {} \
         (‖∇‖∞ = {:.2e}, tolerance {:.0e}).\n\n",
        report.train_kernel,
        report.kernel_kind,
        if report.normalized { "" } else { "not " },
        report.n_train,
        report.n_test,
        report.classes,
        report.l2,
        report.iterations,
        if report.converged {
            "converged"
        } else {
            "**did not converge** (raise --max-iter or --l2)"
        },
        report.gradient_norm,
        report.tol,
    );
    match &report.faithfulness {
        None => {
            md += &format!(
                "Surrogate test accuracy **{:.2}%**.\n",
                100.0 * report.accuracy_surrogate
            )
        }
        Some(f) => {
            md += &format!(
                "**Kendall τ = {:.4}** (τ-b over {} points; {} dropped where a probability \
                 of the correct class is exactly 0 or 1).\n\n\
                 | metric | value |\n|---|---|\n\
                 | R² of the network's logits by the surrogate's | {:.4} |\n\
                 | Pearson r of the logits | {:.4} |\n\
                 | test accuracy, surrogate | {:.2}% |\n\
                 | test accuracy, network | {:.2}% |\n\
                 | accuracy differential (surrogate − network) | {:+.2} points |\n",
                f.kendall_tau,
                report.n_test - f.dropped_points,
                f.dropped_points,
                f.r2_logits,
                f.pearson_logits,
                100.0 * f.accuracy_surrogate,
                100.0 * f.accuracy_network,
                100.0 * (f.accuracy_surrogate - f.accuracy_network),
            );
        }
    }
    md
}
