//! CLIP: a vision transformer and a causal text transformer, each ending in a projection into
//! one shared embedding space, read from Hugging Face `CLIPModel` directories (`config.json`
//! `model_type: clip`, `model.safetensors`, `preprocessor_config.json`) or open_clip ones
//! (`open_clip_config.json`, `open_clip_model.safetensors` or the older uploads'
//! `open_clip_pytorch_model.bin`, read without executing its pickle: [`crate::weights::torch_pickle`]).
//!
//! Both towers are pre-LN transformers: `h = x + out(attn(qkv(LN₁(x))))`,
//! `x' = h + fc₂(act(fc₁(LN₂(h))))`, with quick_gelu or gelu as configured.
//! - Image tower: the patch embedding is a convolution whose stride equals its kernel, so it is an
//!   im2col (a rearrangement of the pixels, done on the host) and one GEMM on the backend. Each
//!   image contributes a zero row in the class token's place, so the class embedding and the
//!   position embeddings arrive in one accumulating gather; then `ln_pre`, the blocks, and the
//!   class token's row (or open_clip's `avg` pooling: the mean of the patch tokens) through
//!   `ln_post` and the projection.
//! - Text tower: token and position embeddings, causal blocks, and the end-of-text token's row
//!   through the final LayerNorm and the projection. The end of text is where transformers and
//!   open_clip find it: the first occurrence of the largest id (open_clip's `argmax` pooling, and
//!   transformers' for configs whose `eos_token_id` is the legacy 2) or of `eos_token_id`.
//!
//! LayerNorms being row-wise, the final ones run on the pooled rows only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::image::Preprocess;
use super::loader::{read_config, Linear, Loader, Norm};
use super::{Encoder, ImageTower, TokenBatch};
use crate::backend::{Activation, AttentionSpec, Backend, Pooling, SeqLayout, Tensor};
use crate::error::{Error, Result};
use crate::weights::{Weights, WeightsDtype};

/// The `model_type`s this file runs (Hugging Face layout).
pub const MODEL_TYPES: [&str; 1] = ["clip"];
/// An open_clip model directory's config and weights.
pub const OPEN_CLIP_CONFIG: &str = "open_clip_config.json";
pub const OPEN_CLIP_WEIGHTS: &str = "open_clip_model.safetensors";
const OPEN_CLIP_PICKLE: &str = "open_clip_pytorch_model.bin";

/// Whether `dir` is an open_clip model directory.
pub fn is_open_clip(dir: &Path) -> bool {
    dir.join(OPEN_CLIP_CONFIG).is_file()
}

/// The two checkpoint layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    HuggingFace,
    OpenClip,
}

/// Shape and numerics of one tower's transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct TowerConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_width: usize,
    pub act: Activation,
    pub eps: f32,
}

impl TowerConfig {
    fn check(&self, what: &str) -> std::result::Result<(), String> {
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return Err(format!(
                "{what}: width {} is not a multiple of {} heads",
                self.width, self.heads
            ));
        }
        if self.width == 0 || self.layers == 0 || self.mlp_width == 0 {
            return Err(format!(
                "{what}: width, layers and MLP width must be positive"
            ));
        }
        Ok(())
    }
}

/// How the image tower reduces its tokens to one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionPooling {
    /// The class token (CLIP's own; open_clip's `pool_type: tok`).
    ClassToken,
    /// The mean of the patch tokens after `ln_post` (open_clip's `pool_type: avg`).
    PatchMean,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub tower: TowerConfig,
    /// The input's height and width (square but for open_clip configs giving `[h, w]`).
    pub image_height: usize,
    pub image_width: usize,
    pub patch_size: usize,
    pub pooling: VisionPooling,
}

impl VisionConfig {
    /// Patches down and across.
    pub fn grid(&self) -> (usize, usize) {
        (
            self.image_height / self.patch_size,
            self.image_width / self.patch_size,
        )
    }
    /// Tokens per image: the class token and one per patch.
    pub fn tokens(&self) -> usize {
        let (rows, cols) = self.grid();
        rows * cols + 1
    }
}

/// Where a text's embedding is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndOfText {
    /// The first occurrence of the largest id in the sequence.
    LargestId,
    /// The first occurrence of this id.
    Id(u32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub tower: TowerConfig,
    pub vocab_size: usize,
    pub context_length: usize,
    pub end_of_text: EndOfText,
}

/// A CLIP model's configuration, from either layout, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub layout: Layout,
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub embed_dim: usize,
    pub preprocess: Preprocess,
}

/// transformers' `CLIPTextConfig` / `CLIPVisionConfig` fields, with its defaults (saved configs
/// omit the fields left at their defaults).
#[derive(Deserialize)]
struct HfTower {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    // text
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    eos_token_id: Option<u32>,
    // vision
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
}

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    text_config: Option<HfTower>,
    #[serde(default)]
    vision_config: Option<HfTower>,
    projection_dim: Option<usize>,
}

impl ClipConfig {
    /// Reads `dir`'s configuration in whichever layout it has.
    pub fn read(dir: &Path) -> Result<Self> {
        if is_open_clip(dir) {
            Self::read_open_clip(dir)
        } else {
            Self::read_hf(dir)
        }
    }

    fn read_hf(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
        let raw: HfConfig = read_config(dir, "CLIP")?;
        let empty =
            || serde_json::from_value::<HfTower>(serde_json::json!({})).expect("all optional");
        let (text, vision) = (
            raw.text_config.unwrap_or_else(empty),
            raw.vision_config.unwrap_or_else(empty),
        );
        let act = |t: &HfTower, which: &str| {
            let name = t.hidden_act.as_deref().unwrap_or("quick_gelu");
            match name {
                "quick_gelu" => Ok(Activation::QuickGelu),
                "gelu" => Ok(Activation::Gelu),
                _ => Err(bad(format!(
                    "{which}.hidden_act {name:?} is not supported (quick_gelu, gelu)"
                ))),
            }
        };
        if vision.num_channels.unwrap_or(3) != 3 {
            return Err(bad("vision_config.num_channels must be 3".into()));
        }
        let eos = text.eos_token_id.unwrap_or(49407);
        let config = ClipConfig {
            layout: Layout::HuggingFace,
            vision: VisionConfig {
                tower: TowerConfig {
                    width: vision.hidden_size.unwrap_or(768),
                    layers: vision.num_hidden_layers.unwrap_or(12),
                    heads: vision.num_attention_heads.unwrap_or(12),
                    mlp_width: vision.intermediate_size.unwrap_or(3072),
                    act: act(&vision, "vision_config")?,
                    eps: vision.layer_norm_eps.unwrap_or(1e-5) as f32,
                },
                image_height: vision.image_size.unwrap_or(224),
                image_width: vision.image_size.unwrap_or(224),
                patch_size: vision.patch_size.unwrap_or(32),
                pooling: VisionPooling::ClassToken,
            },
            text: TextConfig {
                tower: TowerConfig {
                    width: text.hidden_size.unwrap_or(512),
                    layers: text.num_hidden_layers.unwrap_or(12),
                    heads: text.num_attention_heads.unwrap_or(8),
                    mlp_width: text.intermediate_size.unwrap_or(2048),
                    act: act(&text, "text_config")?,
                    eps: text.layer_norm_eps.unwrap_or(1e-5) as f32,
                },
                vocab_size: text.vocab_size.unwrap_or(49408),
                context_length: text.max_position_embeddings.unwrap_or(77),
                // transformers keeps argmax pooling for configs saved with the old id 2.
                end_of_text: if eos == 2 {
                    EndOfText::LargestId
                } else {
                    EndOfText::Id(eos)
                },
            },
            embed_dim: raw.projection_dim.unwrap_or(512),
            preprocess: Preprocess::from_hf_file(&dir.join("preprocessor_config.json"))?,
        };
        config.validate(&path)?;
        Ok(config)
    }

    fn read_open_clip(dir: &Path) -> Result<Self> {
        let path = dir.join(OPEN_CLIP_CONFIG);
        let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let root: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let model = root
            .get("model_cfg")
            .ok_or_else(|| bad("no model_cfg".into()))?;
        let section = |name: &str| {
            model
                .get(name)
                .filter(|v| v.is_object())
                .ok_or_else(|| bad(format!("model_cfg has no {name} object")))
        };
        let (vision, text_cfg) = (section("vision_cfg")?, section("text_cfg")?);
        let uint = |cfg: &Value, which: &str, key: &str, default: Option<usize>| match cfg.get(key)
        {
            None | Some(Value::Null) => {
                default.ok_or_else(|| bad(format!("model_cfg.{which}.{key} is missing")))
            }
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                bad(format!(
                    "model_cfg.{which}.{key} {v} is not supported (a single integer)"
                ))
            }),
        };
        let float = |cfg: &Value, key: &str, default: f64| {
            cfg.get(key).and_then(Value::as_f64).unwrap_or(default)
        };
        // Features of open_clip's towers this implementation does not have: each must be absent
        // or at the value that switches it off.
        let unsupported = |cfg: &Value, which: &str, off: &[(&str, Value)]| {
            for (key, default) in off {
                if let Some(v) = cfg.get(*key) {
                    if v != default && !v.is_null() {
                        return Err(bad(format!("model_cfg.{which}.{key} {v} is not supported")));
                    }
                }
            }
            Ok(())
        };
        use serde_json::json;
        let common_off = [
            ("ls_init_value", Value::Null),
            ("final_ln_after_pool", json!(false)),
            ("act_kwargs", Value::Null),
            ("norm_kwargs", Value::Null),
            ("qk_norm", json!(false)),
            ("scaled_cosine_attn", json!(false)),
            ("scale_heads", json!(false)),
            ("scale_attn_inner", json!(false)),
            ("scale_attn", json!(false)),
            ("scale_fc", json!(false)),
        ];
        unsupported(vision, "vision_cfg", &common_off)?;
        unsupported(text_cfg, "text_cfg", &common_off)?;
        unsupported(
            vision,
            "vision_cfg",
            &[
                ("attentional_pool", json!(false)),
                ("no_ln_pre", json!(false)),
                ("pos_embed_type", json!("learnable")),
                ("timm_model_name", Value::Null),
            ],
        )?;
        unsupported(
            text_cfg,
            "text_cfg",
            &[
                ("embed_cls", json!(false)),
                ("no_causal_mask", json!(false)),
                ("proj_bias", json!(false)),
                ("proj_type", json!("linear")),
                ("hf_model_name", Value::Null),
            ],
        )?;
        let vision_pooling = match vision.get("pool_type").and_then(Value::as_str) {
            None | Some("tok") => VisionPooling::ClassToken,
            Some("avg") => VisionPooling::PatchMean,
            Some(other) => {
                return Err(bad(format!(
                    "model_cfg.vision_cfg.pool_type {other:?} is not supported (tok, avg)"
                )))
            }
        };
        let end_of_text = match text_cfg.get("pool_type").and_then(Value::as_str) {
            None | Some("argmax") => EndOfText::LargestId,
            Some("eos") => EndOfText::Id(uint(text_cfg, "text_cfg", "eos_id", Some(2))? as u32),
            Some(other) => {
                return Err(bad(format!(
                    "model_cfg.text_cfg.pool_type {other:?} is not supported (argmax, eos)"
                )))
            }
        };
        let act = if model.get("quick_gelu").and_then(Value::as_bool) == Some(true) {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        let v_width = uint(vision, "vision_cfg", "width", Some(768))?;
        let head_width = uint(vision, "vision_cfg", "head_width", Some(64))?;
        let t_width = uint(text_cfg, "text_cfg", "width", Some(512))?;
        // An integer, or open_clip's `[height, width]`.
        let (image_height, image_width) = match vision.get("image_size") {
            Some(Value::Array(hw)) => match (
                hw.first().and_then(Value::as_u64),
                hw.get(1).and_then(Value::as_u64),
            ) {
                (Some(h), Some(w)) if hw.len() == 2 => (h as usize, w as usize),
                _ => {
                    return Err(bad(format!(
                        "model_cfg.vision_cfg.image_size {hw:?} is not supported (an integer or \
                         [height, width])"
                    )))
                }
            },
            _ => {
                let side = uint(vision, "vision_cfg", "image_size", Some(224))?;
                (side, side)
            }
        };
        let config = ClipConfig {
            layout: Layout::OpenClip,
            vision: VisionConfig {
                tower: TowerConfig {
                    width: v_width,
                    layers: uint(vision, "vision_cfg", "layers", Some(12))?,
                    heads: v_width.checked_div(head_width).unwrap_or(0),
                    mlp_width: (v_width as f64 * float(vision, "mlp_ratio", 4.0)) as usize,
                    act,
                    eps: 1e-5,
                },
                image_height,
                image_width,
                patch_size: uint(vision, "vision_cfg", "patch_size", Some(16))?,
                pooling: vision_pooling,
            },
            text: TextConfig {
                tower: TowerConfig {
                    width: t_width,
                    layers: uint(text_cfg, "text_cfg", "layers", Some(12))?,
                    heads: uint(text_cfg, "text_cfg", "heads", Some(8))?,
                    mlp_width: (t_width as f64 * float(text_cfg, "mlp_ratio", 4.0)) as usize,
                    act,
                    eps: 1e-5,
                },
                vocab_size: uint(text_cfg, "text_cfg", "vocab_size", Some(49408))?,
                context_length: uint(text_cfg, "text_cfg", "context_length", Some(77))?,
                end_of_text,
            },
            embed_dim: uint(model, "model_cfg", "embed_dim", None)?,
            preprocess: Preprocess::from_open_clip(
                &path,
                (image_height, image_width),
                root.get("preprocess_cfg"),
            )?,
        };
        config.validate(&path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(Error::input(format!("{}: {what}", path.display())));
        if let Err(e) = self.vision.tower.check("vision tower") {
            return bad(e);
        }
        if let Err(e) = self.text.tower.check("text tower") {
            return bad(e);
        }
        let v = &self.vision;
        if v.patch_size == 0
            || !v.image_height.is_multiple_of(v.patch_size)
            || !v.image_width.is_multiple_of(v.patch_size)
        {
            return bad(format!(
                "image size {}×{} is not a multiple of patch size {}",
                v.image_height, v.image_width, v.patch_size
            ));
        }
        if self.preprocess.output_size() != (v.image_height, v.image_width) {
            return bad(format!(
                "the preprocessing makes {:?} (height, width) images but the vision tower takes \
                 {}×{}",
                self.preprocess.output_size(),
                v.image_height,
                v.image_width
            ));
        }
        if self.embed_dim == 0 || self.text.context_length == 0 || self.text.vocab_size == 0 {
            return bad("embed_dim, context length and vocab size must be positive".into());
        }
        Ok(())
    }
}

/// One pre-LN block's parameters.
struct Block {
    ln_1: Norm,
    qkv: Linear,
    out: Linear,
    ln_2: Norm,
    fc_1: Linear,
    fc_2: Linear,
}

/// A transformer's blocks and the spec its attention runs with.
struct Transformer {
    config: TowerConfig,
    blocks: Vec<Block>,
    causal: bool,
}

struct VisionTower {
    /// `[width, 3·patch²]`: the convolution's kernels as rows, columns in (channel, y, x) order.
    patch: Tensor,
    /// Position embeddings with the class embedding added to row 0: `[tokens, width]`.
    positions: Tensor,
    ln_pre: Norm,
    transformer: Transformer,
    /// `ln_post` and `visual.proj`.
    head: Head,
}

struct TextTower {
    tokens: Tensor,
    positions: Tensor,
    transformer: Transformer,
    /// `ln_final` and `text_projection`.
    head: Head,
}

/// A tower's end: the pooled rows through a LayerNorm and a bias-free projection.
struct Head {
    norm: Norm,
    eps: f32,
    width: usize,
    /// `[embed_dim, width]` (Linear's layout).
    projection: Tensor,
    embed_dim: usize,
}

impl Head {
    /// `rows` of `x: [tokens, width]` through the head: `[rows, embed_dim]`.
    fn apply(&self, be: &dyn Backend, x: &Tensor, rows: &[u32]) -> Result<Tensor> {
        let mut pooled = be.zeros(&[rows.len(), self.width])?;
        be.gather_rows(x, rows, false, &mut pooled)?;
        self.normalize(be, &mut pooled)?;
        self.project(be, &pooled)
    }

    /// The LayerNorm, in place.
    fn normalize(&self, be: &dyn Backend, x: &mut Tensor) -> Result<()> {
        be.layer_norm(x, &self.norm.gamma, &self.norm.beta, self.eps)
    }

    /// The projection of pooled rows `[rows, width]`: `[rows, embed_dim]`.
    fn project(&self, be: &dyn Backend, pooled: &Tensor) -> Result<Tensor> {
        let rows = pooled.shape()[0];
        let mut out = be.zeros(&[rows, self.embed_dim])?;
        be.linear(
            pooled,
            &self.projection,
            None,
            Activation::Identity,
            None,
            &mut out,
        )?;
        Ok(out)
    }
}

/// A CLIP model on a backend: both towers and its image preprocessing.
pub struct ClipModel {
    config: ClipConfig,
    backend: Arc<dyn Backend>,
    vision: VisionTower,
    text: TextTower,
}

/// Tensor names of one layout.
struct Names {
    layout: Layout,
}

impl Names {
    fn vision(&self, hf: &str, open_clip: &str) -> String {
        match self.layout {
            Layout::HuggingFace => format!("vision_model.{hf}"),
            Layout::OpenClip => format!("visual.{open_clip}"),
        }
    }
    fn text(&self, hf: &str, open_clip: &str) -> String {
        match self.layout {
            Layout::HuggingFace => format!("text_model.{hf}"),
            Layout::OpenClip => open_clip.to_string(),
        }
    }
    /// A tensor of block `l` of the text or the vision transformer.
    fn block(&self, text: bool, l: usize, hf: &str, open_clip: &str) -> String {
        let (hf, open_clip) = (
            format!("encoder.layers.{l}.{hf}"),
            format!("transformer.resblocks.{l}.{open_clip}"),
        );
        if text {
            self.text(&hf, &open_clip)
        } else {
            self.vision(&hf, &open_clip)
        }
    }
}

impl ClipModel {
    /// Loads a CLIP directory of either layout, GEMM weights and token table in the element
    /// type `weights_dtype` picks.
    pub fn load(
        dir: &Path,
        backend: Arc<dyn Backend>,
        weights_dtype: WeightsDtype,
    ) -> Result<Self> {
        let config = ClipConfig::read(dir)?;
        let weights = match config.layout {
            Layout::HuggingFace => Weights::open(dir)?,
            Layout::OpenClip => Weights::open(&open_clip_weights(dir)?)?,
        };
        let loader = Loader {
            weights: &weights,
            backend: backend.as_ref(),
            weights_dtype,
        };
        let names = Names {
            layout: config.layout,
        };
        let (v, t) = (&config.vision, &config.text);
        let w = v.tower.width;
        let patch_cols = 3 * v.patch_size * v.patch_size;
        let patch_name = names.vision("embeddings.patch_embedding.weight", "conv1.weight");
        let patch = loader.host(&patch_name, &[w, 3, v.patch_size, v.patch_size])?;
        let pos_name = names.vision(
            "embeddings.position_embedding.weight",
            "positional_embedding",
        );
        let mut positions = loader.host(&pos_name, &[v.tokens(), w])?.into_owned();
        let class = loader.host(
            &names.vision("embeddings.class_embedding", "class_embedding"),
            &[w],
        )?;
        for (p, c) in positions[..w].iter_mut().zip(class.iter()) {
            *p += c;
        }
        let vision = VisionTower {
            patch: backend.upload(&[w, patch_cols], &patch)?,
            positions: backend.upload(&[v.tokens(), w], &positions)?,
            ln_pre: loader.norm(&names.vision("pre_layrnorm", "ln_pre"), w)?,
            transformer: load_transformer(&loader, &names, &v.tower, false)?,
            head: load_head(
                &loader,
                config.layout,
                &names.vision("post_layernorm", "ln_post"),
                ("visual_projection.weight", "visual.proj"),
                &v.tower,
                config.embed_dim,
            )?,
        };
        let tw = t.tower.width;
        let text = TextTower {
            tokens: loader.matrix(
                &[names.text(
                    "embeddings.token_embedding.weight",
                    "token_embedding.weight",
                )],
                t.vocab_size,
                tw,
            )?,
            positions: loader.tensor(
                &names.text(
                    "embeddings.position_embedding.weight",
                    "positional_embedding",
                ),
                &[t.context_length, tw],
            )?,
            transformer: load_transformer(&loader, &names, &t.tower, true)?,
            head: load_head(
                &loader,
                config.layout,
                &names.text("final_layer_norm", "ln_final"),
                ("text_projection.weight", "text_projection"),
                &t.tower,
                config.embed_dim,
            )?,
        };
        Ok(ClipModel {
            config,
            backend,
            vision,
            text,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Token hidden states after the final LayerNorm of a packed batch (`last_hidden_state`).
    fn text_states(&self, batch: &TokenBatch) -> Result<Tensor> {
        let be = self.backend.as_ref();
        let t = &self.config.text;
        let layout = &batch.layout;
        if layout.max_len() > t.context_length {
            return Err(Error::input(format!(
                "a text of {} tokens exceeds the model's context of {}",
                layout.max_len(),
                t.context_length
            )));
        }
        if let Some(&id) = batch.ids.iter().find(|&&id| id as usize >= t.vocab_size) {
            return Err(Error::input(format!(
                "token id {id} is outside the model's vocabulary of {}",
                t.vocab_size
            )));
        }
        let positions: Vec<u32> = layout.positions().map(|p| p as u32).collect();
        let mut x = be.zeros(&[layout.num_tokens(), t.tower.width])?;
        be.gather_rows(&self.text.tokens, &batch.ids, false, &mut x)?;
        be.gather_rows(&self.text.positions, &positions, true, &mut x)?;
        run_transformer(be, &self.text.transformer, &mut x, layout)?;
        Ok(x)
    }

    /// Row of each sequence's end-of-text token in a packed batch.
    fn end_of_text_rows(&self, batch: &TokenBatch) -> Result<Vec<u32>> {
        (0..batch.layout.num_sequences())
            .map(|s| {
                let range = batch.layout.range(s);
                let ids = &batch.ids[range.clone()];
                let at = match self.config.text.end_of_text {
                    // The first of equal maxima, as torch's argmax.
                    EndOfText::LargestId => ids
                        .iter()
                        .enumerate()
                        .rev()
                        .max_by_key(|&(_, id)| id)
                        .map(|(i, _)| i),
                    EndOfText::Id(eos) => ids.iter().position(|&id| id == eos),
                };
                at.map(|i| (range.start + i) as u32).ok_or_else(|| {
                    Error::input(format!(
                        "text {s} has no end-of-text token (the tokenizer must add it)"
                    ))
                })
            })
            .collect()
    }
}

/// The weights file of an open_clip directory: `open_clip_model.safetensors`, else the older
/// uploads' `open_clip_pytorch_model.bin` (read by the restricted unpickler, which runs no code).
fn open_clip_weights(dir: &Path) -> Result<PathBuf> {
    [OPEN_CLIP_WEIGHTS, OPEN_CLIP_PICKLE]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            Error::weights(
                dir,
                format!("no {OPEN_CLIP_WEIGHTS} or {OPEN_CLIP_PICKLE} in this directory"),
            )
        })
}

/// A tower's final LayerNorm `norm` and its projection, stored as `[embed_dim, width]` by
/// Hugging Face (a Linear) and as the transpose by open_clip (`x @ proj`).
fn load_head(
    loader: &Loader,
    layout: Layout,
    norm: &str,
    (hf, open_clip): (&str, &str),
    tower: &TowerConfig,
    embed_dim: usize,
) -> Result<Head> {
    let width = tower.width;
    let projection = match layout {
        Layout::HuggingFace => loader.matrix(&[hf.to_string()], embed_dim, width)?,
        Layout::OpenClip => {
            let stored = loader.host(open_clip, &[width, embed_dim])?;
            let mut transposed = vec![0.0f32; width * embed_dim];
            for (i, row) in stored.chunks_exact(embed_dim).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    transposed[j * width + i] = v;
                }
            }
            loader.backend.upload(&[embed_dim, width], &transposed)?
        }
    };
    Ok(Head {
        norm: loader.norm(norm, width)?,
        eps: tower.eps,
        width,
        projection,
        embed_dim,
    })
}

fn load_transformer(
    loader: &Loader,
    names: &Names,
    tower: &TowerConfig,
    text: bool,
) -> Result<Transformer> {
    let (w, m) = (tower.width, tower.mlp_width);
    let blocks = (0..tower.layers)
        .map(|l| {
            let name = |hf: &str, open_clip: &str| names.block(text, l, hf, open_clip);
            let qkv = match names.layout {
                Layout::HuggingFace => loader.fused_linear(
                    &["q_proj", "k_proj", "v_proj"].map(|p| {
                        let part = format!("self_attn.{p}");
                        (name(&part, &part), w)
                    }),
                    w,
                    true,
                )?,
                // Packed as one [3·width, width] matrix already, in q, k, v order.
                Layout::OpenClip => Linear {
                    weight: loader
                        .stacked_matrix(&[(name("", "attn.in_proj_weight"), 3 * w)], w)?,
                    bias: Some(loader.tensor(&name("", "attn.in_proj_bias"), &[3 * w])?),
                },
            };
            Ok(Block {
                ln_1: loader.norm(&name("layer_norm1", "ln_1"), w)?,
                qkv,
                out: loader.linear(&name("self_attn.out_proj", "attn.out_proj"), w, w, true)?,
                ln_2: loader.norm(&name("layer_norm2", "ln_2"), w)?,
                fc_1: loader.linear(&name("mlp.fc1", "mlp.c_fc"), m, w, true)?,
                fc_2: loader.linear(&name("mlp.fc2", "mlp.c_proj"), w, m, true)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        config: tower.clone(),
        blocks,
        causal: text,
    })
}

/// Runs the blocks over `x: [tokens, width]` in place.
fn run_transformer(
    be: &dyn Backend,
    transformer: &Transformer,
    x: &mut Tensor,
    layout: &SeqLayout,
) -> Result<()> {
    let c = &transformer.config;
    let n = layout.num_tokens();
    let spec = AttentionSpec {
        causal: transformer.causal,
        ..AttentionSpec::bidirectional(c.heads, c.width / c.heads)
    };
    // Gathering rows 0..n copies a tensor: the residual stream stays unnormalised.
    let rows: Vec<u32> = (0..n as u32).collect();
    let mut normed = be.zeros(&[n, c.width])?;
    let mut qkv = be.zeros(&[n, 3 * c.width])?;
    let mut context = be.zeros(&[n, c.width])?;
    let mut mid = be.zeros(&[n, c.width])?;
    let mut hidden = be.zeros(&[n, c.mlp_width])?;
    for block in &transformer.blocks {
        be.gather_rows(x, &rows, false, &mut normed)?;
        be.layer_norm(&mut normed, &block.ln_1.gamma, &block.ln_1.beta, c.eps)?;
        linear(
            be,
            &normed,
            &block.qkv,
            Activation::Identity,
            None,
            &mut qkv,
        )?;
        be.attention(&qkv, layout, &spec, &mut context)?;
        linear(
            be,
            &context,
            &block.out,
            Activation::Identity,
            Some(x),
            &mut mid,
        )?;
        be.gather_rows(&mid, &rows, false, &mut normed)?;
        be.layer_norm(&mut normed, &block.ln_2.gamma, &block.ln_2.beta, c.eps)?;
        linear(be, &normed, &block.fc_1, c.act, None, &mut hidden)?;
        linear(
            be,
            &hidden,
            &block.fc_2,
            Activation::Identity,
            Some(&mid),
            x,
        )?;
    }
    Ok(())
}

fn linear(
    be: &dyn Backend,
    x: &Tensor,
    layer: &Linear,
    act: Activation,
    residual: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    be.linear(x, &layer.weight, layer.bias.as_ref(), act, residual, out)
}

/// The patch matrix of `images` pixel tensors `[3, height, width]` (concatenated): one row per
/// token, `[images·tokens, 3·patch²]`, the class token's row zero, each patch's pixels in
/// (channel, y, x) order as the convolution's kernel reads them.
fn im2col(pixels: &[f32], images: usize, vision: &VisionConfig) -> Vec<f32> {
    let (width, p, (_, grid_cols)) = (vision.image_width, vision.patch_size, vision.grid());
    let cols = 3 * p * p;
    let plane = vision.image_height * width;
    let mut out = vec![0.0f32; images * vision.tokens() * cols];
    for (image, rows) in out.chunks_exact_mut(vision.tokens() * cols).enumerate() {
        let src = &pixels[image * 3 * plane..(image + 1) * 3 * plane];
        for (patch, row) in rows.chunks_exact_mut(cols).skip(1).enumerate() {
            let (gy, gx) = (patch / grid_cols, patch % grid_cols);
            for c in 0..3 {
                for ky in 0..p {
                    let start = c * plane + (gy * p + ky) * width + gx * p;
                    let at = (c * p + ky) * p;
                    row[at..at + p].copy_from_slice(&src[start..start + p]);
                }
            }
        }
    }
    out
}

impl ImageTower for ClipModel {
    fn preprocess(&self) -> &Preprocess {
        &self.config.preprocess
    }

    fn embedding_dim(&self) -> usize {
        self.config.embed_dim
    }

    /// The patch matrix, the fused Q/K/V output or the MLP's hidden layer of the image's tokens.
    fn widest_activation_per_image(&self) -> usize {
        let v = &self.config.vision;
        let patch_values = 3 * v.patch_size * v.patch_size;
        v.tokens() * patch_values.max(3 * v.tower.width).max(v.tower.mlp_width)
    }

    fn embed_pixels(&self, pixels: &[f32], images: usize) -> Result<Tensor> {
        let be = self.backend.as_ref();
        let v = &self.config.vision;
        let plane = 3 * v.image_height * v.image_width;
        if images == 0 || pixels.len() != images * plane {
            return Err(Error::input(format!(
                "{} pixel values do not make {images} images of 3×{}×{} (the size the \
                 checkpoint's position embeddings were made for)",
                pixels.len(),
                v.image_height,
                v.image_width
            )));
        }
        let tokens = v.tokens();
        let layout = SeqLayout::from_lengths(std::iter::repeat_n(tokens, images));
        let patches = im2col(pixels, images, v);
        let patches = be.upload(
            &[images * tokens, 3 * v.patch_size * v.patch_size],
            &patches,
        )?;
        let mut x = be.zeros(&[images * tokens, v.tower.width])?;
        be.linear(
            &patches,
            &self.vision.patch,
            None,
            Activation::Identity,
            None,
            &mut x,
        )?;
        let positions: Vec<u32> = layout.positions().map(|p| p as u32).collect();
        be.gather_rows(&self.vision.positions, &positions, true, &mut x)?;
        let ln_pre = &self.vision.ln_pre;
        be.layer_norm(&mut x, &ln_pre.gamma, &ln_pre.beta, v.tower.eps)?;
        run_transformer(be, &self.vision.transformer, &mut x, &layout)?;
        let head = &self.vision.head;
        match v.pooling {
            VisionPooling::ClassToken => {
                let class_rows: Vec<u32> = (0..images).map(|i| (i * tokens) as u32).collect();
                head.apply(be, &x, &class_rows)
            }
            VisionPooling::PatchMean => {
                head.normalize(be, &mut x)?;
                let patch_rows: Vec<u32> = (0..images * tokens)
                    .filter(|row| row % tokens != 0)
                    .map(|row| row as u32)
                    .collect();
                let mut patches = be.zeros(&[patch_rows.len(), v.tower.width])?;
                be.gather_rows(&x, &patch_rows, false, &mut patches)?;
                let per_image = SeqLayout::from_lengths(std::iter::repeat_n(tokens - 1, images));
                let mut pooled = be.zeros(&[images, v.tower.width])?;
                be.pool(&patches, &per_image, Pooling::Mean, &mut pooled)?;
                head.project(be, &pooled)
            }
        }
    }
}

impl Encoder for ClipModel {
    fn model_type(&self) -> &str {
        match self.config.layout {
            Layout::HuggingFace => "clip",
            Layout::OpenClip => "open_clip",
        }
    }

    fn hidden_size(&self) -> usize {
        self.config.text.tower.width
    }

    fn max_tokens(&self) -> usize {
        self.config.text.context_length
    }

    /// The end-of-text token closes every tokenised text; [`Encoder::embed_text`] is what CLIP
    /// itself uses.
    fn default_pooling(&self) -> Pooling {
        Pooling::Last
    }

    /// The text tower's fused Q/K/V output or its MLP's hidden layer.
    fn widest_activation(&self) -> usize {
        let c = &self.config.text.tower;
        (3 * c.width).max(c.mlp_width)
    }

    fn forward(&self, batch: &TokenBatch) -> Result<Tensor> {
        let mut x = self.text_states(batch)?;
        let head = &self.text.head;
        self.backend
            .layer_norm(&mut x, &head.norm.gamma, &head.norm.beta, head.eps)?;
        Ok(x)
    }

    fn own_pooling(&self) -> Option<&'static str> {
        Some("eot")
    }

    fn embed_text(&self, batch: &TokenBatch) -> Result<Tensor> {
        let rows = self.end_of_text_rows(batch)?;
        let x = self.text_states(batch)?;
        self.text.head.apply(self.backend.as_ref(), &x, &rows)
    }

    fn embedding_dim(&self) -> usize {
        self.config.embed_dim
    }

    fn image_tower(&self) -> Option<&dyn ImageTower> {
        Some(self)
    }
}
