//! `mscope` end to end: the embed output files and their fields, and clear errors with a
//! non-zero exit (never a panic, never a half-written output) for bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::{
    assert_fails_cleanly, cosine, fixture_texts, minilm_dir, reference_tensor, repo_path,
    run_mscope as mscope,
};
use mscope::io::embeddings::{read_texts_beside, texts_sidecar_path, EmbeddingsFile};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A clean failure that leaves no file in `dir` but the `keep` it had.
fn assert_fails(args: &[&str], needles: &[&str], dir: &Path, keep: usize) {
    assert_fails_cleanly(args, needles);
    let left = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(
        left,
        keep,
        "a failed run left files behind in {}",
        dir.display()
    );
}

#[test]
fn embed_writes_the_contract_and_matches_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let texts = fixture_texts();
    // .txt cannot hold texts with newlines (the fixtures have none) and skips blank lines: the
    // .txt part ends before the fixtures' empty text, which goes through .jsonl.
    let blank = texts
        .iter()
        .position(|t| t.trim().is_empty())
        .unwrap_or(texts.len() / 2);
    let (first, rest) = texts.split_at(blank);
    std::fs::write(dir.path().join("a.txt"), first.join("\n") + "\n").unwrap();
    let jsonl: String = rest
        .iter()
        .map(|t| serde_json::json!({"text": t, "label": "second"}).to_string() + "\n")
        .collect();
    std::fs::write(dir.path().join("b.jsonl"), jsonl).unwrap();
    let out_path = dir.path().join("e.safetensors");
    let model = minilm_dir();
    let a = format!("{}=first", dir.path().join("a.txt").display());
    let b = dir.path().join("b.jsonl").display().to_string();
    let out = mscope(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        &a,
        "--input",
        &b,
        "--out",
        out_path.to_str().unwrap(),
        "--batch-size",
        "5",
    ]);
    assert!(out.status.success(), "embed failed: {}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("embedded {} texts", texts.len())),
        "summary: {summary}"
    );

    let file = EmbeddingsFile::read(&out_path).unwrap();
    assert_eq!(file.rows(), texts.len());
    assert_eq!(file.dim, 384);
    assert_eq!(file.label_names, ["first", "second"]);
    let want_labels: Vec<i64> = (0..texts.len())
        .map(|i| if i < first.len() { 0 } else { 1 })
        .collect();
    assert_eq!(file.labels, want_labels);
    assert_eq!(
        (file.pooling.as_str(), file.normalized, file.max_length),
        ("mean", true, 256)
    );
    assert_eq!(file.model, "all-MiniLM-L6-v2");

    // The texts sidecar: a header with the embeddings file's row count and digest, then one row
    // per embedding, same order, labels by name.
    let sidecar = texts_sidecar_path(&out_path);
    assert_eq!(sidecar, dir.path().join("e.safetensors.texts.jsonl"));
    let sidecar_texts = read_texts_beside(&out_path, texts.len()).unwrap().unwrap();
    assert_eq!(sidecar_texts, texts);
    let content = std::fs::read_to_string(&sidecar).unwrap();
    let header: serde_json::Value = serde_json::from_str(content.lines().next().unwrap()).unwrap();
    assert_eq!(
        header,
        serde_json::json!({
            "sidecar_of": "e.safetensors",
            "rows": texts.len(),
            "fnv1a64": mscope::io::checkpoint::file_digest(&out_path).unwrap(),
        })
    );
    let sidecar_labels: Vec<serde_json::Value> = content
        .lines()
        .skip(1)
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["label"].clone())
        .collect();
    let want_names: Vec<serde_json::Value> = want_labels
        .iter()
        .map(|&l| file.label_names[l as usize].as_str().into())
        .collect();
    assert_eq!(sidecar_labels, want_names);

    let (_, want) = reference_tensor("tests/fixtures/minilm_reference.safetensors", "embeddings");
    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    for (row, w) in want.chunks(384).enumerate() {
        let cos = cosine(file.row(row), w);
        assert!(cos >= 0.9999, "row {row}: cosine {cos}");
    }
}

/// `--weights-dtype` reaches the model: f16 weights move the embeddings, within the f16 paths'
/// relative error of 1e-2, and an unknown dtype is refused by name.
#[test]
fn embed_weights_dtype_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    std::fs::write(&input, fixture_texts().join("\n") + "\n").unwrap();
    let model = repo_path("tests/fixtures/tiny-xlmr");
    let embed = |dtype: &str| {
        let out = dir.path().join(format!("{dtype}.safetensors"));
        let run = mscope(&[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backend",
            "cpu",
            "--weights-dtype",
            dtype,
        ]);
        assert!(
            run.status.success(),
            "--weights-dtype {dtype}: {}",
            stderr(&run)
        );
        EmbeddingsFile::read(&out).unwrap()
    };
    let (wide, half) = (embed("f32"), embed("f16"));
    assert_ne!(
        wide.embeddings, half.embeddings,
        "f16 weights changed nothing"
    );
    let err = common::rel_error(&half.embeddings, &wide.embeddings);
    assert!(err < 1e-2, "f16 weights: relative error {err:e}");

    let out = mscope(&["embed", "--weights-dtype", "f8"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown dtype");
    assert!(stderr(&out).contains("f8"), "{}", stderr(&out));
}

#[test]
fn embed_reports_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = minilm_dir();
    let model = model.to_str().unwrap();
    let out = d.join("out.safetensors");
    let out = out.to_str().unwrap();
    std::fs::write(d.join("bad.txt"), b"fine\nbroken \xff byte\n").unwrap();
    std::fs::write(
        d.join("nofield.jsonl"),
        "{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
    )
    .unwrap();
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("some-labels.csv"), "text,label\na,x\nb,\n").unwrap();
    std::fs::write(d.join("ok.txt"), "hello\n").unwrap();
    let inputs = 5;
    let path = |name: &str| d.join(name).display().to_string();

    assert_fails(
        &[
            "embed",
            "--model",
            model,
            "--input",
            &path("missing.txt"),
            "--out",
            out,
        ],
        &["missing.txt"],
        d,
        inputs,
    );
    assert_fails(
        &[
            "embed",
            "--model",
            model,
            "--input",
            &path("bad.txt"),
            "--out",
            out,
        ],
        &["bad.txt:2", "UTF-8"],
        d,
        inputs,
    );
    assert_fails(
        &[
            "embed",
            "--model",
            model,
            "--input",
            &path("nofield.jsonl"),
            "--out",
            out,
        ],
        &["nofield.jsonl:2", "text"],
        d,
        inputs,
    );
    assert_fails(
        &[
            "embed",
            "--model",
            model,
            "--input",
            &path("empty.txt"),
            "--out",
            out,
        ],
        &["empty.txt", "no texts"],
        d,
        inputs,
    );
    assert_fails(
        &[
            "embed",
            "--model",
            model,
            "--input",
            &path("some-labels.csv"),
            "--out",
            out,
        ],
        &["some-labels.csv:3"],
        d,
        inputs,
    );
    assert_fails(
        &[
            "embed",
            "--model",
            &path("no-model"),
            "--input",
            &path("ok.txt"),
            "--out",
            out,
        ],
        &["no-model"],
        d,
        inputs,
    );

    // A truncated checkpoint is an error naming the file, not a panic.
    let broken = d.join("broken-model");
    std::fs::create_dir(&broken).unwrap();
    let tiny = repo_path("tests/fixtures/tiny-xlmr");
    for entry in std::fs::read_dir(&tiny).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), broken.join(entry.file_name())).unwrap();
        }
    }
    let weights = std::fs::read(tiny.join("model.safetensors")).unwrap();
    std::fs::write(
        broken.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    assert_fails(
        &[
            "embed",
            "--model",
            broken.to_str().unwrap(),
            "--input",
            &path("ok.txt"),
            "--out",
            out,
        ],
        &["model.safetensors"],
        d,
        inputs + 1,
    );
}

#[test]
fn devices_lists_every_backend() {
    let out = mscope(&["devices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["cpu:", "wgpu", "cuda"] {
        assert!(text.contains(line), "devices output lacks {line:?}: {text}");
    }
}

#[test]
fn no_runtime_dir_noise_without_xdg_runtime_dir() {
    // Servers and CI often run without XDG_RUNTIME_DIR; Mesa's Vulkan drivers then print an
    // "error:" line per wgpu instance unless mscope gives them a directory.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mscope"))
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("mscope runs");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
}
