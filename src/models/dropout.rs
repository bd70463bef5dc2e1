//! Dropout while fine-tuning a sequence classifier, where transformers applies it in train mode
//! (`BertForSequenceClassification`, `XLMRobertaForSequenceClassification`):
//!
//! | site | probability | where |
//! |---|---|---|
//! | [`DropoutSite::Embeddings`] | `hidden_dropout_prob` | the embeddings' output, after their LayerNorm |
//! | [`DropoutSite::AttentionProbs`] | `attention_probs_dropout_prob` | the attention probabilities, before they weigh the values |
//! | [`DropoutSite::AttentionOutput`] | `hidden_dropout_prob` | the attention output projection, before the residual add and LayerNorm |
//! | [`DropoutSite::FfnOutput`] | `hidden_dropout_prob` | the FFN's output projection, before the residual add and LayerNorm |
//! | [`DropoutSite::HeadInput`] | head's | RoBERTa's head: the first token's state, before `dense` |
//! | [`DropoutSite::HeadHidden`] | head's | after the head's tanh, before the output layer (BERT: the pooled output) |
//!
//! The head's probability is `classifier_dropout`, or `hidden_dropout_prob` where that is null.
//! Masks are inverted dropout drawn by [`DropoutMask`] from a key per (seed, step, site), so a
//! run is a function of its seed whatever the thread count, and the backward pass recomputes
//! the forward's masks. Evaluation never drops.

use std::path::Path;

use super::bert::BertConfig;
use crate::backend::DropoutMask;
use crate::error::{Error, Result};
use crate::random::counter_hash;

/// The stream of [`counter_hash`] the dropout keys of a seed come from (the batch order and the
/// head's initial weights use others).
const DROPOUT_STREAM: u64 = 0x4452_4F50;

/// Where a training forward drops (module docs). Layers are counted from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropoutSite {
    Embeddings,
    AttentionProbs(usize),
    AttentionOutput(usize),
    FfnOutput(usize),
    HeadInput,
    HeadHidden,
}

impl DropoutSite {
    /// The site's number in its step's key: 0 for the embeddings, `1 + 3l + k` for layer `l`'s
    /// attention probabilities (k = 0), attention output (1) and FFN output (2), and 2³² and
    /// 2³² + 1 for the head's input and hidden state.
    pub fn id(self) -> u64 {
        let layer = |l: usize, k: u64| 1 + 3 * l as u64 + k;
        match self {
            DropoutSite::Embeddings => 0,
            DropoutSite::AttentionProbs(l) => layer(l, 0),
            DropoutSite::AttentionOutput(l) => layer(l, 1),
            DropoutSite::FfnOutput(l) => layer(l, 2),
            DropoutSite::HeadInput => 1 << 32,
            DropoutSite::HeadHidden => (1 << 32) + 1,
        }
    }
}

/// The drop probabilities of a classifier's sites, each in `[0, 1)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutRates {
    hidden: f64,
    attention: f64,
    head: f64,
}

impl DropoutRates {
    /// `hidden` for the embeddings, attention output and FFN output, `attention` for the
    /// attention probabilities, `head` for the classification head; an error naming the first
    /// outside `[0, 1)`.
    pub fn new(hidden: f64, attention: f64, head: f64) -> Result<Self> {
        for (name, p) in [("hidden", hidden), ("attention", attention), ("head", head)] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::input(format!(
                    "{name} dropout probability {p} is outside [0, 1)"
                )));
            }
        }
        Ok(DropoutRates {
            hidden,
            attention,
            head,
        })
    }

    /// The rates of a classifier's `config.json` (read from `path`, named in errors):
    /// `hidden_dropout_prob`, `attention_probs_dropout_prob`, and `classifier_dropout` or,
    /// where null, `hidden_dropout_prob`.
    pub fn of_config(config: &BertConfig, path: &Path) -> Result<Self> {
        let fields = [
            ("hidden_dropout_prob", Some(config.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(config.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", config.classifier_dropout),
        ];
        for (key, p) in fields {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                return Err(Error::input(format!(
                    "{}: {key} {p} is outside [0, 1) (a dropout probability)",
                    path.display()
                )));
            }
        }
        let head = config
            .classifier_dropout
            .unwrap_or(config.hidden_dropout_prob);
        Self::new(
            config.hidden_dropout_prob,
            config.attention_probs_dropout_prob,
            head,
        )
    }

    /// The masks of optimizer step `step` (0-based) of the run seeded by `seed`.
    pub fn for_step(self, seed: u64, step: u64) -> StepDropout {
        StepDropout {
            rates: self,
            key: counter_hash(seed, DROPOUT_STREAM, step),
        }
    }
}

/// The dropout of one training step: its rates and the key every site's mask derives from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepDropout {
    rates: DropoutRates,
    key: u64,
}

impl StepDropout {
    /// The mask of `site`, keyed `counter_hash(step key, site id, 0)`; `None` where the site's
    /// probability is 0 (nothing dropped, nothing computed).
    pub fn mask(&self, site: DropoutSite) -> Option<DropoutMask> {
        let p = match site {
            DropoutSite::Embeddings
            | DropoutSite::AttentionOutput(_)
            | DropoutSite::FfnOutput(_) => self.rates.hidden,
            DropoutSite::AttentionProbs(_) => self.rates.attention,
            DropoutSite::HeadInput | DropoutSite::HeadHidden => self.rates.head,
        };
        (p > 0.0).then(|| {
            DropoutMask::new(counter_hash(self.key, site.id(), 0), p)
                .expect("DropoutRates holds probabilities in [0, 1)")
        })
    }
}
