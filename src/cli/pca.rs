//! `mscope pca`: principal components of an embeddings file, what each one separates, plots.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::backend::{self, BackendKind, OpFamily};
use crate::error::{Error, Result};
use crate::instruments::pca::{distinctive_words, extremes, separation, Pca, WordScore};
use crate::io::embeddings::{read_texts_sidecar, texts_sidecar_path, EmbeddingsFile};
use crate::report::{self, plot};

#[derive(Args)]
pub struct PcaArgs {
    /// Embeddings file written by `mscope embed`.
    #[arg(long)]
    input: PathBuf,
    /// Principal components to keep [default: 10, or the dimension if smaller].
    #[arg(long)]
    components: Option<usize>,
    /// JSON report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// PC1×PC2 scatter coloured by label; STEM.pc2-pc3.png and STEM.variance.png beside it.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// List the N rows with the highest and the lowest score on each component, with their texts
    /// and the words over-represented at each end when `mscope embed`'s texts sidecar is there.
    #[arg(long, default_value_t = 0, value_name = "N")]
    explain: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Reads an embeddings file and rejects non-finite values, naming the row.
pub(super) fn read_embeddings(path: &Path) -> Result<EmbeddingsFile> {
    let file = EmbeddingsFile::read(path)?;
    if let Some(i) = file.embeddings.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "{}: `embeddings` row {}, column {} is {}",
            path.display(),
            i / file.dim,
            i % file.dim,
            file.embeddings[i]
        )));
    }
    Ok(file)
}

/// `dir/stem.png` → `dir/stem.{suffix}.png`.
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}.{suffix}.png"))
}

/// Points of each label (and of unlabelled rows) taken from `[n, k]` coordinates.
pub(super) fn points_by_label(
    coords: &[f64],
    k: usize,
    (cx, cy): (usize, Option<usize>),
    labels: &[i64],
    names: &[String],
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut groups: Vec<(String, Vec<(f64, f64)>)> =
        names.iter().map(|n| (n.clone(), Vec::new())).collect();
    groups.push(("(no label)".to_string(), Vec::new()));
    for (i, &l) in labels.iter().enumerate() {
        let slot = if l >= 0 { l as usize } else { names.len() };
        let y = cy.map_or(slot as f64, |cy| coords[i * k + cy]);
        groups[slot].1.push((coords[i * k + cx], y));
    }
    groups.retain(|(_, p)| !p.is_empty());
    groups
}

pub(super) fn scatter_plot(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    groups: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let series: Vec<plot::Series> = groups
        .iter()
        .map(|(label, points)| plot::Series { label, points })
        .collect();
    plot::scatter(path, title, x_label, y_label, &series)
}

pub fn run(args: PcaArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let file = read_embeddings(&args.input)?;
    let backend = backend::open(args.backend, OpFamily::Stats)?;
    let k = args.components.unwrap_or(file.dim.min(10));
    let x = backend.upload(&[file.rows(), file.dim], &file.embeddings)?;
    let pca = Pca::fit(backend.as_ref(), &x, k)
        .map_err(|e| Error::input(format!("{}: {e}", args.input.display())))?;
    let scores = pca.scores(&file.embeddings);
    let labels = separation(&scores, k, &file.labels, &file.label_names);
    let sidecar = texts_sidecar_path(&args.input);
    let texts = if args.explain > 0 {
        read_texts_sidecar(&sidecar, file.rows())?
    } else {
        None
    };
    // Words are counted over at least a tenth of the rows at each end (N rows say little about
    // word use), and the two ends never share a row.
    let word_rows = args.explain.max(pca.n / 10).min(pca.n / 2);
    let ends = if args.explain > 0 {
        extremes(&scores, k, args.explain.max(word_rows))
    } else {
        Vec::new()
    };
    let shown = |rows: &[usize]| rows[..args.explain.min(rows.len())].to_vec();
    let words: Vec<(Vec<WordScore>, Vec<WordScore>)> = match &texts {
        Some(texts) => ends
            .iter()
            .map(|e| {
                let pick = |rows: &[usize]| -> Vec<&str> {
                    rows[..word_rows]
                        .iter()
                        .map(|&r| texts[r].as_str())
                        .collect()
                };
                distinctive_words(&pick(&e.highest), &pick(&e.lowest), 8)
            })
            .collect(),
        None => Vec::new(),
    };
    let label_of = |row: usize| {
        usize::try_from(file.labels[row])
            .ok()
            .map(|l| file.label_names[l].as_str())
    };

    if let Some(path) = &args.out {
        let word_list = |words: &[WordScore]| -> Vec<_> {
            words
                .iter()
                .map(|w| json!({"word": w.word, "log_odds": w.log_odds}))
                .collect()
        };
        let explain: Vec<_> = ends
            .iter()
            .enumerate()
            .map(|(c, e)| {
                let rows = |rows: &[usize]| -> Vec<_> {
                    shown(rows)
                        .into_iter()
                        .map(|r| {
                            let score = scores[r * k + c];
                            let mut row = json!({"row": r, "label": label_of(r), "score": score});
                            if let Some(texts) = &texts {
                                row["text"] = json!(texts[r]);
                            }
                            row
                        })
                        .collect()
                };
                let (highest, lowest) = (rows(&e.highest), rows(&e.lowest));
                let mut entry = json!({"component": c + 1, "highest": highest, "lowest": lowest});
                if let Some((high, low)) = words.get(c) {
                    entry["highest_words"] = json!(word_list(high));
                    entry["lowest_words"] = json!(word_list(low));
                }
                entry
            })
            .collect();
        let components: Vec<&[f64]> = pca.components.data.chunks(pca.dim).collect();
        let value = json!({
            "input": args.input.display().to_string(),
            "model": file.model,
            "n": pca.n,
            "dim": pca.dim,
            "n_components": k,
            "explained_variance": pca.explained_variance,
            "explained_variance_ratio": pca.explained_variance_ratio,
            "components": components,
            "mean": pca.mean,
            "labels": labels.iter().map(|s| json!({
                "label": s.label,
                "rows": s.rows,
                "mean_score": s.mean_score,
                "auc_vs_rest": s.auc_vs_rest,
            })).collect::<Vec<_>>(),
            "explain": explain,
        });
        report::write_json(path, &value)?;
    }
    if let Some(path) = &args.plot {
        let title = format!("PCA of {}", file_name(&args.input));
        if k >= 2 {
            let groups = points_by_label(&scores, k, (0, Some(1)), &file.labels, &file.label_names);
            scatter_plot(path, &title, ("PC1", "PC2"), &groups)?;
        } else {
            let groups = points_by_label(&scores, k, (0, None), &file.labels, &file.label_names);
            scatter_plot(path, &title, ("PC1", "label"), &groups)?;
        }
        if k >= 3 {
            let groups = points_by_label(&scores, k, (1, Some(2)), &file.labels, &file.label_names);
            scatter_plot(&sibling(path, "pc2-pc3"), &title, ("PC2", "PC3"), &groups)?;
        }
        let names: Vec<String> = (1..=k).map(|c| format!("PC{c}")).collect();
        plot::bars(
            &sibling(path, "variance"),
            &format!("Explained variance ratio, {}", file_name(&args.input)),
            "component",
            "share of the variance",
            &names,
            &pca.explained_variance_ratio,
        )?;
    }

    let mut md = format!(
        "# PCA of {}\n\n{} rows × {} dims{}; {k} components hold {:.1}% of the variance.\n\n\
         | component | variance | ratio | cumulative |\n|---|---|---|---|\n",
        args.input.display(),
        pca.n,
        pca.dim,
        if file.model.is_empty() {
            String::new()
        } else {
            format!(" ({})", file.model)
        },
        100.0 * pca.explained_variance_ratio.iter().sum::<f64>()
    );
    let mut cumulative = 0.0;
    for (c, (v, r)) in pca
        .explained_variance
        .iter()
        .zip(&pca.explained_variance_ratio)
        .enumerate()
    {
        cumulative += r;
        md += &format!("| PC{} | {v:.4e} | {r:.4} | {cumulative:.4} |\n", c + 1);
    }
    if !labels.is_empty() {
        let shown = k.min(5);
        md +=
            "\n## Labels along the components: mean score (AUC label vs rest)\n\n| label | rows |";
        md += &(1..=shown).map(|c| format!(" PC{c} |")).collect::<String>();
        md += &format!("\n|---|---|{}\n", "---|".repeat(shown));
        for s in &labels {
            md += &format!("| {} | {} |", s.label, s.rows);
            for c in 0..shown {
                md += &format!(" {:+.3} ({:.2}) |", s.mean_score[c], s.auc_vs_rest[c]);
            }
            md += "\n";
        }
    }
    if let Some(texts) = &texts {
        md += "\n## Rows and words at either end of each component\n";
        let list = |rows: &[usize], c: usize| {
            shown(rows)
                .into_iter()
                .map(|r| {
                    format!(
                        "- row {r} ({}, {:+.3}): {}\n",
                        label_of(r).unwrap_or("-"),
                        scores[r * k + c],
                        one_line(&texts[r], 100)
                    )
                })
                .collect::<String>()
        };
        let word_line = |words: &[WordScore]| {
            words
                .iter()
                .map(|w| format!("{} ({:.2})", w.word, w.log_odds))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (c, (e, (high, low))) in ends.iter().zip(&words).enumerate() {
            md += &format!(
                "\n### PC{}\n\nHighest:\n{}\nLowest:\n{}\n\
                 Words over-represented (log-odds, {word_rows} rows at each end): high end {}; \
                 low end {}\n",
                c + 1,
                list(&e.highest, c),
                list(&e.lowest, c),
                word_line(high),
                word_line(low)
            );
        }
    } else if args.explain > 0 {
        md += &format!(
            "\n## Rows at either end of each component\n\nTexts unavailable (no sidecar {}).\n\n",
            sidecar.display()
        );
        let list = |rows: &[usize]| {
            shown(rows)
                .into_iter()
                .map(|r| format!("{r} ({})", label_of(r).unwrap_or("-")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (c, e) in ends.iter().enumerate() {
            md += &format!(
                "- PC{}: highest {}; lowest {}\n",
                c + 1,
                list(&e.highest),
                list(&e.lowest)
            );
        }
    }
    print!("{md}");
    Ok(())
}

/// `text` on one line (whitespace runs become one space), cut to `max` characters with "…".
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}
