//! Kernel factors: what each sample contributes to a tangent kernel, per layer, so that the
//! kernel between two sets of samples is a sum of contractions
//! `(D_r·D_cᵀ) ⊙ (A_r·A_cᵀ + offset)` ([`crate::backend::Backend::ntk_contract`]).
//!
//! - **Exact**: `D` holds the output gradients `δ_c` of every class side by side and `A` the layer
//!   inputs, offset 1 for the bias — `⟨∇_W f_c(x), ∇_W f_c(z)⟩ = ⟨δ_c, δ'_c⟩⟨a, a'⟩`, never the
//!   `d_out × d_in` gradient.
//! - **Dense JL** (Rademacher or Gaussian): the per-sample gradient of each class is formed in
//!   bounded tiles and projected by one `k × P` map over the whole parameter vector (entries from
//!   a counter-based hash, never stored): one factor `D = [P g_1 … P g_C]`, no activations.
//! - **Kronecker JL**: per layer, `P_δ δ_c` and `P_a [a; 1]`, each to `k` dimensions — the
//!   projection `P_δ G P_aᵀ` of the layer gradient `G = δ [a; 1]ᵀ` without forming it, at cost
//!   `k·(d_out + d_in)` per sample and class instead of `k·d_out·d_in`.
//!
//! The gradient cosine seeds one backward row per sample with its loss gradient at the logits
//! (`softmax − one-hot` at its label) and is otherwise a pNTK; the embedding kernel needs no
//! gradient: each layer's input is a factor `D` of its own, with no activations.

use crate::backend::{Backend, JlDistribution, JlSpec};
use crate::error::{Error, Result};
use crate::models::classifier_grad::cross_entropy_seeds;
use crate::models::mlp::Mlp;
use crate::random::counter_hash;

/// Which tangent kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// Trace NTK, cosine-normalised: `Σ_c ⟨g_c(x), g_c(z)⟩ / (‖g(x)‖·‖g(z)‖)` (Engel et al. 2024).
    Trntk,
    /// The unnormalised trace NTK `Σ_c ⟨g_c(x), g_c(z)⟩`.
    Trntk0,
    /// Pseudo-NTK, the gradient of the summed logits: `⟨∇Σ_c f_c(x), ∇Σ_c f_c(z)⟩ / C`
    /// (Mohamadi et al. 2023's scaling), unnormalised.
    Pntk,
    /// Gradient cosine: the cosine of the per-sample gradients of the cross-entropy loss at each
    /// point's own label, `⟨∇L(x), ∇L(z)⟩ / (‖∇L(x)‖·‖∇L(z)‖)` (one of Engel et al.'s baselines;
    /// every point labelled).
    Gradcos,
    /// Embedding kernel: the cosine of every layer's hidden states side by side,
    /// `Σ_l ⟨h_l(x), h_l(z)⟩` normalised (Engel et al.'s other baseline; no gradient). For a
    /// transformer classifier the embedding output and every layer's output, token positions
    /// aligned; for an MLP its input and every hidden layer's activations (not the logits).
    Embedding,
}

impl KernelKind {
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Trntk => "trntk",
            KernelKind::Trntk0 => "trntk0",
            KernelKind::Pntk => "pntk",
            KernelKind::Gradcos => "gradcos",
            KernelKind::Embedding => "embedding",
        }
    }

    pub fn normalized(self) -> bool {
        matches!(
            self,
            KernelKind::Trntk | KernelKind::Gradcos | KernelKind::Embedding
        )
    }

    /// An error where the gradient cosine lacks a label: `rows` and `cols` are the number of
    /// labels given (if any) and of points, for the rows and the columns; `each` names a point
    /// ("text", "point").
    pub(crate) fn check_labels(
        self,
        rows: (Option<usize>, usize),
        cols: (Option<usize>, usize),
        each: &str,
    ) -> Result<()> {
        if self != KernelKind::Gradcos {
            return Ok(());
        }
        for (what, (labels, n)) in [("data", rows), ("--against data", cols)] {
            if labels != Some(n) {
                return Err(Error::input(format!(
                    "{what}: --kind gradcos needs every {each}'s label (the loss gradient is \
                     taken at it)"
                )));
            }
        }
        Ok(())
    }

    /// Rows of the backward pass per sample: one per class, or one for the summed logits.
    pub(crate) fn rows_per_sample(self, classes: usize) -> usize {
        match self {
            KernelKind::Pntk | KernelKind::Gradcos | KernelKind::Embedding => 1,
            KernelKind::Trntk | KernelKind::Trntk0 => classes,
        }
    }
}

/// How per-sample gradients are reduced before contraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionKind {
    /// Exact contraction.
    None,
    /// Dense JL map with ±1 entries over the whole parameter vector.
    Rademacher,
    /// Dense JL map with standard normal entries.
    Gaussian,
    /// Per-layer JL maps of output gradients and inputs (±1 entries).
    Kronecker,
}

/// One term of the kernel sum: `(D_r·D_cᵀ) ⊙ (A_r·A_cᵀ + offset)`, or `D_r·D_cᵀ` without `A`.
#[derive(Clone, Debug)]
pub struct Term {
    /// `[n, width]`, row-major.
    pub delta: Vec<f32>,
    pub width: usize,
    /// `([n, act_width], act_width)`.
    pub act: Option<(Vec<f32>, usize)>,
    pub offset: f32,
}

/// The factors of `n` samples and each sample's kernel value with itself (`‖g(x)‖²`), which
/// normalises the trace NTK.
#[derive(Clone, Debug)]
pub struct Factors {
    pub n: usize,
    pub terms: Vec<Term>,
    pub self_kernel: Vec<f64>,
}

impl Factors {
    /// The factors of `n` samples made of `terms`, their self-kernels summed from them.
    fn from_terms(n: usize, terms: Vec<Term>) -> Factors {
        Factors {
            n,
            self_kernel: self_kernel(n, &terms),
            terms,
        }
    }

    /// Rows `range` of every term.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Factors {
        let slice = |v: &[f32], w: usize| v[range.start * w..range.end * w].to_vec();
        Factors {
            n: range.len(),
            terms: self
                .terms
                .iter()
                .map(|t| Term {
                    delta: slice(&t.delta, t.width),
                    width: t.width,
                    act: t.act.as_ref().map(|(a, w)| (slice(a, *w), *w)),
                    offset: t.offset,
                })
                .collect(),
            self_kernel: self.self_kernel[range].to_vec(),
        }
    }
}

/// What to compute: kernel kind and projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FactorSpec {
    pub kind: KernelKind,
    pub projection: ProjectionKind,
    /// `k`; ignored (0) for the exact kernel.
    pub projection_dim: usize,
    pub seed: u64,
}

impl FactorSpec {
    pub fn check(&self) -> Result<()> {
        if self.kind == KernelKind::Embedding && self.projection != ProjectionKind::None {
            return Err(Error::input(
                "--kind embedding: the kernel of hidden states takes no --projection (it \
                 projects parameter gradients)",
            ));
        }
        if self.projection != ProjectionKind::None && self.projection_dim == 0 {
            return Err(Error::input(
                "--projection-dim must be at least 1 for a projected kernel",
            ));
        }
        Ok(())
    }
}

/// Per-sample output gradients of every layer, `[n, r·d_out_l]` (`r` rows per sample as
/// [`KernelKind`] says), and the layer inputs `[n, d_in_l]`.
struct LayerGradients {
    deltas: Vec<Vec<f32>>,
    inputs: Vec<Vec<f32>>,
}

/// The layer gradients of the rows of `x`; `labels` (one per row) seed the gradient cosine's
/// loss gradients.
fn gradients(
    mlp: &Mlp,
    x: &[f32],
    labels: Option<&[i64]>,
    kind: KernelKind,
) -> Result<LayerGradients> {
    let fwd = mlp.forward(x)?;
    let classes = mlp.num_classes();
    let r = kind.rows_per_sample(classes);
    let top = match kind {
        // Row (i, c) seeds logit c: the identity per sample.
        KernelKind::Trntk | KernelKind::Trntk0 => {
            let mut top = vec![0.0f32; fwd.n * classes * classes];
            top.chunks_exact_mut(classes)
                .enumerate()
                .for_each(|(row, t)| t[row % classes] = 1.0);
            top
        }
        // The summed logits, scaled by 1/√C so the kernel carries Mohamadi et al.'s 1/C.
        KernelKind::Pntk => vec![1.0 / (classes as f32).sqrt(); fwd.n * classes],
        // The cross-entropy's gradient at the logits, `softmax − one-hot`, per sample.
        KernelKind::Gradcos => {
            // Checked by `factors`: a label per row.
            let labels: Vec<usize> = labels
                .unwrap_or_default()
                .iter()
                .map(|&l| l as usize)
                .collect();
            let (seeds, _) = cross_entropy_seeds(&fwd.logits, &labels, classes, 1.0);
            seeds
        }
        KernelKind::Embedding => unreachable!("the embedding kernel has no gradients"),
    };
    let deltas = mlp.backward(&fwd, top, r);
    Ok(LayerGradients {
        deltas,
        inputs: fwd.inputs,
    })
}

/// `[a, 1]` per row: the bias's input is a constant 1.
fn with_ones(a: &[f32], width: usize) -> Vec<f32> {
    a.chunks_exact(width)
        .flat_map(|row| row.iter().copied().chain(std::iter::once(1.0)))
        .collect()
}

fn squared_norms(v: &[f32], width: usize) -> impl Iterator<Item = f64> + '_ {
    v.chunks_exact(width.max(1))
        .map(|row| row.iter().map(|&x| x as f64 * x as f64).sum())
}

/// The factors of the rows of `x` (`[n, mlp.input_dim()]`, classes `labels` where the kind
/// needs them); the projections run on `backend`.
pub fn factors(
    backend: &dyn Backend,
    mlp: &Mlp,
    x: &[f32],
    labels: Option<&[i64]>,
    spec: &FactorSpec,
) -> Result<Factors> {
    spec.check()?;
    let n = x.len() / mlp.input_dim();
    let labelled = (labels.map(<[i64]>::len), n);
    spec.kind.check_labels(labelled, labelled, "point")?;
    let factors = match spec.projection {
        _ if spec.kind == KernelKind::Embedding => hidden_states(mlp, x)?,
        ProjectionKind::None => exact(mlp, x, labels, spec.kind)?,
        ProjectionKind::Kronecker => kronecker(backend, mlp, x, labels, spec)?,
        ProjectionKind::Rademacher => {
            dense(backend, mlp, x, labels, spec, JlDistribution::Rademacher)?
        }
        ProjectionKind::Gaussian => dense(backend, mlp, x, labels, spec, JlDistribution::Gaussian)?,
    };
    debug_assert_eq!(factors.n, n);
    Ok(factors)
}

/// Self-kernel of each sample from its terms: `Σ_terms ‖D_i‖²·(‖A_i‖² + offset)`.
fn self_kernel(n: usize, terms: &[Term]) -> Vec<f64> {
    let mut total = vec![0.0f64; n];
    for t in terms {
        let acts: Vec<f64> = match &t.act {
            Some((a, w)) => squared_norms(a, *w).map(|s| s + t.offset as f64).collect(),
            None => vec![1.0; n],
        };
        for ((sum, d), a) in total
            .iter_mut()
            .zip(squared_norms(&t.delta, t.width))
            .zip(acts)
        {
            *sum += d * a;
        }
    }
    total
}

/// The embedding kernel's factors: every layer's input (the data, then each hidden layer's
/// activations), one term each, contracted as they are.
fn hidden_states(mlp: &Mlp, x: &[f32]) -> Result<Factors> {
    let fwd = mlp.forward(x)?;
    let terms: Vec<Term> = mlp
        .layers
        .iter()
        .zip(fwd.inputs)
        .map(|(layer, input)| Term {
            delta: input,
            width: layer.d_in,
            act: None,
            offset: 0.0,
        })
        .collect();
    Ok(Factors::from_terms(fwd.n, terms))
}

fn exact(mlp: &Mlp, x: &[f32], labels: Option<&[i64]>, kind: KernelKind) -> Result<Factors> {
    let LayerGradients { deltas, inputs } = gradients(mlp, x, labels, kind)?;
    let n = x.len() / mlp.input_dim();
    let r = kind.rows_per_sample(mlp.num_classes());
    let terms: Vec<Term> = mlp
        .layers
        .iter()
        .zip(deltas)
        .zip(inputs)
        .map(|((layer, delta), input)| Term {
            delta,
            width: r * layer.d_out,
            act: Some((input, layer.d_in)),
            offset: 1.0,
        })
        .collect();
    Ok(Factors::from_terms(n, terms))
}

/// The seed of one of the independent per-layer maps of the Kronecker projection.
pub(crate) fn layer_seed(seed: u64, layer: usize, side: u64) -> u64 {
    counter_hash(seed, layer as u64, side)
}

fn kronecker(
    backend: &dyn Backend,
    mlp: &Mlp,
    x: &[f32],
    labels: Option<&[i64]>,
    spec: &FactorSpec,
) -> Result<Factors> {
    let LayerGradients { deltas, inputs } = gradients(mlp, x, labels, spec.kind)?;
    let n = x.len() / mlp.input_dim();
    let r = spec.kind.rows_per_sample(mlp.num_classes());
    let k = spec.projection_dim;
    let project = |values: &[f32], rows: usize, width: usize, seed: u64| -> Result<Vec<f32>> {
        let jl = JlSpec {
            seed,
            dim: k,
            distribution: JlDistribution::Rademacher,
            column_offset: 0,
        };
        let input = backend.upload(&[rows, width], values)?;
        let mut out = backend.zeros(&[rows, k])?;
        backend.jl_project(&input, &jl, false, &mut out)?;
        backend.download(&out)
    };
    let mut terms = Vec::with_capacity(mlp.layers.len());
    for (l, ((layer, delta), input)) in mlp.layers.iter().zip(deltas).zip(inputs).enumerate() {
        let delta = project(&delta, n * r, layer.d_out, layer_seed(spec.seed, l, 0))?;
        let act = project(
            &with_ones(&input, layer.d_in),
            n,
            layer.d_in + 1,
            layer_seed(spec.seed, l, 1),
        )?;
        terms.push(Term {
            delta,
            width: r * k,
            act: Some((act, k)),
            offset: 0.0,
        });
    }
    Ok(Factors::from_terms(n, terms))
}

/// Gradient entries formed per projection call: bounds the memory of the materialised tiles
/// (128 MiB of f32) whatever the model size.
const DENSE_TILE_VALUES: usize = 32 << 20;

/// Offsets of each layer's weight block in the flattened parameter vector (fc0.weight
/// row-major, fc0.bias, fc1.weight, …: the order of `torch.nn.Module.parameters()`).
fn parameter_offsets(mlp: &Mlp) -> Vec<usize> {
    mlp.layers
        .iter()
        .scan(0, |offset, l| {
            let here = *offset;
            *offset += l.d_out * (l.d_in + 1);
            Some(here)
        })
        .collect()
}

fn dense(
    backend: &dyn Backend,
    mlp: &Mlp,
    x: &[f32],
    labels: Option<&[i64]>,
    spec: &FactorSpec,
    distribution: JlDistribution,
) -> Result<Factors> {
    let d = mlp.input_dim();
    let n = x.len() / d;
    let r = spec.kind.rows_per_sample(mlp.num_classes());
    let k = spec.projection_dim;
    let widest = mlp
        .layers
        .iter()
        .map(|l| l.d_out * l.d_in)
        .max()
        .unwrap_or(1);
    let chunk = (DENSE_TILE_VALUES / (r * widest)).clamp(1, n.max(1));
    let offsets = parameter_offsets(mlp);
    let mut features = vec![0.0f32; n * r * k];
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start);
        let LayerGradients { deltas, inputs } = gradients(
            mlp,
            &x[start * d..(start + rows) * d],
            labels.map(|l| &l[start..start + rows]),
            spec.kind,
        )?;
        let mut projected = backend.zeros(&[rows * r, k])?;
        for (l, layer) in mlp.layers.iter().enumerate() {
            let (delta, input) = (&deltas[l], &inputs[l]);
            // The weight gradient of row (i, c): δ_{i,c} ⊗ a_i, flattened row-major.
            let mut grad = vec![0.0f32; rows * r * layer.d_out * layer.d_in];
            grad.chunks_exact_mut(layer.d_out * layer.d_in)
                .enumerate()
                .for_each(|(row, g)| {
                    let a = &input[(row / r) * layer.d_in..(row / r + 1) * layer.d_in];
                    let dl = &delta[row * layer.d_out..(row + 1) * layer.d_out];
                    g.chunks_exact_mut(layer.d_in)
                        .zip(dl)
                        .for_each(|(g, &dv)| g.iter_mut().zip(a).for_each(|(g, &av)| *g = dv * av));
                });
            let weight_block = layer.d_out * layer.d_in;
            for (values, width, offset) in [
                (grad, weight_block, offsets[l]),
                (delta.clone(), layer.d_out, offsets[l] + weight_block),
            ] {
                let jl = JlSpec {
                    seed: spec.seed,
                    dim: k,
                    distribution,
                    column_offset: offset as u64,
                };
                let input = backend.upload(&[rows * r, width], &values)?;
                backend.jl_project(&input, &jl, true, &mut projected)?;
            }
        }
        let projected = backend.download(&projected)?;
        features[start * r * k..(start + rows) * r * k].copy_from_slice(&projected);
    }
    let terms = vec![Term {
        delta: features,
        width: r * k,
        act: None,
        offset: 0.0,
    }];
    Ok(Factors::from_terms(n, terms))
}
