//! Trains MLP classifiers with minibatch SGD (with momentum) or Adam on the mean cross-entropy,
//! following PyTorch's update rules, so that an ensemble of seeds can be compared afterwards.
//!
//! Everything random — the initialisation and the minibatch order of every epoch — comes from the
//! seed, so one seed gives a bit-identical model on the same machine.

use std::str::FromStr;

use crate::backend::cpu::{gemm, Operand};
use crate::backend::Activation;
use crate::data::scores::argmax;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::mlp::{activation_name, Mlp};
use crate::random::SplitMix64;

/// Keeps the minibatch order independent of the initialisation, which `Mlp::init` draws from
/// the plain seed.
const SHUFFLE_STREAM: u64 = 0x6A09_E667_F3BC_C908;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimizer {
    Sgd,
    Adam,
}

impl Optimizer {
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Adam => "adam",
        }
    }
}

impl FromStr for Optimizer {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "sgd" => Ok(Optimizer::Sgd),
            "adam" => Ok(Optimizer::Adam),
            _ => Err(Error::input(format!(
                "unknown optimizer `{name}` (known: sgd, adam)"
            ))),
        }
    }
}

/// Adam's constants: PyTorch's defaults.
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Hidden layer widths; the input and output sizes come from the data.
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub epochs: usize,
    /// Hyperparameters are f64 like PyTorch's Python floats; the updates run in f32.
    pub lr: f64,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    /// SGD only.
    pub momentum: f64,
    /// L2 penalty added to the gradient of every weight and bias (PyTorch's `weight_decay`).
    pub weight_decay: f64,
}

impl TrainConfig {
    pub fn check(&self) -> Result<()> {
        let fail = |message: String| Err(Error::input(message));
        if self.epochs == 0 {
            return fail("--epochs must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail(format!("--lr {}: must be a positive number", self.lr));
        }
        if self.batch_size == 0 {
            return fail("--batch-size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return fail(format!("--momentum {}: must lie in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return fail(format!(
                "--weight-decay {}: must be a finite number ≥ 0",
                self.weight_decay
            ));
        }
        if self.hidden.contains(&0) {
            return fail(format!(
                "--hidden {:?}: layer widths must be positive",
                self.hidden
            ));
        }
        if activation_name(self.activation).is_none() {
            return fail(format!(
                "activation {:?} is not one an MLP file can name",
                self.activation
            ));
        }
        Ok(())
    }
}

/// Hidden layer widths from a comma list such as `100,100,100`.
pub fn parse_hidden(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|width| match width.trim().parse::<usize>() {
            Ok(w) if w > 0 => Ok(w),
            _ => Err(Error::input(format!(
                "--hidden `{list}`: `{width}` is not a positive layer width (e.g. 100,100,100)"
            ))),
        })
        .collect()
}

/// Seeds from `A..B` (B excluded, as in Rust) or a comma list such as `0,3,7`; no repeats.
pub fn parse_seeds(spec: &str) -> Result<Vec<u64>> {
    let bad = |why: &str| {
        Error::input(format!(
            "--seeds `{spec}`: {why} (expected A..B or a comma list, e.g. 0..5 or 0,3,7)"
        ))
    };
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad("not a number"));
    let seeds: Vec<u64> = match spec.split_once("..") {
        Some((start, end)) => (number(start)?..number(end)?).collect(),
        None => spec.split(',').map(number).collect::<Result<_>>()?,
    };
    if seeds.is_empty() {
        return Err(bad("no seeds"));
    }
    let mut sorted = seeds.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("a seed is repeated"));
    }
    Ok(seeds)
}

/// Mean cross-entropy of `logits: [n, C]` against `labels` (numerically stable log-softmax) and
/// its gradient at the logits, `(softmax − onehot) / n`.
pub fn cross_entropy(logits: &[f32], labels: &[i64], classes: usize) -> (f64, Vec<f32>) {
    let n = labels.len();
    let mut total = 0.0;
    let mut grad = vec![0.0f32; logits.len()];
    for ((row, g), &label) in logits
        .chunks_exact(classes)
        .zip(grad.chunks_exact_mut(classes))
        .zip(labels)
    {
        let top = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - top).exp()).sum();
        let log_sum = top + sum.ln();
        total += log_sum - row[label as usize] as f64;
        for (g, &v) in g.iter_mut().zip(row) {
            *g = ((v as f64 - log_sum).exp() / n as f64) as f32;
        }
        g[label as usize] -= 1.0 / n as f32;
    }
    (total / n as f64, grad)
}

/// An error unless there is one label per row of `x` and each is below the model's classes.
fn check_batch(model: &Mlp, rows: usize, labels: &[i64]) -> Result<()> {
    if labels.len() != rows {
        return Err(Error::input(format!(
            "{} labels for {rows} rows",
            labels.len()
        )));
    }
    let classes = model.num_classes();
    match labels.iter().position(|&l| l < 0 || l as usize >= classes) {
        Some(row) => Err(Error::input(format!(
            "label {} of row {row} is out of range for a model with {classes} classes",
            labels[row]
        ))),
        None => Ok(()),
    }
}

/// Mean cross-entropy over the rows of `x` and its gradient with respect to every parameter, in
/// the order `fc0.weight` `[out, in]`, `fc0.bias`, `fc1.weight`, …
pub fn loss_and_gradient(model: &Mlp, x: &[f32], labels: &[i64]) -> Result<(f64, Vec<Vec<f32>>)> {
    let fwd = model.forward(x)?;
    check_batch(model, fwd.n, labels)?;
    let (loss, top) = cross_entropy(&fwd.logits, labels, model.num_classes());
    let deltas = model.backward(&fwd, top, 1);
    let mut grads = Vec::with_capacity(2 * model.layers.len());
    for ((layer, delta), input) in model.layers.iter().zip(&deltas).zip(&fwd.inputs) {
        // ∂L/∂W_l = δ_lᵀ a_l and ∂L/∂b_l = Σ_rows δ_l.
        let mut weight = vec![0.0f32; layer.d_out * layer.d_in];
        gemm(
            &mut weight,
            Operand::transposed(delta, fwd.n, layer.d_out),
            Operand::plain(input, fwd.n, layer.d_in),
            false,
        );
        let mut bias = vec![0.0f32; layer.d_out];
        for row in delta.chunks_exact(layer.d_out) {
            bias.iter_mut().zip(row).for_each(|(b, d)| *b += d);
        }
        grads.push(weight);
        grads.push(bias);
    }
    Ok((loss, grads))
}

/// Every parameter tensor in the order of [`loss_and_gradient`]'s gradients.
fn parameters(model: &mut Mlp) -> impl Iterator<Item = &mut Vec<f32>> {
    model
        .layers
        .iter_mut()
        .flat_map(|layer| [&mut layer.weight, &mut layer.bias])
}

/// Optimizer state, one buffer per parameter tensor.
struct OptimizerState {
    config: TrainConfig,
    steps: i32,
    /// SGD: momentum buffers; Adam: first moments.
    first: Vec<Vec<f32>>,
    /// Adam: second moments.
    second: Vec<Vec<f32>>,
}

impl OptimizerState {
    fn new(config: &TrainConfig, model: &mut Mlp) -> Self {
        let zeros: Vec<Vec<f32>> = parameters(model).map(|p| vec![0.0; p.len()]).collect();
        OptimizerState {
            config: config.clone(),
            steps: 0,
            second: zeros.clone(),
            first: zeros,
        }
    }

    /// One update of every parameter, as `torch.optim.SGD` / `torch.optim.Adam` (no dampening,
    /// no Nesterov, no AMSGrad) would make it.
    fn step(&mut self, model: &mut Mlp, grads: Vec<Vec<f32>>) {
        self.steps += 1;
        let optimizer = self.config.optimizer;
        let lr = self.config.lr as f32;
        let momentum = self.config.momentum as f32;
        let weight_decay = self.config.weight_decay as f32;
        let (beta1, beta2) = ADAM_BETAS;
        // PyTorch folds the bias corrections into the step size and the denominator.
        let step_size = (self.config.lr / (1.0 - beta1.powi(self.steps))) as f32;
        let correction2_sqrt = (1.0 - beta2.powi(self.steps)).sqrt() as f32;
        let (beta1, beta2, eps) = (beta1 as f32, beta2 as f32, ADAM_EPS as f32);
        let first_step = self.steps == 1;
        for (((param, grad), first), second) in parameters(model)
            .zip(grads)
            .zip(&mut self.first)
            .zip(&mut self.second)
        {
            for (i, (p, mut g)) in param.iter_mut().zip(grad).enumerate() {
                g += weight_decay * *p;
                match optimizer {
                    Optimizer::Sgd => {
                        if momentum != 0.0 {
                            // The buffer starts as the first gradient itself.
                            first[i] = if first_step {
                                g
                            } else {
                                momentum * first[i] + g
                            };
                            g = first[i];
                        }
                        *p -= lr * g;
                    }
                    Optimizer::Adam => {
                        first[i] = beta1 * first[i] + (1.0 - beta1) * g;
                        second[i] = beta2 * second[i] + (1.0 - beta2) * g * g;
                        let denom = second[i].sqrt() / correction2_sqrt + eps;
                        *p -= step_size * first[i] / denom;
                    }
                }
            }
        }
    }
}

/// A trained model and the mean training loss of each epoch (over its minibatches, as they went).
pub struct Trained {
    pub model: Mlp,
    pub epoch_losses: Vec<f64>,
}

/// Trains an MLP `data.dim → hidden… → classes` from seed `seed`; `on_epoch(epoch, loss)` is
/// called after every epoch.
pub fn train(
    data: &Dataset,
    classes: usize,
    config: &TrainConfig,
    seed: u64,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<Trained> {
    config.check()?;
    if data.is_empty() {
        return Err(Error::input("no training rows"));
    }
    if classes < 2 {
        return Err(Error::input(format!(
            "{classes} class(es): a classifier needs at least 2"
        )));
    }
    let dims: Vec<usize> = std::iter::once(data.dim)
        .chain(config.hidden.iter().copied())
        .chain([classes])
        .collect();
    check_training_memory(&dims, config.batch_size.min(data.len()))?;
    let mut model = Mlp::init(&dims, config.activation, seed)?;
    check_batch(&model, data.len(), &data.y)?;
    let mut optimizer = OptimizerState::new(config, &mut model);
    let mut rng = SplitMix64::new(seed ^ SHUFFLE_STREAM);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut epoch_losses = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        rng.shuffle(&mut order);
        let mut total = 0.0;
        for rows in order.chunks(config.batch_size) {
            let batch = data.select(rows);
            let (loss, grads) = loss_and_gradient(&model, &batch.x, &batch.y)?;
            if !loss.is_finite() {
                return Err(diverged(
                    seed,
                    epoch,
                    &format!("the minibatch loss is {loss}"),
                ));
            }
            total += loss * rows.len() as f64;
            optimizer.step(&mut model, grads);
        }
        // The last step of an epoch may overflow the weights before any loss sees them.
        if let Some((i, _)) = model
            .layers
            .iter()
            .enumerate()
            .find(|(_, l)| !l.weight.iter().chain(&l.bias).all(|v| v.is_finite()))
        {
            return Err(diverged(
                seed,
                epoch,
                &format!("fc{i} has non-finite weights"),
            ));
        }
        let mean = total / data.len() as f64;
        epoch_losses.push(mean);
        on_epoch(epoch, mean);
    }
    Ok(Trained {
        model,
        epoch_losses,
    })
}

/// The error of a run stopped at its first non-finite loss or weight (epochs counted from 1).
fn diverged(seed: u64, epoch: usize, what: &str) -> Error {
    Error::input(format!(
        "training diverged (seed {seed}, epoch {}): {what}; lower --lr",
        epoch + 1
    ))
}

/// An error naming `--hidden` when training the MLP `dims` does not fit in memory: four f32
/// copies of the parameters (weights, gradients, two Adam moments) and, per minibatch row, the
/// pre-activations and activations of every layer.
fn check_training_memory(dims: &[usize], batch_rows: usize) -> Result<()> {
    let params: f64 = dims
        .windows(2)
        .map(|w| w[1] as f64 * (w[0] as f64 + 1.0))
        .sum();
    let activations: f64 = dims.iter().map(|&d| d as f64).sum::<f64>() * batch_rows as f64;
    crate::limits::check_memory(
        &format!("an MLP {dims:?} (--hidden)"),
        4.0 * (4.0 * params + 2.0 * activations),
    )
}

/// A model's logits `[n, C]` on a dataset, its mean cross-entropy and its accuracy.
pub struct Evaluation {
    pub logits: Vec<f32>,
    pub loss: f64,
    pub accuracy: f64,
}

pub fn evaluate(model: &Mlp, data: &Dataset) -> Result<Evaluation> {
    if data.dim != model.input_dim() {
        return Err(Error::input(format!(
            "rows of dimension {} for a model that takes {}",
            data.dim,
            model.input_dim()
        )));
    }
    let logits = model.logits(&data.x)?;
    check_batch(model, data.len(), &data.y)?;
    let classes = model.num_classes();
    let (loss, _) = cross_entropy(&logits, &data.y, classes);
    let correct = logits
        .chunks_exact(classes)
        .zip(&data.y)
        .filter(|(row, &label)| argmax(row) == label as usize)
        .count();
    Ok(Evaluation {
        logits,
        loss,
        accuracy: correct as f64 / data.len().max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_ranges_or_lists() {
        assert_eq!(parse_seeds("0..4").unwrap(), [0, 1, 2, 3]);
        assert_eq!(parse_seeds("7, 3,9").unwrap(), [7, 3, 9]);
        for bad in ["3..3", "1,1", "a..2", "", "1,,2"] {
            assert!(parse_seeds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hidden_widths_parse_and_reject_zero() {
        assert_eq!(parse_hidden("100, 50").unwrap(), [100, 50]);
        for bad in ["", "0", "10,,10", "ten"] {
            assert!(parse_hidden(bad).is_err(), "{bad}");
        }
    }

    /// A one-weight, one-bias model, its optimizer, and one step with gradient `g` everywhere.
    fn single_parameter_steps(config: TrainConfig, grads: &[f32]) -> Vec<f32> {
        let mut model = Mlp::init(&[1, 1], Activation::Relu, 0).unwrap();
        let mut state = OptimizerState::new(&config, &mut model);
        let start = model.layers[0].weight[0];
        grads
            .iter()
            .map(|&g| {
                state.step(&mut model, vec![vec![g], vec![g]]);
                model.layers[0].weight[0] - start
            })
            .collect()
    }

    fn optimizer(optimizer: Optimizer, momentum: f64) -> TrainConfig {
        TrainConfig {
            hidden: vec![],
            activation: Activation::Relu,
            epochs: 1,
            lr: 0.1,
            batch_size: 1,
            optimizer,
            momentum,
            weight_decay: 0.0,
        }
    }

    #[test]
    fn sgd_momentum_starts_its_buffer_at_the_first_gradient() {
        // PyTorch: b₁ = g₁, b₂ = μ b₁ + g₂; p −= lr·b.
        let moved = single_parameter_steps(optimizer(Optimizer::Sgd, 0.9), &[1.0, 1.0]);
        assert!((moved[0] + 0.1).abs() < 1e-6, "{moved:?}");
        assert!((moved[1] + 0.1 + 0.19).abs() < 1e-6, "{moved:?}");
    }

    #[test]
    fn adam_moves_by_the_learning_rate_under_a_constant_gradient() {
        // With bias correction, m̂ = g and v̂ = g² at every step, so each step is lr·sign(g).
        let moved = single_parameter_steps(optimizer(Optimizer::Adam, 0.0), &[0.5, 0.5, 0.5]);
        for (step, m) in moved.iter().enumerate() {
            assert!((m + 0.1 * (step + 1) as f32).abs() < 1e-5, "{moved:?}");
        }
    }

    #[test]
    fn weight_decay_adds_to_the_gradient() {
        let mut config = optimizer(Optimizer::Sgd, 0.0);
        config.weight_decay = 0.5;
        let mut model = Mlp::init(&[1, 1], Activation::Relu, 0).unwrap();
        let w = model.layers[0].weight[0];
        let mut state = OptimizerState::new(&config, &mut model);
        state.step(&mut model, vec![vec![0.0], vec![0.0]]);
        assert!((model.layers[0].weight[0] - w * (1.0 - 0.1 * 0.5)).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() {
        let (loss, grad) = cross_entropy(&[1000.0, 0.0, -1000.0, 0.0], &[1, 1], 2);
        // Row 0 is wrong by a margin of 1000, row 1 is right by 1000.
        assert!((loss - 500.0).abs() < 1e-9, "{loss}");
        assert_eq!(grad, [0.5, -0.5, 0.0, 0.0]);
    }
}
