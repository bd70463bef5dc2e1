//! Parquet embeddings tables: pyarrow-written files (tools/make_parquet_fixtures.py) read as the
//! analysis commands read them, their bad input, and `mscope embed --format` written files read
//! back (mscope's reader; numpy's .npy layout).

mod common;

use std::path::PathBuf;

use common::{assert_fails_cleanly, repo_path, row_label_names, run_mscope_ok};
use mscope::io::embedding_inputs::EmbeddingInput;
use mscope::io::embeddings::EmbeddingsFile;
use mscope::io::npy::NpyArray;
use mscope::io::parquet_file;

fn fixture(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/{name}"))
}

fn parquet(name: &str) -> EmbeddingInput {
    EmbeddingInput {
        path: fixture(&format!("parquet/{name}")),
        label_field: None,
        ..Default::default()
    }
}

#[test]
fn pyarrow_and_datasets_tables_read_like_the_safetensors_file() {
    let want = EmbeddingsFile::read(&fixture("sklearn_embeddings.safetensors")).unwrap();
    // list<float32> in five row groups (Snappy, gzip, zstd); fixed_size_list<float64> with
    // ClassLabel codes.
    for name in [
        "list_f32.parquet",
        "list_f32_gzip.parquet",
        "list_f32_zstd.parquet",
        "hf_fixed_f64.parquet",
    ] {
        let got = parquet(name).read().unwrap();
        assert_eq!(got.dim, want.dim, "{name}");
        assert_eq!(got.embeddings, want.embeddings, "{name}");
        assert_eq!(row_label_names(&got), row_label_names(&want), "{name}");
        assert_eq!(
            got.label_names,
            ["alpha", "beta", "delta", "gamma"],
            "{name}"
        );
        assert_eq!(got.model, name);
    }
    // The embedding column by name (its alias --embedding-column), and no label column.
    let file = EmbeddingInput {
        embeddings_key: Some("embedding".into()),
        label_field: Some("id".into()),
        ..parquet("list_f32.parquet")
    }
    .read()
    .unwrap();
    // Integer labels number numerically: row i is label "i".
    assert_eq!(file.labels, (0..300).collect::<Vec<i64>>());
}

#[test]
fn null_labels_leave_rows_unlabelled_and_texts_come_from_the_table() {
    let (file, texts) = parquet("small.parquet").read_with_texts(true).unwrap();
    assert_eq!(file.embeddings, [1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
    assert_eq!(file.label_names, ["a", "b"]);
    assert_eq!(file.labels, [1, -1, 0]);
    assert_eq!(texts.unwrap(), ["first", "second", "third"]);
    let (_, texts) = parquet("small.parquet").read_with_texts(false).unwrap();
    assert!(texts.is_none());
}

#[test]
fn bad_tables_are_clear_errors_naming_the_row_or_the_columns() {
    let cases = [
        ("null_embedding.parquet", "row 2: the embedding is null"),
        ("null_element.parquet", "row 1: element 1 is null"),
        (
            "empty_embedding.parquet",
            "row 1: the embedding is an empty list",
        ),
        ("ragged.parquet", "row 3: 1 values, but row 0 has 2"),
        (
            "two_lists.parquet",
            "2 columns hold lists of floats; name the embeddings with --embedding-column \
             (columns: embedding list<float32>, other list<float64>, label string)",
        ),
        (
            "no_list.parquet",
            "no column holds a list of floats, the embeddings (columns: x float64, label string)",
        ),
    ];
    for (name, needle) in cases {
        let err = parquet(name).read().unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
    let named = |column: &str| {
        EmbeddingInput {
            embeddings_key: Some(column.into()),
            ..parquet("two_lists.parquet")
        }
        .read()
    };
    assert_eq!(named("other").unwrap().embeddings, [1.0, 2.0]);
    let err = named("label").unwrap_err().to_string();
    assert!(
        err.contains("column `label string` is not a list of floats"),
        "{err}"
    );
    let err = named("nope").unwrap_err().to_string();
    assert!(err.contains("no column `nope`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "a\nb\n").unwrap();
    let input = fixture("parquet/list_f32.parquet");
    assert_fails_cleanly(
        &[
            "lda",
            "--input",
            input.to_str().unwrap(),
            "--labels",
            short.to_str().unwrap(),
        ],
        &["2 labels, but", "has 300 rows"],
    );
}

#[test]
fn lda_and_pca_run_on_parquet_with_named_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lda.json");
    let input = fixture("parquet/hf_fixed_f64.parquet");
    run_mscope_ok(&[
        "lda",
        "--input",
        input.to_str().unwrap(),
        "--embedding-column",
        "embedding",
        "--label-column",
        "label",
        "--only",
        "alpha,beta,gamma",
        "--group",
        "ab=alpha,beta",
        "--splits",
        "5",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["labels"], serde_json::json!(["ab", "gamma"]));
}

/// The safetensors fixture with its rows' texts, as `mscope embed` would hold them.
fn embedded() -> (EmbeddingsFile, Vec<String>) {
    let mut file = EmbeddingsFile::read(&fixture("sklearn_embeddings.safetensors")).unwrap();
    file.model = "fixture-model".into();
    file.pooling = "mean".into();
    file.normalized = true;
    file.max_length = 128;
    // One unlabelled row, to carry a null label through.
    file.labels[7] = -1;
    let texts = (0..file.rows()).map(|i| format!("text {i} ✓")).collect();
    (file, texts)
}

#[test]
fn written_parquet_reads_back_the_same_and_identical_runs_give_identical_bytes() {
    let (file, texts) = embedded();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.parquet");
    let b = dir.path().join("b.parquet");
    parquet_file::write(&a, &file, &texts, false).unwrap();
    parquet_file::write(&b, &file, &texts, false).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let input = EmbeddingInput {
        path: a.clone(),
        label_field: None,
        ..Default::default()
    };
    let (got, got_texts) = input.read_with_texts(true).unwrap();
    assert_eq!(got, file);
    assert_eq!(got_texts.unwrap(), texts);

    // Image embeddings keep their paths in a `path` column.
    let c = dir.path().join("c.parquet");
    parquet_file::write(&c, &file, &texts, true).unwrap();
    let (_, paths) = EmbeddingInput { path: c, ..input }
        .read_with_texts(true)
        .unwrap();
    assert_eq!(paths.unwrap(), texts);
}

#[test]
fn written_npy_is_numpys_layout() {
    let (file, _) = embedded();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.npy");
    mscope::io::npy::write_f32(&path, &[file.rows(), file.dim], &file.embeddings).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // numpy aligns the data to 64 bytes and ends the header with a newline.
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(bytes[10 + header_len - 1], b'\n');
    let array = NpyArray::read(&path).unwrap();
    assert_eq!(array.shape, [300, 24]);
    assert_eq!(array.to_f32().unwrap(), file.embeddings);
    // The same bytes as np.save of the same float32 matrix (the fixture tools wrote).
    assert_eq!(
        bytes,
        std::fs::read(fixture("sklearn_embeddings.npy")).unwrap()
    );
}

/// `mscope embed` of the fixture texts (MiniLM, CPU) into `out`, with extra flags.
fn embed(out: &std::path::Path, extra: &[&str]) {
    let model = common::minilm_dir();
    let texts = fixture("texts.jsonl");
    let mut args = vec![
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    run_mscope_ok(&args);
}

#[test]
fn embed_formats_round_trip_through_pca() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    embed(&path("e.safetensors"), &[]);
    embed(&path("e.npy"), &[]);
    embed(&path("e.parquet"), &["--format", "parquet"]);
    embed(&path("again.parquet"), &[]);
    assert_eq!(
        std::fs::read(path("e.parquet")).unwrap(),
        std::fs::read(path("again.parquet")).unwrap(),
        "identical runs write identical bytes"
    );
    assert!(!path("e.parquet.texts.jsonl").exists());
    assert!(path("e.npy.texts.jsonl").exists());

    let read = |name: &str| {
        EmbeddingInput {
            path: path(name),
            label_field: None,
            ..Default::default()
        }
        .read_with_texts(true)
        .unwrap()
    };
    let (want, want_texts) = read("e.safetensors");
    let (from_parquet, parquet_texts) = read("e.parquet");
    assert_eq!(from_parquet, want);
    assert_eq!(parquet_texts, want_texts);
    let (from_npy, npy_texts) = read("e.npy");
    assert_eq!(from_npy.embeddings, want.embeddings);
    assert_eq!(row_label_names(&from_npy), row_label_names(&want));
    assert_eq!(npy_texts, want_texts);

    let pca = |name: &str| {
        let out = path(&format!("{name}.pca.json"));
        run_mscope_ok(&[
            "pca",
            "--input",
            path(name).to_str().unwrap(),
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ]);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        report
    };
    let want = pca("e.safetensors");
    // An outside .npy's labels are numbered in sorted order, so its per-label rows may come in
    // another order; the components are the same.
    for (name, keys) in [
        (
            "e.parquet",
            &["n", "explained_variance", "components", "labels"][..],
        ),
        ("e.npy", &["n", "explained_variance", "components"][..]),
    ] {
        let got = pca(name);
        for &key in keys {
            assert_eq!(got[key], want[key], "{name}: {key}");
        }
    }

    let model = common::minilm_dir();
    let texts = fixture("texts.jsonl");
    for (out, format, needle) in [
        (
            "x.safetensors",
            "npy",
            "the extension says safetensors, but --format is npy",
        ),
        (
            "x.parquet",
            "npy",
            "the extension says parquet, but --format is npy",
        ),
        (
            "x.bin",
            "parquet",
            "--format parquet needs the extension .parquet",
        ),
    ] {
        assert_fails_cleanly(
            &[
                "embed",
                "--model",
                model.to_str().unwrap(),
                "--input",
                texts.to_str().unwrap(),
                "--format",
                format,
                "--out",
                path(out).to_str().unwrap(),
            ],
            &[needle],
        );
    }
}
