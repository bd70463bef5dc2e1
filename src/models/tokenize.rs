//! Tokenisation with the `tokenizers` crate from a model's `tokenizer.json`.
//!
//! The file's own truncation and padding settings are replaced: sequences are truncated to the
//! model's `max_seq_length` (as sentence-transformers does) and never padded, because the
//! backends run packed variable-length batches.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// Token ids of one text, special tokens included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`, truncating to `max_length` tokens (special tokens included).
    pub fn load(dir: &Path, max_length: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path,
                message: "file not found".into(),
            });
        }
        let fail = |path: &Path, e: tokenizers::Error| Error::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut inner = Tokenizer::from_file(&path).map_err(|e| fail(&path, e))?;
        let truncation = TruncationParams {
            max_length,
            ..inner.get_truncation().cloned().unwrap_or_default()
        };
        inner
            .with_truncation(Some(truncation))
            .map_err(|e| fail(&path, e))?;
        inner.with_padding(None);
        Ok(TextTokenizer { inner, path })
    }

    /// The file's own truncation length, if it sets one (a fallback when the model directory
    /// gives no `max_seq_length`).
    pub fn stored_max_length(dir: &Path) -> Option<usize> {
        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).ok()?;
        tok.get_truncation().map(|t| t.max_length)
    }

    pub fn encode(&self, texts: &[&str]) -> Result<Vec<TokenizedText>> {
        let encodings = self
            .inner
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(encodings
            .into_iter()
            .map(|e| TokenizedText {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }
}
