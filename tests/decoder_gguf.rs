//! The real SmolLM2-135M-Instruct Q4_1 GGUF (tools/fetch-smollm2.sh) as a decoder embedder,
//! against transformers loading the same file (tools/make_smollm2_fixtures.py wrote the
//! references): token ids from the GGUF tokenizer, every hidden state of a short text, mean- and
//! last-token-pooled embeddings of texts in several scripts up to 1 250 tokens, `mscope embed`
//! end to end, and clear errors for files it cannot run.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{
    assert_row_cosines, backend_tests, reference_tensor, rel_error, repo_path, run_mscope_ok,
};
use mscope::backend::{self, Backend, BackendKind, OpFamily, Pooling, SeqLayout};
use mscope::instruments::embed::{EncoderOptions, SentenceEncoder};
use mscope::models::{self, TokenBatch};
use mscope::weights::WeightsDtype;

backend_tests! {
    smollm2_hidden_states_match_transformers,
    smollm2_pooled_embeddings_match_transformers,
}

const SMOLLM2: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const REFERENCE: &str = "tests/fixtures/smollm2/reference.safetensors";
/// Both sides dequantise the same Q4_1 blocks to f32 and run in f32, so only accumulation order
/// differs over 30 layers (seen: 2.5e-6 on the CPU, 3.6e-6 on wgpu).
const F32_TOL: f64 = 2e-5;
/// `--weights-dtype f16`: the dequantised weights rounded to f16, half precision's tolerance.
const HALF_TOL: f64 = 1e-2;
/// Pooled rows (the 1 250-token text included) agree to this cosine.
const MIN_COSINE: f64 = 0.9999;
fn smollm2() -> PathBuf {
    let path = repo_path(SMOLLM2);
    assert!(
        path.is_file(),
        "{} is missing: run tools/fetch-smollm2.sh (tools/test.sh does)",
        path.display()
    );
    path
}

/// The texts the references were computed on, from the reference file's metadata.
fn reference_texts() -> Vec<String> {
    let bytes = std::fs::read(repo_path(REFERENCE)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let texts = &meta.metadata().as_ref().expect("reference metadata")["texts"];
    serde_json::from_str(texts).unwrap()
}

fn encoder(be: &Arc<dyn Backend>, pooling: Option<Pooling>) -> SentenceEncoder {
    let options = EncoderOptions {
        pooling,
        ..EncoderOptions::default()
    };
    SentenceEncoder::load(&smollm2(), be.clone(), &options).unwrap()
}

/// Token ids equal transformers' for every text; every hidden state of the short text 0 within
/// the f32 tolerance.
fn smollm2_hidden_states_match_transformers(be: &Arc<dyn Backend>) {
    let texts = reference_texts();
    let tokenized = encoder(be, None).tokenize(&texts).unwrap();
    for (i, t) in tokenized.iter().enumerate() {
        let (_, want) = reference_tensor(REFERENCE, &format!("ids/{i}"));
        let got: Vec<f64> = t.ids.iter().map(|&id| f64::from(id)).collect();
        assert_eq!(got, want, "token ids of text {i} differ from transformers'");
    }

    let ids = tokenized[0].ids.clone();
    let batch = TokenBatch {
        type_ids: vec![0; ids.len()],
        layout: SeqLayout::from_lengths([ids.len()]),
        ids,
    };
    let (shape, want) = reference_tensor(REFERENCE, "hidden/0");
    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    for (dtype, tol) in [(WeightsDtype::Auto, F32_TOL), (WeightsDtype::F16, HALF_TOL)] {
        let net = models::load(&smollm2(), be.clone(), dtype).unwrap();
        let got = be.download(&net.forward(&batch).unwrap()).unwrap();
        assert_eq!(shape, [batch.ids.len(), net.hidden_size()]);
        let err = rel_error(&got, &want);
        eprintln!(
            "{} {dtype:?}: hidden states relative error {err:e}",
            be.name()
        );
        assert!(err < tol, "{} {dtype:?}: relative error {err:e}", be.name());
    }
}

/// Mean- and last-token pooling of every text against transformers' pooled
/// `last_hidden_state`: one forward per text (the 1 250-token one included) pooled both ways by
/// the backend, then the encoder — `last` by default, not normalised — embedding the short texts
/// in batches of mixed lengths with `mean` asked for. One forward of the long text serves both
/// modes: lavapipe runs the 135M model at a few tokens a second.
fn smollm2_pooled_embeddings_match_transformers(be: &Arc<dyn Backend>) {
    let texts = reference_texts();
    let net = models::load(&smollm2(), be.clone(), WeightsDtype::Auto).unwrap();
    let dim = net.hidden_size();
    let default = encoder(be, None);
    let tokenized = default.tokenize(&texts).unwrap();
    let modes = [(Pooling::Last, "last"), (Pooling::Mean, "mean")];
    let mut pooled = vec![Vec::new(), Vec::new()];
    for t in &tokenized {
        let layout = SeqLayout::from_lengths([t.ids.len()]);
        let batch = TokenBatch {
            type_ids: vec![0; t.ids.len()],
            layout: layout.clone(),
            ids: t.ids.clone(),
        };
        let hidden = net.forward(&batch).unwrap();
        for ((mode, _), rows) in modes.iter().zip(&mut pooled) {
            let mut out = be.zeros(&[1, dim]).unwrap();
            be.pool(&hidden, &layout, *mode, &mut out).unwrap();
            rows.extend(be.download(&out).unwrap());
        }
    }
    for ((_, name), got) in modes.iter().zip(&pooled) {
        let (_, want) = reference_tensor(REFERENCE, name);
        let what = format!("{} {name}", be.name());
        let worst = assert_row_cosines(&what, got, &want, dim, MIN_COSINE);
        eprintln!("{what}: lowest cosine {worst}");
    }

    assert_eq!(
        default.pooling().name(),
        "last",
        "a decoder pools its last token"
    );
    assert!(
        !default.normalize(),
        "a GGUF model is not normalised unless asked"
    );
    let short = &texts[..7];
    let got = encoder(be, Some(Pooling::Mean))
        .embed(short, 3, &mut |_, _| {})
        .unwrap();
    let (_, want) = reference_tensor(REFERENCE, "mean");
    let what = format!("{} encoder mean", be.name());
    let worst = assert_row_cosines(
        &what,
        &got.embeddings,
        &want[..short.len() * dim],
        dim,
        MIN_COSINE,
    );
    eprintln!("{what}: lowest cosine {worst}");
}

/// `mscope embed --model FILE.gguf`: the last token pooled, not normalised.
#[test]
fn embed_cli_runs_a_gguf_file() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("texts.jsonl");
    let texts = &reference_texts()[..7];
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = tmp.path().join("emb.safetensors");
    run_mscope_ok(&[
        "embed",
        "--model",
        smollm2().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let (shape, got) = reference_tensor(out.to_str().unwrap(), "embeddings");
    let (_, want) = reference_tensor(REFERENCE, "last");
    assert_eq!(shape, [texts.len(), 576]);
    let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
    // The reference holds every text; the run embedded the first ones.
    assert_row_cosines("mscope embed", &got, &want[..got.len()], 576, MIN_COSINE);
}

fn load_error(path: &Path) -> String {
    let cpu = backend::open(BackendKind::Cpu, OpFamily::Encoder).unwrap();
    match models::load(path, cpu, WeightsDtype::Auto) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The error loading `path` as a sentence encoder gives.
fn tokenizer_error(path: &Path) -> String {
    let cpu = backend::open(BackendKind::Cpu, OpFamily::Encoder).unwrap();
    match SentenceEncoder::load(path, cpu, &EncoderOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of SmolLM2 with the first occurrence of `from` replaced by `to` (same length).
fn patched(dir: &Path, from: &[u8], to: &[u8]) -> PathBuf {
    let mut bytes = std::fs::read(smollm2()).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the pattern is in the file");
    bytes[at..at + to.len()].copy_from_slice(to);
    let path = dir.join("patched.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A string value edited in place: its key, the value in the file and the one written instead
/// (the same length), how the copy is loaded, and what the error must name.
type BadString = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Path) -> String,
    &'static [&'static str],
);

#[test]
fn files_it_cannot_run_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [BadString; 3] = [
        (
            "general.architecture",
            "llama",
            "bloom",
            load_error,
            &["general.architecture \"bloom\"", "llama", "qwen2"],
        ),
        // A tokenizer other than byte-level BPE.
        (
            "tokenizer.ggml.model",
            "gpt2",
            "bert",
            tokenizer_error,
            &["tokenizer.ggml.model \"bert\"", "gpt2"],
        ),
        // A pre-tokenizer with a split of its own.
        (
            "tokenizer.ggml.pre",
            "smollm",
            "qwen2x",
            tokenizer_error,
            &["tokenizer.ggml.pre \"qwen2x\"", "smollm"],
        ),
    ];
    for (key, from, to, load, needles) in cases {
        // A string pair: key, value type 8, u64 length, bytes.
        let pair = |value: &str| {
            [
                &(key.len() as u64).to_le_bytes()[..],
                key.as_bytes(),
                &8u32.to_le_bytes(),
                &(value.len() as u64).to_le_bytes(),
                value.as_bytes(),
            ]
            .concat()
        };
        let err = load(&patched(tmp.path(), &pair(from), &pair(to)));
        for needle in needles {
            assert!(err.contains(needle), "{key}: {err:?} lacks {needle:?}");
        }
    }

    // llama.cpp's llama3 RoPE factors, which transformers' GGUF loader ignores: a tensor renamed
    // to theirs (same length, in the tensor infos, after its u64 name length).
    let named = |name: &str| [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let rope_freqs = patched(
        tmp.path(),
        &named("token_embd.weight"),
        &named("rope_freqs.weight"),
    );
    let err = load_error(&rope_freqs);
    for needle in ["rope_freqs.weight", "llama3", "not supported"] {
        assert!(err.contains(needle), "rope_freqs: {err:?} lacks {needle:?}");
    }

    // The key renamed, so the file lacks it.
    let missing = patched(tmp.path(), b"llama.block_count", b"llama.block_kount");
    let err = load_error(&missing);
    assert!(err.contains("llama.block_count"), "{err}");

    // A directory named like a GGUF file, and a path that does not exist.
    let dir = tmp.path().join("model.gguf");
    std::fs::create_dir(&dir).unwrap();
    for path in [dir, tmp.path().join("absent.gguf")] {
        let err = load_error(&path);
        assert!(err.contains("not a file"), "{err}");
    }
}
