//! Per-sample gradient factors of a transformer sequence classifier ([`SequenceClassifier`]):
//! what each sample's gradient of each backward seed is made of, layer by layer, so a tangent
//! kernel can be contracted from them without ever storing a whole gradient.
//!
//! A backward *seed* is a row `s` of logit gradients, the same for every sample: the class
//! one-hots give `∇θ f_c(x)` for the trace NTK ([`class_seeds`]), one row of `1/√C` gives the
//! pseudo-NTK's `∇θ Σ_c f_c(x)/√C` ([`summed_seed`]) — the rows the MLP path's
//! `KernelKind::rows_per_sample` counts. Samples never interact (attention stays inside each
//! packed sequence), so one backward pass over the packed batch per seed gives every sample's
//! gradient at once.
//!
//! The factors ([`SequenceFactors`]), `r` seeds, sample `i` with `T_i` tokens:
//!
//! - **Linear layers** ([`LinearFactors`]): inputs `a_t: [d_in]` and output gradients
//!   `δ_t: [d_out]` per token, so `∇_W = Σ_t δ_t a_tᵀ` and
//!   `⟨∇_W f(x_i), ∇_W f(x_j)⟩ = Σ_{t,s} ⟨δ_it, δ_js⟩⟨a_it, a_js⟩`. The head's two layers act on
//!   one row per sample (the first token), the encoder's on every token.
//! - **Embedding tables** ([`EmbeddingFactors`]): the gradient `δ_t` at the summed embedding row
//!   of each token and, per table, the row id each token read: a sample's table gradient is its
//!   `δ` rows scattered by id, `⟨g_i, g_j⟩ = Σ_{t,s: id_it = id_js} ⟨δ_it, δ_js⟩`.
//! - **Vectors** ([`VectorGradients`]): biases and LayerNorm γ/β, materialised per sample
//!   (`d`-dimensional: cheaper to store than to contract token by token).
//!
//! Every seed of a token sits side by side in one row (`[rows, r·width]`), as the MLP factors of
//! `instruments::project` hold every class of a sample: a contraction summed over seeds is then
//! one inner product of rows.

use std::ops::Range;

use super::bert::BertTape;
use super::classifier::{HeadTape, SequenceClassifier};
use super::dropout::{DropoutSite, StepDropout};
use super::TokenBatch;
use crate::backend::cpu::backward::scatter_rows;
use crate::backend::cpu::{gemm, Operand};
use crate::backend::{Activation, AttentionSpec, Backend, DropoutMask, SeqLayout, Tensor};
use crate::error::{Error, Result};

/// Which rows a factor has: one per token of the packed batch, or one per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorRows {
    /// `layout.num_tokens()` rows, sample `i`'s being `layout.range(i)`.
    Tokens,
    /// One row per sample (the classification head reads only the first token).
    Samples,
}

/// One Linear layer `z = W a + b` (PyTorch layout `W: [d_out, d_in]`); its bias is among the
/// [`VectorGradients`].
#[derive(Clone, Debug)]
pub struct LinearFactors {
    /// The checkpoint names of `W`'s row blocks, in row order, with their row counts: Q, K and
    /// V for the fused attention projection, one block otherwise.
    pub parts: Vec<(String, usize)>,
    pub d_in: usize,
    pub d_out: usize,
    pub rows: FactorRows,
    /// Layer inputs `a_t`, `[rows, d_in]` (the same for every seed).
    pub acts: Vec<f32>,
    /// Output gradients `δ_t` of every seed side by side, `[rows, seeds·d_out]`.
    pub deltas: Vec<f32>,
}

/// The row ids one embedding table was read at.
#[derive(Clone, Debug)]
pub struct EmbeddingIds {
    /// Checkpoint name of the table (`…word_embeddings.weight`).
    pub name: String,
    /// Rows of the table.
    pub rows: usize,
    /// `[tokens]`: the row each packed token read.
    pub ids: Vec<u32>,
}

/// The embedding tables (word, position, token type), which share one gradient per token.
#[derive(Clone, Debug)]
pub struct EmbeddingFactors {
    /// Hidden size.
    pub width: usize,
    /// Gradient at each token's summed embedding row (before the embedding LayerNorm), every
    /// seed side by side: `[tokens, seeds·width]`.
    pub deltas: Vec<f32>,
    pub tables: Vec<EmbeddingIds>,
}

/// A bias or LayerNorm parameter's per-sample gradients.
#[derive(Clone, Debug)]
pub struct VectorGradients {
    /// Checkpoint name (`….bias`, `…LayerNorm.weight`).
    pub name: String,
    pub len: usize,
    /// `[samples, seeds·len]`.
    pub grads: Vec<f32>,
}

/// Per-sample gradient factors of a packed batch for `seeds` backward seeds (module docs).
#[derive(Clone, Debug)]
pub struct SequenceFactors {
    /// The samples' tokens (no padding: sample `i` has exactly its `T_i` rows).
    pub layout: SeqLayout,
    pub seeds: usize,
    /// In forward order: per encoder layer QKV, attention output, intermediate, output; then the
    /// head's dense and output layers.
    pub linears: Vec<LinearFactors>,
    pub embeddings: EmbeddingFactors,
    pub vectors: Vec<VectorGradients>,
}

/// The trace NTK's seeds: the one-hot rows of `classes` classes, `[classes, classes]`.
pub fn class_seeds(classes: usize) -> Vec<f32> {
    let mut seeds = vec![0.0f32; classes * classes];
    seeds.iter_mut().step_by(classes + 1).for_each(|v| *v = 1.0);
    seeds
}

/// The pseudo-NTK's seed: one row of `1/√C`, so the kernel carries Mohamadi et al.'s `1/C`.
pub fn summed_seed(classes: usize) -> Vec<f32> {
    vec![1.0 / (classes as f32).sqrt(); classes]
}

/// Columns `cols` of seed `k` of the rows `range` of a `[rows, seeds·width]` factor, as
/// `[range.len(), cols.len()]`.
pub fn seed_columns(
    values: &[f32],
    range: Range<usize>,
    seeds: usize,
    width: usize,
    k: usize,
    cols: Range<usize>,
) -> Vec<f32> {
    range
        .flat_map(|row| {
            let at = (row * seeds + k) * width;
            values[at + cols.start..at + cols.end].iter().copied()
        })
        .collect()
}

/// `[rows, width]` of each seed, side by side: `[rows, seeds·width]`.
fn interleave(per_seed: &[Vec<f32>], width: usize) -> Vec<f32> {
    let rows = per_seed.first().map_or(0, |v| v.len() / width.max(1));
    let mut out = Vec::with_capacity(rows * per_seed.len() * width);
    for row in 0..rows {
        for seed in per_seed {
            out.extend_from_slice(&seed[row * width..(row + 1) * width]);
        }
    }
    out
}

impl SequenceFactors {
    pub fn num_samples(&self) -> usize {
        self.layout.num_sequences()
    }

    /// The factor rows of `sample`: its tokens, or its one row of the head's layers.
    pub fn sample_rows(&self, rows: FactorRows, sample: usize) -> Range<usize> {
        match rows {
            FactorRows::Tokens => self.layout.range(sample),
            FactorRows::Samples => sample..sample + 1,
        }
    }

    /// The checkpoint names of the parameters the factors cover: the embedding tables, every
    /// Linear's row blocks, the vectors (the order [`Self::retain`] reads its flags in).
    pub fn parameter_names(&self) -> Vec<&str> {
        let tables = self.embeddings.tables.iter().map(|t| t.name.as_str());
        let linears = self
            .linears
            .iter()
            .flat_map(|l| l.parts.iter().map(|(name, _)| name.as_str()));
        let vectors = self.vectors.iter().map(|v| v.name.as_str());
        tables.chain(linears).chain(vectors).collect()
    }

    /// Drops the parameters whose flag (in [`Self::parameter_names`] order) is false, so
    /// kernels and gradients cover only the others. A fused Linear losing some of its row
    /// blocks (Q without K and V) keeps its factors with the dropped blocks' output gradients
    /// zeroed, which zeroes exactly those rows of `Δᵀ A`.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut flags = keep.iter().copied();
        let mut next = || flags.next().expect("one flag per parameter");
        self.embeddings.tables.retain(|_| next());
        self.linears.retain_mut(|lin| {
            let kept: Vec<bool> = lin.parts.iter().map(|_| next()).collect();
            let mut first = 0;
            for ((_, part_rows), &k) in lin.parts.iter().zip(&kept) {
                if !k {
                    // Rows of `deltas` are (token, seed) pairs of `d_out` values.
                    for row in lin.deltas.chunks_exact_mut(lin.d_out) {
                        row[first..first + part_rows].fill(0.0);
                    }
                }
                first += part_rows;
            }
            kept.contains(&true)
        });
        self.vectors.retain(|_| next());
    }

    /// The gradient of seed `seed` of sample `sample`, materialised per checkpoint tensor (name,
    /// row-major values of the tensor's shape): `Δᵀ A` per Linear, `δ` rows scattered by id per
    /// embedding table, the vectors as stored. The materialised form of a kernel, and the
    /// reference the contracted forms are tested against.
    pub fn materialize(&self, sample: usize, seed: usize) -> Result<Vec<(String, Vec<f32>)>> {
        let r = self.seeds;
        let mut out = Vec::new();
        let emb = &self.embeddings;
        let tokens = self.layout.range(sample);
        let delta = seed_columns(
            &emb.deltas,
            tokens.clone(),
            r,
            emb.width,
            seed,
            0..emb.width,
        );
        for table in &emb.tables {
            out.push((
                table.name.clone(),
                scatter_rows(&delta, &table.ids[tokens.clone()], table.rows, emb.width)?,
            ));
        }
        for lin in &self.linears {
            let rows = self.sample_rows(lin.rows, sample);
            let t = rows.len();
            let delta = seed_columns(&lin.deltas, rows.clone(), r, lin.d_out, seed, 0..lin.d_out);
            let acts = &lin.acts[rows.start * lin.d_in..rows.end * lin.d_in];
            let mut grad = vec![0.0f32; lin.d_out * lin.d_in];
            gemm(
                &mut grad,
                Operand::transposed(&delta, t, lin.d_out),
                Operand::plain(acts, t, lin.d_in),
                false,
            );
            let mut first = 0;
            for (name, part_rows) in &lin.parts {
                out.push((
                    name.clone(),
                    grad[first * lin.d_in..(first + part_rows) * lin.d_in].to_vec(),
                ));
                first += part_rows;
            }
        }
        for v in &self.vectors {
            let at = (sample * r + seed) * v.len;
            out.push((v.name.clone(), v.grads[at..at + v.len].to_vec()));
        }
        Ok(out)
    }
}

/// A host copy of a weight the backward pass reads; an error that says what to do where the
/// backend keeps it in half precision.
fn host(be: &dyn Backend, t: &Tensor, what: &str) -> Result<Vec<f32>> {
    be.download(t).map_err(|e| {
        Error::input(format!(
            "{what}: the backward pass reads f32 weights (load the classifier with f32 weights): {e}"
        ))
    })
}

/// The transpose `[d_in, d_out]` of a PyTorch-layout weight `[d_out, d_in]` on its backend, so
/// that `linear(δ, Wᵀ)` is a layer's input gradient `δ·W`.
fn upload_transposed(be: &dyn Backend, w: &Tensor, what: &str) -> Result<Tensor> {
    let (rows, cols) = w.dims2(what)?;
    let values = host(be, w, what)?;
    let mut transposed = vec![0.0f32; rows * cols];
    for (r, row) in values.chunks_exact(cols.max(1)).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            transposed[c * rows + r] = v;
        }
    }
    be.upload(&[cols, rows], &transposed)
}

/// One encoder layer's transposed weights.
struct TransposedLayer {
    qkv: Tensor,
    attn_out: Tensor,
    intermediate: Tensor,
    output: Tensor,
}

/// The transposed weights of a classifier's Linear layers on its backend
/// (`SequenceClassifier::transposed_weights`): what every backward pass multiplies the output
/// gradients by. LayerNorm's γ are the forward's own tensors.
pub struct TransposedWeights {
    layers: Vec<TransposedLayer>,
    dense: Tensor,
    out: Tensor,
}

impl TransposedWeights {
    /// Downloads each weight once, transposes it on the host and uploads it.
    pub(crate) fn upload(classifier: &SequenceClassifier) -> Result<Self> {
        let encoder = classifier.encoder();
        let be = encoder.backend().as_ref();
        let prefix = encoder.weight_prefix();
        let layers = encoder
            .layers()
            .iter()
            .enumerate()
            .map(|(l, w)| {
                let name = |rest: &str| format!("{prefix}encoder.layer.{l}.{rest}");
                Ok(TransposedLayer {
                    qkv: upload_transposed(be, &w.qkv.weight, &name("attention.self"))?,
                    attn_out: upload_transposed(
                        be,
                        &w.attn_out.weight,
                        &name("attention.output.dense"),
                    )?,
                    intermediate: upload_transposed(
                        be,
                        &w.intermediate.weight,
                        &name("intermediate.dense"),
                    )?,
                    output: upload_transposed(be, &w.output.weight, &name("output.dense"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = classifier.head();
        let [dense_name, out_name] = head.kind.layer_names();
        Ok(TransposedWeights {
            layers,
            dense: upload_transposed(be, &head.dense.weight, dense_name)?,
            out: upload_transposed(be, &head.out.weight, out_name)?,
        })
    }
}

/// One seed's backward pass, downloaded: every Linear's `δ` (slot order of
/// [`SequenceFactors::linears`]), the embedding `δ`, and the vectors' per-sample gradients (slot
/// order of the vectors).
struct SeedPass {
    linears: Vec<Vec<f32>>,
    embedding: Vec<f32>,
    vectors: Vec<Vec<f32>>,
}

/// What every backward pass over one batch reads: the recorded forward (tapes on the backend,
/// logits on the host), the transposed weights, and the checkpoint names of the parameters.
struct Backward<'a> {
    classifier: &'a SequenceClassifier,
    be: &'a dyn Backend,
    weights: &'a TransposedWeights,
    layout: &'a SeqLayout,
    tape: BertTape,
    head_tape: HeadTape,
    /// `[samples, classes]`, downloaded from the backend.
    logits: Vec<f32>,
    /// The packed row of each sample's first token, where the head reads.
    first_tokens: Vec<u32>,
    act: Activation,
    eps: f32,
    spec: AttentionSpec,
    hidden: usize,
    intermediate: usize,
    classes: usize,
    /// The encoder's checkpoint prefix (`bert.`, `roberta.`).
    prefix: String,
    /// The head's dense and output layer names.
    head_names: [&'static str; 2],
    /// What each embedding table was read at, for the whole packed batch.
    tables: Vec<EmbeddingIds>,
    /// A training step's dropout, whose masks the backward pass applies again.
    dropout: Option<&'a StepDropout>,
}

/// A Linear slot of [`Backward::linear_slots`]: weight parts, `d_in`, `d_out`, rows, inputs.
type LinearSlot<'t> = (Vec<(String, usize)>, usize, usize, FactorRows, &'t Tensor);

impl<'a> Backward<'a> {
    /// Runs the recorded forward of `batch` on the classifier's backend, keeping its tape there
    /// (with `dropout`, a training step's forward).
    fn record(
        classifier: &'a SequenceClassifier,
        batch: &'a TokenBatch,
        dropout: Option<&'a StepDropout>,
    ) -> Result<Self> {
        let encoder = classifier.encoder();
        let config = encoder.config();
        let be = encoder.backend().as_ref();
        let weights = classifier.transposed_weights()?;
        let h = config.hidden_size;
        let (hidden, tape) = encoder.forward_recorded(batch, dropout)?;
        let (logits, head_tape) =
            classifier.head_forward_recorded(&hidden, &batch.layout, dropout)?;
        let logits = be.download(&logits)?;

        let prefix = encoder.weight_prefix().to_string();
        let head_names = classifier.head().kind.layer_names();
        let tables = vec![
            EmbeddingIds {
                name: format!("{prefix}embeddings.word_embeddings.weight"),
                rows: config.vocab_size,
                ids: batch.ids.clone(),
            },
            EmbeddingIds {
                name: format!("{prefix}embeddings.position_embeddings.weight"),
                rows: config.max_position_embeddings,
                ids: encoder.position_ids(&batch.layout),
            },
            EmbeddingIds {
                name: format!("{prefix}embeddings.token_type_embeddings.weight"),
                rows: config.type_vocab_size,
                ids: batch.type_ids.clone(),
            },
        ];
        let layout = &batch.layout;
        Ok(Backward {
            classifier,
            be,
            weights,
            layout,
            tape,
            head_tape,
            logits,
            first_tokens: (0..layout.num_sequences())
                .map(|s| layout.range(s).start as u32)
                .collect(),
            act: encoder.activation(),
            eps: config.layer_norm_eps as f32,
            spec: AttentionSpec::bidirectional(
                config.num_attention_heads,
                h / config.num_attention_heads,
            ),
            hidden: h,
            intermediate: config.intermediate_size,
            classes: classifier.num_labels(),
            prefix,
            head_names,
            tables,
            dropout,
        })
    }

    fn layer_name(&self, l: usize, rest: &str) -> String {
        format!("{}encoder.layer.{l}.{rest}", self.prefix)
    }

    /// Every Linear layer in the slot order of [`SequenceFactors::linears`].
    fn linear_slots(&self) -> Vec<LinearSlot<'_>> {
        let (h, inter) = (self.hidden, self.intermediate);
        let mut slots = Vec::with_capacity(4 * self.tape.layers.len() + 2);
        for (l, t) in self.tape.layers.iter().enumerate() {
            let qkv_parts = ["query", "key", "value"]
                .map(|m| (self.layer_name(l, &format!("attention.self.{m}.weight")), h))
                .to_vec();
            let single = |rest: &str, rows: usize| vec![(self.layer_name(l, rest), rows)];
            for (parts, d_in, d_out, acts) in [
                (qkv_parts, h, 3 * h, &t.input),
                (single("attention.output.dense.weight", h), h, h, &t.context),
                (
                    single("intermediate.dense.weight", inter),
                    h,
                    inter,
                    &t.attn_normed,
                ),
                (single("output.dense.weight", h), inter, h, &t.inter),
            ] {
                slots.push((parts, d_in, d_out, FactorRows::Tokens, acts));
            }
        }
        let [dense_name, out_name] = self.head_names;
        for (name, d_out, acts) in [
            (dense_name, h, &self.head_tape.first),
            (out_name, self.classes, &self.head_tape.pooled),
        ] {
            let parts = vec![(format!("{name}.weight"), d_out)];
            slots.push((parts, h, d_out, FactorRows::Samples, acts));
        }
        slots
    }

    /// Names and lengths of the vectors in the slot order of [`SequenceFactors::vectors`].
    fn vector_names(&self) -> Vec<(String, usize)> {
        let (h, inter) = (self.hidden, self.intermediate);
        let mut names = vec![
            (format!("{}embeddings.LayerNorm.weight", self.prefix), h),
            (format!("{}embeddings.LayerNorm.bias", self.prefix), h),
        ];
        for l in 0..self.tape.layers.len() {
            for (rest, len) in [
                ("attention.self.query.bias", h),
                ("attention.self.key.bias", h),
                ("attention.self.value.bias", h),
                ("attention.output.dense.bias", h),
                ("attention.output.LayerNorm.weight", h),
                ("attention.output.LayerNorm.bias", h),
                ("intermediate.dense.bias", inter),
                ("output.dense.bias", h),
                ("output.LayerNorm.weight", h),
                ("output.LayerNorm.bias", h),
            ] {
                names.push((self.layer_name(l, rest), len));
            }
        }
        let [dense_name, out_name] = self.head_names;
        names.push((format!("{dense_name}.bias"), h));
        names.push((format!("{out_name}.bias"), self.classes));
        names
    }

    /// `linear(x, wᵀ)` into a new tensor, plus `residual` where given: a layer's input gradient
    /// from its output gradient `x` and its transposed weight.
    fn input_gradient(&self, x: &Tensor, wt: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let rows = x.dims2("backward: output gradient")?.0;
        let mut dx = self.be.zeros(&[rows, wt.dims2("backward: weight")?.0])?;
        self.be
            .linear(x, wt, None, Activation::Identity, residual, &mut dx)?;
        Ok(dx)
    }

    /// `dy` times `mask` into a new tensor (the backward pass of a dropout), or `None` without a
    /// mask, where the gradient passes unchanged.
    fn dropped(&self, mask: Option<DropoutMask>, dy: &Tensor) -> Result<Option<Tensor>> {
        let Some(mask) = mask else {
            return Ok(None);
        };
        let mut out = self.be.zeros(dy.shape())?;
        self.be.dropout(dy, &mask, None, &mut out)?;
        Ok(Some(out))
    }

    /// The mask of an encoder site in this step, if it drops.
    fn encoder_mask(&self, site: DropoutSite) -> Option<DropoutMask> {
        self.dropout.and_then(|d| d.mask(site))
    }

    /// `dy ⊙ act'(pre)` into a new tensor.
    fn activation(&self, act: Activation, pre: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let mut out = self.be.zeros(pre.shape())?;
        self.be.activation_backward(pre, dy, act, &mut out)?;
        Ok(out)
    }

    /// Each sample's sum of its token rows of `values` (times `weights`), downloaded.
    fn per_sample(&self, values: &Tensor, weights: Option<&Tensor>) -> Result<Vec<f32>> {
        let width = values.dims2("backward: per-token gradients")?.1;
        let mut out = self.be.zeros(&[self.layout.num_sequences(), width])?;
        self.be
            .sequence_sums(values, weights, self.layout, &mut out)?;
        self.be.download(&out)
    }

    /// The LayerNorm backward with its γ and β gradients summed per sample (pushed in that
    /// order onto `vectors`); returns the gradient at the LayerNorm's input.
    fn layer_norm(
        &self,
        pre: &Tensor,
        gamma: &Tensor,
        dy: &Tensor,
        vectors: &mut Vec<Vec<f32>>,
    ) -> Result<Tensor> {
        let mut dx = self.be.zeros(pre.shape())?;
        let mut normed = self.be.zeros(pre.shape())?;
        self.be
            .layer_norm_backward(pre, gamma, self.eps, dy, &mut dx, &mut normed)?;
        vectors.push(self.per_sample(dy, Some(&normed))?);
        vectors.push(self.per_sample(dy, None)?);
        Ok(dx)
    }

    /// One backward pass on the backend from the logit gradients `d_logits: [samples, classes]`
    /// (a row per sample, so each sample may have its own seed); what the factors need is
    /// downloaded as it is formed.
    fn run(&self, d_logits: &[f32]) -> Result<SeedPass> {
        let be = self.be;
        let (h, w) = (self.hidden, self.weights);
        let samples = self.layout.num_sequences();
        let tokens = self.layout.num_tokens();
        let layer_count = self.tape.layers.len();
        let mut linears = vec![Vec::new(); 4 * layer_count + 2];
        // Vectors are collected per layer in backward order and put in forward order at the end.
        let mut layer_vectors: Vec<Vec<Vec<f32>>> = vec![Vec::new(); layer_count];

        // The head, one row per sample.
        let d_logits = be.upload(&[samples, self.classes], d_logits)?;
        let head_mask = |site| self.classifier.head_dropout(self.dropout, site);
        let d_pooled = self.input_gradient(&d_logits, &w.out, None)?;
        let d_pooled = self
            .dropped(head_mask(DropoutSite::HeadHidden), &d_pooled)?
            .unwrap_or(d_pooled);
        let dense_delta =
            self.activation(Activation::Tanh, &self.head_tape.dense_pre, &d_pooled)?;
        let d_first = self.input_gradient(&dense_delta, &w.dense, None)?;
        let d_first = self
            .dropped(head_mask(DropoutSite::HeadInput), &d_first)?
            .unwrap_or(d_first);
        let head_vectors = [be.download(&dense_delta)?, be.download(&d_logits)?];
        linears[4 * layer_count] = head_vectors[0].clone();
        linears[4 * layer_count + 1] = head_vectors[1].clone();

        // The first token of each sample carries the head's gradient into the encoder; the
        // other rows start at zero.
        let mut d_x = be.zeros(&[tokens, h])?;
        be.scatter_rows(&d_first, &self.first_tokens, false, &mut d_x)?;

        let layers = self.classifier.encoder().layers();
        for l in (0..layer_count).rev() {
            let (t, wl, weights) = (&self.tape.layers[l], &w.layers[l], &layers[l]);
            let mut vectors = Vec::new();
            // x' = LN(a + W_o·act(W_i·a + b_i) + b_o)
            let mut output_ln = Vec::new();
            let d_out_sum = self.layer_norm(
                &t.output_sum,
                &weights.output_norm.gamma,
                &d_x,
                &mut output_ln,
            )?;
            // With dropout the output projection's gradient is masked; the residual's is not.
            let ffn_dropped =
                self.dropped(self.encoder_mask(DropoutSite::FfnOutput(l)), &d_out_sum)?;
            let ffn_delta = ffn_dropped.as_ref().unwrap_or(&d_out_sum);
            let d_inter = self.input_gradient(ffn_delta, &wl.output, None)?;
            let inter_delta = self.activation(self.act, &t.inter_pre, &d_inter)?;
            let d_a = self.input_gradient(&inter_delta, &wl.intermediate, Some(&d_out_sum))?;
            // a = LN(x + W_ao·attention(W_qkv·x + b_qkv) + b_ao)
            let mut attn_ln = Vec::new();
            let d_attn_sum =
                self.layer_norm(&t.attn_sum, &weights.attn_norm.gamma, &d_a, &mut attn_ln)?;
            let attn_dropped = self.dropped(
                self.encoder_mask(DropoutSite::AttentionOutput(l)),
                &d_attn_sum,
            )?;
            let attn_delta = attn_dropped.as_ref().unwrap_or(&d_attn_sum);
            let d_context = self.input_gradient(attn_delta, &wl.attn_out, None)?;
            let mut d_qkv = be.zeros(&[tokens, 3 * h])?;
            match self.encoder_mask(DropoutSite::AttentionProbs(l)) {
                Some(mask) => be.attention_dropout_backward(
                    &t.qkv,
                    self.layout,
                    &self.spec,
                    &mask,
                    &d_context,
                    &mut d_qkv,
                )?,
                None => {
                    be.attention_backward(&t.qkv, self.layout, &self.spec, &d_context, &mut d_qkv)?
                }
            }
            d_x = self.input_gradient(&d_qkv, &wl.qkv, Some(&d_attn_sum))?;

            // Forward order: Q, K, V biases, attention output bias, its LayerNorm γ β,
            // intermediate bias, output bias, output LayerNorm γ β.
            let qkv_bias = self.per_sample(&d_qkv, None)?;
            for part in 0..3 {
                vectors.push(
                    qkv_bias
                        .chunks_exact(3 * h)
                        .flat_map(|row| row[part * h..(part + 1) * h].iter().copied())
                        .collect(),
                );
            }
            vectors.push(self.per_sample(attn_delta, None)?);
            vectors.extend(attn_ln);
            vectors.push(self.per_sample(&inter_delta, None)?);
            vectors.push(self.per_sample(ffn_delta, None)?);
            vectors.extend(output_ln);
            layer_vectors[l] = vectors;

            for (slot, delta) in [&d_qkv, attn_delta, &inter_delta, ffn_delta]
                .into_iter()
                .enumerate()
            {
                linears[4 * l + slot] = be.download(delta)?;
            }
        }
        let mut vectors = Vec::new();
        let embed_gamma = &self.classifier.encoder().embed_norm().gamma;
        let d_embed_out = self
            .dropped(self.encoder_mask(DropoutSite::Embeddings), &d_x)?
            .unwrap_or(d_x);
        let embedding = self.layer_norm(
            &self.tape.embed_sum,
            embed_gamma,
            &d_embed_out,
            &mut vectors,
        )?;
        vectors.extend(layer_vectors.into_iter().flatten());
        vectors.extend(head_vectors);
        Ok(SeedPass {
            linears,
            embedding: be.download(&embedding)?,
            vectors,
        })
    }
}

/// The factors of the samples of `batch` for the backward seeds `seeds: [r, C]` (row `k` is the
/// logit gradient of seed `k`; [`class_seeds`], [`summed_seed`]). The recorded forward and
/// every seed's backward pass run on the classifier's backend, the tape kept there; each pass's
/// output gradients, per-sample vectors and the layer inputs are downloaded into the factors.
/// The classifier must hold f32 weights (`WeightsDtype::F32`, or an f32 checkpoint).
pub fn factors(
    classifier: &SequenceClassifier,
    batch: &TokenBatch,
    seeds: &[f32],
) -> Result<SequenceFactors> {
    let classes = classifier.num_labels();
    if seeds.is_empty() || !seeds.len().is_multiple_of(classes) {
        return Err(Error::input(format!(
            "backward seeds: {} values are not whole rows of {classes} logit gradients",
            seeds.len()
        )));
    }
    let backward = Backward::record(classifier, batch, None)?;
    let samples = batch.layout.num_sequences();
    let tops = seeds
        .chunks_exact(classes)
        .map(|seed| (0..samples).flat_map(|_| seed.iter().copied()).collect())
        .collect();
    assemble(backward, batch, tops)
}

/// The factors of each sample's gradient of its own cross-entropy loss at class index
/// `labels[i]`, `∇θ −log softmax(f(x_i))[y_i] = Σ_c (softmax(f(x_i))_c − [c = y_i]) ∇θ f_c(x_i)`:
/// one seed whose row differs per sample (the gradient-cosine kernel's). Checks the labels as
/// [`loss_gradient`] does.
pub fn loss_factors(
    classifier: &SequenceClassifier,
    batch: &TokenBatch,
    labels: &[usize],
) -> Result<SequenceFactors> {
    let classes = classifier.num_labels();
    check_labels(labels, batch.layout.num_sequences(), classes)?;
    let backward = Backward::record(classifier, batch, None)?;
    let (top, _) = cross_entropy_seeds(&backward.logits, labels, classes, 1.0);
    assemble(backward, batch, vec![top])
}

/// Per-sample gradient factors from one backward pass per entry of `tops` (each `[samples, C]`
/// logit gradients), every pass's rows side by side.
fn assemble(
    backward: Backward<'_>,
    batch: &TokenBatch,
    tops: Vec<Vec<f32>>,
) -> Result<SequenceFactors> {
    let r = tops.len();
    let mut passes = tops
        .into_iter()
        .map(|top| backward.run(&top))
        .collect::<Result<Vec<_>>>()?;

    let linears = backward
        .linear_slots()
        .into_iter()
        .enumerate()
        .map(|(slot, (parts, d_in, d_out, rows, acts))| {
            let per_seed: Vec<Vec<f32>> = passes
                .iter_mut()
                .map(|p| std::mem::take(&mut p.linears[slot]))
                .collect();
            Ok(LinearFactors {
                parts,
                d_in,
                d_out,
                rows,
                acts: backward.be.download(acts)?,
                deltas: interleave(&per_seed, d_out),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let vectors = backward
        .vector_names()
        .into_iter()
        .enumerate()
        .map(|(slot, (name, len))| {
            let per_seed: Vec<Vec<f32>> = passes
                .iter_mut()
                .map(|p| std::mem::take(&mut p.vectors[slot]))
                .collect();
            VectorGradients {
                name,
                len,
                grads: interleave(&per_seed, len),
            }
        })
        .collect();

    let embedding_deltas: Vec<Vec<f32>> = passes.into_iter().map(|p| p.embedding).collect();
    let embeddings = EmbeddingFactors {
        width: backward.hidden,
        deltas: interleave(&embedding_deltas, backward.hidden),
        tables: backward.tables,
    };
    Ok(SequenceFactors {
        layout: batch.layout.clone(),
        seeds: r,
        linears,
        embeddings,
        vectors,
    })
}

/// Every token's hidden states side by side, `[tokens, (L + 1)·h]`: the embedding output and
/// each encoder layer's output (transformers' `output_hidden_states`), from the classifier's
/// forward pass (the embedding kernel's features).
pub fn hidden_states(classifier: &SequenceClassifier, batch: &TokenBatch) -> Result<Vec<f32>> {
    let encoder = classifier.encoder();
    let h = encoder.config().hidden_size;
    let (last, tape) = encoder.forward_recorded(batch, None)?;
    let be = encoder.backend();
    let per_layer = tape
        .layers
        .iter()
        .map(|l| &l.input)
        .chain([&last])
        .map(|t| be.download(t))
        .collect::<Result<Vec<_>>>()?;
    let tokens = batch.layout.num_tokens();
    let mut out = Vec::with_capacity(tokens * per_layer.len() * h);
    for t in 0..tokens {
        for layer in &per_layer {
            out.extend_from_slice(&layer[t * h..(t + 1) * h]);
        }
    }
    Ok(out)
}

/// An error unless `labels` holds one class index below `classes` per sample.
fn check_labels(labels: &[usize], samples: usize, classes: usize) -> Result<()> {
    if labels.len() != samples {
        return Err(Error::input(format!(
            "cross-entropy loss: {} labels for {samples} texts",
            labels.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
        return Err(Error::input(format!(
            "cross-entropy loss: label index {bad} of a classifier with {classes} labels"
        )));
    }
    Ok(())
}

/// The mean cross-entropy loss of a minibatch and its gradient for every parameter.
#[derive(Clone, Debug)]
pub struct LossGradient {
    /// `mean_i −log softmax(z_i)[y_i]`, accumulated in f64.
    pub loss: f64,
    /// The forward's logits, `[samples, classes]`.
    pub logits: Vec<f32>,
    /// Per checkpoint tensor (name, row-major values of its shape), in the order of
    /// [`SequenceFactors::materialize`].
    pub grads: Vec<(String, Vec<f32>)>,
}

/// The gradient of the mean cross-entropy loss of `batch` with class indices `labels`, for every
/// parameter. One backward pass whose seed row for sample `i` is `(softmax(z_i) − e_{y_i}) / N`
/// gives each sample's share of the loss gradient at once; the per-token factors are then summed
/// into whole-batch gradients directly (`Δᵀ A` over every token of the batch, every `δ` row
/// scattered into its tables), never per sample. The classifier must hold f32 weights.
pub fn loss_gradient(
    classifier: &SequenceClassifier,
    batch: &TokenBatch,
    labels: &[usize],
) -> Result<LossGradient> {
    loss_gradient_with_dropout(classifier, batch, labels, None)
}

/// [`loss_gradient`] of a training step: with `dropout`, the forward drops where transformers
/// does in train mode ([`super::dropout`]) and the backward pass multiplies each site's gradient
/// by the same mask; without, exactly [`loss_gradient`]. Dropout runs on the CPU backend only.
pub fn loss_gradient_with_dropout(
    classifier: &SequenceClassifier,
    batch: &TokenBatch,
    labels: &[usize],
    dropout: Option<&StepDropout>,
) -> Result<LossGradient> {
    let classes = classifier.num_labels();
    let samples = batch.layout.num_sequences();
    check_labels(labels, samples, classes)?;
    let backward = Backward::record(classifier, batch, dropout)?;
    let (d_logits, loss) =
        cross_entropy_seeds(&backward.logits, labels, classes, 1.0 / samples as f64);
    let pass = backward.run(&d_logits)?;

    let mut grads = Vec::new();
    let delta = &pass.embedding;
    for table in &backward.tables {
        grads.push((
            table.name.clone(),
            scatter_rows(delta, &table.ids, table.rows, backward.hidden)?,
        ));
    }
    for ((parts, d_in, d_out, _, acts), delta) in
        backward.linear_slots().into_iter().zip(&pass.linears)
    {
        let acts = &backward.be.download(acts)?;
        let rows = delta.len() / d_out;
        let mut grad = vec![0.0f32; d_out * d_in];
        gemm(
            &mut grad,
            Operand::transposed(delta, rows, d_out),
            Operand::plain(acts, rows, d_in),
            false,
        );
        let mut first = 0;
        for (name, part_rows) in parts {
            grads.push((
                name,
                grad[first * d_in..(first + part_rows) * d_in].to_vec(),
            ));
            first += part_rows;
        }
    }
    for ((name, len), per_sample) in backward.vector_names().into_iter().zip(&pass.vectors) {
        let mut sum = vec![0.0f32; len];
        for row in per_sample.chunks_exact(len) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        grads.push((name, sum));
    }
    Ok(LossGradient {
        loss,
        logits: backward.logits,
        grads,
    })
}

/// The cross-entropy's logit gradients `(softmax(z_i) − e_{y_i})·scale`, `[N, C]` (`scale` 1/N
/// for the mean loss, 1 for each sample's own), and the mean loss (log-sum-exp shifted by the
/// row maximum, in f64).
pub(crate) fn cross_entropy_seeds(
    logits: &[f32],
    labels: &[usize],
    classes: usize,
    scale: f64,
) -> (Vec<f32>, f64) {
    let n = labels.len();
    let mut seeds = Vec::with_capacity(n * classes);
    let mut loss = 0.0f64;
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64));
        let exps: Vec<f64> = row.iter().map(|&z| (z as f64 - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        loss += total.ln() + max - row[y] as f64;
        for (c, e) in exps.iter().enumerate() {
            let onehot = if c == y { 1.0 } else { 0.0 };
            seeds.push(((e / total - onehot) * scale) as f32);
        }
    }
    (seeds, loss / n as f64)
}
