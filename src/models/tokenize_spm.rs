//! The SentencePiece-style BPE of a GGUF file whose `tokenizer.ggml.model` is `llama` (Llama 1/2,
//! Mistral, …), built as transformers builds it from the same metadata.
//!
//! llama.cpp stores such a vocabulary as pieces with scores and token types, usually without
//! merges: `▁` stands for a space, `<0x00>`…`<0xFF>` are the byte-fallback tokens that spell a
//! character the vocabulary lacks. transformers turns it into a `tokenizers` BPE:
//! - merges: `tokenizer.ggml.merges` when the file has them, else every split of every piece into
//!   two pieces of the vocabulary, best piece score first ([`merges_from_scores`]);
//! - no normalizer; a Metaspace pre-tokenizer that writes spaces as `▁`, does not split on them,
//!   and prepends one `▁` to the text unless it starts with one (only before the first added
//!   token: `prepend_scheme` "first"). `tokenizer.ggml.add_space_prefix` is not consulted;
//! - byte fallback for characters outside the vocabulary, consecutive unknowns fused;
//! - specials and BOS / EOS as for every GGUF tokenizer (BOS by default).
//!
//! mscope never decodes ids back to text, so no decoder is set.

use std::collections::{HashMap, HashSet};

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::Tokenizer;

use super::tokenize::{add_gguf_specials, fail, gguf_error, stored_merges};
use crate::error::Result;
use crate::weights::Gguf;

/// SentencePiece's stand-in for a space.
const SPACE: char = '▁';

/// `general.architecture` values whose `llama` vocabulary transformers builds differently (Gemma
/// respells space runs and orders merges by position; Phi-3 prepends through a normalizer).
const OTHER_SENTENCEPIECE_BUILDS: [&str; 4] = ["gemma", "gemma2", "gemma3", "phi3"];

/// The tokenizer of a `llama`-model GGUF vocabulary (see the module docs).
pub(super) fn sentencepiece_bpe(gguf: &Gguf) -> Result<Tokenizer> {
    let path = gguf.path().to_path_buf();
    let arch = gguf.get_str("general.architecture")?;
    if OTHER_SENTENCEPIECE_BUILDS.contains(&arch) {
        return Err(gguf_error(
            gguf,
            format!(
                "tokenizer.ggml.model \"llama\" with general.architecture {arch:?} is not \
                 supported (transformers builds that vocabulary its own way; supported: other \
                 architectures, e.g. llama)"
            ),
        ));
    }
    // transformers swaps in a byte-level split for `pre` values it knows; a SentencePiece
    // vocabulary has none (or "default").
    if gguf.get("tokenizer.ggml.pre").is_some() {
        let pre = gguf.get_str("tokenizer.ggml.pre")?;
        if pre != "default" {
            return Err(gguf_error(
                gguf,
                format!(
                    "tokenizer.ggml.pre {pre:?} is not supported with tokenizer.ggml.model \
                     \"llama\" (supported: default, or no key)"
                ),
            ));
        }
    }
    let tokens: Vec<String> = gguf
        .get_str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let merges = if gguf.get("tokenizer.ggml.merges").is_some() {
        stored_merges(gguf)?
    } else {
        let scores = gguf.get_f32_array("tokenizer.ggml.scores")?;
        if scores.len() != tokens.len() {
            return Err(gguf_error(
                gguf,
                format!(
                    "tokenizer.ggml.scores has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                ),
            ));
        }
        merges_from_scores(&tokens, &scores)
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(|e| fail(&path, e))?;
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(Metaspace::new(SPACE, PrependScheme::First, false)));
    add_gguf_specials(gguf, &mut inner, &tokens, &|_| true, true)?;
    Ok(inner)
}

/// The merges a vocabulary with scores implies, in transformers' order: for each distinct token
/// (in first-appearance order, with its last score), every split into a left and right part that
/// are both tokens, the splits of one token ordered by (left id, right id); then all of them
/// sorted, stably, by (score, left length, right length) descending, lengths in characters. A
/// token appearing twice has the id of its last appearance.
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let last_score: HashMap<&str, f32> = tokens
        .iter()
        .zip(scores)
        .map(|(t, &s)| (t.as_str(), s))
        .collect();
    let mut seen = HashSet::new();
    // (left, right, score, left chars, right chars)
    let mut candidates: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for token in tokens.iter().map(String::as_str) {
        if !seen.insert(token) {
            continue;
        }
        let score = last_score[token];
        let start = candidates.len();
        let length = token.chars().count();
        for (chars, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                candidates.push((left, right, score, chars, length - chars));
            }
        }
        candidates[start..].sort_by_key(|&(l, r, ..)| (ids[l], ids[r]));
    }
    // `sort_by` is stable, and comparing b with a sorts descending while keeping equal keys in
    // their order, as Python's `sorted(..., reverse=True)` does.
    candidates.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    candidates
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}
