//! Models written once against the backend op set, and what a model directory says about them.
//!
//! Every embedder is an [`Encoder`]: a packed [`TokenBatch`] in, last hidden states out, on the
//! backend it was loaded onto. [`load`] picks the architecture from `config.json`'s `model_type`
//! (or, for a single `.gguf` file, [`decoder_gguf`] from its `general.architecture`);
//! the embed instrument holds a `Box<dyn Encoder>` and adds tokenisation, pooling and
//! normalisation around it, so an architecture knows nothing of sentence-transformers.
//!
//! A model with its own embedding head (CLIP's projections) says so through
//! [`Encoder::own_pooling`], and one with an image tower hands it out as an [`ImageTower`]: pixel
//! tensors made by its [`image::Preprocess`] in, projected embeddings out.
//!
//! Files: [`loader`] (config and named tensors onto a backend, dtype policy, the `Linear`/`Norm`
//! building blocks), one file per architecture ([`bert`] for BERT / RoBERTa / XLM-R, [`decoder`]
//! for Llama / Mistral / Qwen2, [`decoder_gguf`] for those in GGUF files, [`clip`] for CLIP in
//! Hugging Face and open_clip layouts), [`image`] (decoding and preprocessing), [`sentence`]
//! (sentence-transformers' extras: length, pooling, normalisation), [`tokenize`], and the
//! classifiers the tangent-kernel instrument studies ([`mlp`], [`train`]; transformer sequence
//! classifiers in [`classifier`], their per-sample gradient factors in [`classifier_grad`],
//! fine-tuning in [`finetune`] with its training dropout in [`dropout`]).
//!
//! # Adding an architecture
//!
//! 1. `src/models/NAME.rs`: its config struct (read with [`loader::read_config`], validated with
//!    errors naming `config.json` and the field), its weights loaded through [`loader::Loader`]
//!    (so the dtype policy and shape checks are shared), a `pub const MODEL_TYPES` of the
//!    `model_type` values it runs, and `impl Encoder` whose `forward` is written only in
//!    [`crate::backend::Backend`] ops. An op the op set lacks is added there first (the
//!    checklist is in `kernels/README.md`).
//! 2. Register it in [`ARCHITECTURES`] below; [`load`]'s error then lists it. (A layout without
//!    `config.json`, as open_clip's, is recognised in [`load`] before it.)
//! 3. A tiny random-init checkpoint made by a `tools/` script with the reference library
//!    (transformers, open_clip), committed with its reference hidden states, and a parity test
//!    on every backend (`tests/embed_parity.rs`); bad-config tests beside it.
//! 4. The README's `mscope embed` section names the architecture.

pub mod bert;
pub mod classifier;
pub mod classifier_grad;
pub mod clip;
pub mod decoder;
pub mod decoder_gguf;
pub mod dropout;
pub mod exif;
pub mod finetune;
pub mod image;
pub mod loader;
pub mod mlp;
pub mod sentence;
pub mod tokenize;
mod tokenize_json;
mod tokenize_spm;
pub mod train;

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::backend::{Backend, Pooling, SeqLayout, Tensor};
use crate::error::{Error, Result};
use crate::weights::WeightsDtype;

/// A packed batch of tokenised sequences.
pub struct TokenBatch {
    pub ids: Vec<u32>,
    /// Segment ids (BERT's token types); zeros where the model has none.
    pub type_ids: Vec<u32>,
    pub layout: SeqLayout,
}

impl TokenBatch {
    /// The tokenised texts packed back to back, in order.
    pub fn pack(texts: &[tokenize::TokenizedText]) -> Self {
        TokenBatch {
            ids: texts.iter().flat_map(|t| t.ids.iter().copied()).collect(),
            type_ids: texts
                .iter()
                .flat_map(|t| t.type_ids.iter().copied())
                .collect(),
            layout: SeqLayout::from_lengths(texts.iter().map(|t| t.ids.len())),
        }
    }
}

/// A transformer that turns packed token batches into hidden states on its backend.
pub trait Encoder: Send + Sync {
    /// The `model_type` it was loaded as (`bert`, `xlm-roberta`, …).
    fn model_type(&self) -> &str;

    /// Width of a hidden state.
    fn hidden_size(&self) -> usize;

    /// The longest sequence its positions can encode.
    fn max_tokens(&self) -> usize;

    /// The pooling its embeddings use when the model directory names none.
    fn default_pooling(&self) -> Pooling;

    /// Values per token of the widest `[tokens, width]` f32 activation its forward allocates
    /// (the FFN's hidden layer or the fused Q/K/V, usually): a batch of `t` tokens needs a
    /// buffer of `4·t·width` bytes, which the embed instrument keeps within
    /// [`Backend::max_activation_bytes`].
    fn widest_activation(&self) -> usize;

    /// Last hidden states `[tokens, hidden_size]` of a packed batch, on the backend. A sequence
    /// longer than [`Encoder::max_tokens`] is an error.
    fn forward(&self, batch: &TokenBatch) -> Result<Tensor>;

    /// The name of the model's own pooling and projection where it has one (CLIP's end-of-text
    /// token through the text projection: `"eot"`), whose embeddings [`Encoder::embed_text`]
    /// computes; `None` where the caller pools [`Encoder::forward`]'s hidden states.
    fn own_pooling(&self) -> Option<&'static str> {
        None
    }

    /// Embeddings `[sequences, embedding_dim]` of a packed batch through the model's own head
    /// ([`Encoder::own_pooling`]).
    fn embed_text(&self, _batch: &TokenBatch) -> Result<Tensor> {
        Err(Error::input(format!(
            "{} has no embedding head of its own; pool its hidden states",
            self.model_type()
        )))
    }

    /// Width of an embedding: [`Encoder::embed_text`]'s where the model has its own head, else
    /// the hidden size.
    fn embedding_dim(&self) -> usize {
        self.hidden_size()
    }

    /// The image tower of a model that has one.
    fn image_tower(&self) -> Option<&dyn ImageTower> {
        None
    }
}

/// A vision tower: preprocessed pixels in, embeddings out.
pub trait ImageTower: Send + Sync {
    /// How an image becomes the tower's input ([`image::Preprocess::pixels`]).
    fn preprocess(&self) -> &image::Preprocess;

    /// Width of an image embedding.
    fn embedding_dim(&self) -> usize;

    /// Values of the widest f32 activation one image takes in [`ImageTower::embed_pixels`]
    /// (the image's tokens times the widest of its rows: patch pixels, fused Q/K/V, the MLP's
    /// hidden layer): a batch of `b` images needs a buffer of `4·b·values` bytes, which the
    /// image embedder keeps within [`Backend::max_activation_bytes`].
    fn widest_activation_per_image(&self) -> usize;

    /// Embeddings `[images, embedding_dim]` on the backend of `images` pixel tensors
    /// `[3, height, width]` laid end to end on the host. Pixels of another size than the tower's
    /// are an error.
    fn embed_pixels(&self, pixels: &[f32], images: usize) -> Result<Tensor>;
}

/// How an architecture is loaded from a model directory.
type LoadFn = fn(&Path, Arc<dyn Backend>, WeightsDtype) -> Result<Box<dyn Encoder>>;

/// Every architecture [`load`] knows: its `model_type` values and its loader.
pub const ARCHITECTURES: &[(&[&str], LoadFn)] = &[
    (&bert::MODEL_TYPES, |dir, be, dtype| {
        Ok(Box::new(bert::BertModel::load(dir, be, dtype)?))
    }),
    (&decoder::MODEL_TYPES, |dir, be, dtype| {
        Ok(Box::new(decoder::DecoderModel::load(dir, be, dtype)?))
    }),
    (&clip::MODEL_TYPES, |dir, be, dtype| {
        Ok(Box::new(clip::ClipModel::load(dir, be, dtype)?))
    }),
];

/// An error message unless a norm's epsilon (config key `key`) is positive and finite as the f32
/// the kernels use: a zero or negative one divides by zero or takes the root of a negative
/// variance, and every embedding comes out NaN.
pub fn check_norm_eps(key: &str, eps: f64) -> std::result::Result<(), String> {
    let kernel_eps = eps as f32;
    if kernel_eps > 0.0 && kernel_eps.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "{key} {eps}: must be a positive number (representable in f32)"
        ))
    }
}

/// Loads the encoder of a model directory onto `backend`, the architecture chosen by
/// `config.json`'s `model_type`, with GEMM weights and embedding tables in the element type
/// `weights_dtype` picks. A path ending in `.gguf` is a GGUF file's decoder instead, and a
/// directory with an `open_clip_config.json` an open_clip CLIP model.
pub fn load(
    dir: &Path,
    backend: Arc<dyn Backend>,
    weights_dtype: WeightsDtype,
) -> Result<Box<dyn Encoder>> {
    if decoder_gguf::is_gguf(dir) {
        return Ok(Box::new(decoder_gguf::load(dir, backend, weights_dtype)?));
    }
    if clip::is_open_clip(dir) {
        return Ok(Box::new(clip::ClipModel::load(
            dir,
            backend,
            weights_dtype,
        )?));
    }
    #[derive(Deserialize)]
    struct ModelType {
        model_type: Option<String>,
    }
    let declared: ModelType = loader::read_config(dir, "Hugging Face model")?;
    let model_type = declared.model_type.unwrap_or_default();
    match ARCHITECTURES
        .iter()
        .find(|(types, _)| types.contains(&model_type.as_str()))
    {
        Some((_, load)) => load(dir, backend, weights_dtype),
        None => {
            let supported: Vec<&str> = ARCHITECTURES
                .iter()
                .flat_map(|(types, _)| types.iter().copied())
                .collect();
            Err(Error::input(format!(
                "{}: model_type {model_type:?} is not supported (supported: {})",
                dir.join("config.json").display(),
                supported.join(", ")
            )))
        }
    }
}
