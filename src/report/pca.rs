//! `mscope pca`'s plots and Markdown summary.

use std::path::Path;

use super::{contact_sheet, plot, sibling};
use crate::error::{Error, Result};
use crate::instruments::pca::{EndRow, LabelSeparation, PcaReport, WordScore};
use crate::io::embeddings::texts_sidecar_path;

/// The PC1×PC2 scatter at `path` (PC1 against the label with one component), PC2×PC3 and the
/// explained variance ratios beside it.
pub fn plots(report: &PcaReport, path: &Path) -> Result<()> {
    let data = super::data_name(&report.model, &report.input);
    let title = format!("PCA of {data}");
    let k = report.n_components;
    let groups = |axes| {
        plot::points_by_label(
            &report.scores,
            k,
            axes,
            &report.row_labels,
            &report.label_names,
        )
    };
    if k >= 2 {
        let points = groups((0, Some(1)));
        plot::xy(
            path,
            &title,
            &plot::Axes::new("PC1", "PC2"),
            &plot::series(&points),
            plot::Style::Scatter,
        )?;
    } else {
        let points = groups((0, None));
        plot::xy(
            path,
            &title,
            &plot::Axes::new("PC1", "label"),
            &plot::series(&points),
            plot::Style::Scatter,
        )?;
    }
    if k >= 3 {
        let points = groups((1, Some(2)));
        let path = sibling(path, "pc2-pc3");
        plot::xy(
            &path,
            &title,
            &plot::Axes::new("PC2", "PC3"),
            &plot::series(&points),
            plot::Style::Scatter,
        )?;
    }
    let names: Vec<String> = (1..=k).map(|c| format!("PC{c}")).collect();
    plot::bars(
        &sibling(path, "variance"),
        &format!("Explained variance ratio, {data}"),
        &plot::Axes::new("component", "share of the variance"),
        &names,
        &report.explained_variance_ratio,
    )
}

/// The contact sheet at `path` (PNG) of the images at either end of every explained component:
/// a row per component, its lowest-scoring images on the left (lowest first), its highest on the
/// right (highest last), each captioned with its score and label. The rows' texts must be image
/// paths (the sidecar of `mscope embed --images`), relative ones from the current folder, as
/// `mscope embed` recorded them.
pub fn contact_sheet(report: &PcaReport, path: &Path) -> Result<()> {
    let sidecar = texts_sidecar_path(Path::new(&report.input));
    let cell = |row: &EndRow| -> Result<contact_sheet::Cell> {
        let image = row.text.as_deref().ok_or_else(|| {
            Error::input(format!(
                "--contact-sheet needs the image path of every row: no sidecar {} (written by \
                 `mscope embed --images`)",
                sidecar.display()
            ))
        })?;
        if !Path::new(image).is_file() {
            return Err(Error::input(format!(
                "{image} (row {} of {}): image not found; the sidecar's paths are relative to \
                 the folder `mscope embed --images` ran in, so run pca from there",
                row.row, report.input
            )));
        }
        let label = row
            .label
            .as_deref()
            .map_or(String::new(), |l| format!(" {l}"));
        Ok(contact_sheet::Cell {
            image: image.into(),
            caption: format!("{:+.3}{label}", row.score),
        })
    };
    let rows = report
        .explain
        .iter()
        .map(|e| {
            Ok(contact_sheet::Row {
                name: vec![
                    format!("PC{}", e.component),
                    format!(
                        "{:.1}%",
                        100.0 * report.explained_variance_ratio[e.component - 1]
                    ),
                ],
                low: e.lowest.iter().map(cell).collect::<Result<_>>()?,
                high: e.highest.iter().rev().map(cell).collect::<Result<_>>()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    contact_sheet::write(
        path,
        "lowest scores (lowest first)",
        "highest scores (highest last)",
        &rows,
    )
}

/// The variance table, the labels along the first five components and the explained rows.
pub fn markdown(report: &PcaReport) -> String {
    let k = report.n_components;
    let mut md = format!(
        "# PCA of {}\n\n{} rows × {} dims{}; {k} components hold {:.1}% of the variance.\n\n\
         | component | variance | ratio | cumulative |\n|---|---|---|---|\n",
        report.input,
        report.n,
        report.dim,
        if report.model.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.model)
        },
        100.0 * report.explained_variance_ratio.iter().sum::<f64>()
    );
    let mut cumulative = 0.0;
    for (c, (v, r)) in report
        .explained_variance
        .iter()
        .zip(&report.explained_variance_ratio)
        .enumerate()
    {
        cumulative += r;
        md += &format!("| PC{} | {v:.4e} | {r:.4} | {cumulative:.4} |\n", c + 1);
    }
    let separation_table =
        |md: &mut String, heading: &str, first: &str, rows: &[LabelSeparation]| {
            let shown = k.min(5);
            *md += &format!(
                "\n## {heading} along the components: mean score (AUC {first} vs rest)\n\n\
             | {first} | rows |"
            );
            *md += &(1..=shown).map(|c| format!(" PC{c} |")).collect::<String>();
            *md += &format!("\n|---|---|{}\n", "---|".repeat(shown));
            for s in rows {
                *md += &format!("| {} | {} |", s.label, s.rows);
                for c in 0..shown {
                    *md += &format!(" {:+.3} ({:.2}) |", s.mean_score[c], s.auc_vs_rest[c]);
                }
                *md += "\n";
            }
        };
    // With factors, the labels are the first factor's levels: shown with the factors.
    if !report.factors.is_empty() {
        for f in &report.factors {
            separation_table(
                &mut md,
                &format!("Factor `{}`", f.factor),
                "level",
                &f.levels,
            );
        }
    } else if !report.labels.is_empty() {
        separation_table(&mut md, "Labels", "label", &report.labels);
    }
    let label = |row: &EndRow| row.label.clone().unwrap_or_else(|| "-".to_string());
    // The words were counted wherever the texts were there.
    let with_texts = report.explain.first().map(|e| e.highest_words.is_some());
    if with_texts == Some(true) {
        md += "\n## Rows and words at either end of each component\n";
        let list = |rows: &[EndRow]| {
            rows.iter()
                .map(|r| {
                    format!(
                        "- row {} ({}, {:+.3}): {}\n",
                        r.row,
                        label(r),
                        r.score,
                        one_line(r.text.as_deref().unwrap_or_default(), 100)
                    )
                })
                .collect::<String>()
        };
        let word_line = |words: &Option<Vec<WordScore>>| {
            words
                .iter()
                .flatten()
                .map(|w| format!("{} ({:.2})", w.word, w.log_odds))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for e in &report.explain {
            md += &format!(
                "\n### PC{}\n\nHighest:\n{}\nLowest:\n{}\n\
                 Words over-represented (log-odds, {} rows at each end): high end {}; \
                 low end {}\n",
                e.component,
                list(&e.highest),
                list(&e.lowest),
                report.word_rows,
                word_line(&e.highest_words),
                word_line(&e.lowest_words)
            );
        }
    } else if with_texts == Some(false) {
        md += &format!(
            "\n## Rows at either end of each component\n\nTexts unavailable (no sidecar {}).\n\n",
            texts_sidecar_path(Path::new(&report.input)).display()
        );
        let list = |rows: &[EndRow]| {
            rows.iter()
                .map(|r| format!("{} ({})", r.row, label(r)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for e in &report.explain {
            md += &format!(
                "- PC{}: highest {}; lowest {}\n",
                e.component,
                list(&e.highest),
                list(&e.lowest)
            );
        }
    }
    md
}

/// `text` on one line (whitespace runs become one space), cut to `max` characters with "…".
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
