//! Hostile but realistic input to the release binary: absurd arguments, crafted model files,
//! diverging runs. Each must end in a clear error (exit status 1, a message naming the problem,
//! never a panic) and leave no output file behind, or else give a correct result.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{minilm_dir, poke_tensor, repo_path, run_mscope, run_mscope_ok};
use mscope::data::Dataset;
use mscope::io::embeddings::EmbeddingsFile;
use mscope::io::kernel_file::KernelFile;
use mscope::io::tensor_file::{self, TensorOut};

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `args`, expecting exit status 1, every needle on stderr, no panic, and no file in `out_dir`.
fn refused(args: &[&str], needles: &[&str], out_dir: &Path) {
    let out = run_mscope(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr for {args:?} lacks {needle:?}: {err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(out_dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{args:?} left {left:?} behind");
}

/// Copies the fixture model directory `name` into `dir` and returns the copy.
fn copy_model(name: &str, dir: &Path) -> PathBuf {
    let from = repo_path(&format!("tests/fixtures/{name}"));
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    to
}

fn write_mlp(path: &Path, layers: &[(usize, usize, usize)], poison: bool) {
    let values: Vec<Vec<f32>> = layers
        .iter()
        .map(|&(_, d_out, d_in)| vec![0.1; d_out * d_in])
        .collect();
    let biases: Vec<Vec<f32>> = layers
        .iter()
        .map(|&(_, d_out, _)| vec![0.0; d_out])
        .collect();
    let mut values = values;
    if poison {
        values[0][1] = f32::NAN;
    }
    let mut tensors = Vec::new();
    for (((i, d_out, d_in), w), b) in layers.iter().zip(&values).zip(&biases) {
        tensors.push(TensorOut::f32(
            format!("fc{i}.weight"),
            vec![*d_out, *d_in],
            w,
        ));
        tensors.push(TensorOut::f32(format!("fc{i}.bias"), vec![*d_out], b));
    }
    let metadata = BTreeMap::from([("activation".to_string(), "relu".to_string())]);
    tensor_file::write(path, tensors, metadata).unwrap();
}

fn write_embeddings(path: &Path, rows: usize, dim: usize, value: impl Fn(usize, usize) -> f32) {
    let embeddings = (0..rows * dim).map(|i| value(i / dim, i % dim)).collect();
    EmbeddingsFile {
        embeddings,
        dim,
        labels: (0..rows as i64).map(|r| r % 2).collect(),
        label_names: vec!["a".into(), "b".into()],
        model: "test".into(),
        pooling: "mean".into(),
        normalized: false,
        max_length: 8,
    }
    .write(path)
    .unwrap();
}

/// Every subcommand on the bad-input classes: absurd sizes and thread counts, fractions and
/// tolerances out of range, label gaps, crafted models. Inputs live in `inputs/`, outputs are
/// asked for in `out/`, which must stay empty.
#[test]
fn bad_input_to_every_subcommand_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let at = |name: &str| inputs.join(name);
    let to = |name: &str| path_str(&out.join(name)).to_string();

    // Inputs: a two-class dataset, MLPs (good, with a layer gap, with a NaN weight), empty data,
    // embeddings (rank-deficient, too few rows), a sample, label files with a gap.
    let x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
    let y: Vec<i64> = (0..20).map(|i| i % 2).collect();
    Dataset::new(x, 2, y)
        .unwrap()
        .write(&at("data.st"))
        .unwrap();
    Dataset::new(Vec::new(), 2, Vec::new())
        .unwrap()
        .write(&at("empty.st"))
        .unwrap();
    write_mlp(&at("mlp.st"), &[(0, 4, 2), (1, 2, 4)], false);
    write_mlp(&at("gap.st"), &[(0, 4, 2), (2, 2, 4)], false);
    write_mlp(&at("nan.st"), &[(0, 4, 2), (1, 2, 4)], true);
    // 12 rows in 6 dimensions that span only 2 of them.
    write_embeddings(&at("flat.safetensors"), 12, 6, |r, c| match c {
        0 => r as f32,
        1 => ((r * 7) % 5) as f32,
        _ => 0.0,
    });
    write_embeddings(&at("same.safetensors"), 40, 3, |_, _| 1.5);
    write_embeddings(&at("emb.safetensors"), 40, 3, |r, c| {
        ((r * 3 + c) as f32 * 0.71).sin()
    });
    std::fs::write(at("sample.txt"), "0.1\n0.4\n0.3\n0.9\n").unwrap();
    let kernel =
        KernelFile::read(&repo_path("tests/fixtures/kglm/train_kernel.safetensors")).unwrap();
    let test_kernel =
        KernelFile::read(&repo_path("tests/fixtures/kglm/test_kernel.safetensors")).unwrap();
    let gap_labels: String = (0..kernel.rows)
        .map(|i| format!("{}\n", 5 * (i % 2)))
        .collect();
    std::fs::write(at("gap-labels.txt"), gap_labels).unwrap();
    let huge_label = format!("1000000000\n{}", "0\n".repeat(kernel.rows - 1));
    std::fs::write(at("huge-label.txt"), huge_label).unwrap();
    let labels: String = (0..kernel.rows).map(|i| format!("{}\n", i % 2)).collect();
    std::fs::write(at("labels.txt"), labels).unwrap();
    let test_labels: String = (0..test_kernel.rows)
        .map(|i| format!("{}\n", i % 2))
        .collect();
    std::fs::write(at("test-labels.txt"), test_labels).unwrap();
    let kglm_fixture =
        |name: &str| path_str(&repo_path(&format!("tests/fixtures/kglm/{name}"))).to_string();
    let (train_k, test_k) = (
        kglm_fixture("train_kernel.safetensors"),
        kglm_fixture("test_kernel.safetensors"),
    );
    let a = |name: &str| path_str(&at(name)).to_string();

    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![
                "compare",
                "--synthetic",
                "20x100",
                "--threads",
                "1000000000",
            ],
            vec!["--threads 1000000000", "per core"],
        ),
        (
            vec!["compare", "--synthetic", "1000000x1000000"],
            vec!["--synthetic 1000000x1000000", "memory"],
        ),
        (
            vec![
                "train",
                "--data",
                &a("data.st"),
                "--hidden",
                "1000000000,1000000000",
            ],
            vec!["--hidden", "memory"],
        ),
        (
            vec![
                "train",
                "--data",
                &a("data.st"),
                "--lr",
                "1e30",
                "--hidden",
                "8",
            ],
            vec!["diverged", "seed 0", "--lr"],
        ),
        (
            vec![
                "ntk",
                "--model",
                &a("mlp.st"),
                "--data",
                &a("data.st"),
                "--projection",
                "gaussian",
                "--projection-dim",
                "1000000000000",
            ],
            vec!["--projection-dim 1000000000000", "memory"],
        ),
        // A projection dimension without a projection is not silently ignored.
        (
            vec![
                "ntk",
                "--model",
                &a("mlp.st"),
                "--data",
                &a("data.st"),
                "--projection-dim",
                "8",
            ],
            vec![
                "--projection-dim 8",
                "without --projection the kernel is exact",
            ],
        ),
        (
            vec!["ntk", "--model", &a("gap.st"), "--data", &a("data.st")],
            vec!["gap.st", "fc2.weight", "without gaps"],
        ),
        (
            vec!["ntk", "--model", &a("nan.st"), "--data", &a("data.st")],
            vec!["nan.st", "`fc0.weight` entry 1 is NaN"],
        ),
        (
            vec!["ntk", "--model", &a("mlp.st"), "--data", &a("empty.st")],
            vec!["data", "not rows"],
        ),
        (
            vec![
                "alpha",
                "--candidate",
                &a("sample.txt"),
                "--reference",
                &a("sample.txt"),
                "--curve",
                "18446744073709551615",
            ],
            vec!["--curve 18446744073709551615", "at most"],
        ),
        (
            vec![
                "lda",
                "--input",
                &a("emb.safetensors"),
                "--test-fraction",
                "0.999",
            ],
            vec![
                "--test-fraction",
                "fraction 0.999",
                "20 test and 0 training rows",
                "at least 2",
            ],
        ),
        (
            vec!["lda", "--input", &a("same.safetensors")],
            vec!["same.safetensors", "no discriminant direction"],
        ),
        (
            vec!["pca", "--input", &a("same.safetensors")],
            vec!["same.safetensors", "rows are all equal"],
        ),
        (
            vec![
                "pca",
                "--input",
                &a("flat.safetensors"),
                "--components",
                "3",
            ],
            vec!["flat.safetensors", "span only 2 dimensions"],
        ),
        (
            vec![
                "pca",
                "--input",
                &a("emb.safetensors"),
                "--components",
                "3",
                "--threads",
                "100000",
            ],
            vec!["--threads 100000"],
        ),
        (
            vec![
                "kglm",
                "--train-kernel",
                &train_k,
                "--train-labels",
                &a("gap-labels.txt"),
                "--test-kernel",
                &test_k,
                "--test-labels",
                &a("test-labels.txt"),
            ],
            vec!["gap-labels.txt", "first: 1, 2, 3, 4", "0..K−1"],
        ),
        (
            vec![
                "kglm",
                "--train-kernel",
                &train_k,
                "--train-labels",
                &a("huge-label.txt"),
                "--test-kernel",
                &test_k,
                "--test-labels",
                &a("test-labels.txt"),
            ],
            vec!["huge-label.txt", "have no row"],
        ),
        (
            vec![
                "kglm",
                "--train-kernel",
                &train_k,
                "--train-labels",
                &a("labels.txt"),
                "--test-kernel",
                &test_k,
                "--test-labels",
                &a("test-labels.txt"),
                "--tol",
                "0",
            ],
            vec!["--tol", "positive"],
        ),
        (
            vec![
                "data",
                "blobs",
                "--n",
                "1000000000000",
                "--dim",
                "1000000",
                "--test-fraction",
                "0",
            ],
            vec!["--n 1000000000000 rows", "memory"],
        ),
    ]
    .into_iter()
    .map(|(args, needles)| (args.into_iter().map(String::from).collect(), needles))
    .collect();
    for (mut args, needles) in cases {
        // Every case asks for an output, so a failure that still writes one is caught.
        let output = match args[0].as_str() {
            "train" => vec!["--out".to_string(), to("train")],
            "ntk" => vec!["--out".to_string(), to("kernel.st")],
            "alpha" => vec!["--plot".to_string(), to("alpha.png")],
            _ => vec!["--out".to_string(), to("report.json")],
        };
        args.extend(output);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, &needles, &out);
        // `train` creates its output directory before the first epoch; it must stay empty.
        let _ = std::fs::remove_dir(out.join("train"));
    }
}

/// `--max-length N` truncates every text to N tokens, special tokens included, and refuses a
/// length that leaves no room for text (the tokenizers crate would wrap around to no truncation
/// at all).
#[test]
fn max_length_truncates_and_refuses_lengths_below_the_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = minilm_dir();
    // "hello" is one WordPiece token: at 3 tokens both texts are [CLS] hello [SEP].
    std::fs::write(
        dir.path().join("t.txt"),
        "hello\nhello world, and much more\n",
    )
    .unwrap();
    let input = dir.path().join("t.txt");
    let embed = |max_length: &str, out: &Path| {
        vec![
            "embed".to_string(),
            "--model".into(),
            path_str(&model).into(),
            "--input".into(),
            path_str(&input).into(),
            "--out".into(),
            path_str(out).into(),
            "--max-length".into(),
            max_length.into(),
            "--backend".into(),
            "cpu".into(),
        ]
    };
    let out = dir.path().join("e.st");
    let args = embed("3", &out);
    run_mscope_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let file = EmbeddingsFile::read(&out).unwrap();
    assert_eq!(file.max_length, 3);
    assert_eq!(
        file.row(0),
        file.row(1),
        "texts truncated to [CLS] hello [SEP]"
    );
    let full = dir.path().join("full.st");
    let args = embed("128", &full);
    run_mscope_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let file = EmbeddingsFile::read(&full).unwrap();
    assert_ne!(
        file.row(0),
        file.row(1),
        "without truncation the texts differ"
    );

    let empty = dir.path().join("out");
    std::fs::create_dir(&empty).unwrap();
    for short in ["1", "2"] {
        let args = embed(short, &empty.join("e.st"));
        refused(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[
                &format!("max length {short}"),
                "2 special tokens",
                "least is 3",
            ],
            &empty,
        );
    }
}

/// Crafted model directories: a negative norm epsilon, one NaN weight in an f32 encoder and in a
/// bf16 decoder (checked on the stored bits before upload). No embeddings are written.
#[test]
fn models_with_bad_epsilons_or_non_finite_weights_are_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(dir.path().join("t.txt"), "a text\nanother one\n").unwrap();
    let input = dir.path().join("t.txt");
    let out_file = out.join("e.st");
    let embed = |model: &Path, needles: &[&str]| {
        let args = [
            "embed",
            "--model",
            path_str(model),
            "--input",
            path_str(&input),
            "--out",
            path_str(&out_file),
            "--backend",
            "cpu",
        ];
        refused(&args, needles, &out);
    };

    let eps = copy_model("tiny-xlmr", &dir.path().join("eps"));
    let config = std::fs::read_to_string(eps.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["layer_norm_eps"] = serde_json::json!(-1.0);
    std::fs::write(eps.join("config.json"), config.to_string()).unwrap();
    embed(&eps, &["config.json", "layer_norm_eps -1", "positive"]);

    let nan = copy_model("tiny-xlmr", &dir.path().join("nan"));
    let name = "encoder.layer.0.attention.self.query.weight";
    poke_tensor(
        &nan.join("model.safetensors"),
        name,
        0,
        &f32::NAN.to_le_bytes(),
    );
    embed(&nan, &[name, "element 0 is not finite"]);

    let inf = copy_model("tiny-mistral-bf16", &dir.path().join("inf"));
    let name = "model.layers.0.self_attn.q_proj.weight";
    // bf16 +infinity: exponent all ones, mantissa zero.
    poke_tensor(
        &inf.join("model.safetensors"),
        name,
        0,
        &0x7F80u16.to_le_bytes(),
    );
    embed(&inf, &["layers.0.self_attn.q_proj.weight", "not finite"]);
}

/// Outputs go only to regular files (and `train`'s to a new directory): a device or FIFO named
/// as `--out` stays what it was, an existing directory is refused as `train --out`, an output
/// equal to an input (under another spelling) or to another output is refused before
/// any work, and a plot into a missing folder says so in words.
#[test]
fn outputs_are_regular_files_distinct_from_inputs_and_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let data = at("data.st");
    run_mscope_ok(&[
        "data",
        "moons",
        "--n",
        "40",
        "--test-fraction",
        "0",
        "--out",
        path_str(&data),
    ]);
    let before = std::fs::read(&data).unwrap();
    let fifo = at("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let out = at("out");
    std::fs::create_dir(&out).unwrap();
    let moons = |target: &str| -> Vec<String> {
        [
            "data",
            "moons",
            "--n",
            "40",
            "--test-fraction",
            "0",
            "--out",
            target,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (moons("/dev/null"), vec!["/dev/null", "not a regular file"]),
        (
            moons(path_str(&out)),
            vec!["not a regular file (a directory)"],
        ),
        (
            ["pca", "--input", path_str(&data), "--out"]
                .map(String::from)
                .into_iter()
                .chain([format!("{}/../data.st", path_str(&out))])
                .collect(),
            vec!["--out", "the command reads it (--input)"],
        ),
        (
            ["train", "--data", path_str(&data), "--out", path_str(&data)]
                .map(String::from)
                .to_vec(),
            vec!["the command reads it (--data)"],
        ),
        // `train --out` is a directory the run creates: an existing one is refused, saying
        // what is there and what to do.
        (
            [
                "train",
                "--data",
                path_str(&data),
                "--out",
                path_str(dir.path()),
            ]
            .map(String::from)
            .to_vec(),
            vec![
                "--out",
                "this directory already exists and holds",
                "data.st",
                "give a path that does not exist yet, or remove this one",
            ],
        ),
        (
            ["train", "--data", path_str(&data), "--out", path_str(&out)]
                .map(String::from)
                .to_vec(),
            vec!["--out", "already exists (empty)"],
        ),
        (
            ["data", "moons", "--n", "40", "--out"]
                .map(String::from)
                .into_iter()
                .chain([
                    path_str(&out.join("a.st")).to_string(),
                    "--test-out".into(),
                    path_str(&out.join("a.st")).to_string(),
                ])
                .collect(),
            vec!["--test-out", "--out writes it too"],
        ),
        (
            [
                "data",
                "moons",
                "--n",
                "40",
                "--test-fraction",
                "0",
                "--out",
            ]
            .map(String::from)
            .into_iter()
            .chain([
                path_str(&out.join("b.st")).to_string(),
                "--plot".into(),
                path_str(&out.join("missing/plot.png")).to_string(),
            ])
            .collect(),
            vec!["missing", "does not exist"],
        ),
    ];
    if made.is_ok_and(|s| s.success()) {
        cases.push((moons(path_str(&fifo)), vec!["not a regular file"]));
    }
    for (args, needles) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, &needles, &out);
        assert!(!String::from_utf8_lossy(&run_mscope(&args).stderr).contains("Error("));
    }
    use std::os::unix::fs::FileTypeExt;
    let null = std::fs::metadata("/dev/null").unwrap().file_type();
    assert!(null.is_char_device(), "/dev/null is still a device");
    if fifo.exists() {
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
    assert_eq!(
        std::fs::read(&data).unwrap(),
        before,
        "the input is untouched"
    );
}
