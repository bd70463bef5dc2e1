//! Multilayer perceptron classifiers: `fc{i}.weight [out, in]`, `fc{i}.bias [out]` for
//! `i = 0..L-1`, an activation (metadata `activation`: relu, tanh, gelu, sigmoid) after every layer
//! but the last, whose outputs are the logits.
//!
//! Besides the forward pass this gives the backward pass the tangent-kernel instrument and the
//! trainer share: from any seed gradient at the logits — one row per sample for a loss, one row
//! per (sample, class) for every logit at once — it returns `δ_l = ∂/∂z_l` at every layer output,
//! all rows batched into one GEMM per layer.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use crate::backend::cpu::{gemm, Operand};
use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::io::tensor_file::{self, TensorFile, TensorOut};

/// One Linear layer `z = W a + b` (PyTorch layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Row-major `[d_out, d_in]`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub d_in: usize,
    pub d_out: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    pub layers: Vec<Layer>,
    pub activation: Activation,
}

/// The activations an MLP file may name, with their metadata names.
const ACTIVATIONS: [(&str, Activation); 4] = [
    ("relu", Activation::Relu),
    ("tanh", Activation::Tanh),
    ("gelu", Activation::Gelu),
    ("sigmoid", Activation::Sigmoid),
];

/// Parses an activation name of the MLP format.
pub fn parse_activation(name: &str) -> Result<Activation> {
    ACTIVATIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, a)| a)
        .ok_or_else(|| {
            let known: Vec<&str> = ACTIVATIONS.iter().map(|(n, _)| *n).collect();
            Error::input(format!(
                "unknown activation `{name}` (known: {})",
                known.join(", ")
            ))
        })
}

/// The metadata name of an activation, if the MLP format supports it.
pub fn activation_name(act: Activation) -> Option<&'static str> {
    ACTIVATIONS.iter().find(|(_, a)| *a == act).map(|(n, _)| *n)
}

/// What a forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Number of samples.
    pub n: usize,
    /// Input of every layer, `a_l: [n, d_in_l]` (`a_0` is the data).
    pub inputs: Vec<Vec<f32>>,
    /// Pre-activation output of every hidden layer, `z_l: [n, d_out_l]` for `l < L − 1`.
    pub pre: Vec<Vec<f32>>,
    /// `[n, C]`.
    pub logits: Vec<f32>,
}

impl Mlp {
    /// Checks that consecutive layers chain and the activation is one the format supports.
    pub fn new(layers: Vec<Layer>, activation: Activation) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::input("an MLP needs at least one layer"));
        }
        if activation_name(activation).is_none() {
            return Err(Error::input(format!(
                "activation {activation:?} is not one an MLP file can name"
            )));
        }
        for (i, layer) in layers.iter().enumerate() {
            if layer.weight.len() != layer.d_out * layer.d_in || layer.bias.len() != layer.d_out {
                return Err(Error::input(format!(
                    "fc{i}: weight/bias sizes do not match [{}, {}]",
                    layer.d_out, layer.d_in
                )));
            }
            if i > 0 && layers[i - 1].d_out != layer.d_in {
                return Err(Error::input(format!(
                    "fc{i} takes {} inputs but fc{} gives {}",
                    layer.d_in,
                    i - 1,
                    layers[i - 1].d_out
                )));
            }
        }
        Ok(Mlp { layers, activation })
    }

    /// Random initialisation like PyTorch's `nn.Linear` (weights and biases uniform in
    /// `±1/√d_in`), deterministic in `seed`. `dims` = input, hidden…, classes.
    pub fn init(dims: &[usize], activation: Activation, seed: u64) -> Result<Self> {
        if dims.len() < 2 || dims.contains(&0) {
            return Err(Error::input(format!(
                "MLP dimensions {dims:?}: need an input and an output size, all positive"
            )));
        }
        let mut rng = crate::random::SplitMix64::new(seed);
        let layers = dims
            .windows(2)
            .map(|w| {
                let (d_in, d_out) = (w[0], w[1]);
                let bound = 1.0 / (d_in as f64).sqrt();
                let mut draw = |count: usize| {
                    (0..count)
                        .map(|_| (bound * (2.0 * rng.next_f64() - 1.0)) as f32)
                        .collect::<Vec<f32>>()
                };
                let weight = draw(d_out * d_in);
                let bias = draw(d_out);
                Layer {
                    weight,
                    bias,
                    d_in,
                    d_out,
                }
            })
            .collect();
        Mlp::new(layers, activation)
    }

    pub fn input_dim(&self) -> usize {
        self.layers[0].d_in
    }

    pub fn num_classes(&self) -> usize {
        self.layers[self.layers.len() - 1].d_out
    }

    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.d_out * (l.d_in + 1)).sum()
    }

    /// Input, hidden and output sizes.
    pub fn dims(&self) -> Vec<usize> {
        std::iter::once(self.input_dim())
            .chain(self.layers.iter().map(|l| l.d_out))
            .collect()
    }

    pub fn read(path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let activation = parse_activation(file.metadata("activation").ok_or_else(|| {
            file.error("no metadata `activation` (one of relu, tanh, gelu, sigmoid)")
        })?)
        .map_err(|e| file.error(e))?;
        let mut layers = Vec::new();
        while file.contains(&format!("fc{}.weight", layers.len())) {
            let i = layers.len();
            let (w_shape, weight) = file.f32(&format!("fc{i}.weight"))?;
            let (b_shape, bias) = file.f32(&format!("fc{i}.bias"))?;
            let [d_out, d_in] = w_shape[..] else {
                return Err(file.error(format!(
                    "`fc{i}.weight` has shape {w_shape:?}, expected [out, in]"
                )));
            };
            if b_shape != [d_out] {
                return Err(file.error(format!(
                    "`fc{i}.bias` has shape {b_shape:?}, expected [{d_out}]"
                )));
            }
            layers.push(Layer {
                weight,
                bias,
                d_in,
                d_out,
            });
        }
        if layers.is_empty() {
            return Err(file.error("no tensor `fc0.weight`: not an MLP classifier file"));
        }
        // Layers are read while `fc{i}` continues the sequence; a tensor past the first gap
        // (fc0, fc2 without fc1) would otherwise be silently dropped from the network.
        let read: Vec<String> = (0..layers.len())
            .flat_map(|i| [format!("fc{i}.weight"), format!("fc{i}.bias")])
            .collect();
        let left_over: Vec<String> = file
            .names()
            .into_iter()
            .filter(|n| !read.contains(n))
            .collect();
        if !left_over.is_empty() {
            return Err(file.error(format!(
                "tensors {} are not part of the layers fc0..fc{}: layer indices must run \
                 from fc0 without gaps, every layer with `weight` and `bias`",
                left_over.join(", "),
                layers.len() - 1
            )));
        }
        for (i, layer) in layers.iter().enumerate() {
            for (part, values) in [("weight", &layer.weight), ("bias", &layer.bias)] {
                if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                    return Err(file.error(format!(
                        "`fc{i}.{part}` entry {at} is {}: weights must be finite",
                        values[at]
                    )));
                }
            }
        }
        Mlp::new(layers, activation).map_err(|e| file.error(e))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            tensors.push(TensorOut::f32(
                format!("fc{i}.weight"),
                vec![l.d_out, l.d_in],
                &l.weight,
            ));
            tensors.push(TensorOut::f32(
                format!("fc{i}.bias"),
                vec![l.d_out],
                &l.bias,
            ));
        }
        let metadata = BTreeMap::from([(
            "activation".to_string(),
            activation_name(self.activation)
                .expect("checked by Mlp::new")
                .to_string(),
        )]);
        tensor_file::write(path, tensors, metadata)
    }

    /// An error unless `x` holds whole rows of the model's input size.
    fn rows_of(&self, x: &[f32]) -> Result<usize> {
        let d = self.input_dim();
        if !x.len().is_multiple_of(d) {
            return Err(Error::input(format!(
                "the model takes {d} inputs per row; got {} values",
                x.len()
            )));
        }
        Ok(x.len() / d)
    }

    /// Forward pass over the rows of `x: [n, d_in]`, keeping what the backward pass needs.
    pub fn forward(&self, x: &[f32]) -> Result<Forward> {
        let n = self.rows_of(x)?;
        let last = self.layers.len() - 1;
        let mut inputs = vec![x.to_vec()];
        let mut pre = Vec::with_capacity(last);
        for (l, layer) in self.layers.iter().enumerate() {
            let mut z = vec![0.0f32; n * layer.d_out];
            gemm(
                &mut z,
                Operand::plain(&inputs[l], n, layer.d_in),
                Operand::transposed(&layer.weight, layer.d_out, layer.d_in),
                false,
            );
            z.chunks_exact_mut(layer.d_out)
                .for_each(|row| row.iter_mut().zip(&layer.bias).for_each(|(v, b)| *v += b));
            if l == last {
                return Ok(Forward {
                    n,
                    inputs,
                    pre,
                    logits: z,
                });
            }
            let act = self.activation;
            inputs.push(z.iter().map(|&v| act.apply(v)).collect());
            pre.push(z);
        }
        unreachable!("the loop returns at the last layer")
    }

    /// Logits `[n, C]` of the rows of `x`.
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(self.forward(x)?.logits)
    }

    /// Backward pass from `top: [n·r, C]`, the gradient at the logits of `r` rows per sample
    /// (row `i·r + j` belongs to sample `i`). Returns `δ_l: [n·r, d_out_l]` for every layer `l`,
    /// `δ_{L−1} = top`, `δ_{l−1} = (δ_l W_l) ⊙ σ'(z_{l−1})`.
    pub fn backward(&self, fwd: &Forward, top: Vec<f32>, rows_per_sample: usize) -> Vec<Vec<f32>> {
        let rows = fwd.n * rows_per_sample;
        assert_eq!(top.len(), rows * self.num_classes(), "top gradient shape");
        let mut deltas = vec![top];
        for l in (1..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let upper = &deltas[deltas.len() - 1];
            let mut delta = vec![0.0f32; rows * layer.d_in];
            gemm(
                &mut delta,
                Operand::plain(upper, rows, layer.d_out),
                Operand::plain(&layer.weight, layer.d_out, layer.d_in),
                false,
            );
            let slopes: Vec<f32> = fwd.pre[l - 1]
                .iter()
                .map(|&z| self.activation.derivative(z))
                .collect();
            let per_sample = rows_per_sample * layer.d_in;
            delta
                .par_chunks_mut(per_sample)
                .zip(slopes.par_chunks(layer.d_in))
                .for_each(|(d, slope)| {
                    d.chunks_exact_mut(layer.d_in)
                        .for_each(|row| row.iter_mut().zip(slope).for_each(|(d, s)| *d *= s));
                });
            deltas.push(delta);
        }
        deltas.reverse();
        deltas
    }
}
