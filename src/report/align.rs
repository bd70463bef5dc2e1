//! `mscope align`'s Markdown summary and heat maps.

use std::path::Path;

use super::{file_name, plot, sibling};
use crate::error::Result;
use crate::instruments::align::AlignReport;

/// Short names of the inputs: their models where known and distinct, else their file names.
fn names(report: &AlignReport) -> Vec<String> {
    let models: Vec<String> = report.inputs.iter().map(|i| i.model.clone()).collect();
    let distinct = models
        .iter()
        .enumerate()
        .all(|(i, m)| !m.is_empty() && !models[..i].contains(m));
    if distinct {
        models
    } else {
        report
            .inputs
            .iter()
            .map(|i| file_name(Path::new(&i.path)))
            .collect()
    }
}

/// The symmetric `K×K` matrix of `measure` over the pairs, `diagonal` on the diagonal.
fn matrix(report: &AlignReport, diagonal: f64, measure: impl Fn(usize) -> f64) -> Vec<f64> {
    let k = report.inputs.len();
    let mut values = vec![diagonal; k * k];
    for (p, pair) in report.pairs.iter().enumerate() {
        values[pair.a * k + pair.b] = measure(p);
        values[pair.b * k + pair.a] = measure(p);
    }
    values
}

/// Heat maps of linear CKA (at `path`) and of mutual k-NN agreement (`STEM.mutual-knn.png`).
pub fn plots(report: &AlignReport, path: &Path) -> Result<()> {
    let names = names(report);
    let cka = matrix(report, 1.0, |p| report.pairs[p].cka);
    fn map<'a>(
        title: &'a str,
        quantity: &'a str,
        names: &'a [String],
        values: &'a [f64],
    ) -> plot::Heatmap<'a> {
        plot::Heatmap {
            title,
            rows: names,
            cols: names,
            values,
            sd: None,
            range: (0.0, 1.0),
            quantity,
            decimals: 3,
        }
    }
    plot::heatmap(
        path,
        &map(
            &format!("Linear CKA between embedders over {} rows", report.rows),
            "linear CKA",
            &names,
            &cka,
        ),
    )?;
    let knn = matrix(report, 1.0, |p| report.pairs[p].mutual_knn);
    plot::heatmap(
        &sibling(path, "mutual-knn"),
        &map(
            &format!(
                "Mutual {}-NN agreement between embedders over {} rows",
                report.k, report.rows
            ),
            &format!("mutual {}-NN", report.k),
            &names,
            &knn,
        ),
    )
}

/// One line per pair; with more than two inputs, the CKA and mutual k-NN tables too.
pub fn markdown(report: &AlignReport) -> String {
    let names = names(report);
    let mut out = format!(
        "# Alignment of {} embeddings of the same {} rows\n\n",
        names.len(),
        report.rows
    );
    for (name, input) in names.iter().zip(&report.inputs) {
        out += &format!("- {name}: {} dims ({})\n", input.dim, input.path);
    }
    out += &format!(
        "\n| a | b | linear CKA | Procrustes residual | SVCCA mean (top {}) | mutual {}-NN |\n\
         |---|---|---|---|---|---|\n",
        report.cca_dims, report.k
    );
    for pair in &report.pairs {
        let svcca = pair.cca.iter().sum::<f64>() / pair.cca.len().max(1) as f64;
        out += &format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            names[pair.a],
            names[pair.b],
            pair.cka,
            pair.procrustes_residual,
            svcca,
            pair.mutual_knn
        );
    }
    if names.len() > 2 {
        for (title, values) in [
            ("Linear CKA", matrix(report, 1.0, |p| report.pairs[p].cka)),
            (
                "Mutual k-NN agreement",
                matrix(report, 1.0, |p| report.pairs[p].mutual_knn),
            ),
        ] {
            out += &format!(
                "\n## {title}\n\n| | {} |\n|---|{}\n",
                names.join(" | "),
                "---|".repeat(names.len())
            );
            for (i, name) in names.iter().enumerate() {
                let cells: Vec<String> = values[i * names.len()..(i + 1) * names.len()]
                    .iter()
                    .map(|v| format!("{v:.4}"))
                    .collect();
                out += &format!("| {name} | {} |\n", cells.join(" | "));
            }
        }
    }
    out
}
