//! Replays every committed fuzz corpus file and crash reproducer (`fuzz/corpus/TARGET/`,
//! `fuzz/artifacts/TARGET/`) through the fuzz targets' own functions, on the stable toolchain.
//!
//! This is not fuzzing: no input is mutated, so it finds nothing new. It keeps what the fuzzing
//! runs found fixed (each reproducer of a fixed crash must now end in an error or a result, not a
//! panic) and the corpora loadable by the current readers. Fuzzing itself is `cargo fuzz run`
//! on nightly; see fuzz/README.md.

// `let_tokenizers_panics_unwind` is for libFuzzer's abort-on-panic hook only: unused here.
#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz_targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/KIND/TARGET/`, sorted; none when the folder is absent.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable fuzz folder").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every corpus file and reproducer of `name`; fails naming each input that
/// panicked.
fn replay(name: &str, target: fn(&[u8])) {
    let corpus = inputs("corpus", name);
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name} is empty: the target has no seeds"
    );
    let mut panicked = Vec::new();
    for path in corpus.iter().chain(&inputs("artifacts", name)) {
        let bytes = std::fs::read(path).expect("a readable fuzz input");
        if catch_unwind(AssertUnwindSafe(|| target(&bytes))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(
        panicked.is_empty(),
        "{name}: these inputs panicked:\n{}",
        panicked.join("\n")
    );
}

/// One test a target, so that they replay in parallel and a failure names its reader.
macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), fuzz_targets::$target);
            }
        )*

        #[test]
        fn every_fuzz_target_is_replayed() {
            let replayed = [$(stringify!($target)),*];
            for (name, _) in fuzz_targets::TARGETS {
                assert!(replayed.contains(name), "fuzz target {name} is not replayed here");
                let binary = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
                assert!(binary.is_file(), "{} is missing", binary.display());
            }
        }
    };
}

replay_tests!(
    safetensors,
    safetensors_index,
    gguf,
    model_config,
    tokenizer,
    texts,
    npy,
    npz,
    image,
    torch_pickle,
    shards,
);

// What each fixed crash now gives: an error that names the problem.

fn artifact(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("artifacts").join(target).join(name)).expect("a reproducer")
}

#[test]
fn an_npy_dtype_starting_with_a_multibyte_character_is_refused() {
    let bytes = artifact("npy", "descr-multibyte-first-char.npy");
    let error = mscope::io::npy::NpyArray::parse(bytes, "x.npy").unwrap_err();
    assert!(error.to_string().contains("is not supported"), "{error}");
}

#[test]
fn a_tokenizer_json_syntax_error_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = artifact("tokenizer", "decoder-json-syntax-error.json");
    std::fs::write(dir.path().join("tokenizer.json"), bytes).unwrap();
    let error = mscope::models::tokenize::TextTokenizer::load(dir.path(), 16)
        .err()
        .expect("a malformed tokenizer.json is refused");
    let message = error.to_string();
    assert!(
        message.contains("tokenizer.json")
            && message.contains("invalid JSON")
            && message.contains("line"),
        "{message}"
    );
}

#[test]
fn a_template_naming_an_undefined_special_token_fails_to_encode_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = artifact("tokenizer", "template-undefined-special-token.json");
    std::fs::write(dir.path().join("tokenizer.json"), bytes).unwrap();
    let tokenizer = mscope::models::tokenize::TextTokenizer::load(dir.path(), 16).unwrap();
    let error = tokenizer.encode(&["hello"]).unwrap_err().to_string();
    assert!(
        error.contains("tokenizer.json") && error.contains("special token"),
        "{error}"
    );
}
