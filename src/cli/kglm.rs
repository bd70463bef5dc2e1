//! `mscope kglm`: fit a kernel GLM on a train-by-train kernel, predict the test points from the
//! test-by-train kernel and, given the network, measure how faithful the surrogate is.

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::instruments::kglm::{self, FitOptions, DEFAULT_L2, DEFAULT_MAX_ITER, DEFAULT_TOL};
use crate::io::check_outputs;
use crate::io::kernel_inputs::{KglmInputs, KglmPaths, NetworkPaths};
use crate::io::texts::FieldNames;
use crate::report;

#[derive(Args)]
pub struct KglmArgs {
    /// Train-by-train kernel K_TT [N_train, N_train] (`mscope ntk` output); row i holds the
    /// features of training point i.
    #[arg(long)]
    train_kernel: PathBuf,
    /// Labels of the training points: a dataset (its `y`), or text (one per line), .npy or a
    /// single-tensor safetensors file; with a transformer classifier as --model, also labelled
    /// texts (.jsonl, .csv, .tsv: the --label-field of each row, a name of the model's labels
    /// or a class index).
    #[arg(long)]
    train_labels: PathBuf,
    /// Test-by-train kernel K_ST [N_test, N_train].
    #[arg(long)]
    test_kernel: PathBuf,
    /// Labels of the test points, same formats.
    #[arg(long)]
    test_labels: PathBuf,
    /// The classifier the kernels describe — an MLP (safetensors) or a transformer sequence
    /// classifier directory (as `ntk --model` takes; run on the CPU in f32): adds Kendall τ, R²
    /// and the accuracy differential.
    #[arg(long, requires = "test_data")]
    model: Option<PathBuf>,
    /// The test points, K_ST's rows in order, which the network is evaluated on: a dataset for
    /// an MLP, labelled texts (.jsonl, .csv, .tsv) for a transformer classifier.
    #[arg(long, requires = "model")]
    test_data: Option<PathBuf>,
    /// Text field of .jsonl / column of .csv and .tsv texts (transformer classifiers).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Label field of .jsonl / column of .csv and .tsv texts (transformer classifiers).
    #[arg(long, default_value = "label")]
    label_field: String,
    /// L2 penalty λ on the coefficients: the objective is Σ log-loss + λ/2·‖W‖², scikit-learn's
    /// LogisticRegression(C = 1/λ); the default is its C = 1.
    #[arg(long, default_value_t = DEFAULT_L2)]
    l2: f64,
    /// L-BFGS iterations at most.
    #[arg(long, default_value_t = DEFAULT_MAX_ITER)]
    max_iter: usize,
    /// Converged when ‖∇‖∞ of the objective divided by N_train is at most this.
    #[arg(long, default_value_t = DEFAULT_TOL)]
    tol: f64,
    /// JSON report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Scatter of the surrogate's against the network's probability of the correct class
    /// (.png or .svg).
    #[arg(long, requires = "model")]
    plot: Option<PathBuf>,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: KglmArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &[
            ("--train-kernel", Some(&args.train_kernel)),
            ("--train-labels", Some(&args.train_labels)),
            ("--test-kernel", Some(&args.test_kernel)),
            ("--test-labels", Some(&args.test_labels)),
            ("--model", args.model.as_deref()),
            ("--test-data", args.test_data.as_deref()),
        ],
        &[
            ("--out", args.out.as_deref()),
            ("--plot", args.plot.as_deref()),
        ],
    )?;
    let fields = FieldNames {
        text: args.text_field.clone(),
        label: args.label_field.clone(),
    };
    let inputs =
        KglmInputs::read(&KglmPaths {
            train_kernel: &args.train_kernel,
            train_labels: &args.train_labels,
            test_kernel: &args.test_kernel,
            test_labels: &args.test_labels,
            network: args.model.as_deref().zip(args.test_data.as_deref()).map(
                |(model, test_data)| NetworkPaths {
                    model,
                    test_data,
                    fields: &fields,
                },
            ),
        })?;
    let options = FitOptions {
        l2: args.l2,
        tol: args.tol,
        max_iter: args.max_iter,
    };
    let files = (
        args.train_kernel.as_path(),
        args.test_kernel.as_path(),
        args.model.as_deref(),
    );
    let report = kglm::report(&inputs, files, &options)?;
    if let Some(path) = &args.out {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        report::kglm::plot(&report, path)?;
    }
    out!("{}", report::kglm::markdown(&report))?;
    Ok(())
}
