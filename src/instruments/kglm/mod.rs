//! Kernel GLM surrogate of a classifier and its faithfulness to the network.
//!
//! A kGLM (Engel et al., ICLR 2024, "Faithful and efficient explanations for neural networks via
//! neural tangent kernel surrogate models") is a multinomial logistic regression whose features
//! are a point's kernel row against the training set. How well it agrees with the network on
//! test points — Kendall τ between the two models' probabilities of the correct class — measures
//! how faithful the kernel is. Their reference: the trNTK kGLM of an MNIST 0-vs-1 MLP
//! (784-100-100-100-1) reaches τ ≈ 0.708.
//!
//! The fit minimises `Σ_i −log softmax(Wᵀk_i + b)_{y_i} + (λ/2)‖W‖²` (intercept unpenalised),
//! scikit-learn's `LogisticRegression(C = 1/λ)` objective `C·Σ loss + ½‖W‖²` divided by `C`, so
//! both land on the same (unique) optimum. It runs in f64 by L-BFGS on that objective divided by
//! `n`, as scikit-learn scales it, which makes the gradient tolerance independent of `n`.

mod correlation;

use std::collections::VecDeque;
use std::path::Path;

use serde::Serialize;

use crate::backend::cpu::{gemm, Operand};
use crate::data::scores::argmax;
use crate::error::{Error, Result};
use crate::io::kernel_inputs::KglmInputs;

pub use correlation::{kendall_tau_b, pearson, r2_score};

/// scikit-learn's default `C = 1`.
pub const DEFAULT_L2: f64 = 1.0;
/// On `‖∇‖_∞` of the objective divided by `n`: 100× tighter than scikit-learn's default, since
/// the surrogate is compared with the network point by point.
pub const DEFAULT_TOL: f64 = 1e-6;
pub const DEFAULT_MAX_ITER: usize = 5000;
/// Curvature pairs L-BFGS keeps.
const MEMORY: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitOptions {
    /// `λ`, the L2 penalty on the coefficients (`1/C` in scikit-learn's terms).
    pub l2: f64,
    /// Converged when `‖∇f‖_∞ ≤ tol`, `f` the objective divided by `n`.
    pub tol: f64,
    pub max_iter: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            l2: DEFAULT_L2,
            tol: DEFAULT_TOL,
            max_iter: DEFAULT_MAX_ITER,
        }
    }
}

/// A fitted kernel GLM.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelGlm {
    /// Number of training points (kernel columns).
    pub features: usize,
    pub classes: usize,
    /// Row-major `[features, classes]`: scikit-learn's `coef_` transposed.
    pub weights: Vec<f64>,
    /// Summing to zero: softmax ignores a common shift of the intercepts and L-BFGS started at
    /// zero never leaves that plane (the loss gradient sums to zero over classes).
    pub intercept: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    /// `‖∇f‖_∞` at the returned coefficients.
    pub gradient_norm: f64,
}

impl KernelGlm {
    /// Fits on `kernel: [n, features]` (row `i`: training point `i` against every training
    /// point) with class indices `labels: [n]` below `classes`.
    ///
    /// The kernel is widened to f64 once (8·n·features bytes: 800 MB at n = 10⁴) so that each
    /// L-BFGS evaluation is two f64 GEMMs, `K·W` and `Kᵀ·(P − Y)`, each one pass over it.
    pub fn fit(
        kernel: &[f32],
        labels: &[usize],
        classes: usize,
        options: &FitOptions,
    ) -> Result<Self> {
        let n = labels.len();
        if n == 0 || !kernel.len().is_multiple_of(n) {
            return Err(Error::input(format!(
                "kGLM: {} kernel values do not make {n} rows",
                kernel.len()
            )));
        }
        if let Some(i) = labels.iter().position(|&y| y >= classes) {
            return Err(Error::input(format!(
                "kGLM: label {} of row {i} is not below {classes} classes",
                labels[i]
            )));
        }
        if !(options.l2 > 0.0 && options.l2.is_finite()) {
            return Err(Error::input(format!(
                "kGLM: the L2 penalty must be positive, got {}",
                options.l2
            )));
        }
        if !(options.tol > 0.0 && options.tol.is_finite()) {
            return Err(Error::input(format!(
                "kGLM: --tol must be a positive number, got {}",
                options.tol
            )));
        }
        let objective = Objective {
            kernel: widen(kernel),
            labels,
            rows: n,
            features: kernel.len() / n,
            classes,
            l2: options.l2,
        };
        let size = objective.features * classes;
        let start = vec![0.0; size + classes];
        let found = minimise(
            |theta, grad| objective.value_and_gradient(theta, grad),
            start,
            options.tol,
            options.max_iter,
        );
        let (weights, intercept) = found.point.split_at(size);
        Ok(KernelGlm {
            features: objective.features,
            classes,
            weights: weights.to_vec(),
            intercept: intercept.to_vec(),
            iterations: found.iterations,
            converged: found.converged,
            gradient_norm: found.gradient_norm,
        })
    }

    /// Logits `[rows, classes]` of the points whose kernel rows are `kernel: [rows, features]`.
    pub fn logits(&self, kernel: &[f32]) -> Vec<f64> {
        linear(
            &widen(kernel),
            &self.weights,
            &self.intercept,
            self.features,
        )
    }
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// `K·W + 1bᵀ` for row-major `kernel: [rows, features]`, `weights: [features, classes]`.
fn linear(kernel: &[f64], weights: &[f64], intercept: &[f64], features: usize) -> Vec<f64> {
    let (rows, classes) = (kernel.len() / features, intercept.len());
    let mut z = vec![0.0; rows * classes];
    gemm(
        &mut z,
        Operand::plain(kernel, rows, features),
        Operand::plain(weights, features, classes),
        false,
    );
    z.chunks_exact_mut(classes)
        .for_each(|row| row.iter_mut().zip(intercept).for_each(|(z, b)| *z += b));
    z
}

/// `log Σ_c exp(z_c)`, shifted by the maximum so nothing overflows.
fn log_sum_exp(z: &[f64]) -> f64 {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Row-wise softmax of `logits: [rows, classes]`.
pub fn softmax(logits: &[f64], classes: usize) -> Vec<f64> {
    logits
        .chunks_exact(classes)
        .flat_map(|z| {
            let lse = log_sum_exp(z);
            z.iter().map(move |v| (v - lse).exp())
        })
        .collect()
}

/// The penalised multinomial log-loss divided by `n`, over `θ = [W (features×classes), b]`.
struct Objective<'a> {
    kernel: Vec<f64>,
    labels: &'a [usize],
    rows: usize,
    features: usize,
    classes: usize,
    l2: f64,
}

impl Objective<'_> {
    fn value_and_gradient(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (c, size) = (self.classes, self.features * self.classes);
        let (w, b) = theta.split_at(size);
        // Logits, then in place the residuals softmax(z) − onehot(y) the gradient needs.
        let mut residual = linear(&self.kernel, w, b, self.features);
        let mut loss = 0.0;
        for (z, &y) in residual.chunks_exact_mut(c).zip(self.labels) {
            let lse = log_sum_exp(z);
            loss += lse - z[y];
            z.iter_mut().for_each(|v| *v = (*v - lse).exp());
            z[y] -= 1.0;
        }
        let (grad_w, grad_b) = grad.split_at_mut(size);
        gemm(
            grad_w,
            Operand::transposed(&self.kernel, self.rows, self.features),
            Operand::plain(&residual, self.rows, c),
            false,
        );
        grad_w
            .iter_mut()
            .zip(w)
            .for_each(|(g, w)| *g += self.l2 * w);
        grad_b.fill(0.0);
        for r in residual.chunks_exact(c) {
            grad_b.iter_mut().zip(r).for_each(|(g, r)| *g += r);
        }
        let scale = 1.0 / self.rows as f64;
        grad.iter_mut().for_each(|g| *g *= scale);
        let penalty = 0.5 * self.l2 * w.iter().map(|v| v * v).sum::<f64>();
        (loss + penalty) * scale
    }
}

/// L-BFGS curvature pairs `(s, y, 1/sᵀy)`, oldest first.
type Pairs = VecDeque<(Vec<f64>, Vec<f64>, f64)>;

struct Minimum {
    point: Vec<f64>,
    iterations: usize,
    converged: bool,
    gradient_norm: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// L-BFGS (Nocedal & Wright, algorithms 7.4 and 7.5) from `point` until `‖∇f‖_∞ ≤ tol` or
/// `max_iter` iterations, for a smooth convex `f` given as `f(θ, ∇f out) → f(θ)`.
///
/// Steps are found by backtracking from 1. A step is taken when it satisfies Armijo's
/// sufficient decrease or, near the optimum where decreases fall below f64's resolution of `f`,
/// Hager and Zhang's approximate Wolfe condition (the directional derivative has shrunk while
/// `f` has not grown beyond rounding). When no step is found the search stops unconverged.
fn minimise(
    f: impl Fn(&[f64], &mut [f64]) -> f64,
    mut point: Vec<f64>,
    tol: f64,
    max_iter: usize,
) -> Minimum {
    const ARMIJO: f64 = 1e-4;
    const HALVINGS: usize = 60;
    let dim = point.len();
    let mut grad = vec![0.0; dim];
    let mut value = f(&point, &mut grad);
    let mut pairs = Pairs::with_capacity(MEMORY);
    let (mut trial, mut trial_grad) = (vec![0.0; dim], vec![0.0; dim]);
    let mut iterations = 0;
    while max_abs(&grad) > tol && iterations < max_iter {
        let mut direction = two_loop(&grad, &pairs);
        let mut slope = dot(&grad, &direction);
        if slope >= 0.0 {
            // Not a descent direction (stale curvature): restart from steepest descent.
            pairs.clear();
            direction = grad.iter().map(|g| -g).collect();
            slope = -dot(&grad, &grad);
        }
        // Without curvature information the first step is scaled to length 1.
        let mut step = if pairs.is_empty() {
            (1.0 / dot(&direction, &direction).sqrt()).min(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..HALVINGS {
            trial
                .iter_mut()
                .zip(&point)
                .zip(&direction)
                .for_each(|((t, x), d)| *t = x + step * d);
            let trial_value = f(&trial, &mut trial_grad);
            let armijo = trial_value <= value + ARMIJO * step * slope;
            let approximate_wolfe = trial_value <= value + 1e-12 * value.abs()
                && dot(&trial_grad, &direction) <= (1.0 - 2.0 * ARMIJO) * -slope;
            if armijo || approximate_wolfe {
                accepted = Some(trial_value);
                break;
            }
            step *= 0.5;
        }
        let Some(trial_value) = accepted else {
            break;
        };
        let s: Vec<f64> = trial.iter().zip(&point).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = trial_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        // A convex f gives sᵀy ≥ 0; keep only pairs with clear curvature.
        if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
            if pairs.len() == MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(&mut point, &mut trial);
        std::mem::swap(&mut grad, &mut trial_grad);
        value = trial_value;
        iterations += 1;
    }
    let gradient_norm = max_abs(&grad);
    Minimum {
        point,
        iterations,
        converged: gradient_norm <= tol,
        gradient_norm,
    }
}

/// `−H·∇f` with `H` the L-BFGS inverse-Hessian estimate of `pairs`, initially scaled by
/// `sᵀy / yᵀy` of the newest pair.
fn two_loop(grad: &[f64], pairs: &Pairs) -> Vec<f64> {
    let mut q = grad.to_vec();
    let mut alphas = Vec::with_capacity(pairs.len());
    for (s, y, rho) in pairs.iter().rev() {
        let alpha = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(q, y)| *q -= alpha * y);
        alphas.push(alpha);
    }
    if let Some((_, y, rho)) = pairs.back() {
        let gamma = 1.0 / (rho * dot(y, y));
        q.iter_mut().for_each(|q| *q *= gamma);
    }
    for ((s, y, rho), alpha) in pairs.iter().zip(alphas.iter().rev()) {
        let beta = rho * dot(y, &q);
        q.iter_mut()
            .zip(s)
            .for_each(|(q, s)| *q += (alpha - beta) * s);
    }
    q.iter_mut().for_each(|q| *q = -*q);
    q
}

/// Agreement of the surrogate with the network on labelled test points.
#[derive(Clone, Debug, PartialEq)]
pub struct Faithfulness {
    /// Kendall τ-b between the two models' probabilities of the correct class, over the points
    /// where neither probability is exactly 0 or 1.
    pub kendall_tau: f64,
    /// Points left out of τ because a probability saturated at 0 or 1.
    pub dropped_points: usize,
    /// Coefficient of determination of the network's logits by the surrogate's, every (point,
    /// class) entry pooled: `1 − Σ(z_net − z_sur)² / Σ(z_net − mean z_net)²` (scikit-learn's
    /// `r2_score(net.ravel(), sur.ravel())`). For a one-output (binary) network the surrogate's
    /// log-odds `z₁ − z₀` stand for its logits.
    pub r2_logits: f64,
    /// Pearson correlation of the same pooled entries.
    pub pearson_logits: f64,
    pub accuracy_surrogate: f64,
    pub accuracy_network: f64,
    /// `(surrogate, network)` probability of the correct class at each test point.
    pub correct_class_probability: Vec<(f64, f64)>,
}

/// Compares surrogate logits `[n, classes]` with network logits `[n, outputs]` on test points
/// with class indices `labels`. A network with one output is binary: its logit is the log-odds
/// of class 1 and the surrogate must have two classes; otherwise `outputs == classes`.
pub fn faithfulness(
    surrogate_logits: &[f64],
    classes: usize,
    network_logits: &[f32],
    outputs: usize,
    labels: &[usize],
) -> Result<Faithfulness> {
    let binary = outputs == 1;
    if (binary && classes != 2) || (!binary && outputs != classes) {
        return Err(Error::input(format!(
            "the network has {outputs} outputs but the surrogate {classes} classes"
        )));
    }
    let n = labels.len();
    if let Some(i) = labels.iter().position(|&y| y >= classes) {
        return Err(Error::input(format!(
            "test label {} of row {i} is not below {classes} classes",
            labels[i]
        )));
    }
    if surrogate_logits.len() != n * classes || network_logits.len() != n * outputs {
        return Err(Error::input(format!(
            "{n} test labels for {} surrogate and {} network logit rows",
            surrogate_logits.len() / classes,
            network_logits.len() / outputs
        )));
    }
    let surrogate_p = softmax(surrogate_logits, classes);
    let network = widen(network_logits);
    let (network_p, surrogate_compared) = if binary {
        let p: Vec<f64> = network
            .iter()
            .flat_map(|z| {
                let p1 = 1.0 / (1.0 + (-z).exp());
                [1.0 - p1, p1]
            })
            .collect();
        let log_odds = surrogate_logits.chunks_exact(2).map(|z| z[1] - z[0]);
        (p, log_odds.collect())
    } else {
        (softmax(&network, classes), surrogate_logits.to_vec())
    };
    let correct_class_probability: Vec<(f64, f64)> = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| (surrogate_p[i * classes + y], network_p[i * classes + y]))
        .collect();
    let unsaturated = |p: f64| p > 0.0 && p < 1.0;
    let (kept_surrogate, kept_network): (Vec<f64>, Vec<f64>) = correct_class_probability
        .iter()
        .filter(|(s, m)| unsaturated(*s) && unsaturated(*m))
        .copied()
        .unzip();
    Ok(Faithfulness {
        kendall_tau: kendall_tau_b(&kept_surrogate, &kept_network),
        dropped_points: n - kept_surrogate.len(),
        r2_logits: r2_score(&network, &surrogate_compared),
        pearson_logits: pearson(&network, &surrogate_compared),
        accuracy_surrogate: accuracy(&surrogate_p, classes, labels),
        accuracy_network: accuracy(&network_p, classes, labels),
        correct_class_probability,
    })
}

/// Share of rows of `scores: [n, classes]` (logits or probabilities) whose highest score is the
/// label's (the first on a tie).
pub fn accuracy(scores: &[f64], classes: usize, labels: &[usize]) -> f64 {
    let right = scores
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, &y)| argmax(row) == y)
        .count();
    right as f64 / labels.len() as f64
}

/// What `mscope kglm` reports; the serialised fields are the JSON report's keys (the
/// faithfulness ones null without the network).
#[derive(Clone, Debug, Serialize)]
pub struct KglmReport {
    pub train_kernel: String,
    pub test_kernel: String,
    pub model: Option<String>,
    pub kernel_kind: String,
    pub normalized: bool,
    pub projection_dim: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub classes: usize,
    pub l2: f64,
    pub tol: f64,
    pub iterations: usize,
    pub converged: bool,
    pub gradient_norm: f64,
    /// Test accuracy of the surrogate's logits.
    pub accuracy_surrogate: f64,
    pub kendall_tau: Option<f64>,
    pub dropped_points: Option<usize>,
    pub r2_logits: Option<f64>,
    pub pearson_logits: Option<f64>,
    pub accuracy_network: Option<f64>,
    /// Surrogate minus network accuracy, both from probabilities.
    pub accuracy_differential: Option<f64>,
    /// The whole comparison with the network, for the summary and the plot.
    #[serde(skip)]
    pub faithfulness: Option<Faithfulness>,
}

/// Fits the kernel GLM on `inputs` and, with the network, measures its faithfulness. The paths
/// are the files of the training kernel, the test kernel and the model, named in the report.
pub fn report(
    inputs: &KglmInputs,
    (train_kernel, test_kernel, model): (&Path, &Path, Option<&Path>),
    options: &FitOptions,
) -> Result<KglmReport> {
    let classes = inputs.classes;
    let glm = KernelGlm::fit(
        &inputs.train_kernel.values,
        &inputs.train_y,
        classes,
        options,
    )?;
    let logits = glm.logits(&inputs.test_kernel.values);
    let faithful = inputs
        .network
        .as_ref()
        .map(|net| faithfulness(&logits, classes, &net.values, net.outputs, &inputs.test_y))
        .transpose()?;
    let field = |get: fn(&Faithfulness) -> f64| faithful.as_ref().map(get);
    let kernel = &inputs.train_kernel;
    Ok(KglmReport {
        train_kernel: train_kernel.display().to_string(),
        test_kernel: test_kernel.display().to_string(),
        model: model.map(|p| p.display().to_string()),
        kernel_kind: kernel.kind.clone(),
        normalized: kernel.normalized,
        projection_dim: kernel.projection_dim,
        n_train: kernel.rows,
        n_test: inputs.test_y.len(),
        classes,
        l2: options.l2,
        tol: options.tol,
        iterations: glm.iterations,
        converged: glm.converged,
        gradient_norm: glm.gradient_norm,
        accuracy_surrogate: accuracy(&logits, classes, &inputs.test_y),
        kendall_tau: field(|f| f.kendall_tau),
        dropped_points: faithful.as_ref().map(|f| f.dropped_points),
        r2_logits: field(|f| f.r2_logits),
        pearson_logits: field(|f| f.pearson_logits),
        accuracy_network: field(|f| f.accuracy_network),
        accuracy_differential: field(|f| f.accuracy_surrogate - f.accuracy_network),
        faithfulness: faithful,
    })
}
