//! `mscope compare`'s plot and Markdown summary.

use std::path::Path;

use super::plot;
use crate::error::Result;
use crate::instruments::compare::{CompareReport, ModelReport};

/// α̂ of each model against its accuracy (or its mean churn without labels), models with
/// α̂ > 0 in their own colour.
pub fn plot(report: &CompareReport, path: &Path) -> Result<()> {
    let x = |m: &ModelReport| {
        if report.labelled {
            m.metrics.accuracy.unwrap_or(f64::NAN)
        } else {
            m.metrics.churn_mean
        }
    };
    let (mut typical, mut atypical) = (Vec::new(), Vec::new());
    for m in &report.models {
        let group = if m.alpha_hat > 0.0 {
            &mut atypical
        } else {
            &mut typical
        };
        group.push((x(m), m.alpha_hat));
    }
    plot::xy(
        path,
        &format!(
            "α-hat of each model against the pooled others, {}",
            report.source
        ),
        &plot::Axes::new(
            if report.labelled {
                "accuracy"
            } else {
                "mean churn"
            },
            "α-hat",
        )
        .y_range(plot::UNIT),
        &[
            plot::Series {
                label: "α-hat = 0",
                points: &typical,
            },
            plot::Series {
                label: "α-hat > 0",
                points: &atypical,
            },
        ],
        plot::Style::Scatter,
    )
}

/// The run in one paragraph, then the `top` models with the largest α̂.
pub fn markdown(report: &CompareReport, top: usize) -> String {
    let models = &report.models;
    let atypical = models.iter().filter(|m| m.alpha_hat > 0.0).count();
    let mut md = format!(
        "## compare: {}\n\n\
         {} models × {} points{}; level {}, KS threshold {:.6}; {atypical} model(s) with α̂ > 0. \
         Trimmed W2 on the {} grid. {:.2} s ({:.2} s trimmed search).\n\n",
        report.source,
        report.n_models,
        report.n_points,
        if report.classes > 1 {
            format!(" × {} classes", report.classes)
        } else {
            String::new()
        },
        report.level,
        report.threshold,
        report.w2_grid,
        report.seconds,
        report.trim_seconds,
    );
    let mut order: Vec<&ModelReport> = models.iter().collect();
    order.sort_by(|a, b| b.alpha_hat.total_cmp(&a.alpha_hat));
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    md += "| model | α̂ | KS | trimmed W2 | accuracy | churn (mean) | churn vs majority | ECE |\n\
           |---|---|---|---|---|---|---|---|\n";
    for m in order.iter().take(top) {
        md += &format!(
            "| {} | {:.4} | {:.4} | {:.4} | {} | {:.4} | {:.4} | {} |\n",
            m.index,
            m.alpha_hat,
            m.ks,
            m.trimmed_w2,
            cell(m.metrics.accuracy),
            m.metrics.churn_mean,
            m.metrics.churn_vs_majority,
            cell(m.metrics.ece)
        );
    }
    if models.len() > top {
        md += &format!(
            "\n({} more models; `--out` writes them all)\n",
            models.len() - top
        );
    }
    md
}
