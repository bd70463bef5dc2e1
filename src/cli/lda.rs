//! `mscope lda`: do the labels separate? LDA accuracy over stratified splits, the confusion
//! matrix, and with `--pairwise` the accuracy of every pair of labels.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::pca::{file_name, points_by_label, read_embeddings, scatter_plot, sibling};
use crate::backend::{self, BackendKind, Matrix64, OpFamily};
use crate::error::{Error, Result};
use crate::instruments::lda::{evaluate, mean_std, Classes, Projection, Shrinkage};
use crate::instruments::splits;
use crate::report::{self, plot};

#[derive(Args)]
pub struct LdaArgs {
    /// Embeddings file written by `mscope embed` (rows without a label are left out).
    #[arg(long)]
    input: PathBuf,
    /// Stratified train/test splits.
    #[arg(long, default_value_t = 50)]
    splits: usize,
    /// Share of each label's rows in the test part.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// none (scikit-learn's svd solver), auto (Ledoit–Wolf) or a number in [0, 1].
    #[arg(long, default_value = "none")]
    shrinkage: Shrinkage,
    /// Also the accuracy of every pair of labels (a K×K table).
    #[arg(long)]
    pairwise: bool,
    /// JSON report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// LD1×LD2 scatter coloured by label; with --pairwise also STEM.pairwise.png (heat map).
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: LdaArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    if args.splits == 0 {
        return Err(Error::input("--splits must be at least 1"));
    }
    let file = read_embeddings(&args.input)?;
    let in_file = |e: Error| Error::input(format!("{}: {e}", args.input.display()));
    let classes = Classes::from_labels(&file.labels, &file.label_names).map_err(in_file)?;
    let splits = splits::stratified(&classes.rows, args.splits, args.test_fraction, args.seed)
        .map_err(|e| Error::input(format!("--test-fraction: {e}")))?;
    let backend = backend::open(args.backend, OpFamily::Stats)?;
    let x = backend.upload(&[file.rows(), file.dim], &file.embeddings)?;
    let rows = &file.embeddings;
    let eval = evaluate(
        backend.as_ref(),
        &x,
        rows,
        &classes,
        &splits,
        args.shrinkage,
        args.pairwise,
    )
    .map_err(in_file)?;
    let projection =
        Projection::fit(backend.as_ref(), &x, rows, &classes, args.shrinkage).map_err(in_file)?;
    let (mean, std) = mean_std(&eval.accuracies);
    let n: usize = classes.rows.iter().map(Vec::len).sum();
    let k = classes.len();

    if let Some(path) = &args.out {
        let table = |m: &Matrix64| m.data.chunks(k).map(<[f64]>::to_vec).collect::<Vec<_>>();
        let mut value = json!({
            "input": args.input.display().to_string(),
            "model": file.model,
            "n": n,
            "dim": file.dim,
            "labels": classes.names,
            "splits": args.splits,
            "test_fraction": args.test_fraction,
            "seed": args.seed,
            "shrinkage": args.shrinkage.to_string(),
            "accuracy_mean": mean,
            "accuracy_std": std,
            "accuracies": eval.accuracies,
            "confusion": eval.confusion,
            "explained_variance_ratio": projection.explained_variance_ratio,
        });
        if let Some(p) = &eval.pairwise {
            value["pairwise"] = json!({
                "labels": classes.names,
                "accuracy_mean": table(&p.accuracy_mean),
                "accuracy_std": table(&p.accuracy_std),
            });
        }
        report::write_json(path, &value)?;
    }
    if let Some(path) = &args.plot {
        let coords = projection.transform(rows);
        let m = projection.directions.cols;
        let title = format!("LDA of {}", file_name(&args.input));
        let groups = if m >= 2 {
            points_by_label(&coords, m, (0, Some(1)), &file.labels, &file.label_names)
        } else {
            points_by_label(&coords, m, (0, None), &file.labels, &file.label_names)
        };
        let axes = if m >= 2 {
            ("LD1", "LD2")
        } else {
            ("LD1", "label")
        };
        scatter_plot(path, &title, axes, &groups)?;
        if let Some(p) = &eval.pairwise {
            plot::heatmap(
                &sibling(path, "pairwise"),
                &format!("Pairwise LDA accuracy, {}", file_name(&args.input)),
                &classes.names,
                &classes.names,
                &p.accuracy_mean.data,
                (0.5, 1.0),
            )?;
        }
    }

    let majority = classes.rows.iter().map(Vec::len).max().unwrap_or(0) as f64 / n as f64;
    let mut md = format!(
        "# LDA of {}\n\n{k} labels, {n} labelled rows × {} dims; {} stratified splits \
         (test fraction {}, seed {}), shrinkage {}.\n\n\
         **Accuracy {:.2}% ± {:.2}** (sd over splits; majority label {:.1}%).\n\n\
         ## Confusion over all splits (rows: true, columns: predicted)\n\n| |",
        args.input.display(),
        file.dim,
        args.splits,
        args.test_fraction,
        args.seed,
        args.shrinkage,
        100.0 * mean,
        100.0 * std,
        100.0 * majority
    );
    let header = |md: &mut String| {
        *md += &classes
            .names
            .iter()
            .map(|l| format!(" {l} |"))
            .collect::<String>();
        *md += &format!("\n|---|{}\n", "---|".repeat(k));
    };
    header(&mut md);
    for (name, row) in classes.names.iter().zip(&eval.confusion) {
        md += &format!(
            "| {name} |{}\n",
            row.iter().map(|c| format!(" {c} |")).collect::<String>()
        );
    }
    if let Some(p) = &eval.pairwise {
        md += "\n## Pairwise accuracy (mean ± sd over splits, %)\n\n| |";
        header(&mut md);
        for (a, name) in classes.names.iter().enumerate() {
            md += &format!("| {name} |");
            for b in 0..k {
                md += &if a == b {
                    " – |".to_string()
                } else {
                    format!(
                        " {:.1} ± {:.1} |",
                        100.0 * p.accuracy_mean.at(a, b),
                        100.0 * p.accuracy_std.at(a, b)
                    )
                };
            }
            md += "\n";
        }
    }
    print!("{md}");
    Ok(())
}
