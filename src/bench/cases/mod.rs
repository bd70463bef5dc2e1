//! The op cases of the encoder op set, one list serving both the parity tests and the kernel bench
//! (after llama.cpp's `test-backend-ops`): `tests/ops.rs` runs them on every backend at sizes that
//! are not multiples of any tile, with outputs poisoned with NaN so an op that skips a row cannot
//! pass; `bench::kernels` times the same cases at the shapes of the models the instruments run.
//!
//! Each case names its op and shape, builds its inputs from a seed ([`OpCase::inputs`]), uploads
//! them to a backend ([`OpCase::instance`]), and gives the f64 reference
//! ([`reference`](mod@reference)) with the tolerance its output must meet and the work one run
//! does (FLOPs and compulsory bytes, see `bench::kernels` for the counting rules).
//!
//! Inputs are uniform in [-1, 1) except where a case needs more to be able to fail: LayerNorm's
//! first row is offset by 30 (statistics must be centred before squaring), RMSNorm's second row
//! is scaled by 300 and its third by 1e-3 (eps must matter only where the mean square is tiny),
//! and attention's inputs are scaled by 3 (a softmax far from uniform).

pub mod reference;

use std::sync::Arc;

use half::{bf16, f16};

use super::{uniform, Work};
use crate::backend::{
    Activation, AttentionSpec, Backend, OpFamily, Pooling, RopeFrequencies, RopeSpec, SeqLayout,
    Tensor,
};
use crate::error::Result;
use crate::random::SplitMix64;

const F32: f64 = 4.0;
const F16: f64 = 2.0;

/// f32 paths agree with their f64 reference to a relative error under 1e-5.
pub const F32_TOL: f64 = 1e-5;

/// How close a backend's output must be to the case's reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// `‖got − want‖ / ‖want‖` below this.
    Relative(f64),
    /// Every value equal to the reference rounded to f32.
    Exact,
}

/// A `linear` case: `act(x·wᵀ + bias) + residual` for `x: [n, k]`, `w: [m, k]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear {
    pub n: usize,
    pub k: usize,
    pub m: usize,
    pub act: Activation,
    pub bias: bool,
    pub residual: bool,
    /// The element type the weights are rounded to and uploaded in (the reference uses the
    /// rounded values).
    pub weights: WeightsIn,
}

/// A `linear_gated` case: `act(x·w_gateᵀ + b_gate) ⊙ (x·w_upᵀ + b_up)` for `x: [n, k]`,
/// `w: [2m, k]` (gate rows over up rows), `out: [n, m]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearGated {
    pub n: usize,
    pub k: usize,
    pub m: usize,
    pub act: Activation,
    pub bias: bool,
    pub weights: WeightsIn,
}

/// The element type of a `linear` case's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsIn {
    F32,
    /// Through [`Backend::upload_f16`].
    F16,
    /// Through [`Backend::upload_bf16`].
    Bf16,
}

impl WeightsIn {
    /// `values` rounded to the nearest value of this type.
    fn round(self, values: Vec<f32>) -> Vec<f32> {
        match self {
            WeightsIn::F32 => values,
            WeightsIn::F16 => rounded_to_f16(values),
            WeightsIn::Bf16 => values
                .into_iter()
                .map(|v| bf16::from_f32(v).to_f32())
                .collect(),
        }
    }

    /// `values` (already rounded) uploaded in this type.
    fn upload(self, be: &Arc<dyn Backend>, shape: &[usize], values: &[f32]) -> Result<Tensor> {
        match self {
            WeightsIn::F32 => be.upload(shape, values),
            WeightsIn::F16 => upload_f16(be, shape, values),
            WeightsIn::Bf16 => {
                let halves: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
                be.upload_bf16(shape, &halves)
            }
        }
    }

    /// Bytes a value.
    fn bytes(self) -> f64 {
        match self {
            WeightsIn::F32 => F32,
            WeightsIn::F16 | WeightsIn::Bf16 => F16,
        }
    }
}

/// The op a case runs and its shapes.
#[derive(Clone, Debug, PartialEq)]
pub enum CaseOp {
    Linear(Linear),
    LinearGated(LinearGated),
    /// `act(gate) ⊙ up` of an `n × 2m` input (gate beside up) into `n × m`.
    GatedActivation {
        n: usize,
        m: usize,
        act: Activation,
    },
    Attention {
        lengths: Vec<usize>,
        spec: AttentionSpec,
    },
    LayerNorm {
        n: usize,
        d: usize,
        eps: f32,
    },
    RmsNorm {
        n: usize,
        d: usize,
        eps: f32,
    },
    /// RoPE with the `(cos, sin)` table of `frequencies`, built and uploaded with the inputs
    /// (a model builds it once, so it is not part of a run).
    Rope {
        lengths: Vec<usize>,
        spec: RopeSpec,
        frequencies: RopeFrequencies,
    },
    L2Normalize {
        n: usize,
        d: usize,
    },
    /// `ids` rows of a `rows × d` table, copied or added to a seeded output.
    Gather {
        rows: usize,
        d: usize,
        ids: usize,
        accumulate: bool,
        f16_table: bool,
    },
    /// Pooling of `d`-wide token rows per sequence, then `l2_normalize` of the pooled rows where
    /// `normalize` is set.
    Pool {
        lengths: Vec<usize>,
        d: usize,
        mode: Pooling,
        normalize: bool,
    },
    /// `dy ⊙ act'(pre)` for `pre, dy: [n, m]` (the backward family).
    ActivationBackward {
        n: usize,
        m: usize,
        act: Activation,
    },
    /// LayerNorm's backward pass over `n × d` rows; the output is `dx` followed by the
    /// normalised rows.
    LayerNormBackward {
        n: usize,
        d: usize,
        eps: f32,
    },
    /// `attention`'s backward pass: `d_qkv` from `qkv` and the gradient at the output.
    AttentionBackward {
        lengths: Vec<usize>,
        spec: AttentionSpec,
    },
    /// Per-sequence sums of `[tokens, d]` rows over sequences of `lengths`, each row multiplied
    /// by a second input's row where `weighted`.
    SequenceSums {
        lengths: Vec<usize>,
        d: usize,
        weighted: bool,
    },
    /// `ids` gradient rows of width `d` scattered into a `rows × d` table, added to a seeded
    /// table where `accumulate`.
    ScatterRows {
        rows: usize,
        d: usize,
        ids: usize,
        accumulate: bool,
    },
}

/// One case: a named op on one shape, with the seed of its inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct OpCase {
    /// `op/model-or-size`, e.g. `linear/bert-base-ffn-up`.
    pub name: String,
    pub op: CaseOp,
    /// The inputs' seeds are `seed`, `seed + 1`, … in the order the op takes them.
    pub seed: u64,
}

/// A case's inputs on the host, in the order the op takes them, with the gathered row ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    pub tensors: Vec<Vec<f32>>,
    pub ids: Vec<u32>,
}

/// What an instance's output holds before the op runs (in-place ops write their input, and an
/// accumulating gather adds to its seeded output, whatever this says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    Zeros,
    /// NaN everywhere, so an output the op skips cannot pass.
    Nan,
}

/// A case's inputs uploaded to a backend, ready to run.
pub struct Instance {
    be: Arc<dyn Backend>,
    op: CaseOp,
    inputs: Vec<Tensor>,
    ids: Vec<u32>,
    layout: Option<SeqLayout>,
    out: Tensor,
    /// A second output, downloaded after `out` (LayerNorm backward's normalised rows).
    second_out: Option<Tensor>,
    /// `linear_gated`'s `[n, 2m]` product where the backend runs it unfused (made by the first
    /// run, as a model's forward makes it once for all its layers).
    gate_up: Option<Tensor>,
}

fn rounded_to_f16(values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| f16::from_f32(v).to_f32())
        .collect()
}

fn upload_f16(be: &Arc<dyn Backend>, shape: &[usize], values: &[f32]) -> Result<Tensor> {
    let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
    be.upload_f16(shape, &halves)
}

impl OpCase {
    pub fn new(name: impl Into<String>, seed: u64, op: CaseOp) -> Self {
        OpCase {
            name: name.into(),
            op,
            seed,
        }
    }

    /// The op family a backend must support to run the case.
    pub fn family(&self) -> OpFamily {
        match self.op {
            CaseOp::ActivationBackward { .. }
            | CaseOp::LayerNormBackward { .. }
            | CaseOp::AttentionBackward { .. }
            | CaseOp::ScatterRows { .. }
            | CaseOp::SequenceSums { .. } => OpFamily::Backward,
            _ => OpFamily::Encoder,
        }
    }

    /// The shapes, in words (the bench's `shape` column).
    pub fn shape(&self) -> String {
        let sequences = |lengths: &[usize]| {
            if lengths.windows(2).all(|w| w[0] == w[1]) {
                format!("{}×{} tokens", lengths.len(), lengths[0])
            } else {
                format!("lengths {lengths:?}")
            }
        };
        let heads = |spec: &AttentionSpec| {
            format!("{}/{} heads × {}", spec.heads, spec.kv_heads, spec.head_dim)
        };
        match &self.op {
            CaseOp::ActivationBackward { n, m, act } => format!("{n}×{m} {act:?}"),
            CaseOp::LayerNormBackward { n, d, .. } => format!("{n}×{d}"),
            CaseOp::AttentionBackward { lengths, spec } => {
                format!("{}, {}", sequences(lengths), heads(spec))
            }
            CaseOp::SequenceSums {
                lengths,
                d,
                weighted,
            } => {
                let by = if *weighted { ", weighted" } else { "" };
                format!("{} × {d}{by}", sequences(lengths))
            }
            CaseOp::ScatterRows {
                rows,
                d,
                ids,
                accumulate,
            } => {
                let added = if *accumulate { ", accumulated" } else { "" };
                format!("{ids} rows into {rows}×{d}{added}")
            }
            CaseOp::Linear(l) => {
                let mut epilogue = String::new();
                if l.bias {
                    epilogue.push_str("+bias");
                }
                if l.residual {
                    epilogue.push_str("+residual");
                }
                let (n, k, m, act) = (l.n, l.k, l.m, l.act);
                format!("{n}×{k}·{m}×{k}ᵀ{epilogue} {act:?}")
            }
            CaseOp::LinearGated(l) => {
                let bias = if l.bias { "+bias" } else { "" };
                let (n, k, m, act) = (l.n, l.k, l.m, l.act);
                format!("{n}×{k}·(2·{m})×{k}ᵀ{bias} {act:?}-gated")
            }
            CaseOp::Attention { lengths, spec } => {
                let mut shape = format!(
                    "{}, {}/{} heads × {}",
                    sequences(lengths),
                    spec.heads,
                    spec.kv_heads,
                    spec.head_dim
                );
                if spec.causal {
                    shape.push_str(", causal");
                }
                if let Some(w) = spec.window {
                    shape.push_str(&format!(", window {w}"));
                }
                shape
            }
            CaseOp::GatedActivation { n, m, act } => format!("{n}×2·{m} {act:?}"),
            CaseOp::LayerNorm { n, d, .. } | CaseOp::L2Normalize { n, d } => {
                format!("{n}×{d} in place")
            }
            CaseOp::RmsNorm { n, d, .. } => format!("{n}×{d}"),
            CaseOp::Rope { lengths, spec, .. } => format!(
                "{}, {}/{} heads × {}",
                sequences(lengths),
                spec.heads,
                spec.kv_heads,
                spec.head_dim
            ),
            CaseOp::Gather {
                rows,
                d,
                ids,
                accumulate,
                f16_table,
            } => {
                let table = if *f16_table { " f16" } else { "" };
                let added = if *accumulate { ", accumulated" } else { "" };
                format!("{ids} ids from {rows}×{d}{table}{added}")
            }
            CaseOp::Pool {
                lengths,
                d,
                mode,
                normalize,
            } => {
                let mut shape = format!("{} × {d}", sequences(lengths));
                if *mode != Pooling::Mean {
                    shape.push_str(&format!(", {mode:?}"));
                }
                if *normalize {
                    shape.push_str(", normalized");
                }
                shape
            }
        }
    }

    /// The work of one run: `linear` `2·n·k·m` FLOPs (`linear_gated` `2·n·k·2m`: gate and up),
    /// attention `4·head_dim` FLOPs per (query, key, head) the mask allows; bytes are the inputs
    /// read once and outputs written once in their element type (RoPE also reads the positions
    /// and its (cos, sin) table).
    pub fn work(&self) -> Work {
        match &self.op {
            CaseOp::ActivationBackward { n, m, .. } => Work::bytes((3 * n * m) as f64 * F32),
            CaseOp::LayerNormBackward { n, d, .. } => Work::bytes((4 * n * d + d) as f64 * F32),
            // Per (query, key, head): the score, dP, dV, dQ and dK products, head_dim
            // multiply-adds each.
            CaseOp::AttentionBackward { lengths, spec } => {
                let pairs: usize = lengths.iter().map(|&len| len * len).sum();
                let tokens: usize = lengths.iter().sum();
                let flops = 10.0 * (pairs * spec.head_dim * spec.heads) as f64;
                let values = tokens * (2 * spec.qkv_width() + spec.heads * spec.head_dim);
                Work::f32(flops, values as f64 * F32)
            }
            CaseOp::SequenceSums {
                lengths,
                d,
                weighted,
            } => {
                let tokens: usize = lengths.iter().sum();
                let read = if *weighted { 2 * tokens } else { tokens };
                Work::bytes(((read + lengths.len()) * d) as f64 * F32)
            }
            CaseOp::ScatterRows {
                rows,
                d,
                ids,
                accumulate,
            } => {
                let table = if *accumulate { 2 * rows * d } else { rows * d };
                Work::bytes((ids * d + table + ids) as f64 * F32)
            }
            CaseOp::Linear(l) => {
                let (n, k, m) = (l.n, l.k, l.m);
                let weight_bytes = l.weights.bytes();
                let bias = if l.bias { m } else { 0 };
                let out = if l.residual { 2 * n * m } else { n * m };
                let bytes = (n * k + bias + out) as f64 * F32 + (m * k) as f64 * weight_bytes;
                Work::f32(2.0 * (n * k * m) as f64, bytes)
            }
            // Both halves' products; the `[n, 2m]` product is not compulsory traffic.
            CaseOp::LinearGated(l) => {
                let (n, k, m) = (l.n, l.k, l.m);
                let bias = if l.bias { 2 * m } else { 0 };
                let bytes =
                    (n * k + bias + n * m) as f64 * F32 + (2 * m * k) as f64 * l.weights.bytes();
                Work::f32(2.0 * (n * k * 2 * m) as f64, bytes)
            }
            CaseOp::Attention { lengths, spec } => {
                let pairs: usize = lengths
                    .iter()
                    .map(|&len| {
                        (0..len)
                            .map(|i| (0..len).filter(|&j| spec.allows(i, j)).count())
                            .sum::<usize>()
                    })
                    .sum();
                let tokens: usize = lengths.iter().sum();
                let out_width = spec.heads * spec.head_dim;
                let flops = 4.0 * (pairs * spec.head_dim * spec.heads) as f64;
                let bytes = (tokens * (spec.qkv_width() + out_width)) as f64 * F32;
                Work::f32(flops, bytes)
            }
            CaseOp::GatedActivation { n, m, .. } => Work::bytes((3 * n * m) as f64 * F32),
            CaseOp::LayerNorm { n, d, .. }
            | CaseOp::RmsNorm { n, d, .. }
            | CaseOp::L2Normalize { n, d } => Work::bytes((2 * n * d) as f64 * F32),
            CaseOp::Rope { lengths, spec, .. } => {
                let tokens: usize = lengths.iter().sum();
                let max_len = lengths.iter().copied().max().unwrap_or(0);
                let values = 2 * tokens * spec.rotated_width() + tokens + max_len * spec.head_dim;
                Work::bytes(values as f64 * F32)
            }
            CaseOp::Gather {
                d,
                ids,
                accumulate,
                f16_table,
                ..
            } => {
                let table = if *f16_table { F16 } else { F32 };
                let out = if *accumulate { 2 * ids * d } else { ids * d };
                Work::bytes((ids * d) as f64 * table + (out + ids) as f64 * F32)
            }
            CaseOp::Pool {
                lengths,
                d,
                normalize,
                ..
            } => {
                let (tokens, sequences) = (lengths.iter().sum::<usize>(), lengths.len());
                let normalized = if *normalize { 2 * sequences } else { 0 };
                Work::bytes(((tokens + sequences + normalized) * d) as f64 * F32)
            }
        }
    }

    /// The tolerance of the case's output: f32 paths' relative error, and exact equality for a
    /// gather from an f16 table (f16 → f32 widening is exact, and so is the one addition).
    pub fn tolerance(&self) -> Tolerance {
        match self.op {
            CaseOp::Gather {
                f16_table: true, ..
            } => Tolerance::Exact,
            _ => Tolerance::Relative(F32_TOL),
        }
    }

    /// The seeded inputs, in the order the op takes them (`linear`: x, w, bias, residual;
    /// `linear_gated`: x, w, bias; norms: x, gamma, beta; gather: table, then the output's
    /// starting values).
    pub fn inputs(&self) -> Inputs {
        let seed = self.seed;
        let random = |len: usize, i: u64| uniform(len, seed + i);
        let (tensors, ids) = match &self.op {
            // The pre-activation scaled by 4, as for the gated activation.
            CaseOp::ActivationBackward { n, m, .. } => (
                vec![
                    random(n * m, 0).iter().map(|v| 4.0 * v).collect(),
                    random(n * m, 1),
                ],
                Vec::new(),
            ),
            CaseOp::LayerNormBackward { n, d, .. } => {
                let x = random(n * d, 0)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + if i < *d { 30.0 } else { 0.0 })
                    .collect();
                (vec![x, random(*d, 1), random(n * d, 2)], Vec::new())
            }
            CaseOp::AttentionBackward { lengths, spec } => {
                let tokens: usize = lengths.iter().sum();
                let qkv = random(tokens * spec.qkv_width(), 0);
                let d_out = random(tokens * spec.heads * spec.head_dim, 1);
                (
                    vec![qkv.iter().map(|v| v * 3.0).collect(), d_out],
                    Vec::new(),
                )
            }
            CaseOp::SequenceSums {
                lengths,
                d,
                weighted,
            } => {
                let values = lengths.iter().sum::<usize>() * d;
                let mut tensors = vec![random(values, 0)];
                if *weighted {
                    tensors.push(random(values, 1));
                }
                (tensors, Vec::new())
            }
            CaseOp::ScatterRows {
                rows,
                d,
                ids,
                accumulate,
            } => {
                let mut rng = SplitMix64::new(seed + 1);
                let ids: Vec<u32> = (0..*ids).map(|_| rng.below(*rows) as u32).collect();
                let mut tensors = vec![random(ids.len() * d, 0)];
                if *accumulate {
                    tensors.push(random(rows * d, 2));
                }
                (tensors, ids)
            }
            CaseOp::Linear(l) => {
                let (n, k, m) = (l.n, l.k, l.m);
                let w = random(m * k, 1);
                let w = l.weights.round(w);
                let mut tensors = vec![random(n * k, 0), w];
                if l.bias {
                    tensors.push(random(m, 2));
                }
                if l.residual {
                    tensors.push(random(n * m, 3));
                }
                (tensors, Vec::new())
            }
            CaseOp::LinearGated(l) => {
                let (n, k, m) = (l.n, l.k, l.m);
                let w = l.weights.round(random(2 * m * k, 1));
                let mut tensors = vec![random(n * k, 0), w];
                if l.bias {
                    tensors.push(random(2 * m, 2));
                }
                (tensors, Vec::new())
            }
            CaseOp::Attention { lengths, spec } => {
                let tokens: usize = lengths.iter().sum();
                let qkv = random(tokens * spec.qkv_width(), 0);
                (vec![qkv.iter().map(|v| v * 3.0).collect()], Vec::new())
            }
            CaseOp::LayerNorm { n, d, .. } => {
                let x = random(n * d, 0)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + if i < *d { 30.0 } else { 0.0 })
                    .collect();
                (vec![x, random(*d, 1), random(*d, 2)], Vec::new())
            }
            CaseOp::RmsNorm { n, d, .. } => {
                let x = random(n * d, 0)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match i / d {
                        1 => v * 300.0,
                        2 => v * 1e-3,
                        _ => *v,
                    })
                    .collect();
                (vec![x, random(*d, 1)], Vec::new())
            }
            CaseOp::Rope { lengths, spec, .. } => {
                let tokens: usize = lengths.iter().sum();
                (vec![random(tokens * spec.qkv_width(), 0)], Vec::new())
            }
            CaseOp::L2Normalize { n, d } => (vec![random(n * d, 0)], Vec::new()),
            // Scaled by 4 so the activation's tails (SiLU's near-zero negatives) are reached.
            CaseOp::GatedActivation { n, m, .. } => (
                vec![random(2 * n * m, 0).iter().map(|v| 4.0 * v).collect()],
                Vec::new(),
            ),
            CaseOp::Gather {
                rows,
                d,
                ids,
                accumulate,
                f16_table,
            } => {
                let table = random(rows * d, 0);
                let table = if *f16_table {
                    rounded_to_f16(table)
                } else {
                    table
                };
                let mut rng = SplitMix64::new(seed + 1);
                let ids: Vec<u32> = (0..*ids).map(|_| rng.below(*rows) as u32).collect();
                let mut tensors = vec![table];
                if *accumulate {
                    tensors.push(random(ids.len() * d, 2));
                }
                (tensors, ids)
            }
            CaseOp::Pool { lengths, d, .. } => {
                let tokens: usize = lengths.iter().sum();
                (vec![random(tokens * d, 0)], Vec::new())
            }
        };
        Inputs { tensors, ids }
    }

    /// The f64 reference of the case's output on `inputs`.
    pub fn reference(&self, inputs: &Inputs) -> Vec<f64> {
        let t = &inputs.tensors;
        match &self.op {
            CaseOp::ActivationBackward { act, .. } => t[0]
                .iter()
                .zip(&t[1])
                .map(|(&z, &dy)| dy as f64 * reference::activation_derivative(*act, z as f64))
                .collect(),
            CaseOp::LayerNormBackward { eps, .. } => {
                reference::layer_norm_backward(&t[0], &t[1], &t[2], *eps as f64)
            }
            CaseOp::AttentionBackward { lengths, spec } => {
                reference::attention_backward(&t[0], lengths, spec, &t[1])
            }
            CaseOp::SequenceSums { lengths, d, .. } => {
                reference::sequence_sums(&t[0], t.get(1).map(Vec::as_slice), lengths, *d)
            }
            CaseOp::ScatterRows { rows, d, .. } => {
                reference::scatter_rows(&t[0], *d, &inputs.ids, *rows, t.get(1).map(Vec::as_slice))
            }
            CaseOp::Linear(l) => {
                let mut rest = t[2..].iter();
                let bias = l.bias.then(|| rest.next().unwrap().as_slice());
                let residual = l.residual.then(|| rest.next().unwrap().as_slice());
                reference::linear((l.n, l.k, l.m), &t[0], &t[1], bias, l.act, residual)
            }
            CaseOp::LinearGated(l) => {
                let bias = t.get(2).map(Vec::as_slice);
                reference::linear_gated((l.n, l.k, l.m), &t[0], &t[1], bias, l.act)
            }
            CaseOp::Attention { lengths, spec } => reference::attention(&t[0], lengths, spec),
            CaseOp::GatedActivation { n, m, act } => {
                reference::gated_activation(&t[0], *n, *m, *act)
            }
            CaseOp::LayerNorm { eps, .. } => {
                reference::layer_norm(&t[0], &t[1], &t[2], *eps as f64)
            }
            CaseOp::RmsNorm { eps, .. } => reference::rms_norm(&t[0], &t[1], *eps as f64),
            CaseOp::Rope {
                lengths,
                spec,
                frequencies,
            } => reference::rope(&t[0], lengths, spec, &frequencies.inv_freq(spec.head_dim)),
            CaseOp::L2Normalize { d, .. } => {
                let wide: Vec<f64> = t[0].iter().map(|&v| v as f64).collect();
                reference::l2_normalize(&wide, *d)
            }
            CaseOp::Gather { d, .. } => {
                reference::gather(&t[0], *d, &inputs.ids, t.get(1).map(Vec::as_slice))
            }
            CaseOp::Pool {
                lengths,
                d,
                mode,
                normalize,
            } => {
                let pooled = reference::pool(&t[0], lengths, *d, *mode);
                if *normalize {
                    reference::l2_normalize(&pooled, *d)
                } else {
                    pooled
                }
            }
        }
    }

    /// Uploads `inputs` to `be` and allocates the output, filled with `fill`.
    pub fn instance(&self, be: &Arc<dyn Backend>, inputs: &Inputs, fill: Fill) -> Result<Instance> {
        let t = &inputs.tensors;
        let up = |shape: &[usize], values: &[f32]| be.upload(shape, values);
        let output = |shape: &[usize]| match fill {
            Fill::Zeros => be.zeros(shape),
            Fill::Nan => be.upload(shape, &vec![f32::NAN; shape.iter().product()]),
        };
        let mut layout = None;
        let mut second_out = None;
        let (tensors, out) = match &self.op {
            CaseOp::ActivationBackward { n, m, .. } => (
                vec![up(&[*n, *m], &t[0])?, up(&[*n, *m], &t[1])?],
                output(&[*n, *m])?,
            ),
            CaseOp::LayerNormBackward { n, d, .. } => {
                second_out = Some(output(&[*n, *d])?);
                (
                    vec![
                        up(&[*n, *d], &t[0])?,
                        up(&[*d], &t[1])?,
                        up(&[*n, *d], &t[2])?,
                    ],
                    output(&[*n, *d])?,
                )
            }
            CaseOp::AttentionBackward { lengths, spec } => {
                let seqs = SeqLayout::from_lengths(lengths.iter().copied());
                let tokens = seqs.num_tokens();
                layout = Some(seqs);
                let width = spec.qkv_width();
                let d_out = up(&[tokens, spec.heads * spec.head_dim], &t[1])?;
                (
                    vec![up(&[tokens, width], &t[0])?, d_out],
                    output(&[tokens, width])?,
                )
            }
            CaseOp::SequenceSums { lengths, d, .. } => {
                let seqs = SeqLayout::from_lengths(lengths.iter().copied());
                let shape = [seqs.num_tokens(), *d];
                let out = output(&[seqs.num_sequences(), *d])?;
                layout = Some(seqs);
                let tensors = t.iter().map(|v| up(&shape, v)).collect::<Result<_>>()?;
                (tensors, out)
            }
            CaseOp::ScatterRows { rows, d, .. } => {
                let delta = up(&[inputs.ids.len(), *d], &t[0])?;
                let table = match t.get(1) {
                    Some(base) => up(&[*rows, *d], base)?,
                    None => output(&[*rows, *d])?,
                };
                (vec![delta], table)
            }
            CaseOp::Linear(l) => {
                let (n, k, m) = (l.n, l.k, l.m);
                let w = l.weights.upload(be, &[m, k], &t[1])?;
                let mut tensors = vec![up(&[n, k], &t[0])?, w];
                let mut rest = t[2..].iter();
                if l.bias {
                    tensors.push(up(&[m], rest.next().unwrap())?);
                }
                if l.residual {
                    tensors.push(up(&[n, m], rest.next().unwrap())?);
                }
                (tensors, output(&[n, m])?)
            }
            CaseOp::LinearGated(l) => {
                let (n, k, m) = (l.n, l.k, l.m);
                let w = l.weights.upload(be, &[2 * m, k], &t[1])?;
                let mut tensors = vec![up(&[n, k], &t[0])?, w];
                if let Some(bias) = t.get(2) {
                    tensors.push(up(&[2 * m], bias)?);
                }
                (tensors, output(&[n, m])?)
            }
            CaseOp::Attention { lengths, spec } => {
                let seqs = SeqLayout::from_lengths(lengths.iter().copied());
                let tokens = seqs.num_tokens();
                layout = Some(seqs);
                let qkv = up(&[tokens, spec.qkv_width()], &t[0])?;
                (vec![qkv], output(&[tokens, spec.heads * spec.head_dim])?)
            }
            CaseOp::LayerNorm { n, d, .. } => (
                vec![up(&[*d], &t[1])?, up(&[*d], &t[2])?],
                up(&[*n, *d], &t[0])?,
            ),
            CaseOp::RmsNorm { n, d, .. } => (
                vec![up(&[*n, *d], &t[0])?, up(&[*d], &t[1])?],
                output(&[*n, *d])?,
            ),
            CaseOp::Rope {
                lengths,
                spec,
                frequencies,
            } => {
                let seqs = SeqLayout::from_lengths(lengths.iter().copied());
                let tokens = seqs.num_tokens();
                let table = frequencies.upload_table(be.as_ref(), spec.head_dim, seqs.max_len())?;
                layout = Some(seqs);
                (vec![table], up(&[tokens, spec.qkv_width()], &t[0])?)
            }
            CaseOp::L2Normalize { n, d } => (Vec::new(), up(&[*n, *d], &t[0])?),
            CaseOp::GatedActivation { n, m, .. } => {
                (vec![up(&[*n, 2 * m], &t[0])?], output(&[*n, *m])?)
            }
            CaseOp::Gather {
                rows, d, f16_table, ..
            } => {
                let table = if *f16_table {
                    upload_f16(be, &[*rows, *d], &t[0])?
                } else {
                    up(&[*rows, *d], &t[0])?
                };
                let shape = [inputs.ids.len(), *d];
                let out = match t.get(1) {
                    Some(base) => up(&shape, base)?,
                    None => output(&shape)?,
                };
                (vec![table], out)
            }
            CaseOp::Pool { lengths, d, .. } => {
                let seqs = SeqLayout::from_lengths(lengths.iter().copied());
                let hidden = up(&[seqs.num_tokens(), *d], &t[0])?;
                layout = Some(seqs);
                (vec![hidden], output(&[lengths.len(), *d])?)
            }
        };
        Ok(Instance {
            be: be.clone(),
            op: self.op.clone(),
            inputs: tensors,
            ids: inputs.ids.clone(),
            layout,
            out,
            second_out,
            gate_up: None,
        })
    }
}

impl Instance {
    /// Runs the op once, writing the output.
    pub fn run(&mut self) -> Result<()> {
        let (be, t, out) = (&self.be, &self.inputs, &mut self.out);
        let layout = || self.layout.as_ref().expect("a layout for a sequence op");
        match &self.op {
            CaseOp::ActivationBackward { act, .. } => {
                be.activation_backward(&t[0], &t[1], *act, out)
            }
            CaseOp::LayerNormBackward { eps, .. } => {
                let normed = self
                    .second_out
                    .as_mut()
                    .expect("the normalised rows' tensor");
                be.layer_norm_backward(&t[0], &t[1], *eps, &t[2], out, normed)
            }
            CaseOp::AttentionBackward { spec, .. } => {
                be.attention_backward(&t[0], layout(), spec, &t[1], out)
            }
            CaseOp::SequenceSums { .. } => be.sequence_sums(&t[0], t.get(1), layout(), out),
            CaseOp::ScatterRows { accumulate, .. } => {
                be.scatter_rows(&t[0], &self.ids, *accumulate, out)
            }
            CaseOp::Linear(l) => {
                let mut rest = t[2..].iter();
                let bias = if l.bias { rest.next() } else { None };
                let residual = if l.residual { rest.next() } else { None };
                be.linear(&t[0], &t[1], bias, l.act, residual, out)
            }
            CaseOp::LinearGated(l) => {
                be.linear_gated(&t[0], &t[1], t.get(2), l.act, &mut self.gate_up, out)
            }
            CaseOp::Attention { spec, .. } => be.attention(&t[0], layout(), spec, out),
            CaseOp::GatedActivation { act, .. } => be.gated_activation(&t[0], *act, out),
            CaseOp::LayerNorm { eps, .. } => be.layer_norm(out, &t[0], &t[1], *eps),
            CaseOp::RmsNorm { eps, .. } => be.rms_norm(&t[0], &t[1], *eps, out),
            CaseOp::Rope { spec, .. } => be.rope(out, layout(), spec, &t[0]),
            CaseOp::L2Normalize { .. } => be.l2_normalize(out),
            CaseOp::Gather { accumulate, .. } => be.gather_rows(&t[0], &self.ids, *accumulate, out),
            CaseOp::Pool {
                mode, normalize, ..
            } => {
                be.pool(&t[0], layout(), *mode, out)?;
                if *normalize {
                    be.l2_normalize(out)?;
                }
                Ok(())
            }
        }
    }

    /// The output, downloaded (followed by the second output where the op has one).
    pub fn output(&self) -> Result<Vec<f32>> {
        let mut values = self.be.download(&self.out)?;
        if let Some(second) = &self.second_out {
            values.extend(self.be.download(second)?);
        }
        Ok(values)
    }
}
