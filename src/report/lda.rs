//! `mscope lda`'s plots and Markdown summary.

use std::path::Path;

use super::{plot, sibling};
use crate::error::Result;
use crate::instruments::lda::LdaReport;

/// The LD1×LD2 scatter at `path` (LD1 against the label with one direction) and, with the
/// pairwise table, its heat map beside it.
pub fn plots(report: &LdaReport, path: &Path) -> Result<()> {
    let m = report.directions;
    let (y, axes) = if m >= 2 {
        (Some(1), ("LD1", "LD2"))
    } else {
        (None, ("LD1", "label"))
    };
    let groups = plot::points_by_label(
        &report.coords,
        m,
        (0, y),
        &report.row_labels,
        &report.label_names,
    );
    let title = format!(
        "LDA of {}{}: {:.1} ± {:.1}% over {} splits",
        data_name(report),
        by_factor(report),
        100.0 * report.accuracy_mean,
        100.0 * report.accuracy_std,
        report.splits
    );
    plot::xy(
        path,
        &title,
        &plot::Axes::new(axes.0, axes.1),
        &plot::series(&groups),
        plot::Style::Scatter,
    )?;
    if m >= 3 {
        let groups = plot::points_by_label(
            &report.coords,
            m,
            (1, Some(2)),
            &report.row_labels,
            &report.label_names,
        );
        plot::xy(
            &sibling(path, "ld2-ld3"),
            &title,
            &plot::Axes::new("LD2", "LD3"),
            &plot::series(&groups),
            plot::Style::Scatter,
        )?;
    }
    if let Some(p) = &report.pairwise {
        // Percentages, as the tables of papers give them; the diagonal (null) stays empty.
        let percent = |table: &[Vec<f64>]| -> Vec<f64> {
            table.iter().flatten().map(|v| 100.0 * v).collect()
        };
        plot::heatmap(
            &sibling(path, "pairwise"),
            &plot::Heatmap {
                title: &format!(
                    "Pairwise LDA accuracy over {} splits, {}{}",
                    report.splits,
                    data_name(report),
                    by_factor(report)
                ),
                rows: &p.labels,
                cols: &p.labels,
                values: &percent(&p.accuracy_mean),
                sd: Some(&percent(&p.accuracy_std)),
                range: (50.0, 100.0),
                quantity: "accuracy (%)",
                decimals: 1,
            },
        )?;
    }
    Ok(())
}

/// The embedding model and the file, for titles: `MiniLM-L6 embeddings (demo.safetensors)`.
fn data_name(report: &LdaReport) -> String {
    super::data_name(&report.model, &report.input)
}

/// ` by FACTOR` when the classes are a factor's levels, for titles.
fn by_factor(report: &LdaReport) -> String {
    report
        .factor
        .as_ref()
        .map_or_else(String::new, |f| format!(" by {f}"))
}

/// The accuracy, the confusion over all splits and the pairwise table.
pub fn markdown(report: &LdaReport) -> String {
    let k = report.labels.len();
    let mut md = format!(
        "# LDA of {}{}\n\n{k} labels, {} labelled rows × {} dims; {} stratified splits \
         (test fraction {}, seed {}), shrinkage {}.\n\n\
         **Accuracy {:.2}% ± {:.2}** (sd over splits; majority label {:.1}%).\n\n\
         ## Confusion over all splits (rows: true, columns: predicted)\n\n| |",
        report.input,
        by_factor(report),
        report.n,
        report.dim,
        report.splits,
        report.test_fraction,
        report.seed,
        report.shrinkage,
        100.0 * report.accuracy_mean,
        100.0 * report.accuracy_std,
        100.0 * report.majority
    );
    let header = |md: &mut String| {
        *md += &report
            .labels
            .iter()
            .map(|l| format!(" {l} |"))
            .collect::<String>();
        *md += &format!("\n|---|{}\n", "---|".repeat(k));
    };
    header(&mut md);
    for (name, row) in report.labels.iter().zip(&report.confusion) {
        md += &format!(
            "| {name} |{}\n",
            row.iter().map(|c| format!(" {c} |")).collect::<String>()
        );
    }
    md += "\n## Each label against the rest (over all splits, %)\n\n\
           | label | one-vs-rest accuracy | recall |\n|---|---|---|\n";
    for c in &report.per_class {
        md += &format!(
            "| {} | {:.1} | {:.1} |\n",
            c.label,
            100.0 * c.one_vs_rest_accuracy,
            100.0 * c.recall
        );
    }
    if let Some(p) = &report.pairwise {
        md += "\n## Pairwise accuracy (mean ± sd over splits, %)\n\n| |";
        header(&mut md);
        for (a, name) in report.labels.iter().enumerate() {
            md += &format!("| {name} |");
            for b in 0..k {
                md += &if a == b {
                    " – |".to_string()
                } else {
                    format!(
                        " {:.1} ± {:.1} |",
                        100.0 * p.accuracy_mean[a][b],
                        100.0 * p.accuracy_std[a][b]
                    )
                };
            }
            md += "\n";
        }
    }
    md
}
