//! BERT-family encoders (BERT, XLM-RoBERTa and their sentence-transformers fine-tunes), built
//! from `config.json` and run on any backend.
//!
//! Batches are packed (no padding rows); each layer is post-LN:
//! `a = LN(x + Attn(x))`, `x' = LN(a + W₂·act(W₁·a))`, with Q, K and V fused into one GEMM.
//! A training forward ([`BertModel::forward_recorded`] with a step's dropout) drops where
//! transformers does in train mode ([`super::dropout`]); inference never drops.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::dropout::{DropoutSite, StepDropout};
use super::loader::{read_config, Linear, Loader, Norm};
use super::{Encoder, TokenBatch};
use crate::backend::{Activation, AttentionSpec, Backend, DropoutMask, Pooling, SeqLayout, Tensor};
use crate::error::{Error, Result};
use crate::weights::{Weights, WeightsDtype};

/// The fields of a Hugging Face `config.json` that a BERT-family encoder needs.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// Dropout of the embeddings' and each sublayer's output while training (transformers'
    /// default 0.1 where absent); read only by `mscope train --dropout`.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout of the attention probabilities while training (default 0.1).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// The classification head's dropout; null: `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_dropout() -> f64 {
    0.1
}

/// Model types whose position ids start after the padding index (RoBERTa's convention).
const ROBERTA_LIKE: [&str; 3] = ["roberta", "xlm-roberta", "camembert"];
/// The `model_type`s this file runs.
pub const MODEL_TYPES: [&str; 4] = ["bert", "roberta", "xlm-roberta", "camembert"];

impl BertConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let config: BertConfig = read_config(dir, "BERT-family")?;
        let path = dir.join("config.json");
        let bad = |what: String| Err(Error::input(format!("{}: {what}", path.display())));
        if !MODEL_TYPES.contains(&config.model_type.as_str()) {
            return bad(format!(
                "model_type {:?} is not supported (supported: {})",
                config.model_type,
                MODEL_TYPES.join(", ")
            ));
        }
        if Activation::from_hf_name(&config.hidden_act).is_none() {
            return bad(format!(
                "hidden_act {:?} is not supported",
                config.hidden_act
            ));
        }
        if config
            .position_embedding_type
            .as_deref()
            .is_some_and(|t| t != "absolute")
        {
            return bad(format!(
                "position_embedding_type {:?} is not supported",
                config.position_embedding_type
            ));
        }
        if let Err(e) = super::check_norm_eps("layer_norm_eps", config.layer_norm_eps) {
            return bad(e);
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            ));
        }
        Ok(config)
    }

    /// Position id of a sequence's first token: RoBERTa-style models count from `padding_idx + 1`.
    pub fn position_offset(&self) -> usize {
        if ROBERTA_LIKE.contains(&self.model_type.as_str()) {
            self.pad_token_id.unwrap_or(1) as usize + 1
        } else {
            0
        }
    }

    /// The longest sequence the position table can encode.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }
}

/// One post-LN encoder layer; `qkv` stacks the query, key and value projections (in that order)
/// into one `[3h, h]` weight.
pub struct BertLayer {
    pub qkv: Linear,
    pub attn_out: Linear,
    pub attn_norm: Norm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: Norm,
}

pub struct BertModel {
    config: BertConfig,
    backend: Arc<dyn Backend>,
    /// The checkpoint's name prefix of the encoder's tensors (`""`, `"bert."`, `"roberta."`).
    prefix: String,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: Norm,
    layers: Vec<BertLayer>,
    act: Activation,
}

/// What a recorded forward pass ([`BertModel::forward_recorded`]) keeps for a backward pass, on
/// the encoder's backend: row-major values over the packed tokens of the batch, each a tensor of
/// its own (copies of the forward's buffers, which the next layer overwrites).
#[derive(Debug)]
pub struct BertTape {
    /// Word + position + token-type rows before the embedding LayerNorm, `[tokens, h]`.
    pub embed_sum: Tensor,
    pub layers: Vec<LayerTape>,
}

/// One layer's recorded values, `[tokens, width]` each.
#[derive(Debug)]
pub struct LayerTape {
    /// The layer's input (QKV's input, the attention residual), width h.
    pub input: Tensor,
    /// Packed queries, keys and values, width 3h.
    pub qkv: Tensor,
    /// Attention output (the attention output projection's input), width h.
    pub context: Tensor,
    /// Rows before the attention LayerNorm, width h.
    pub attn_sum: Tensor,
    /// After it (the FFN's input and residual), width h.
    pub attn_normed: Tensor,
    /// The intermediate projection before its activation, width intermediate_size.
    pub inter_pre: Tensor,
    /// After the activation (the output projection's input), width intermediate_size.
    pub inter: Tensor,
    /// Rows before the output LayerNorm, width h.
    pub output_sum: Tensor,
}

/// `out = linear(x) + residual`, the linear's output dropped by `mask` where given (training):
/// a post-LN sublayer's sum before its LayerNorm.
fn residual_linear(
    be: &dyn Backend,
    x: &Tensor,
    linear: &Linear,
    residual: &Tensor,
    mask: Option<DropoutMask>,
    out: &mut Tensor,
) -> Result<()> {
    let (w, b, identity) = (&linear.weight, linear.bias.as_ref(), Activation::Identity);
    let Some(mask) = mask else {
        return be.linear(x, w, b, identity, Some(residual), out);
    };
    let mut projected = be.zeros(out.shape())?;
    be.linear(x, w, b, identity, None, &mut projected)?;
    be.dropout(&projected, &mask, Some(residual), out)
}

/// A copy of the `[n, d]` tensor `t` on its backend: `gather_rows` of every row in order, so the
/// tape's values never leave the device.
fn device_copy(be: &dyn Backend, t: &Tensor) -> Result<Tensor> {
    let (n, d) = t.dims2("device copy")?;
    let mut copy = be.zeros(&[n, d])?;
    let rows: Vec<u32> = (0..n as u32).collect();
    be.gather_rows(t, &rows, false, &mut copy)?;
    Ok(copy)
}

impl BertModel {
    /// Loads `config.json` and the safetensors weights of a model directory, with the GEMM
    /// weights and embedding tables in the element type `weights_dtype` picks.
    pub fn load(
        dir: &Path,
        backend: Arc<dyn Backend>,
        weights_dtype: WeightsDtype,
    ) -> Result<Self> {
        Self::from_weights(
            BertConfig::read(dir)?,
            Weights::open(dir)?,
            backend,
            weights_dtype,
        )
    }

    /// The encoder of `config` with the tensors of `weights` (a checkpoint's, or parameters held
    /// in memory during fine-tuning), found under the first prefix that holds them.
    pub fn from_weights(
        config: BertConfig,
        mut weights: Weights,
        backend: Arc<dyn Backend>,
        weights_dtype: WeightsDtype,
    ) -> Result<Self> {
        weights.resolve_prefix(
            "embeddings.word_embeddings.weight",
            &["", "bert.", "roberta.", "model."],
        )?;
        let loader = Loader {
            weights: &weights,
            backend: backend.as_ref(),
            weights_dtype,
        };
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                Ok(BertLayer {
                    qkv: loader.fused_linear(
                        &["query", "key", "value"].map(|m| (format!("{p}.attention.self.{m}"), h)),
                        h,
                        true,
                    )?,
                    attn_out: loader.linear(&format!("{p}.attention.output.dense"), h, h, true)?,
                    attn_norm: loader.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                    intermediate: loader.linear(&format!("{p}.intermediate.dense"), i, h, true)?,
                    output: loader.linear(&format!("{p}.output.dense"), h, i, true)?,
                    output_norm: loader.norm(&format!("{p}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let model = BertModel {
            prefix: weights.prefix().to_string(),
            word: loader.matrix(
                &["embeddings.word_embeddings.weight".into()],
                config.vocab_size,
                h,
            )?,
            position: loader.matrix(
                &["embeddings.position_embeddings.weight".into()],
                config.max_position_embeddings,
                h,
            )?,
            token_type: loader.matrix(
                &["embeddings.token_type_embeddings.weight".into()],
                config.type_vocab_size,
                h,
            )?,
            embed_norm: loader.norm("embeddings.LayerNorm", h)?,
            layers,
            act: Activation::from_hf_name(&config.hidden_act)
                .expect("validated by BertConfig::read"),
            backend,
            config,
        };
        Ok(model)
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The checkpoint's name prefix of the encoder's tensors (`""`, `"bert."`, `"roberta."`).
    pub fn weight_prefix(&self) -> &str {
        &self.prefix
    }

    pub fn layers(&self) -> &[BertLayer] {
        &self.layers
    }

    pub fn embed_norm(&self) -> &Norm {
        &self.embed_norm
    }

    /// The FFN's activation.
    pub fn activation(&self) -> Activation {
        self.act
    }

    /// Position-table row of every packed token: its place in its sequence plus
    /// [`BertConfig::position_offset`].
    pub fn position_ids(&self, layout: &SeqLayout) -> Vec<u32> {
        let offset = self.config.position_offset();
        layout.positions().map(|p| (p + offset) as u32).collect()
    }

    /// [`Encoder::forward`] keeping on the backend what a backward pass needs ([`BertTape`]).
    /// The values are the forward's own; the one extra op is the intermediate GEMM run a second
    /// time without its fused activation, for the pre-activation. With `dropout`, the forward of
    /// a training step: the embeddings' and every sublayer's output and the attention
    /// probabilities dropped by the step's masks (the tape holds the dropped values the next op
    /// read; the masks are recomputed by the backward pass).
    pub fn forward_recorded(
        &self,
        batch: &TokenBatch,
        dropout: Option<&StepDropout>,
    ) -> Result<(Tensor, BertTape)> {
        let (hidden, tape) = self.run(batch, true, dropout)?;
        Ok((hidden, tape.expect("recorded")))
    }

    fn run(
        &self,
        batch: &TokenBatch,
        record: bool,
        dropout: Option<&StepDropout>,
    ) -> Result<(Tensor, Option<BertTape>)> {
        let be = self.backend.as_ref();
        let cfg = &self.config;
        let (n, h) = (batch.layout.num_tokens(), cfg.hidden_size);
        if batch.layout.max_len() > cfg.max_tokens() {
            return Err(Error::input(format!(
                "a sequence of {} tokens exceeds the model's {} positions",
                batch.layout.max_len(),
                cfg.max_tokens()
            )));
        }
        let positions = self.position_ids(&batch.layout);
        let keep = |t: &Tensor| device_copy(be, t);
        let mask = |site: DropoutSite| dropout.and_then(|d| d.mask(site));

        let mut x = be.zeros(&[n, h])?;
        be.gather_rows(&self.word, &batch.ids, false, &mut x)?;
        be.gather_rows(&self.token_type, &batch.type_ids, true, &mut x)?;
        be.gather_rows(&self.position, &positions, true, &mut x)?;
        let embed_sum = record.then(|| keep(&x)).transpose()?;
        let eps = cfg.layer_norm_eps as f32;
        be.layer_norm(&mut x, &self.embed_norm.gamma, &self.embed_norm.beta, eps)?;
        if let Some(m) = mask(DropoutSite::Embeddings) {
            let mut dropped = be.zeros(&[n, h])?;
            be.dropout(&x, &m, None, &mut dropped)?;
            x = dropped;
        }

        let spec =
            AttentionSpec::bidirectional(cfg.num_attention_heads, h / cfg.num_attention_heads);
        let mut qkv = be.zeros(&[n, 3 * h])?;
        let mut context = be.zeros(&[n, h])?;
        let mut a = be.zeros(&[n, h])?;
        let mut inter = be.zeros(&[n, cfg.intermediate_size])?;
        let mut layers = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            be.linear(
                &x,
                &layer.qkv.weight,
                layer.qkv.bias.as_ref(),
                Activation::Identity,
                None,
                &mut qkv,
            )?;
            match mask(DropoutSite::AttentionProbs(l)) {
                Some(m) => be.attention_dropout(&qkv, &batch.layout, &spec, &m, &mut context)?,
                None => be.attention(&qkv, &batch.layout, &spec, &mut context)?,
            }
            residual_linear(
                be,
                &context,
                &layer.attn_out,
                &x,
                mask(DropoutSite::AttentionOutput(l)),
                &mut a,
            )?;
            let attention = if record {
                Some([keep(&x)?, keep(&qkv)?, keep(&context)?, keep(&a)?])
            } else {
                None
            };
            be.layer_norm(&mut a, &layer.attn_norm.gamma, &layer.attn_norm.beta, eps)?;
            let inter_pre = if record {
                be.linear(
                    &a,
                    &layer.intermediate.weight,
                    layer.intermediate.bias.as_ref(),
                    Activation::Identity,
                    None,
                    &mut inter,
                )?;
                Some(keep(&inter)?)
            } else {
                None
            };
            be.linear(
                &a,
                &layer.intermediate.weight,
                layer.intermediate.bias.as_ref(),
                self.act,
                None,
                &mut inter,
            )?;
            residual_linear(
                be,
                &inter,
                &layer.output,
                &a,
                mask(DropoutSite::FfnOutput(l)),
                &mut x,
            )?;
            if let (Some([input, qkv, context, attn_sum]), Some(inter_pre)) = (attention, inter_pre)
            {
                layers.push(LayerTape {
                    input,
                    qkv,
                    context,
                    attn_sum,
                    attn_normed: keep(&a)?,
                    inter_pre,
                    inter: keep(&inter)?,
                    output_sum: keep(&x)?,
                });
            }
            be.layer_norm(
                &mut x,
                &layer.output_norm.gamma,
                &layer.output_norm.beta,
                eps,
            )?;
        }
        let tape = embed_sum.map(|embed_sum| BertTape { embed_sum, layers });
        Ok((x, tape))
    }
}

impl Encoder for BertModel {
    fn model_type(&self) -> &str {
        &self.config.model_type
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_tokens(&self) -> usize {
        self.config.max_tokens()
    }

    /// sentence-transformers' default for a directory without a pooling module.
    fn default_pooling(&self) -> Pooling {
        Pooling::Mean
    }

    /// The fused Q/K/V output or the FFN's hidden layer.
    fn widest_activation(&self) -> usize {
        (3 * self.config.hidden_size).max(self.config.intermediate_size)
    }

    fn forward(&self, batch: &TokenBatch) -> Result<Tensor> {
        Ok(self.run(batch, false, None)?.0)
    }
}
