//! The weight loader every architecture builds on: a model directory's `config.json`, and named
//! tensors of its checkpoint (a [`TensorSource`]: memory-mapped safetensors [`Weights`], single or
//! sharded, or a GGUF file under a name map) uploaded shape-checked onto a backend with one dtype
//! policy — GEMM weights and embedding tables in the element type [`WeightsDtype`] picks, biases
//! and norm parameters always f32.
//!
//! Memory: a GEMM weight or embedding table whose parts the checkpoint stores in the element
//! type picked (F16 or BF16: `auto` on a half-precision checkpoint, or `f16` on an f16 one)
//! reaches the backend as a [`HalfMatrix`] of views into the memory map, one per part of a fused
//! stack ([`Backend::upload_half`]). The CPU keeps those views: the weights stay in the page
//! cache, read panel by panel by the GEMM, so a 7B bf16 checkpoint costs its activations and
//! one f32 panel per GEMM task in process memory, not 28 GB of f32. GPU backends copy them into
//! device memory as before. A single f32 tensor (an unfused weight, an embedding table, a norm
//! parameter) reaches the backend the same way, as a view of the map ([`Backend::upload_mapped`]):
//! the CPU reads it in place, so loading an f32 checkpoint copies only its fused stacks. Every
//! other case (fused f32 stacks, a dtype that needs converting, GGUF's dequantised blocks) builds
//! the stack on the host and uploads it.

use std::borrow::Cow;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::backend::{Backend, Tensor};
use crate::error::{Error, Result};
use crate::tensor::{DType, HalfMatrix, HostData, HostTensor, SharedBytes};
use crate::weights::{Weights, WeightsDtype};

/// `config.json` of a model directory, parsed as `T`; `what` names the family in the error.
pub fn read_config<T: DeserializeOwned>(dir: &Path, what: &str) -> Result<T> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: not a {what} config: {e}", path.display())))
}

/// A linear layer's parameters on the device: `weight: [out, in]` (PyTorch's layout), `bias: [out]`
/// where the layer has one.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// A LayerNorm's scale and shift on the device.
pub struct Norm {
    pub gamma: Tensor,
    pub beta: Tensor,
}

/// Named tensors in Hugging Face's naming, as the [`Loader`] reads them. The source decides the
/// element type of a stack (the dtype policy: [`Weights::stacked_dtype`] for safetensors) and
/// checks every shape against the one asked for.
pub trait TensorSource {
    fn contains(&self, name: &str) -> bool;

    /// Tensor `name` of `shape` as f32.
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [f32]>>;

    /// The element type tensors `names` are stacked in under `dtype`.
    fn stacked_dtype(&self, names: &[String], dtype: WeightsDtype) -> Result<DType>;

    /// Tensor `name` of `shape` in `dtype`, one [`TensorSource::stacked_dtype`] picked.
    fn matrix(&self, name: &str, shape: &[usize], dtype: DType) -> Result<HostTensor>;

    /// Tensor `name` of `shape` in place, with its dtype, where the source stores it as F16 or
    /// BF16 values a backend can read as they are (a memory map); `None` where it cannot.
    fn half(&self, _name: &str, _shape: &[usize]) -> Result<Option<(DType, SharedBytes)>> {
        Ok(None)
    }

    /// Tensor `name` of `shape` in place, where the source stores it as F32 values readable
    /// where they are ([`SharedBytes::as_f32`]), or makes them (dequantising) into memory it can
    /// lend; `None` where it cannot lend them.
    fn mapped_f32(&self, _name: &str, _shape: &[usize]) -> Result<Option<SharedBytes>> {
        Ok(None)
    }

    /// Matrices `parts` (name and row count, each `[rows, cols]`) as one stack of F32 values,
    /// where the source makes them into memory it can lend, as [`TensorSource::mapped_f32`];
    /// `None` where it cannot.
    fn mapped_f32_stack(
        &self,
        _parts: &[(String, usize)],
        _cols: usize,
    ) -> Result<Option<SharedBytes>> {
        Ok(None)
    }
}

impl TensorSource for Weights {
    fn contains(&self, name: &str) -> bool {
        Weights::contains(self, name)
    }
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [f32]>> {
        Weights::f32(self, name, shape)
    }
    fn stacked_dtype(&self, names: &[String], dtype: WeightsDtype) -> Result<DType> {
        Weights::stacked_dtype(self, names, dtype)
    }
    fn matrix(&self, name: &str, shape: &[usize], dtype: DType) -> Result<HostTensor> {
        // Converted to the stack's element type.
        let policy = match dtype {
            DType::F16 => WeightsDtype::F16,
            DType::BF16 => WeightsDtype::Bf16,
            _ => WeightsDtype::F32,
        };
        Weights::stacked(self, std::slice::from_ref(&name.to_string()), shape, policy)
    }
    fn half(&self, name: &str, shape: &[usize]) -> Result<Option<(DType, SharedBytes)>> {
        Weights::half(self, name, shape)
    }
    fn mapped_f32(&self, name: &str, shape: &[usize]) -> Result<Option<SharedBytes>> {
        Weights::mapped_f32(self, name, shape)
    }
}

/// Reads tensors of one checkpoint, shape-checked, onto the backend.
pub struct Loader<'a> {
    pub weights: &'a dyn TensorSource,
    pub backend: &'a dyn Backend,
    /// Element type of the GEMM weights and embedding tables.
    pub weights_dtype: WeightsDtype,
}

impl Loader<'_> {
    /// An f32 tensor (biases, norm parameters, f32 weights and tables); lent to the backend in
    /// place where the source can ([`Backend::upload_mapped`]).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(bytes) = self.weights.mapped_f32(name, shape)? {
            let values = bytes.as_f32().expect("mapped_f32 lends readable values");
            check_finite(name, crate::tensor::first_non_finite(values))?;
            return self.backend.upload_mapped(shape, &bytes);
        }
        self.backend.upload(shape, &self.host(name, shape)?)
    }

    /// Tensor `name` of `shape` as f32 values on the host, checked finite, for a model that
    /// rearranges it before upload.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [f32]>> {
        let values = self.weights.f32(name, shape)?;
        check_finite(name, crate::tensor::first_non_finite(&values))?;
        Ok(values)
    }

    /// Matrices `names` (each `[rows, cols]`) that an op may read in half precision (GEMM
    /// weights, embedding tables), stacked into one `[names.len()·rows, cols]` tensor in the
    /// element type the loader was asked for.
    pub fn matrix(&self, names: &[String], rows: usize, cols: usize) -> Result<Tensor> {
        let parts: Vec<(String, usize)> = names.iter().map(|n| (n.clone(), rows)).collect();
        self.stacked_matrix(&parts, cols)
    }

    /// Matrices `parts` (name and row count, each `[rows, cols]`) stacked into one
    /// `[Σ rows, cols]` tensor, as [`Loader::matrix`] does for equal row counts: one element type
    /// for the whole stack, picked from every part's stored dtype.
    pub fn stacked_matrix(&self, parts: &[(String, usize)], cols: usize) -> Result<Tensor> {
        let names: Vec<String> = parts.iter().map(|(n, _)| n.clone()).collect();
        let target = self.weights.stacked_dtype(&names, self.weights_dtype)?;
        if let ([(name, rows)], DType::F32) = (parts, target) {
            // One f32 tensor uploads straight from the map: no host copy of a large vocabulary.
            return self.tensor(name, &[*rows, cols]);
        }
        if target == DType::F32 {
            if let Some(stack) = self.weights.mapped_f32_stack(parts, cols)? {
                let values = stack
                    .as_f32()
                    .expect("mapped_f32_stack lends readable values");
                let mut start = 0;
                for (name, rows) in parts {
                    let end = start + rows * cols;
                    check_finite(name, crate::tensor::first_non_finite(&values[start..end]))?;
                    start = end;
                }
                let rows = parts.iter().map(|(_, rows)| rows).sum();
                return self.backend.upload_mapped(&[rows, cols], &stack);
            }
        }
        if let Some(matrix) = self.mapped_half(parts, cols, target)? {
            return self.backend.upload_half(&matrix);
        }
        let rows = parts.iter().map(|(_, r)| r).sum();
        if target == DType::F32 && !parts.is_empty() {
            // Each part copied once, straight from the source into the stack the backend keeps:
            // no vector of its own grown into it, no copy on upload (writing fresh pages is
            // most of the cost of loading a small model's fused stacks).
            let mut values = Vec::with_capacity(rows * cols);
            for (name, part_rows) in parts {
                values.extend_from_slice(&self.host(name, &[*part_rows, cols])?);
            }
            return self.backend.upload_owned(&[rows, cols], values);
        }
        let mut data: Option<HostData> = None;
        for (name, rows) in parts {
            let part = self
                .weights
                .matrix(name, &[*rows, cols], target)?
                .into_data();
            check_finite(name, part.first_non_finite())?;
            data = Some(match (data, part) {
                (None, part) => part,
                (Some(HostData::F16(mut a)), HostData::F16(b)) => {
                    a.extend(b);
                    HostData::F16(a)
                }
                (Some(HostData::BF16(mut a)), HostData::BF16(b)) => {
                    a.extend(b);
                    HostData::BF16(a)
                }
                _ => unreachable!("every part is converted to {target:?}"),
            });
        }
        let data = data.ok_or_else(|| Error::input("stacked_matrix: no matrices to stack"))?;
        self.backend
            .upload_host(&HostTensor::new(vec![rows, cols], data)?)
    }

    /// The stack of `parts` as views of the source's own half-precision bytes, where every
    /// part is stored in `target` (F16 or BF16) and the source can lend them (a memory map).
    fn mapped_half(
        &self,
        parts: &[(String, usize)],
        cols: usize,
        target: DType,
    ) -> Result<Option<HalfMatrix>> {
        if !matches!(target, DType::F16 | DType::BF16) {
            return Ok(None);
        }
        let mut views = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            match self.weights.half(name, &[*rows, cols])? {
                Some((dtype, bytes)) if dtype == target => {
                    check_finite(
                        name,
                        crate::tensor::first_non_finite_half(dtype, bytes.bytes()),
                    )?;
                    views.push(bytes)
                }
                _ => return Ok(None),
            }
        }
        HalfMatrix::new(target, cols, views).map(Some)
    }

    /// `{name}.weight: [out, inp]`, and `{name}.bias: [out]` when `bias`.
    pub fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        self.fused_linear(&[(name.to_string(), out)], inp, bias)
    }

    /// Linear layers `parts` (name and output width, each reading `inp` columns) that read the
    /// same input, stacked into one `[Σ out, inp]` layer so they run as one GEMM (fused Q, K and
    /// V projections, of different widths under grouped-query attention; fused gate and up
    /// projections). Each has a `{name}.bias` when `bias`.
    pub fn fused_linear(
        &self,
        parts: &[(String, usize)],
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weights: Vec<(String, usize)> = parts
            .iter()
            .map(|(n, out)| (format!("{n}.weight"), *out))
            .collect();
        let bias = if bias {
            let mut values = Vec::new();
            for (name, out) in parts {
                let name = format!("{name}.bias");
                let part = self.weights.f32(&name, &[*out])?;
                check_finite(&name, crate::tensor::first_non_finite(&part))?;
                values.extend_from_slice(&part);
            }
            Some(self.backend.upload_owned(&[values.len()], values)?)
        } else {
            None
        };
        Ok(Linear {
            weight: self.stacked_matrix(&weights, inp)?,
            bias,
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

/// Weights are checked on the host, as stored, before upload: a NaN weight would otherwise run
/// through every layer (or vanish under a ReLU, leaving finite but wrong outputs).
fn check_finite(name: &str, first_bad: Option<usize>) -> Result<()> {
    match first_bad {
        Some(at) => Err(Error::input(format!(
            "tensor `{name}`: element {at} is not finite (NaN or infinite weights)"
        ))),
        None => Ok(()),
    }
}
