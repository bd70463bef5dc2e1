//! Decoder-only transformers used as embedders (Llama, Mistral, Qwen2 and their fine-tunes),
//! built from `config.json` and run on any backend.
//!
//! Batches are packed; attention is causal (optionally within a sliding window) and every
//! sequence's positions start at 0. Each layer is pre-norm:
//! `h = x + o(attn(rope(qkv(rms(x)))))`, `x' = h + down(silu(gate(rms(h))) ⊙ up(rms(h)))`, and
//! the final RMSNorm gives the hidden states (transformers' `last_hidden_state`). Q, K and V run
//! as one GEMM, and so do gate and up, with SiLU and the product by up in its epilogue where the
//! backend fuses them ([`Backend::linear_gated`]).
//!
//! RoPE: θ from the config with no scaling or Llama 3.1's `llama3` scaling (any other
//! `rope_type` is refused); the model builds the `(cos, sin)` table of all its
//! `max_position_embeddings` positions once, when it loads, and every layer reads it.
//!
//! Memory plan (a 7B model on a 24 GiB CPU machine): the weights are read where they are stored.
//! On the CPU a half-precision checkpoint's projections and embedding table stay in the
//! safetensors memory map ([`super::loader`]: a fused Q/K/V or gate/up weight is a list of
//! mapped tensors), the GEMM widens one packed panel at a time, and `gather_rows` widens only
//! the rows it gathers; norms, biases and the RoPE table (16 MiB for Mistral-7B) are f32 copies.
//! What the process allocates besides is
//! the activations of one batch — `tokens × (4·hidden + qkv_width + intermediate)` f32 values on
//! the CPU, whose packed GEMM fuses the gated activation (0.15 MB a token for Mistral-7B;
//! `2·intermediate` more where the `[tokens, 2·intermediate]` gate/up product is kept), plus the
//! GEMM's packed copy of its input — and the packed
//! weight panels (128 KiB a thread), so a 7B bf16 model needs its 14.5 GB in the page cache and,
//! for a batch of a few thousand tokens, about 1 GiB of its own (`--batch-size` bounds the
//! tokens of a batch). GPU backends upload each weight to device memory once at load.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::loader::{read_config, Linear, Loader, TensorSource};
use super::{Encoder, TokenBatch};
use crate::backend::{
    Activation, AttentionSpec, Backend, Pooling, RopeFrequencies, RopeScaling, RopeSpec, Tensor,
};
use crate::error::{Error, Result};
use crate::weights::{Weights, WeightsDtype};

/// The `model_type`s this file runs.
pub const MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// transformers' default window for Mistral and Qwen2 configs that do not name one.
const DEFAULT_SLIDING_WINDOW: usize = 4096;
/// transformers' default for Qwen2's `max_window_layers`.
const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;
/// Most layers a decoder configuration may declare: far past any released model (a few hundred at
/// most), and small enough that the per-layer tables built from the configuration before any
/// weight is read never strain memory (a hostile count aborted on the allocation; found by
/// fuzzing).
pub const MAX_LAYERS: usize = 1 << 16;

/// The fields of a Hugging Face `config.json` a decoder reads, as written (absent fields get
/// transformers' defaults in [`DecoderConfig::read`]).
#[derive(Deserialize)]
struct RawConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers 5 keeps `rope_theta` and the scaling together here.
    rope_parameters: Option<Value>,
    max_position_embeddings: usize,
    /// Takes precedence over the field of the same name in the RoPE parameters, as in
    /// transformers.
    original_max_position_embeddings: Option<usize>,
    /// Absent and `null` differ: Mistral's default window applies only to an absent field.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    #[serde(default)]
    use_sliding_window: bool,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_hidden_act() -> String {
    "silu".into()
}

/// A field that is present, `null` included.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A decoder's shape and numerics, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// θ and the scaling of the RoPE frequencies.
    pub rope: RopeFrequencies,
    pub max_position_embeddings: usize,
    /// Each layer's sliding window (`None`: the whole causal prefix).
    pub windows: Vec<Option<usize>>,
    /// Biases on the Q, K and V projections (Qwen2 always, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the gate, up and down projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
}

impl DecoderConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let raw: RawConfig = read_config(dir, "Llama/Mistral/Qwen2")?;
        let path = dir.join("config.json");
        let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
        super::check_norm_eps("rms_norm_eps", raw.rms_norm_eps).map_err(&bad)?;
        let kind = raw.model_type.as_str();
        if !MODEL_TYPES.contains(&kind) {
            return Err(bad(format!(
                "model_type {kind:?} is not supported (supported: {})",
                MODEL_TYPES.join(", ")
            )));
        }
        if Activation::from_hf_name(&raw.hidden_act) != Some(Activation::Silu) {
            return Err(bad(format!(
                "hidden_act {:?} is not supported (the gated MLP runs silu)",
                raw.hidden_act
            )));
        }
        let heads = raw.num_attention_heads;
        // transformers' class defaults where the field is absent.
        let kv_heads = raw.num_key_value_heads.unwrap_or(match kind {
            "mistral" => 8,
            "qwen2" => 32,
            _ => heads,
        });
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(format!(
                "num_attention_heads {heads} is not a positive multiple of num_key_value_heads \
                 {kv_heads}"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(bad(format!(
                    "hidden_size {} is not a multiple of num_attention_heads {heads} and no \
                     head_dim is given",
                    raw.hidden_size
                )))
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and positive (RoPE turns pairs of columns)"
            )));
        }
        let rope = rope_frequencies(&raw).map_err(&bad)?;
        let windows = windows(&raw).map_err(&bad)?;
        let qwen2 = kind == "qwen2";
        let llama = kind == "llama";
        Ok(DecoderConfig {
            model_type: raw.model_type.clone(),
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            heads,
            kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope,
            max_position_embeddings: raw.max_position_embeddings,
            windows,
            qkv_bias: qwen2 || (llama && raw.attention_bias),
            o_bias: llama && raw.attention_bias,
            mlp_bias: llama && raw.mlp_bias,
        })
    }

    /// Width of the fused Q, K, V projection's output.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// The `rope_type`s [`rope_frequencies`] accepts.
const ROPE_TYPES: &str = "\"default\" (no scaling), \"llama3\"";

/// θ and the scaling of the RoPE frequencies. transformers reads the RoPE parameters from
/// `rope_scaling` (older configs) or else `rope_parameters`, taking `rope_theta` there before the
/// top-level field; `rope_type` (or the older `type`) names the scaling, "default" when absent.
fn rope_frequencies(raw: &RawConfig) -> std::result::Result<RopeFrequencies, String> {
    let (field, params) = match (&raw.rope_scaling, &raw.rope_parameters) {
        (Some(v), _) if !v.is_null() => ("rope_scaling", Some(v)),
        (_, Some(v)) if !v.is_null() => ("rope_parameters", Some(v)),
        _ => ("rope_scaling", None),
    };
    let kind = params
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = match (kind, params) {
        ("default", _) => RopeScaling::None,
        ("llama3", Some(params)) => llama3_scaling(raw, field, params)?,
        _ => {
            return Err(format!(
                "{field} rope_type {kind:?} is not supported (supported: {ROPE_TYPES})"
            ))
        }
    };
    let partial = params
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(Value::as_f64);
    if let Some(f) = partial.filter(|&f| f != 1.0) {
        return Err(format!(
            "{field} partial_rotary_factor {f} is not supported (supported: 1)"
        ));
    }
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(raw.rope_theta)
        .unwrap_or(10_000.0);
    if !(theta.is_finite() && theta > 1.0) {
        return Err(format!(
            "rope_theta {theta} must be a finite number above 1"
        ));
    }
    Ok(RopeFrequencies { theta, scaling })
}

/// The `llama3` scaling from the RoPE parameters `params` (found under `field`).
/// `original_max_position_embeddings` falls back to the model's `max_position_embeddings`, and
/// a top-level field of that name wins, as in transformers. Values that make the formulas
/// meaningless (a factor below 1, `high_freq_factor` not above `low_freq_factor`) are refused,
/// where transformers only warns.
fn llama3_scaling(
    raw: &RawConfig,
    field: &str,
    params: &Value,
) -> std::result::Result<RopeScaling, String> {
    let number = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("{field} of rope_type \"llama3\" needs a number {key}"))
    };
    let (factor, low, high) = (
        number("factor")?,
        number("low_freq_factor")?,
        number("high_freq_factor")?,
    );
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(format!(
            "{field} factor {factor} must be a finite number of at least 1"
        ));
    }
    if !(low.is_finite() && low > 0.0 && high.is_finite() && high > low) {
        return Err(format!(
            "{field} low_freq_factor {low} and high_freq_factor {high} must be positive and \
             finite, high_freq_factor the larger"
        ));
    }
    let original = match raw.original_max_position_embeddings {
        Some(n) => n,
        None => match params.get("original_max_position_embeddings") {
            None | Some(Value::Null) => raw.max_position_embeddings,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    format!("{field} original_max_position_embeddings {v} must be a whole number")
                })?,
        },
    };
    if original == 0 {
        return Err(format!(
            "{field} original_max_position_embeddings must be positive"
        ));
    }
    Ok(RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: original,
    })
}

/// Each layer's sliding window, as transformers assigns them: Mistral's `sliding_window` on every
/// layer (absent: 4096; `null`: none); Qwen2's only under `use_sliding_window`, on the layers
/// `layer_types` marks, else on those from `max_window_layers` on; Llama has none.
fn windows(raw: &RawConfig) -> std::result::Result<Vec<Option<usize>>, String> {
    let layers = raw.num_hidden_layers;
    if layers > MAX_LAYERS {
        return Err(format!(
            "num_hidden_layers {layers} is more than {MAX_LAYERS}: not a real model"
        ));
    }
    let window = match raw.model_type.as_str() {
        "mistral" => raw.sliding_window.unwrap_or(Some(DEFAULT_SLIDING_WINDOW)),
        "qwen2" if raw.use_sliding_window => {
            raw.sliding_window.unwrap_or(Some(DEFAULT_SLIDING_WINDOW))
        }
        _ => return Ok(vec![None; layers]),
    };
    if window == Some(0) {
        return Err("sliding_window must be at least 1".into());
    }
    match (&raw.layer_types, raw.model_type.as_str()) {
        (_, "mistral") => Ok(vec![window; layers]),
        (Some(types), _) => {
            if types.len() != layers {
                return Err(format!(
                    "layer_types lists {} layers, num_hidden_layers is {layers}",
                    types.len()
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(None),
                    "sliding_attention" => Ok(window),
                    other => Err(format!("layer_types entry {other:?} is not supported")),
                })
                .collect()
        }
        (None, _) => {
            let first = raw.max_window_layers.unwrap_or(DEFAULT_MAX_WINDOW_LAYERS);
            Ok((0..layers)
                .map(|l| if l >= first { window } else { None })
                .collect())
        }
    }
}

struct Layer {
    input_norm: Tensor,
    qkv: Linear,
    o: Linear,
    post_norm: Tensor,
    /// Gate rows `0..I` over up rows `I..2I`, as `linear_gated` reads them.
    gate_up: Linear,
    down: Linear,
}

pub struct DecoderModel {
    config: DecoderConfig,
    backend: Arc<dyn Backend>,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The `(cos, sin)` of every pair at every position the model accepts, built once here for
    /// every layer and batch ([`RopeFrequencies::upload_table`]).
    rope_table: Tensor,
}

impl DecoderModel {
    /// Loads `config.json` and the safetensors weights of a model directory (with or without the
    /// `model.` prefix of a causal-LM checkpoint), with the GEMM weights and embedding table in
    /// the element type `weights_dtype` picks.
    pub fn load(
        dir: &Path,
        backend: Arc<dyn Backend>,
        weights_dtype: WeightsDtype,
    ) -> Result<Self> {
        let config = DecoderConfig::read(dir)?;
        let mut weights = Weights::open(dir)?;
        weights.resolve_prefix("embed_tokens.weight", &["model.", ""])?;
        Self::from_source(config, &weights, backend, weights_dtype)
    }

    /// The model `config` describes, its tensors read from `weights` under transformers' names
    /// without the `model.` prefix (`layers.N.self_attn.q_proj.weight`, …).
    pub fn from_source(
        config: DecoderConfig,
        weights: &dyn TensorSource,
        backend: Arc<dyn Backend>,
        weights_dtype: WeightsDtype,
    ) -> Result<Self> {
        let loader = Loader {
            weights,
            backend: backend.as_ref(),
            weights_dtype,
        };
        let c = &config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let (q_rows, kv_rows) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let layers = (0..c.windows.len())
            .map(|l| {
                let p = format!("layers.{l}");
                let attn = |m: &str| format!("{p}.self_attn.{m}_proj");
                let mlp = |m: &str| format!("{p}.mlp.{m}_proj");
                Ok(Layer {
                    input_norm: loader.tensor(&format!("{p}.input_layernorm.weight"), &[h])?,
                    qkv: loader.fused_linear(
                        &[
                            (attn("q"), q_rows),
                            (attn("k"), kv_rows),
                            (attn("v"), kv_rows),
                        ],
                        h,
                        c.qkv_bias,
                    )?,
                    o: loader.linear(&attn("o"), h, q_rows, c.o_bias)?,
                    post_norm: loader
                        .tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    gate_up: loader.fused_linear(
                        &[(mlp("gate"), i), (mlp("up"), i)],
                        h,
                        c.mlp_bias,
                    )?,
                    down: loader.linear(&mlp("down"), h, i, c.mlp_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderModel {
            embed: loader.matrix(&["embed_tokens.weight".into()], c.vocab_size, h)?,
            norm: loader.tensor("norm.weight", &[h])?,
            rope_table: c.rope.upload_table(
                backend.as_ref(),
                c.head_dim,
                c.max_position_embeddings,
            )?,
            layers,
            backend,
            config,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }
}

impl Encoder for DecoderModel {
    fn model_type(&self) -> &str {
        &self.config.model_type
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// A causal model's last token is the only one that has seen the whole text.
    fn default_pooling(&self) -> Pooling {
        Pooling::Last
    }

    /// The fused Q/K/V output or the fused gate/up output.
    fn widest_activation(&self) -> usize {
        let c = &self.config;
        c.qkv_width()
            .max(2 * c.intermediate_size)
            .max(c.hidden_size)
    }

    fn forward(&self, batch: &TokenBatch) -> Result<Tensor> {
        let be = self.backend.as_ref();
        let c = &self.config;
        let layout = &batch.layout;
        let (n, h) = (layout.num_tokens(), c.hidden_size);
        if layout.max_len() > self.max_tokens() {
            return Err(Error::input(format!(
                "a sequence of {} tokens exceeds the model's {} positions",
                layout.max_len(),
                self.max_tokens()
            )));
        }
        let eps = c.rms_norm_eps as f32;
        let rope = RopeSpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };

        let mut x = be.zeros(&[n, h])?;
        be.gather_rows(&self.embed, &batch.ids, false, &mut x)?;
        let mut normed = be.zeros(&[n, h])?;
        let mut qkv = be.zeros(&[n, c.qkv_width()])?;
        let mut context = be.zeros(&[n, c.heads * c.head_dim])?;
        let mut mid = be.zeros(&[n, h])?;
        // The `[n, 2·intermediate]` gate/up product, where the backend does not fuse it away.
        let mut gate_up = None;
        let mut gated = be.zeros(&[n, c.intermediate_size])?;
        for (layer, &window) in self.layers.iter().zip(&c.windows) {
            // The residual streams `x` and `mid` stay unnormalised: the norms write `normed`.
            be.rms_norm(&x, &layer.input_norm, eps, &mut normed)?;
            linear(be, &normed, &layer.qkv, None, &mut qkv)?;
            be.rope(&mut qkv, layout, &rope, &self.rope_table)?;
            let spec = AttentionSpec {
                heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                causal: true,
                window,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
            };
            be.attention(&qkv, layout, &spec, &mut context)?;
            linear(be, &context, &layer.o, Some(&x), &mut mid)?;

            be.rms_norm(&mid, &layer.post_norm, eps, &mut normed)?;
            be.linear_gated(
                &normed,
                &layer.gate_up.weight,
                layer.gate_up.bias.as_ref(),
                Activation::Silu,
                &mut gate_up,
                &mut gated,
            )?;
            linear(be, &gated, &layer.down, Some(&mid), &mut x)?;
        }
        be.rms_norm(&x, &self.norm, eps, &mut normed)?;
        Ok(normed)
    }
}

/// `out = x·Wᵀ (+ b) (+ residual)` of a layer without an activation.
fn linear(
    be: &dyn Backend,
    x: &Tensor,
    layer: &Linear,
    residual: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    be.linear(
        x,
        &layer.weight,
        layer.bias.as_ref(),
        Activation::Identity,
        residual,
        out,
    )
}
