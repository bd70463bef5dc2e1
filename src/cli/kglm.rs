//! `mscope kglm`: fit a kernel GLM on a train-by-train kernel, predict the test points from the
//! test-by-train kernel and, given the network, measure how faithful the surrogate is.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::instruments::kglm::{
    accuracy, faithfulness, Faithfulness, FitOptions, KernelGlm, DEFAULT_L2, DEFAULT_MAX_ITER,
    DEFAULT_TOL,
};
use crate::io::kernel_file::KernelFile;
use crate::io::samples::read_labels;
use crate::io::tensor_file::TensorFile;
use crate::models::mlp::Mlp;
use crate::report::{self, plot};

#[derive(Args)]
pub struct KglmArgs {
    /// Train-by-train kernel K_TT [N_train, N_train] (`mscope ntk` output); row i holds the
    /// features of training point i.
    #[arg(long)]
    train_kernel: PathBuf,
    /// Labels of the training points: a dataset (its `y`), or text (one per line), .npy or a
    /// single-tensor safetensors file.
    #[arg(long)]
    train_labels: PathBuf,
    /// Test-by-train kernel K_ST [N_test, N_train].
    #[arg(long)]
    test_kernel: PathBuf,
    /// Labels of the test points, same formats.
    #[arg(long)]
    test_labels: PathBuf,
    /// The MLP classifier the kernels describe: adds Kendall τ, R² and the accuracy differential.
    #[arg(long, requires = "test_data")]
    model: Option<PathBuf>,
    /// Test dataset whose rows are K_ST's rows, in order; the network is evaluated on it.
    #[arg(long, requires = "model")]
    test_data: Option<PathBuf>,
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
    /// Scatter of the surrogate's against the network's probability of the correct class.
    #[arg(long, requires = "model")]
    plot: Option<PathBuf>,
    /// CPU threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: KglmArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let train_kernel = KernelFile::read(&args.train_kernel)?;
    let test_kernel = KernelFile::read(&args.test_kernel)?;
    check_kernels(&args, &train_kernel, &test_kernel)?;
    let n_train = train_kernel.rows;
    let train_labels = read_class_labels(&args.train_labels)?;
    let test_labels = read_class_labels(&args.test_labels)?;
    check_count(
        &args.train_labels,
        train_labels.len(),
        n_train,
        &args.train_kernel,
    )?;
    check_count(
        &args.test_labels,
        test_labels.len(),
        test_kernel.rows,
        &args.test_kernel,
    )?;

    let network_inputs = match (&args.model, &args.test_data) {
        (Some(model), Some(data)) => Some((Mlp::read(model)?, Dataset::read(data)?)),
        _ => None,
    };
    // One-output networks are binary (their logit is class 1's log-odds): two surrogate classes.
    let classes = match &network_inputs {
        Some((mlp, _)) => mlp.num_classes().max(2),
        None => train_labels
            .iter()
            .max()
            .map_or(0, |&m| usize::try_from(m + 1).unwrap_or(0)),
    };
    let source = |path: &Path| match &args.model {
        Some(_) => format!("{} (the model has {classes} classes)", path.display()),
        None => format!(
            "{} (the training labels name {classes} classes)",
            path.display()
        ),
    };
    let train_y = class_indices(&train_labels, classes, &source(&args.train_labels))?;
    let present = (0..classes).filter(|c| train_y.contains(c)).count();
    if present < 2 {
        return Err(Error::input(format!(
            "{}: the training labels hold {present} distinct class(es); a classifier needs 2",
            args.train_labels.display()
        )));
    }
    let test_y = class_indices(&test_labels, classes, &source(&args.test_labels))?;

    let network = match &network_inputs {
        Some((mlp, data)) => Some(network_logits(&args, mlp, data, &test_labels)?),
        None => None,
    };

    let options = FitOptions {
        l2: args.l2,
        tol: args.tol,
        max_iter: args.max_iter,
    };
    let glm = KernelGlm::fit(&train_kernel.values, &train_y, classes, &options)?;
    let logits = glm.logits(&test_kernel.values);
    let faithful = network
        .as_ref()
        .map(|(net, outputs)| faithfulness(&logits, classes, net, *outputs, &test_y))
        .transpose()?;
    let accuracy_surrogate = accuracy(&logits, classes, &test_y);

    let n_test = test_y.len();
    if let Some(path) = &args.out {
        let field = |get: fn(&Faithfulness) -> f64| faithful.as_ref().map(get);
        report::write_json(
            path,
            &json!({
                "train_kernel": args.train_kernel.display().to_string(),
                "test_kernel": args.test_kernel.display().to_string(),
                "model": args.model.as_ref().map(|p| p.display().to_string()),
                "kernel_kind": train_kernel.kind,
                "normalized": train_kernel.normalized,
                "projection_dim": train_kernel.projection_dim,
                "n_train": n_train,
                "n_test": n_test,
                "classes": classes,
                "l2": args.l2,
                "tol": args.tol,
                "iterations": glm.iterations,
                "converged": glm.converged,
                "gradient_norm": glm.gradient_norm,
                "kendall_tau": field(|f| f.kendall_tau),
                "dropped_points": faithful.as_ref().map(|f| f.dropped_points),
                "r2_logits": field(|f| f.r2_logits),
                "pearson_logits": field(|f| f.pearson_logits),
                "accuracy_surrogate": accuracy_surrogate,
                "accuracy_network": field(|f| f.accuracy_network),
                "accuracy_differential": field(|f| f.accuracy_surrogate - f.accuracy_network),
            }),
        )?;
    }
    if let (Some(path), Some(f)) = (&args.plot, &faithful) {
        let points: Vec<(f64, f64)> = f
            .correct_class_probability
            .iter()
            .map(|&(surrogate, network)| (network, surrogate))
            .collect();
        plot::scatter(
            path,
            &format!("kGLM against the network, Kendall τ = {:.3}", f.kendall_tau),
            "network: probability of the correct class",
            "kGLM: probability of the correct class",
            &[plot::Series {
                label: "test points",
                points: &points,
            }],
        )?;
    }

    let kernel = if train_kernel.projection_dim == 0 {
        "exact".to_string()
    } else {
        format!("projected to {} dims", train_kernel.projection_dim)
    };
    let mut md = format!(
        "# kGLM on {}\n\nKernel `{}` ({}normalised, {kernel}); {n_train} training points, \
         {n_test} test points, {classes} classes; λ = {}.\n\nL-BFGS: {} iterations, {} \
         (‖∇‖∞ = {:.2e}, tolerance {:.0e}).\n\n",
        args.train_kernel.display(),
        train_kernel.kind,
        if train_kernel.normalized { "" } else { "not " },
        args.l2,
        glm.iterations,
        if glm.converged {
            "converged"
        } else {
            "**did not converge** (raise --max-iter or --l2)"
        },
        glm.gradient_norm,
        args.tol,
    );
    match &faithful {
        None => {
            md += &format!(
                "Surrogate test accuracy **{:.2}%**.\n",
                100.0 * accuracy_surrogate
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
                n_test - f.dropped_points,
                f.dropped_points,
                f.r2_logits,
                f.pearson_logits,
                100.0 * f.accuracy_surrogate,
                100.0 * f.accuracy_network,
                100.0 * (f.accuracy_surrogate - f.accuracy_network),
            );
        }
    }
    print!("{md}");
    Ok(())
}

/// K_TT must be square, K_ST must have one column per training point, and both must be the
/// same kind of kernel.
fn check_kernels(args: &KglmArgs, train: &KernelFile, test: &KernelFile) -> Result<()> {
    if train.rows != train.cols {
        return Err(Error::input(format!(
            "{}: the training kernel is [{}, {}]; expected a square [N_train, N_train]",
            args.train_kernel.display(),
            train.rows,
            train.cols
        )));
    }
    if test.cols != train.rows {
        return Err(Error::input(format!(
            "{}: the test kernel has {} columns but {} has {} training points (one column each)",
            args.test_kernel.display(),
            test.cols,
            args.train_kernel.display(),
            train.rows
        )));
    }
    let describe = |k: &KernelFile| (k.kind.clone(), k.normalized, k.projection_dim);
    if describe(train) != describe(test) {
        return Err(Error::input(format!(
            "{} is a {:?} kernel (kind, normalized, projection_dim) but {} a {:?} one",
            args.train_kernel.display(),
            describe(train),
            args.test_kernel.display(),
            describe(test)
        )));
    }
    Ok(())
}

fn check_count(labels: &Path, count: usize, rows: usize, kernel: &Path) -> Result<()> {
    if count == rows {
        return Ok(());
    }
    Err(Error::input(format!(
        "{} has {count} labels but {} has {rows} rows",
        labels.display(),
        kernel.display()
    )))
}

/// Class labels of a dataset (its `y`) or of any file [`read_labels`] takes.
fn read_class_labels(path: &Path) -> Result<Vec<i64>> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors && TensorFile::read(path)?.contains("x") {
        return Ok(Dataset::read(path)?.y);
    }
    read_labels(path)
}

/// Labels as class indices, each checked to be in `0..classes`.
fn class_indices(labels: &[i64], classes: usize, source: &str) -> Result<Vec<usize>> {
    labels
        .iter()
        .enumerate()
        .map(|(row, &label)| match usize::try_from(label) {
            Ok(c) if c < classes => Ok(c),
            _ => Err(Error::input(format!(
                "{source}: label {label} of row {row} is outside 0..{classes}"
            ))),
        })
        .collect()
}

/// The network's test logits `[n, outputs]` and its number of outputs; the test data must hold
/// the test points in kernel order, so its labels must be the test labels.
fn network_logits(
    args: &KglmArgs,
    mlp: &Mlp,
    test: &Dataset,
    test_labels: &[i64],
) -> Result<(Vec<f32>, usize)> {
    let (model, data) = (
        args.model.as_deref().expect("clap requires --model"),
        args.test_data
            .as_deref()
            .expect("clap requires --test-data"),
    );
    if test.dim != mlp.input_dim() {
        return Err(Error::input(format!(
            "{}: rows have {} features but {} takes {}",
            data.display(),
            test.dim,
            model.display(),
            mlp.input_dim()
        )));
    }
    if test.len() != test_labels.len() {
        return Err(Error::input(format!(
            "{} has {} rows but there are {} test labels",
            data.display(),
            test.len(),
            test_labels.len()
        )));
    }
    if let Some(row) = (0..test.len()).find(|&i| test.y[i] != test_labels[i]) {
        return Err(Error::input(format!(
            "{}: label {} of row {row} differs from the test labels' {} (are the rows in the \
             test kernel's order?)",
            data.display(),
            test.y[row],
            test_labels[row]
        )));
    }
    Ok((mlp.logits(&test.x)?, mlp.num_classes()))
}
