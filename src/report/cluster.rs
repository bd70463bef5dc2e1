//! `mscope cluster`'s Markdown summary and contingency heat map.

use std::path::Path;

use super::plot;
use crate::error::{Error, Result};
use crate::instruments::cluster::ClusterReport;

/// Heat map of the share of each label's rows in each cluster.
pub fn plot(report: &ClusterReport, path: &Path) -> Result<()> {
    let Some(a) = &report.agreement else {
        return Err(Error::input(
            "--plot draws labels against clusters: the embeddings have no labels",
        ));
    };
    let clusters: Vec<String> = (0..report.k).map(|c| format!("cluster {c}")).collect();
    let shares: Vec<f64> = a
        .contingency
        .iter()
        .flat_map(|row| {
            let total = row.iter().sum::<usize>().max(1) as f64;
            row.iter().map(move |&c| c as f64 / total)
        })
        .collect();
    plot::heatmap(
        path,
        &plot::Heatmap {
            title: &format!(
                "k-means (k = {}) of {}: ARI {:.3}, NMI {:.3}",
                report.k,
                super::data_name(&report.model, &report.input),
                a.ari,
                a.nmi
            ),
            rows: &a.labels,
            cols: &clusters,
            values: &shares,
            sd: None,
            range: (0.0, 1.0),
            quantity: "share of the label",
            decimals: 2,
        },
    )
}

pub fn markdown(report: &ClusterReport) -> String {
    let mut out = format!(
        "# k-means of {}\n\n{} rows × {} dims ({}); k = {}, best of {} restarts (seed {}): inertia \
         {:.6e} after {} iterations; cluster sizes {:?}.\n",
        report.input,
        report.rows,
        report.dim,
        report.model,
        report.k,
        report.restarts,
        report.seed,
        report.inertia,
        report.iterations,
        report.sizes
    );
    if let Some(a) = &report.agreement {
        out += &format!(
            "\n**Against the labels: ARI {:.4}, NMI {:.4}, purity {:.4}**\n\n| label | {} |\n|---|{}\n",
            a.ari,
            a.nmi,
            a.purity,
            (0..report.k)
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(report.k)
        );
        for (label, row) in a.labels.iter().zip(&a.contingency) {
            let cells: Vec<String> = row.iter().map(usize::to_string).collect();
            out += &format!("| {label} | {} |\n", cells.join(" | "));
        }
    }
    out
}
