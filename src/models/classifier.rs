//! Transformer sequence classifiers: Hugging Face `BertForSequenceClassification` and
//! `XLMRobertaForSequenceClassification` (or `RobertaForSequenceClassification`) directories,
//! a [`BertModel`] encoder plus the classification head, run on any backend.
//!
//! Both heads read the first token's hidden state (`[CLS]` / `<s>`) and apply a `[h, h]` dense
//! layer with tanh, then a `[C, h]` output layer giving the logits; they differ only in names:
//!
//! | head | dense | output |
//! |---|---|---|
//! | BERT | `bert.pooler.dense` | `classifier` |
//! | RoBERTa / XLM-R | `classifier.dense` | `classifier.out_proj` |
//!
//! While fine-tuning with dropout, BERT's head drops the pooled output (after tanh) and RoBERTa's
//! also the first token's state before `dense` ([`SequenceClassifier::head_dropout`]).
//!
//! The labels come from `config.json`'s `id2label` (keys `"0"…"C-1"`), else `num_labels`
//! (named `LABEL_i` as transformers names them), and must match the output layer's rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::bert::{BertConfig, BertModel};
use super::classifier_grad::TransposedWeights;
use super::dropout::{DropoutSite, StepDropout};
use super::loader::{read_config, Linear, Loader};
use super::tokenize::TokenizedText;
use super::{Encoder, TokenBatch};
use crate::backend::{Activation, Backend, DropoutMask, Pooling, SeqLayout, Tensor};
use crate::error::{Error, Result};
use crate::weights::{Weights, WeightsDtype};

/// Which classification head a checkpoint carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// BERT's pooler (dense + tanh on `[CLS]`) and `classifier`.
    BertPooler,
    /// RoBERTa's `classifier.dense` + tanh on `<s>`, then `classifier.out_proj`.
    Roberta,
}

impl HeadKind {
    /// Every head, in the order a checkpoint is tried against.
    pub const ALL: [HeadKind; 2] = [HeadKind::BertPooler, HeadKind::Roberta];

    /// The head whose layers `weights` holds, if any.
    pub fn find(weights: &Weights) -> Option<HeadKind> {
        HeadKind::ALL.into_iter().find(|k| {
            k.layer_names()
                .iter()
                .all(|n| weights.contains(&format!("{n}.weight")))
        })
    }

    /// The checkpoint names of the dense and output layers (`.weight`/`.bias` appended).
    pub fn layer_names(self) -> [&'static str; 2] {
        match self {
            HeadKind::BertPooler => ["bert.pooler.dense", "classifier"],
            HeadKind::Roberta => ["classifier.dense", "classifier.out_proj"],
        }
    }
}

/// The classification head: `logits = out(tanh(dense(h_first)))`.
pub struct ClassifierHead {
    pub kind: HeadKind,
    pub dense: Linear,
    pub out: Linear,
}

/// What a recorded head forward keeps for a backward pass, on the classifier's backend, one row
/// per sequence.
#[derive(Debug)]
pub struct HeadTape {
    /// The first token's hidden state, `[sequences, h]`.
    pub first: Tensor,
    /// The dense layer before tanh, `[sequences, h]`.
    pub dense_pre: Tensor,
    /// After tanh (the output layer's input), `[sequences, h]`.
    pub pooled: Tensor,
}

#[derive(Deserialize)]
struct LabelConfig {
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
}

/// A BERT-family encoder with its sequence-classification head.
pub struct SequenceClassifier {
    encoder: BertModel,
    head: ClassifierHead,
    labels: Vec<String>,
    /// The transposed weights of the backward pass, uploaded at its first use.
    transposed: OnceLock<TransposedWeights>,
}

impl SequenceClassifier {
    /// Loads a classifier directory onto `backend`: the encoder as [`BertModel::load`] does, the
    /// head found by its tensor names, the labels from `config.json`.
    pub fn load(
        dir: &Path,
        backend: Arc<dyn Backend>,
        weights_dtype: WeightsDtype,
    ) -> Result<Self> {
        Self::from_weights(dir, Weights::open(dir)?, backend, weights_dtype)
    }

    /// The classifier of the directory `dir`'s `config.json` with the tensors of `weights`
    /// (the directory's checkpoint, or parameters held in memory during fine-tuning).
    pub fn from_weights(
        dir: &Path,
        weights: Weights,
        backend: Arc<dyn Backend>,
        weights_dtype: WeightsDtype,
    ) -> Result<Self> {
        let config = BertConfig::read(dir)?;
        let config_path = dir.join("config.json");
        let labels_config: LabelConfig = read_config(dir, "classifier")?;
        let Some(kind) = HeadKind::find(&weights) else {
            let architectures = labels_config.architectures.unwrap_or_default().join(", ");
            return Err(Error::input(format!(
                "{}: no sequence-classification head (architectures: [{architectures}]); \
                 expected the tensors `bert.pooler.dense.*` and `classifier.*` \
                 (BertForSequenceClassification) or `classifier.dense.*` and \
                 `classifier.out_proj.*` (XLMRobertaForSequenceClassification)",
                dir.display()
            )));
        };
        let h = config.hidden_size;
        let [dense_name, out_name] = kind.layer_names();
        let out_rows = weights.shape(&format!("{out_name}.weight"))?[0];
        let labels = read_labels(
            &config_path,
            labels_config.id2label,
            labels_config.num_labels,
        )?
        .unwrap_or_else(|| (0..out_rows).map(|i| format!("LABEL_{i}")).collect());
        if labels.len() != out_rows {
            return Err(Error::input(format!(
                "{}: {} labels, but `{out_name}.weight` has {out_rows} rows",
                config_path.display(),
                labels.len()
            )));
        }
        let loader = Loader {
            weights: &weights,
            backend: backend.as_ref(),
            weights_dtype,
        };
        let head = ClassifierHead {
            kind,
            dense: loader.linear(dense_name, h, h, true)?,
            out: loader.linear(out_name, labels.len(), h, true)?,
        };
        let encoder = BertModel::from_weights(config, weights, backend, weights_dtype)?;
        Ok(SequenceClassifier {
            encoder,
            head,
            labels,
            transposed: OnceLock::new(),
        })
    }

    pub fn encoder(&self) -> &BertModel {
        &self.encoder
    }

    pub fn head(&self) -> &ClassifierHead {
        &self.head
    }

    /// The transposed weights the backward pass multiplies by, on the classifier's backend:
    /// uploaded by the first call, kept for the classifier's life.
    pub(crate) fn transposed_weights(&self) -> Result<&TransposedWeights> {
        if let Some(weights) = self.transposed.get() {
            return Ok(weights);
        }
        let weights = TransposedWeights::upload(self)?;
        Ok(self.transposed.get_or_init(|| weights))
    }

    /// Label names, index = class.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }

    /// Logits `[sequences, num_labels]` of a packed batch, on the backend.
    pub fn logits(&self, batch: &TokenBatch) -> Result<Tensor> {
        let hidden = self.encoder.forward(batch)?;
        self.head_forward(&hidden, &batch.layout)
    }

    /// Logits `[texts, num_labels]` of tokenised `texts`, `batch_size` texts a forward pass,
    /// downloaded to the host.
    pub fn logits_of(&self, texts: &[TokenizedText], batch_size: usize) -> Result<Vec<f32>> {
        let backend = self.encoder.backend();
        let mut logits = Vec::with_capacity(texts.len() * self.num_labels());
        for chunk in texts.chunks(batch_size.max(1)) {
            logits.extend(backend.download(&self.logits(&TokenBatch::pack(chunk))?)?);
        }
        Ok(logits)
    }

    /// The head over the encoder's hidden states.
    pub fn head_forward(&self, hidden: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
        Ok(self.run_head(hidden, layout, false, None)?.0)
    }

    /// [`Self::head_forward`] keeping its values on the backend for a backward pass (the dense
    /// GEMM then runs once more without tanh, for its pre-activation). With `dropout`, a
    /// training step's head: its inputs dropped where the head kind drops
    /// ([`Self::head_dropout`]); the tape holds the dropped values.
    pub fn head_forward_recorded(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        dropout: Option<&StepDropout>,
    ) -> Result<(Tensor, HeadTape)> {
        let (logits, tape) = self.run_head(hidden, layout, true, dropout)?;
        Ok((logits, tape.expect("recorded")))
    }

    /// The mask a training step's head applies at `site` ([`DropoutSite::HeadInput`] or
    /// [`DropoutSite::HeadHidden`]): BERT drops only the pooled output (after tanh), RoBERTa's
    /// head also the first token's state before its dense layer.
    pub fn head_dropout(
        &self,
        dropout: Option<&StepDropout>,
        site: DropoutSite,
    ) -> Option<DropoutMask> {
        let applies = match site {
            DropoutSite::HeadHidden => true,
            DropoutSite::HeadInput => self.head.kind == HeadKind::Roberta,
            _ => false,
        };
        dropout.filter(|_| applies).and_then(|d| d.mask(site))
    }

    fn run_head(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        record: bool,
        dropout: Option<&StepDropout>,
    ) -> Result<(Tensor, Option<HeadTape>)> {
        let be = self.encoder.backend().as_ref();
        let (s, h) = (layout.num_sequences(), self.encoder.config().hidden_size);
        let dropped = |t: Tensor, site: DropoutSite| -> Result<Tensor> {
            let Some(mask) = self.head_dropout(dropout, site) else {
                return Ok(t);
            };
            let mut out = be.zeros(t.shape())?;
            be.dropout(&t, &mask, None, &mut out)?;
            Ok(out)
        };
        let mut first = be.zeros(&[s, h])?;
        be.pool(hidden, layout, Pooling::Cls, &mut first)?;
        let first = dropped(first, DropoutSite::HeadInput)?;
        let dense = &self.head.dense;
        let dense_pre = if record {
            let mut pre = be.zeros(&[s, h])?;
            be.linear(
                &first,
                &dense.weight,
                dense.bias.as_ref(),
                Activation::Identity,
                None,
                &mut pre,
            )?;
            Some(pre)
        } else {
            None
        };
        let mut pooled = be.zeros(&[s, h])?;
        be.linear(
            &first,
            &dense.weight,
            dense.bias.as_ref(),
            Activation::Tanh,
            None,
            &mut pooled,
        )?;
        let pooled = dropped(pooled, DropoutSite::HeadHidden)?;
        let mut logits = be.zeros(&[s, self.num_labels()])?;
        be.linear(
            &pooled,
            &self.head.out.weight,
            self.head.out.bias.as_ref(),
            Activation::Identity,
            None,
            &mut logits,
        )?;
        let tape = dense_pre.map(|dense_pre| HeadTape {
            first,
            dense_pre,
            pooled,
        });
        Ok((logits, tape))
    }
}

/// Label names from `id2label` (keys `"0"…"C-1"`, each once) or `num_labels`; `None` where the
/// config names neither.
fn read_labels(
    path: &Path,
    id2label: Option<BTreeMap<String, String>>,
    num_labels: Option<usize>,
) -> Result<Option<Vec<String>>> {
    let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
    let Some(map) = id2label else {
        return Ok(num_labels.map(|c| (0..c).map(|i| format!("LABEL_{i}")).collect()));
    };
    let count = map.len();
    let mut labels = vec![None; count];
    for (key, name) in map {
        let slot = key
            .parse::<usize>()
            .ok()
            .and_then(|i| labels.get_mut(i))
            .ok_or_else(|| {
                bad(format!(
                    "id2label key {key:?} is not a class index below {count}"
                ))
            })?;
        *slot = Some(name);
    }
    let labels = labels
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.ok_or_else(|| bad(format!("id2label names no label for class {i}"))))
        .collect::<Result<Vec<String>>>()?;
    if let Some(c) = num_labels.filter(|&c| c != labels.len()) {
        return Err(bad(format!(
            "num_labels {c} disagrees with id2label's {} entries",
            labels.len()
        )));
    }
    Ok(Some(labels))
}
