//! Replays every committed fuzz corpus file and crash reproducer (`fuzz/corpus/TARGET/`,
//! `fuzz/artifacts/TARGET/`) through the fuzz targets' own functions, then runs a short smoke
//! fuzz of each target, on the stable toolchain.
//!
//! The replay keeps what the fuzzing runs found fixed (each reproducer of a fixed crash must now
//! end in an error or a result, not a panic) and the corpora loadable by the current readers.
//! The smoke fuzz ([`smoke`]) feeds each target a fixed number of seeded random mutations of its
//! corpus (bit flips, interesting bytes, inserted and deleted runs, truncations, splices with
//! another entry, digit runs for the sizes in text headers): deterministic, a few seconds in
//! all, and a panic names the target, the input and where it was saved. It finds only shallow
//! bugs; coverage-guided fuzzing is `cargo fuzz run` on nightly; see fuzz/README.md.

// `let_tokenizers_panics_unwind` is for libFuzzer's abort-on-panic hook only: unused here.
#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz_targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use mscope::random::SplitMix64;

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

/// Mutated inputs each target runs in the smoke fuzz: 22 000 in all take 1.5 s on one thread
/// in a release build (most mutations are refused early).
const SMOKE_EXECUTIONS: usize = 2000;

/// Runs `target` on [`SMOKE_EXECUTIONS`] mutations of the corpus of `name`, seeded by the name;
/// fails at the first panic, saving the input to `target/fuzz-smoke/NAME-EXECUTION` (to
/// reproduce, and to commit to `fuzz/artifacts/NAME/` once fixed).
fn smoke(name: &str, target: fn(&[u8])) {
    let corpus: Vec<Vec<u8>> = inputs("corpus", name)
        .iter()
        .chain(&inputs("artifacts", name))
        .map(|path| std::fs::read(path).expect("a readable fuzz input"))
        .collect();
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = SplitMix64::new(seed);
    for execution in 0..SMOKE_EXECUTIONS {
        let base = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base, &corpus);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let saved = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("fuzz-smoke")
                .join(format!("{name}-{execution}"));
            std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
            std::fs::write(&saved, &input).unwrap();
            panic!(
                "{name}: mutated input {execution} panicked; saved to {}",
                saved.display()
            );
        }
    }
}

/// Byte values that sit on the edges readers test: zero, signs, the ends of each width.
const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'-', b'9'];

/// One to four stacked random mutations of `base`; `corpus` supplies splices.
fn mutate(rng: &mut SplitMix64, base: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        // A position in `0..=len`: where an insertion or a cut may fall.
        let at = |rng: &mut SplitMix64, len: usize| rng.below(len + 1);
        match rng.below(8) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = at(rng, bytes.len());
                let run: Vec<u8> = (0..1 + rng.below(8))
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                bytes.splice(i..i, run);
            }
            3 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                let end = (i + 1 + rng.below(16)).min(bytes.len());
                bytes.drain(i..end);
            }
            4 => {
                let keep = at(rng, bytes.len());
                bytes.truncate(keep);
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let (cut, from) = (at(rng, bytes.len()), at(rng, other.len()));
                bytes.truncate(cut);
                bytes.extend_from_slice(&other[from..]);
            }
            6 if !bytes.is_empty() => {
                // A copied chunk elsewhere: repeated fields, doubled headers.
                let i = rng.below(bytes.len());
                let chunk = bytes[i..(i + 1 + rng.below(32)).min(bytes.len())].to_vec();
                let j = at(rng, bytes.len());
                bytes.splice(j..j, chunk);
            }
            _ => {
                // A run of digits over the bytes at a random place: huge or odd sizes in JSON and
                // in the text headers of .npy and the CSV readers.
                let i = at(rng, bytes.len());
                let digits: Vec<u8> = (0..1 + rng.below(20))
                    .map(|_| b'0' + rng.below(10) as u8)
                    .collect();
                let end = (i + digits.len()).min(bytes.len());
                bytes.splice(i..end, digits);
            }
        }
    }
    bytes
}

/// Two tests a target (the replay and the smoke fuzz), so that they run in parallel and a
/// failure names its reader.
macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            mod $target {
                #[test]
                fn replay() {
                    super::replay(stringify!($target), super::fuzz_targets::$target);
                }

                #[test]
                fn smoke() {
                    super::smoke(stringify!($target), super::fuzz_targets::$target);
                }
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
