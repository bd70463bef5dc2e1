//! `--layers SPEC`: which parameters a tangent kernel sums over.
//!
//! Users of (projected) tangent kernels often keep only the last layers, where the kernel is
//! cheapest and, for fine-tuned models, most informative. A spec is a comma-separated list of
//! selectors; a parameter is kept when any selector matches its checkpoint name:
//!
//! - `all`: every parameter (the default);
//! - `head`: the classification head (every parameter outside the embeddings and the encoder
//!   layers, e.g. BERT's pooler and `classifier`, XLM-R's `classifier.dense`/`out_proj`);
//! - `last:K`: the last `K` encoder layers (`…encoder.layer.{L-K..L}.…`) plus the head;
//! - `embeddings`: the embedding tables and their LayerNorm;
//! - anything else is a pattern on Hugging Face parameter names, matched against the start of
//!   the name, with `*` standing for any run of characters: `bert.encoder.layer.1.`,
//!   `*.attention.self.*`, `classifier.out_proj.weight`.
//!
//! A spec that keeps no parameter of the model is refused with the names it could have matched.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// One comma-separated item of a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Selector {
    All,
    Head,
    Last(usize),
    Embeddings,
    Pattern(String),
}

/// A parsed `--layers` spec (module docs); its text is what manifests record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    text: String,
    selectors: Vec<Selector>,
}

impl Default for LayerSpec {
    fn default() -> Self {
        LayerSpec {
            text: "all".into(),
            selectors: vec![Selector::All],
        }
    }
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for LayerSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: String| Error::input(format!("--layers {text:?}: {why}"));
        let selectors = text
            .split(',')
            .map(str::trim)
            .map(|item| match item {
                "" => Err(bad("an empty item".into())),
                "all" => Ok(Selector::All),
                "head" => Ok(Selector::Head),
                "embeddings" => Ok(Selector::Embeddings),
                _ => match item.strip_prefix("last:") {
                    Some(k) => match k.parse::<usize>() {
                        Ok(k) if k > 0 => Ok(Selector::Last(k)),
                        _ => Err(bad(format!(
                            "{item:?}: last:K needs a number of layers K ≥ 1"
                        ))),
                    },
                    None => Ok(Selector::Pattern(item.to_string())),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerSpec {
            text: text.to_string(),
            selectors,
        })
    }
}

/// The encoder layer a parameter belongs to (`…encoder.layer.{l}.…`), if any.
fn encoder_layer(name: &str) -> Option<usize> {
    let (_, rest) = name.split_once("encoder.layer.")?;
    rest.split('.').next()?.parse().ok()
}

fn is_embedding(name: &str) -> bool {
    name.contains("embeddings.")
}

/// Whether `pattern` (with `*` for any run of characters) matches the start of `name`.
fn matches_prefix(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    for piece in pieces {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

impl LayerSpec {
    /// Whether the spec keeps every parameter, whatever the model.
    pub fn is_all(&self) -> bool {
        self.selectors.contains(&Selector::All)
    }

    /// Which of `names` (a model's parameters) the spec keeps, in order; an error when it keeps
    /// none, or asks for more encoder layers than the model has.
    pub fn select(&self, names: &[&str]) -> Result<Vec<bool>> {
        let layers = names.iter().filter_map(|n| encoder_layer(n)).max();
        let num_layers = layers.map_or(0, |l| l + 1);
        for s in &self.selectors {
            if let Selector::Last(k) = *s {
                if k > num_layers {
                    return Err(Error::input(format!(
                        "--layers {}: last:{k}, but the model has {num_layers} encoder layers",
                        self.text
                    )));
                }
            }
        }
        let keep = |name: &str| {
            let layer = encoder_layer(name);
            let head = layer.is_none() && !is_embedding(name);
            self.selectors.iter().any(|s| match s {
                Selector::All => true,
                Selector::Head => head,
                Selector::Last(k) => head || layer.is_some_and(|l| l + k >= num_layers),
                Selector::Embeddings => is_embedding(name),
                Selector::Pattern(p) => matches_prefix(p, name),
            })
        };
        let kept: Vec<bool> = names.iter().map(|n| keep(n)).collect();
        if !kept.contains(&true) {
            let shown: Vec<&str> = names.iter().take(6).copied().collect();
            return Err(Error::input(format!(
                "--layers {}: matches none of the model's {} parameters (e.g. {}, …); use all, \
                 head, last:K, embeddings or a parameter-name prefix (`*` for any characters)",
                self.text,
                names.len(),
                shown.join(", ")
            )));
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 6] = [
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.1.output.dense.weight",
        "bert.encoder.layer.10.output.dense.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
    ];

    fn kept(spec: &str) -> Vec<bool> {
        spec.parse::<LayerSpec>().unwrap().select(&NAMES).unwrap()
    }

    #[test]
    fn selectors_keep_what_the_docs_say() {
        let (t, f) = (true, false);
        assert_eq!(kept("all"), [t; 6]);
        assert_eq!(kept("head"), [f, f, f, f, t, t]);
        // 11 layers: last:2 is layers 9 and 10.
        assert_eq!(kept("last:2"), [f, f, f, t, t, t]);
        assert_eq!(kept("embeddings, classifier"), [t, f, f, f, f, t]);
        assert_eq!(kept("bert.encoder.layer.1."), [f, f, t, f, f, f]);
        assert_eq!(kept("*.output.*"), [f, f, t, t, f, f]);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!("last:0".parse::<LayerSpec>().is_err());
        assert!("head,,".parse::<LayerSpec>().is_err());
        let none = "roberta.".parse::<LayerSpec>().unwrap().select(&NAMES);
        assert!(none.unwrap_err().to_string().contains("matches none"));
        let deep = "last:12".parse::<LayerSpec>().unwrap().select(&NAMES);
        assert!(deep.unwrap_err().to_string().contains("11 encoder layers"));
    }
}
