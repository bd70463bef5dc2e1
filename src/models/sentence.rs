//! What a sentence-transformers model directory adds to the bare network: the sequence length
//! (`sentence_bert_config.json`), the pooling (`1_Pooling/config.json`) and whether embeddings
//! are L2-normalised (a `Normalize` entry in `modules.json`). A plain Hugging Face directory gets
//! the architecture's default pooling (sentence-transformers': mean) and no normalisation.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::backend::Pooling;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SentenceConfig {
    pub max_seq_length: Option<usize>,
    pub pooling: Pooling,
    pub normalize: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::input(format!("{}: invalid JSON: {e}", path.display())))
}

/// The single pooling mode a `1_Pooling/config.json` switches on.
fn pooling_mode(path: &Path, config: &Value) -> Result<Pooling> {
    const MODES: [(&str, Pooling); 5] = [
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_lasttoken", Pooling::Last),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
    ];
    let on: Vec<Pooling> = MODES
        .iter()
        .filter(|(key, _)| config.get(key).and_then(Value::as_bool) == Some(true))
        .map(|&(_, m)| m)
        .collect();
    match on[..] {
        [mode] => Ok(mode),
        [] => Err(Error::input(format!(
            "{}: no pooling mode is switched on",
            path.display()
        ))),
        _ => Err(Error::input(format!(
            "{}: concatenated pooling modes ({}) are not supported; pass --pooling",
            path.display(),
            on.iter().map(|m| m.name()).collect::<Vec<_>>().join(" + ")
        ))),
    }
}

impl SentenceConfig {
    /// The directory's settings; `default_pooling` where it has no pooling module.
    pub fn read(dir: &Path, default_pooling: Pooling) -> Result<Self> {
        let max_seq_length = read_json(&dir.join("sentence_bert_config.json"))?
            .and_then(|c| c.get("max_seq_length").and_then(Value::as_u64))
            .map(|n| n as usize);

        let modules_path = dir.join("modules.json");
        let modules: Vec<Module> = match read_json(&modules_path)? {
            Some(v) => serde_json::from_value(v).map_err(|e| {
                Error::input(format!(
                    "{}: not a module list: {e}",
                    modules_path.display()
                ))
            })?,
            None => Vec::new(),
        };
        let is = |m: &Module, name: &str| m.kind.rsplit('.').next() == Some(name);
        let normalize = modules.iter().any(|m| is(m, "Normalize"));
        let pooling_dir = modules
            .iter()
            .find(|m| is(m, "Pooling"))
            .map_or("1_Pooling", |m| m.path.as_str());
        let pooling_path = dir.join(pooling_dir).join("config.json");
        let pooling = match read_json(&pooling_path)? {
            Some(config) => pooling_mode(&pooling_path, &config)?,
            None => default_pooling,
        };
        Ok(SentenceConfig {
            max_seq_length,
            pooling,
            normalize,
        })
    }
}
