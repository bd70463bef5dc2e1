//! Fine-tuning of transformer sequence classifiers: AdamW as `torch.optim.AdamW` makes it, the
//! linear warm-up then linear decay to zero of transformers' `get_linear_schedule_with_warmup`,
//! and the classifier's parameters held on the host by checkpoint name, written back as a
//! classifier directory that [`SequenceClassifier::load`] (and transformers) read.
//!
//! A bare BERT or XLM-R encoder (a `BertModel` / `XLMRobertaModel` or sentence-transformers
//! directory) gets a classification head as transformers' `from_pretrained(dir, num_labels=…)` of
//! the family's sequence classifier makes it ([`classifier_from_encoder`]). The gradient of each step is
//! [`loss_gradient`](super::classifier_grad::loss_gradient)'s; between steps the classifier is
//! rebuilt from the parameters in memory ([`classifier_from_parameters`]: the forward runs on its
//! backend, the update on the host), and the directory is written once, at the end. With
//! dropout, each step's gradient is
//! [`loss_gradient_with_dropout`](super::classifier_grad::loss_gradient_with_dropout)'s, at the
//! config's rates ([`super::dropout::DropoutRates::of_config`]) and the masks of the step.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::classifier::{HeadKind, SequenceClassifier};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::tensor_file::{self, TensorFile, TensorOut};
use crate::random::{counter_hash, SplitMix64};
use crate::tensor::DType;
use crate::weights::{Weights, WeightsDtype};

/// AdamW's constants: PyTorch's defaults.
pub const ADAMW_BETAS: (f64, f64) = (0.9, 0.999);
pub const ADAMW_EPS: f64 = 1e-8;

/// The learning-rate factor of optimizer step `step` (0-based) of `total`: `step / warmup`
/// during the warm-up, then falling linearly to 0 at `total` (transformers'
/// `get_linear_schedule_with_warmup`, whose scheduler steps after each optimizer step).
pub fn linear_schedule(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0)
    }
}

/// Parameters by checkpoint name: shape and f32 values.
pub type Parameters = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every f32 tensor of a safetensors checkpoint (`model.safetensors`), by name.
pub fn read_parameters(path: &Path) -> Result<Parameters> {
    let file = TensorFile::read(path)?;
    file.names()
        .into_iter()
        .map(|name| {
            let tensor = file.f32(&name)?;
            Ok((name, tensor))
        })
        .collect()
}

/// Writes `params` as a safetensors checkpoint (F32, HF names).
pub fn write_parameters(path: &Path, params: &Parameters) -> Result<()> {
    let tensors = params
        .iter()
        .map(|(name, (shape, values))| TensorOut::f32(name.clone(), shape.clone(), values))
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    tensor_file::write(path, tensors, metadata)
}

/// Weight files a classifier directory may hold, which [`write_classifier`] replaces by its own
/// `model.safetensors` rather than copies.
const WEIGHT_FILES: [&str; 3] = [
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
];

/// Files of a sentence-transformers encoder that describe the encoder's sentence pipeline
/// (pooling modules, its model card), not the classifier made from it: not copied.
const SENTENCE_TRANSFORMERS_FILES: [&str; 4] = [
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "README.md",
];

/// Writes a classifier directory `to` (created if absent) holding `params` as
/// `model.safetensors` and a copy of every other file of the directory `from` it was loaded
/// from (config.json with its labels, the tokenizer files): what transformers'
/// `from_pretrained` and [`SequenceClassifier::load`] read.
pub fn write_classifier(from: &Path, to: &Path, params: &Parameters) -> Result<()> {
    copy_classifier_files(from, to, None)?;
    write_parameters(&to.join("model.safetensors"), params)
}

/// Copies every file of `from` but its weights into `to` (created if absent). With `config`
/// (the classifier made from a bare encoder), writes it as `config.json` instead of the
/// encoder's and leaves out the encoder's sentence-transformers files.
pub fn copy_classifier_files(from: &Path, to: &Path, config: Option<&Value>) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let path = entry.map_err(|e| Error::io(from, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let replaced = config.is_some()
            && (name == "config.json" || SENTENCE_TRANSFORMERS_FILES.contains(&name));
        if path.is_file() && !WEIGHT_FILES.contains(&name) && !replaced {
            std::fs::copy(&path, to.join(name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    if let Some(config) = config {
        let path = to.join("config.json");
        let text = serde_json::to_string_pretty(config).expect("a JSON value serialises");
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Whether the model directory `dir` carries a sequence-classification head (else it is a bare
/// encoder, which [`classifier_from_encoder`] completes).
pub fn has_classification_head(dir: &Path) -> Result<bool> {
    Ok(HeadKind::find(&Weights::open(dir)?).is_some())
}

/// The classifier of directory `dir`'s `config.json` (labels included) with the parameters
/// `params`, on `backend` in f32: how fine-tuning rebuilds the model after each update without
/// writing it out.
pub fn classifier_from_parameters(
    dir: &Path,
    params: &Parameters,
    backend: Arc<dyn Backend>,
) -> Result<SequenceClassifier> {
    let weights = Weights::from_f32(
        &dir.join("model.safetensors"),
        params
            .iter()
            .map(|(name, (shape, values))| (name.as_str(), shape.as_slice(), values.as_slice())),
    )?;
    SequenceClassifier::from_weights(dir, weights, backend, WeightsDtype::F32)
}

/// Class names for the labels of a data set, in class order: sorted, numerically when every
/// label is an integer (so `"10"` follows `"9"`), each once.
pub fn label_names<'a>(labels: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = labels.into_iter().map(str::to_string).collect();
    names.sort();
    names.dedup();
    if names.iter().all(|l| l.parse::<i64>().is_ok()) {
        names.sort_by_key(|l| l.parse::<i64>().expect("checked above"));
    }
    names
}

/// Which stream of [`counter_hash`] seeds the head's initial weights (the batch order uses the
/// seed itself), so the two draws are independent.
const HEAD_INIT_STREAM: u64 = 0x4845_4144;

/// A sequence classifier made from the bare encoder in `dir` (its `model.safetensors`, tensors
/// named with or without the encoder's prefix) for the classes `labels`, as transformers'
/// `from_pretrained(dir, num_labels=…)` makes it:
///
/// - BERT (`model_type` "bert"): `BertForSequenceClassification`, the encoder's tensors under
///   `bert.`; the pooler `bert.pooler.dense` taken from the checkpoint when it holds one, else
///   newly initialised; `classifier` `[C, h]` newly initialised.
/// - XLM-R (`model_type` "xlm-roberta"): `XLMRobertaForSequenceClassification`, the encoder's
///   tensors under `roberta.` (a pooler in the checkpoint is dropped: this head does not use
///   one, and transformers builds the encoder without it); the RoBERTa head `classifier.dense`
///   `[h, h]` (tanh) and `classifier.out_proj` `[C, h]`, newly initialised.
///
/// New weights are normal(0, `initializer_range`) (f64 Box–Muller draws of [`SplitMix64`],
/// seeded from `seed`, in the order listed, row-major), new biases 0. Returns the parameters and
/// the classifier's `config.json`: the encoder's with `architectures`, `id2label` and
/// `label2id`.
pub fn classifier_from_encoder(
    dir: &Path,
    labels: &[String],
    seed: u64,
) -> Result<(Parameters, Value)> {
    let config_path = dir.join("config.json");
    let bad = |what: String| Error::input(format!("{}: {what}", config_path.display()));
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let model_type = config["model_type"].as_str().unwrap_or_default();
    // The checkpoint prefix of the encoder, the new layers and the architecture.
    let (prefix, head, architecture): (&str, &[&str], &str) = match model_type {
        "bert" => (
            "bert.",
            &["bert.pooler.dense", "classifier"],
            "BertForSequenceClassification",
        ),
        "xlm-roberta" => (
            "roberta.",
            &["classifier.dense", "classifier.out_proj"],
            "XLMRobertaForSequenceClassification",
        ),
        _ => {
            return Err(bad(format!(
                "model_type {model_type:?}: a classification head is created for BERT \
                 (\"bert\") and XLM-R (\"xlm-roberta\") encoders only; start from a \
                 classifier directory for other encoders"
            )))
        }
    };
    let h = config["hidden_size"]
        .as_u64()
        .ok_or_else(|| bad("no hidden_size".into()))? as usize;
    let std = config["initializer_range"].as_f64().unwrap_or(0.02);
    if labels.len() < 2 {
        return Err(Error::input(format!(
            "{} class(es) {labels:?}: a classifier needs at least two",
            labels.len()
        )));
    }

    let weights = Weights::open(dir)?;
    let names = weights.names();
    // A checkpoint saved with a task head already names its encoder with the prefix; a bare
    // encoder's tensors get it. Integer buffers (`position_ids`) are not parameters.
    let prefixed = names.iter().any(|n| n.starts_with(prefix));
    let mut params = Parameters::new();
    for name in &names {
        if prefixed && !name.starts_with(prefix) {
            continue;
        }
        if weights.dtype(name)? == DType::I64 {
            continue;
        }
        let full = if prefixed {
            name.clone()
        } else {
            format!("{prefix}{name}")
        };
        if model_type == "xlm-roberta" && full.starts_with("roberta.pooler.") {
            continue;
        }
        let shape = weights.shape(name)?;
        let values = weights.f32(name, &shape)?.into_owned();
        params.insert(full, (shape, values));
    }
    let mut rng = SplitMix64::new(counter_hash(seed, HEAD_INIT_STREAM, 0));
    let mut linear = |name: &str, rows: usize, params: &mut Parameters| {
        let weight = (0..rows * h).map(|_| (std * rng.normal()) as f32).collect();
        params.insert(format!("{name}.weight"), (vec![rows, h], weight));
        params.insert(format!("{name}.bias"), (vec![rows], vec![0.0; rows]));
    };
    let [hidden_layer, output_layer] = [head[0], head[1]];
    if !params.contains_key(&format!("{hidden_layer}.weight")) {
        linear(hidden_layer, h, &mut params);
    }
    linear(output_layer, labels.len(), &mut params);

    config["architectures"] = json!([architecture]);
    config["id2label"] = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["label2id"] = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Ok((params, config))
}

/// `torch.optim.AdamW` (no AMSGrad): per parameter tensor, decoupled weight decay
/// `p ← p·(1 − lr·λ)` then the bias-corrected Adam step.
pub struct AdamW {
    weight_decay: f64,
    steps: i32,
    /// First and second moments by parameter name.
    moments: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
}

impl AdamW {
    pub fn new(weight_decay: f64) -> Self {
        AdamW {
            weight_decay,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of the parameters named in `grads` with learning rate `lr` (this step's,
    /// schedule applied). Parameters without a gradient (a frozen encoder) are left alone.
    pub fn step(
        &mut self,
        params: &mut Parameters,
        grads: &[(String, Vec<f32>)],
        lr: f64,
    ) -> Result<()> {
        self.steps += 1;
        let (beta1, beta2) = ADAMW_BETAS;
        // PyTorch folds the bias corrections into the step size and the denominator.
        let step_size = (lr / (1.0 - beta1.powi(self.steps))) as f32;
        let correction2_sqrt = (1.0 - beta2.powi(self.steps)).sqrt() as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let (beta1, beta2, eps) = (beta1 as f32, beta2 as f32, ADAMW_EPS as f32);
        for (name, grad) in grads {
            let (_, values) = params.get_mut(name).ok_or_else(|| {
                Error::input(format!("AdamW: gradient of {name}, which the model lacks"))
            })?;
            if values.len() != grad.len() {
                return Err(Error::input(format!(
                    "AdamW: {name} has {} values, its gradient {}",
                    values.len(),
                    grad.len()
                )));
            }
            let (first, second) = self
                .moments
                .entry(name.clone())
                .or_insert_with(|| (vec![0.0; grad.len()], vec![0.0; grad.len()]));
            for (((p, &g), m), v) in values.iter_mut().zip(grad).zip(first).zip(second) {
                *p *= decay;
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                let denom = v.sqrt() / correction2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_are_sorted_numerically_when_integers() {
        assert_eq!(label_names(["b", "a", "b"]), ["a", "b"]);
        assert_eq!(label_names(["10", "9", "-1", "9"]), ["-1", "9", "10"]);
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let lrs: Vec<f64> = (0..6).map(|s| linear_schedule(s, 2, 6)).collect();
        assert_eq!(lrs, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        assert_eq!(linear_schedule(7, 2, 6), 0.0);
        assert_eq!(linear_schedule(0, 0, 4), 1.0);
    }
}
