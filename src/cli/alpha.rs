//! `mscope alpha`: the trimmed comparison of one candidate sample with a reference sample.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::backend::trim;
use crate::backend::{self, BackendKind, OpFamily, TrimReference, TrimSpec, W2Grid};
use crate::error::Result;
use crate::io::samples::read_sample;
use crate::report::plot;

#[derive(Args)]
pub struct AlphaArgs {
    /// Candidate sample: text (one number per line), .npy or .safetensors.
    #[arg(long)]
    candidate: PathBuf,
    /// Reference sample, same formats.
    #[arg(long)]
    reference: PathBuf,
    /// Test level in (0, 1).
    #[arg(long, default_value_t = 0.05)]
    level: f64,
    /// Trimming level of the trimmed W2 cost [default: α̂].
    #[arg(long)]
    w2_alpha: Option<f64>,
    /// Print JSON instead of the Markdown summary.
    #[arg(long)]
    json: bool,
    /// Also give d(α) at α = i/STEPS, i = 0..STEPS.
    #[arg(long, num_args = 0..=1, default_missing_value = "20", value_name = "STEPS")]
    curve: Option<usize>,
    /// Plot d(α) with the threshold and α̂ to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
}

pub fn run(args: AlphaArgs) -> Result<()> {
    let candidate = read_sample(&args.candidate)?;
    let reference = read_sample(&args.reference)?;
    let backend = backend::open(args.backend, OpFamily::Trim)?;
    let spec = TrimSpec {
        level: args.level,
        w2_alpha: args.w2_alpha,
        // One reference sample: the merged grid is always used.
        w2_grid: W2Grid::Merged,
    };
    let r = backend.trim_search(&[&candidate], TrimReference::Sample(&reference), &spec)?[0];

    let curve = match (args.curve, &args.plot) {
        (None, None) => Vec::new(),
        (steps, _) => {
            let steps = steps.unwrap_or(100).max(1);
            let profile =
                trim::Profile::from_sorted(&trim::sorted(&candidate), &trim::sorted(&reference));
            (0..steps)
                .map(|i| {
                    let alpha = i as f64 / steps as f64;
                    (alpha, profile.distance(alpha))
                })
                .collect()
        }
    };
    if let Some(path) = &args.plot {
        let threshold = [(0.0, r.threshold), (1.0, r.threshold)];
        let marker = [(r.alpha_hat, 0.0), (r.alpha_hat, r.ks)];
        let alpha_label = format!("α-hat = {:.4}", r.alpha_hat);
        plot::lines(
            path,
            "Kolmogorov distance to the α-trimmings of the candidate",
            "trimming level α",
            "d(α)",
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
        )?;
    }

    let w2_alpha = args.w2_alpha.unwrap_or(r.alpha_hat);
    if args.json {
        let mut out = json!({
            "alpha_hat": r.alpha_hat,
            "ks": r.ks,
            "threshold": r.threshold,
            "level": args.level,
            "n_candidate": r.n_candidate,
            "n_reference": r.n_reference,
            "trimmed_w2": r.trimmed_w2,
            "w2_alpha": w2_alpha,
        });
        if args.curve.is_some() {
            out["curve"] = curve
                .iter()
                .map(|&(alpha, d)| json!({"alpha": alpha, "distance": d}))
                .collect();
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("a JSON value serialises")
        );
        return Ok(());
    }
    println!(
        "## α̂: {} vs {}\n",
        args.candidate.display(),
        args.reference.display()
    );
    println!(
        "| α̂ | KS d(0) | threshold (level {}) | trimmed W2 at α = {w2_alpha:.4} | n | m |",
        args.level
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.6} | {:.6} | {:.6} | {:.6} | {} | {} |",
        r.alpha_hat, r.ks, r.threshold, r.trimmed_w2, r.n_candidate, r.n_reference
    );
    if args.curve.is_some() {
        println!("\n| α | d(α) |\n|---|---|");
        for (alpha, d) in &curve {
            println!("| {alpha:.3} | {d:.6} |");
        }
    }
    Ok(())
}
