//! Tokenisation with the `tokenizers` crate from a model's `tokenizer.json`, or built from a GGUF
//! file's `tokenizer.ggml.*` metadata as transformers builds it.
//!
//! The file's own truncation and padding settings are replaced: sequences are truncated to the
//! model's `max_seq_length` (as sentence-transformers does) and never padded, because the
//! backends run packed variable-length batches.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessor, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::weights::Gguf;

/// `tokenizer.ggml.model` values [`TextTokenizer::from_gguf`] builds.
pub const GGUF_TOKENIZER_MODELS: [&str; 1] = ["gpt2"];

/// `tokenizer.ggml.pre` values whose text split is GPT-2's own: transformers gives other
/// vocabularies (llama3, qwen2, …) a split regex of their own, not built here.
pub const GGUF_PRE_TOKENIZERS: [&str; 3] = ["default", "gpt2", "smollm"];

/// llama.cpp's `tokenizer.ggml.token_type` of a control token (`<|endoftext|>`, …).
const CONTROL: i32 = 3;

/// Token ids of one text, special tokens included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Whether the text was cut at the tokenizer's maximum length.
    pub truncated: bool,
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
        let inner = read_tokenizer_json(&path)?;
        Self::new(inner, path, max_length)
    }

    /// The byte-level BPE of a GGUF file whose `tokenizer.ggml.model` is `gpt2` (and whose
    /// `tokenizer.ggml.pre`, if any, splits text as GPT-2 does), as transformers builds it: the
    /// vocabulary and merges as stored (tokens spelled outside GPT-2's byte alphabet respelled
    /// into it), the plain GPT-2 split and byte mapping, control tokens kept whole, a BOS only
    /// under `tokenizer.ggml.add_bos_token`.
    pub fn from_gguf(gguf: &Gguf, max_length: usize) -> Result<Self> {
        let path = gguf.path().to_path_buf();
        // `tokenizer.ggml.pre` may be absent; the model may not.
        let checks = [
            ("tokenizer.ggml.model", &GGUF_TOKENIZER_MODELS[..], true),
            ("tokenizer.ggml.pre", &GGUF_PRE_TOKENIZERS[..], false),
        ];
        for (key, supported, required) in checks {
            if !required && gguf.get(key).is_none() {
                continue;
            }
            let value = gguf.get_str(key)?;
            if !supported.contains(&value) {
                return Err(Error::Tokenizer {
                    path,
                    message: format!(
                        "{key} {value:?} is not supported (supported: {})",
                        supported.join(", ")
                    ),
                });
            }
        }
        let alphabet = byte_alphabet();
        let tokens: Vec<String> = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(|t| {
                if t.chars().all(|c| alphabet.contains(&c)) {
                    t.to_string()
                } else {
                    t.bytes().map(|b| alphabet[b as usize]).collect()
                }
            })
            .collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = gguf
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer {
                        path: path.clone(),
                        message: format!("tokenizer.ggml.merges entry {m:?} is not two tokens"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| fail(&path, e))?;
        let mut inner = Tokenizer::new(bpe);
        let prefix_space = match gguf.get("tokenizer.ggml.add_space_prefix") {
            Some(_) => gguf.get_bool("tokenizer.ggml.add_space_prefix")?,
            None => false,
        };
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(prefix_space)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        if gguf.get("tokenizer.ggml.add_bos_token").is_some()
            && gguf.get_bool("tokenizer.ggml.add_bos_token")?
        {
            let id = gguf.get_u32("tokenizer.ggml.bos_token_id")?;
            let bos = tokens.get(id as usize).ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                message: format!("tokenizer.ggml.bos_token_id {id} is outside the vocabulary"),
            })?;
            let template = TemplateProcessing::builder()
                .try_single(format!("{bos} $A"))
                .and_then(|b| {
                    b.special_tokens(vec![(bos.clone(), id)])
                        .build()
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| Error::Tokenizer {
                    path: path.clone(),
                    message: format!("BOS template: {e}"),
                })?;
            inner.with_post_processor(Some(template));
        }
        if gguf.get("tokenizer.ggml.token_type").is_some() {
            let control: Vec<AddedToken> = gguf
                .get_i32_array("tokenizer.ggml.token_type")?
                .into_iter()
                .zip(&tokens)
                .filter(|&(kind, t)| kind == CONTROL && t.chars().all(|c| alphabet.contains(&c)))
                .map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false))
                .collect();
            inner.add_special_tokens(&control);
        }
        Self::new(inner, path, max_length)
    }

    /// `inner` truncating to `max_length` tokens, never padding. `max_length` must leave room
    /// for one token of text beside the special tokens the tokenizer adds: the tokenizers crate
    /// truncates to `max_length − specials` and, below that, wraps around to no truncation.
    fn new(mut inner: Tokenizer, path: PathBuf, max_length: usize) -> Result<Self> {
        let specials = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_length <= specials {
            return Err(Error::input(format!(
                "max length {max_length} leaves no room for text: {} adds {specials} special \
                 tokens, so the least is {}",
                path.display(),
                specials + 1
            )));
        }
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
        let tok = read_tokenizer_json(&dir.join("tokenizer.json")).ok()?;
        tok.get_truncation().map(|t| t.max_length)
    }

    pub fn encode(&self, texts: &[&str]) -> Result<Vec<TokenizedText>> {
        // A malformed tokenizer.json can also panic the crate while encoding (a template
        // post-processor naming a special token it does not define; found by fuzzing).
        let encode = AssertUnwindSafe(|| self.inner.encode_batch_fast(texts.to_vec(), true));
        let encodings = std::panic::catch_unwind(encode)
            .map_err(|_| {
                "the tokenizers library panicked while encoding: the tokenizer is malformed (e.g. \
                 its post-processor names a special token it does not define)"
                    .to_string()
            })
            .and_then(|encoded| encoded.map_err(|e| e.to_string()))
            .map_err(|message| Error::Tokenizer {
                path: self.path.clone(),
                message,
            })?;
        Ok(encodings
            .into_iter()
            .map(|e| TokenizedText {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                truncated: !e.get_overflowing().is_empty(),
            })
            .collect())
    }
}

/// Parses a `tokenizer.json`. The `tokenizers` crate panics instead of erring on some malformed
/// files (a JSON syntax error inside `decoder`, a `Precompiled` normaliser of the wrong shape;
/// found by fuzzing), so the syntax is checked first, which gives the line and column, and a
/// panic that still escapes the crate is turned into an error naming the file.
fn read_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let malformed = |message: String| Error::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| malformed(format!("invalid JSON: {e}")))?;
    std::panic::catch_unwind(|| text.parse::<Tokenizer>())
        .map_err(|_| {
            malformed("malformed tokenizer (the tokenizers library panicked on it)".into())
        })?
        .map_err(|e| fail(path, e))
}

fn fail(path: &Path, e: tokenizers::Error) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// GPT-2's byte alphabet: the character byte `b` is written as in a byte-level vocabulary
/// (printable Latin-1 as itself, every other byte shifted past 255 in order).
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                shifted += 1;
                char::from_u32(shifted - 1).expect("below the surrogates")
            }
        })
        .collect()
}
