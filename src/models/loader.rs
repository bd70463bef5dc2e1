//! The weight loader every architecture builds on: a model directory's `config.json`, and named
//! tensors of its checkpoint ([`Weights`]: memory-mapped safetensors, single or sharded) uploaded
//! shape-checked onto a backend with one dtype policy — GEMM weights and embedding tables in the
//! element type [`WeightsDtype`] picks, biases and norm parameters always f32.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::backend::{Backend, Tensor};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::weights::{Weights, WeightsDtype};

/// `config.json` of a model directory, parsed as `T`; `what` names the family in the error.
pub fn read_config<T: DeserializeOwned>(dir: &Path, what: &str) -> Result<T> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: not a {what} config: {e}", path.display())))
}

/// A linear layer's parameters on the device: `weight: [out, in]` (PyTorch's layout), `bias: [out]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// A LayerNorm's scale and shift on the device.
pub struct Norm {
    pub gamma: Tensor,
    pub beta: Tensor,
}

/// Reads tensors of one checkpoint, shape-checked, onto the backend.
pub struct Loader<'a> {
    pub weights: &'a Weights,
    pub backend: &'a dyn Backend,
    /// Element type of the GEMM weights and embedding tables.
    pub weights_dtype: WeightsDtype,
}

impl Loader<'_> {
    /// An f32 tensor (biases, norm parameters).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.backend.upload(shape, &self.weights.f32(name, shape)?)
    }

    /// Matrices `names` (each `[rows, cols]`) that an op may read in half precision (GEMM
    /// weights, embedding tables), stacked into one `[names.len()·rows, cols]` tensor in the
    /// element type the loader was asked for.
    pub fn matrix(&self, names: &[String], rows: usize, cols: usize) -> Result<Tensor> {
        if let [name] = names {
            // One f32 tensor uploads straight from the map: no host copy of a large vocabulary.
            if self.weights.stacked_dtype(names, self.weights_dtype)? == DType::F32 {
                return self.tensor(name, &[rows, cols]);
            }
        }
        let host = self
            .weights
            .stacked(names, &[rows, cols], self.weights_dtype)?;
        self.backend.upload_host(&host)
    }

    /// `{name}.weight: [out, inp]` and `{name}.bias: [out]`.
    pub fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.matrix(&[format!("{name}.weight")], out, inp)?,
            bias: self.tensor(&format!("{name}.bias"), &[out])?,
        })
    }

    /// Linear layers `names` (each `[out, inp]`) that read the same input, stacked into one
    /// `[names.len()·out, inp]` layer so they run as one GEMM (fused Q, K and V projections).
    pub fn fused_linear(&self, names: &[String], out: usize, inp: usize) -> Result<Linear> {
        let weights: Vec<String> = names.iter().map(|n| format!("{n}.weight")).collect();
        let mut bias = Vec::with_capacity(names.len() * out);
        for name in names {
            bias.extend_from_slice(&self.weights.f32(&format!("{name}.bias"), &[out])?);
        }
        Ok(Linear {
            weight: self.matrix(&weights, out, inp)?,
            bias: self.backend.upload(&[names.len() * out], &bias)?,
        })
    }

    /// LayerNorm parameters `{name}.weight`/`.bias`; old checkpoints call them gamma/beta.
    pub fn norm(&self, name: &str, h: usize) -> Result<Norm> {
        let (g, b) = if self.weights.contains(&format!("{name}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(Norm {
            gamma: self.tensor(&format!("{name}.{g}"), &[h])?,
            beta: self.tensor(&format!("{name}.{b}"), &[h])?,
        })
    }
}
