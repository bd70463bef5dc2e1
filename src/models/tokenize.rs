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
pub const GGUF_TOKENIZER_MODELS: [&str; 2] = ["gpt2", "llama"];

/// `tokenizer.ggml.pre` values whose text split is GPT-2's own: transformers gives other
/// vocabularies (llama3, qwen2, …) a split regex of their own, not built here.
pub const GGUF_PRE_TOKENIZERS: [&str; 3] = ["default", "gpt2", "smollm"];

/// llama.cpp's `tokenizer.ggml.token_type` of a control token (`<|endoftext|>`, `<s>`, …).
const CONTROL: i32 = 3;
/// llama.cpp's `tokenizer.ggml.token_type` of a user-defined token (`<think>`, …): matched whole
/// in the text, but not special.
const USER_DEFINED: i32 = 4;

/// The metadata keys of the token ids transformers makes special tokens (BOS, EOS, unknown,
/// padding), whatever their token type.
const NAMED_SPECIALS: [&str; 4] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
];

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

/// A `tokenizer.json` parsed ([`TextTokenizer::parse`]) or a GGUF file's tokenizer built
/// ([`TextTokenizer::parse_gguf`]), before its truncation is set.
pub struct ParsedTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl ParsedTokenizer {
    /// The file's own truncation length, if it sets one (a fallback when the model directory
    /// gives no `max_seq_length`).
    pub fn stored_max_length(&self) -> Option<usize> {
        self.inner.get_truncation().map(|t| t.max_length)
    }

    /// The tokenizer truncating to `max_length` tokens ([`TextTokenizer::load`]).
    pub fn truncated(self, max_length: usize) -> Result<TextTokenizer> {
        TextTokenizer::new(self.inner, self.path, max_length)
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`, truncating to `max_length` tokens (special tokens included).
    pub fn load(dir: &Path, max_length: usize) -> Result<Self> {
        Self::parse(dir)?.truncated(max_length)
    }

    /// `dir/tokenizer.json` as a [`ParsedTokenizer`], its own settings untouched: the slow part
    /// of [`TextTokenizer::load`], which a caller can run while it loads the weights.
    pub fn parse(dir: &Path) -> Result<ParsedTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path,
                message: "file not found".into(),
            });
        }
        let inner = read_tokenizer_json(&path)?;
        Ok(ParsedTokenizer { inner, path })
    }

    /// The tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes, as transformers builds
    /// it: `gpt2` a byte-level BPE (`byte_level_bpe`), `llama` a SentencePiece-style BPE with
    /// byte fallback (`tokenize_spm::sentencepiece_bpe`). Both keep the file's control
    /// tokens, and its BOS / EOS / unknown / padding tokens, whole as special tokens and its
    /// user-defined tokens whole as plain ones, and add BOS / EOS as
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token` say (a llama vocabulary adds BOS when the
    /// file does not say).
    pub fn from_gguf(gguf: &Gguf, max_length: usize) -> Result<Self> {
        Self::parse_gguf(gguf)?.truncated(max_length)
    }

    /// The tokenizer of [`TextTokenizer::from_gguf`] before its truncation is set: the slow part,
    /// which a caller can run while it loads the weights.
    pub fn parse_gguf(gguf: &Gguf) -> Result<ParsedTokenizer> {
        let path = gguf.path().to_path_buf();
        let inner = match gguf.get_str("tokenizer.ggml.model")? {
            "gpt2" => byte_level_bpe(gguf)?,
            "llama" => super::tokenize_spm::sentencepiece_bpe(gguf)?,
            other => {
                return Err(gguf_error(
                    gguf,
                    format!(
                        "tokenizer.ggml.model {other:?} is not supported (supported: {})",
                        GGUF_TOKENIZER_MODELS.join(", ")
                    ),
                ))
            }
        };
        Ok(ParsedTokenizer { inner, path })
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

/// Parses a `tokenizer.json`: section by section where [`super::tokenize_json`] can (WordPiece
/// and BPE models), else with the `tokenizers` crate's own parser. That parser panics instead of
/// erring on some malformed files (a JSON syntax error inside `decoder`, a `Precompiled`
/// normaliser of the wrong shape; found by fuzzing), so the syntax is checked first, which gives
/// the line and column, and a panic that still escapes the crate is turned into an error naming
/// the file.
fn read_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if let Ok(Some(tokenizer)) = std::panic::catch_unwind(|| super::tokenize_json::parse(&text)) {
        return Ok(tokenizer);
    }
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

/// The byte-level BPE of a GGUF file whose `tokenizer.ggml.model` is `gpt2` (and whose
/// `tokenizer.ggml.pre`, if any, splits text as GPT-2 does), as transformers builds it: the
/// vocabulary and merges as stored (tokens spelled outside GPT-2's byte alphabet respelled into
/// it), the plain GPT-2 split and byte mapping, specials as [`TextTokenizer::from_gguf`] says.
fn byte_level_bpe(gguf: &Gguf) -> Result<Tokenizer> {
    let path = gguf.path().to_path_buf();
    if gguf.get("tokenizer.ggml.pre").is_some() {
        let pre = gguf.get_str("tokenizer.ggml.pre")?;
        if !GGUF_PRE_TOKENIZERS.contains(&pre) {
            return Err(gguf_error(
                gguf,
                format!(
                    "tokenizer.ggml.pre {pre:?} is not supported with tokenizer.ggml.model \
                     \"gpt2\" (supported: {})",
                    GGUF_PRE_TOKENIZERS.join(", ")
                ),
            ));
        }
    }
    let alphabet = byte_alphabet();
    // Membership by code point (the alphabet's characters all lie below U+0144), not by a
    // search of the 256 characters for every character of every token.
    let mut member = vec![false; alphabet.iter().map(|&c| c as usize + 1).max().unwrap_or(0)];
    for &c in &alphabet {
        member[c as usize] = true;
    }
    let in_alphabet = |t: &str| t.chars().all(|c| member.get(c as usize) == Some(&true));
    let tokens: Vec<String> = gguf
        .get_str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(|t| {
            if in_alphabet(t) {
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
    let merges = stored_merges(gguf)?;
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
    // A token marked special outside the byte alphabet is a llama.cpp mislabel transformers
    // skips: adding it would give it an id past the vocabulary.
    add_gguf_specials(gguf, &mut inner, &tokens, &in_alphabet, false)?;
    Ok(inner)
}

/// `tokenizer.ggml.merges` split into pairs.
pub(super) fn stored_merges(gguf: &Gguf) -> Result<Vec<(String, String)>> {
    gguf.get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    gguf_error(
                        gguf,
                        format!("tokenizer.ggml.merges entry {m:?} is not two tokens"),
                    )
                })
        })
        .collect()
}

/// Adds to `inner` (whose vocabulary is `tokens`, as spelled in it) the special and plain added
/// tokens transformers gives a GGUF tokenizer, and its BOS / EOS post-processor: control tokens
/// and the named BOS / EOS / unknown / padding tokens special, user-defined ones plain, each only
/// if `keep` accepts its spelling; BOS added under `tokenizer.ggml.add_bos_token` (its absence
/// read as `bos_by_default`), EOS under `add_eos_token`.
pub(super) fn add_gguf_specials(
    gguf: &Gguf,
    inner: &mut Tokenizer,
    tokens: &[String],
    keep: &dyn Fn(&str) -> bool,
    bos_by_default: bool,
) -> Result<()> {
    let token = |key: &str| named_token(gguf, tokens, key);
    let kinds = match gguf.get("tokenizer.ggml.token_type") {
        Some(_) => gguf.get_i32_array("tokenizer.ggml.token_type")?,
        None => Vec::new(),
    };
    let mut special: Vec<AddedToken> = kinds
        .iter()
        .zip(tokens)
        .filter(|&(&kind, t)| kind == CONTROL && keep(t))
        .map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    for key in NAMED_SPECIALS {
        if let Some((t, _)) = token(key)? {
            if keep(t) {
                special.push(AddedToken::from(t.clone(), true).normalized(false));
            }
        }
    }
    inner.add_special_tokens(&special);
    let plain: Vec<AddedToken> = kinds
        .iter()
        .zip(tokens)
        .filter(|&(&kind, t)| kind == USER_DEFINED && keep(t))
        .map(|(_, t)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    inner.add_tokens(&plain);

    let flag = |key: &str, default: bool| match gguf.get(key) {
        Some(_) => gguf.get_bool(key),
        None => Ok(default),
    };
    let mut ends = Vec::new();
    for (add, id_key, name) in [
        ("tokenizer.ggml.add_bos_token", NAMED_SPECIALS[0], "BOS"),
        ("tokenizer.ggml.add_eos_token", NAMED_SPECIALS[1], "EOS"),
    ] {
        let default = bos_by_default && name == "BOS";
        if !flag(add, default)? {
            ends.push(None);
            continue;
        }
        let found = token(id_key)?.ok_or_else(|| {
            gguf_error(
                gguf,
                format!("{add} is true but the file has no {id_key} ({name} token)"),
            )
        })?;
        ends.push(Some(found));
    }
    if ends.iter().all(Option::is_none) {
        return Ok(());
    }
    let template: Vec<String> = [
        ends[0].map(|(t, _)| t.clone()),
        Some("$A".into()),
        ends[1].map(|(t, _)| t.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let specials: Vec<(String, u32)> = ends
        .iter()
        .flatten()
        .map(|&(t, id)| (t.clone(), id))
        .collect();
    let processor = TemplateProcessing::builder()
        .try_single(template.join(" "))
        .and_then(|b| {
            b.special_tokens(specials)
                .build()
                .map_err(|e| e.to_string())
        })
        .map_err(|e| gguf_error(gguf, format!("BOS/EOS template: {e}")))?;
    inner.with_post_processor(Some(processor));
    Ok(())
}

/// The token (and its id) metadata `key` names, if the file has the key.
fn named_token<'t>(
    gguf: &Gguf,
    tokens: &'t [String],
    key: &str,
) -> Result<Option<(&'t String, u32)>> {
    if gguf.get(key).is_none() {
        return Ok(None);
    }
    let id = gguf.get_u32(key)?;
    match tokens.get(id as usize) {
        Some(t) => Ok(Some((t, id))),
        None => Err(gguf_error(
            gguf,
            format!(
                "{key} {id} is outside the vocabulary of {} tokens",
                tokens.len()
            ),
        )),
    }
}

/// A tokenizer error naming the GGUF file.
pub(super) fn gguf_error(gguf: &Gguf, message: String) -> Error {
    Error::Tokenizer {
        path: gguf.path().to_path_buf(),
        message,
    }
}

pub(super) fn fail(path: &Path, e: tokenizers::Error) -> Error {
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
