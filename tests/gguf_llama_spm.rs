//! GGUF files with a SentencePiece-style (`tokenizer.ggml.model` llama) vocabulary, written by
//! tools/make_gguf_fixtures.py with a small BPE vocabulary (scores, byte-fallback tokens, a
//! user-defined token) and a tiny random-init llama model: token ids identical to the tokenizer
//! transformers builds from the same files, on texts in several scripts, emoji spelled by byte
//! fallback, whitespace runs, leading and trailing spaces, literal special tokens, the empty text
//! and a text of 1 400 tokens; pooled embeddings of the model against transformers'; clear errors
//! for vocabularies transformers builds otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{assert_row_cosines, backend_tests, reference_tensor, repo_path};
use mscope::backend::{Backend, Pooling};
use mscope::instruments::embed::{EncoderOptions, SentenceEncoder};
use mscope::models::tokenize::TextTokenizer;
use mscope::weights::Gguf;

backend_tests! {
    spm_model_pooled_embeddings_match_transformers,
}

const MODEL: &str = "tests/fixtures/gguf/tiny-llama-spm.gguf";
/// The same vocabulary with add_bos_token false, add_eos_token true, add_space_prefix false.
const EOS_VOCAB: &str = "tests/fixtures/gguf/tiny-llama-spm-eos.gguf";
const REFERENCE: &str = "tests/fixtures/gguf/tiny_llama_spm_reference.safetensors";
/// Both sides dequantise the same F16 / Q8_0 blocks to f32 and run in f32.
const MIN_COSINE: f64 = 0.9999;

/// The texts the references were computed on, from the reference file's metadata.
fn reference_texts() -> Vec<String> {
    let bytes = std::fs::read(repo_path(REFERENCE)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let texts = &meta.metadata().as_ref().expect("reference metadata")["texts"];
    serde_json::from_str(texts).unwrap()
}

fn tokenizer(path: &str) -> TextTokenizer {
    let gguf = Gguf::open(&repo_path(path)).unwrap();
    TextTokenizer::from_gguf(&gguf, 4096).unwrap()
}

#[test]
fn spm_token_ids_match_transformers() {
    let texts = reference_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (file, prefix) in [(MODEL, "ids"), (EOS_VOCAB, "eos_ids")] {
        let tokenized = tokenizer(file).encode(&refs).unwrap();
        for (i, t) in tokenized.iter().enumerate() {
            let (_, want) = reference_tensor(REFERENCE, &format!("{prefix}/{i}"));
            let got: Vec<f64> = t.ids.iter().map(|&id| f64::from(id)).collect();
            assert_eq!(
                got, want,
                "{file}: token ids of text {i} {:?} differ from transformers'",
                texts[i]
            );
        }
    }
    let longest = reference_tensor(REFERENCE, &format!("ids/{}", texts.len() - 1)).1;
    assert!(longest.len() > 1000, "the long text has {}", longest.len());
}

/// Truncation keeps the BOS the file asks for and cuts the text.
#[test]
fn spm_truncation_keeps_bos() {
    let gguf = Gguf::open(&repo_path(MODEL)).unwrap();
    let texts = reference_texts();
    let long = texts.last().unwrap().as_str();
    let got = &TextTokenizer::from_gguf(&gguf, 16)
        .unwrap()
        .encode(&[long])
        .unwrap()[0];
    let (_, want) = reference_tensor(REFERENCE, &format!("ids/{}", texts.len() - 1));
    let want: Vec<u32> = want[..16].iter().map(|&v| v as u32).collect();
    assert!(got.truncated);
    assert_eq!(got.ids, want);
}

/// Last-token (the GGUF default) and mean pooling of every non-empty text, in batches of mixed
/// lengths, against transformers' pooled `last_hidden_state`.
fn spm_model_pooled_embeddings_match_transformers(be: &Arc<dyn Backend>) {
    let texts: Vec<String> = reference_texts()
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect();
    for (pooling, name) in [(None, "last"), (Some(Pooling::Mean), "mean")] {
        let options = EncoderOptions {
            pooling,
            ..EncoderOptions::default()
        };
        let enc = SentenceEncoder::load(&repo_path(MODEL), be.clone(), &options).unwrap();
        assert_eq!(enc.pooling().name(), name);
        let got = enc.embed(&texts, 4, &mut |_, _| {}).unwrap();
        let (shape, want) = reference_tensor(REFERENCE, name);
        assert_eq!(shape, [texts.len(), got.dim]);
        let what = format!("{} {name}", be.name());
        let worst = assert_row_cosines(&what, &got.embeddings, &want, got.dim, MIN_COSINE);
        eprintln!("{} {name}: lowest cosine {worst}", be.name());
    }
}

/// A copy of the EOS vocabulary file with the first occurrence of `from` replaced by `to` (same
/// length).
fn patched(dir: &Path, from: &[u8], to: &[u8]) -> PathBuf {
    let mut bytes = std::fs::read(repo_path(EOS_VOCAB)).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the pattern is in the file");
    bytes[at..at + to.len()].copy_from_slice(to);
    let path = dir.join("patched.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn tokenizer_error(path: &Path) -> String {
    let gguf = Gguf::open(path).unwrap();
    match TextTokenizer::from_gguf(&gguf, 4096) {
        Ok(_) => panic!("{} built a tokenizer", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn spm_vocabularies_built_otherwise_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // A string value: u64 length, bytes.
    let string = |s: &str| [&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat();
    // Gemma's SentencePiece vocabulary (architecture renamed in place).
    let gemma = patched(tmp.path(), &string("llama"), &string("gemma"));
    let err = tokenizer_error(&gemma);
    for needle in ["general.architecture \"gemma\"", "not supported", "llama"] {
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    // Scores missing: the key renamed.
    let no_scores = patched(
        tmp.path(),
        b"tokenizer.ggml.scores",
        b"tokenizer.ggml.scorez",
    );
    let err = tokenizer_error(&no_scores);
    assert!(err.contains("tokenizer.ggml.scores"), "{err}");
    // EOS asked for without an EOS id.
    let no_eos = patched(
        tmp.path(),
        b"tokenizer.ggml.eos_token_id",
        b"tokenizer.ggml.eos_token_ix",
    );
    let err = tokenizer_error(&no_eos);
    for needle in ["add_eos_token", "tokenizer.ggml.eos_token_id"] {
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}
