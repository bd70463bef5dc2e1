//! Embeddings from outside mscope — numpy's `.npy` and `.npz`, labels files — read as the
//! analysis commands read them, the label algebra (`--only`, `--group`) and its bad input.

mod common;

use std::path::PathBuf;

use common::{assert_fails_cleanly, repo_path, row_label_names, run_mscope, run_mscope_ok};
use mscope::data::labels::{LabelGroup, LabelSelection};
use mscope::io::embedding_inputs::EmbeddingInput;
use mscope::io::embeddings::EmbeddingsFile;

fn fixture(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/{name}"))
}

fn input(path: &str, labels: Option<&str>, field: &str) -> EmbeddingInput {
    EmbeddingInput {
        path: fixture(path),
        labels: labels.map(fixture),
        label_field: Some(field.into()),
        ..Default::default()
    }
}

#[test]
fn numpy_files_and_labels_files_read_like_the_safetensors_file() {
    let want = EmbeddingsFile::read(&fixture("sklearn_embeddings.safetensors")).unwrap();
    let cases = [
        input("sklearn_embeddings.npz", None, "label"),
        input(
            "sklearn_embeddings.npy",
            Some("sklearn_labels.npy"),
            "label",
        ),
        input(
            "sklearn_embeddings.npy",
            Some("sklearn_labels.csv"),
            "source",
        ),
        // A labels file replaces the input's own labels.
        input(
            "sklearn_embeddings.safetensors",
            Some("sklearn_labels.csv"),
            "source",
        ),
    ];
    for case in cases {
        let got = case.read().unwrap();
        let what = format!("{} + {:?}", case.path.display(), case.labels);
        assert_eq!(got.embeddings, want.embeddings, "{what}");
        assert_eq!(got.dim, want.dim, "{what}");
        assert_eq!(row_label_names(&got), row_label_names(&want), "{what}");
        // Outside labels are numbered in sorted order, as scikit-learn's classes_.
        assert_eq!(
            got.label_names,
            ["alpha", "beta", "delta", "gamma"],
            "{what}"
        );
    }
    let plain = input("sklearn_embeddings.npy", None, "label")
        .read()
        .unwrap();
    assert!(plain.labels.iter().all(|&l| l == -1));
    assert_eq!(plain.model, "sklearn_embeddings.npy");
}

#[test]
fn integer_labels_sort_numerically_and_blank_labels_leave_rows_out() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    let lines: Vec<&str> = (0..300).map(|i| ["10", "9", "", "100"][i % 4]).collect();
    std::fs::write(&labels, lines.join("\n") + "\n").unwrap();
    let file = EmbeddingInput {
        labels: Some(labels),
        ..input("sklearn_embeddings.npy", None, "label")
    }
    .read()
    .unwrap();
    assert_eq!(file.label_names, ["9", "10", "100"]);
    assert_eq!(&file.labels[..4], [1, 0, -1, 2]);
}

#[test]
fn selections_keep_and_merge_labels_in_the_files_order() {
    let file = EmbeddingsFile::read(&fixture("sklearn_embeddings.safetensors")).unwrap();
    let group = |arg: &str| arg.parse::<LabelGroup>().unwrap();
    let selection = LabelSelection {
        only: vec!["delta".into(), "beta".into(), "alpha".into()],
        groups: vec![group("ad=alpha,delta")],
    };
    let (selected, kept) = selection.apply(file.clone()).unwrap();
    // alpha (grouped as ad) comes first, then beta; gamma's rows are gone.
    assert_eq!(selected.label_names, ["ad", "beta"]);
    let before = row_label_names(&file);
    assert_eq!(kept.len(), selected.rows());
    for (row, &r) in kept.iter().enumerate() {
        let want = match before[r] {
            Some("alpha" | "delta") => "ad",
            Some("beta") => "beta",
            other => panic!("row {r} ({other:?}) should have been dropped"),
        };
        assert_eq!(row_label_names(&selected)[row], Some(want));
        assert_eq!(selected.row(row), file.row(r));
    }
    let dropped = before.iter().filter(|n| **n == Some("gamma")).count();
    assert_eq!(kept.len() + dropped, file.rows());
}

#[test]
fn bad_selections_and_label_files_are_clear_errors() {
    let file = EmbeddingsFile::read(&fixture("sklearn_embeddings.safetensors")).unwrap();
    let group = |arg: &str| arg.parse::<LabelGroup>().unwrap();
    let cases = [
        (
            LabelSelection {
                only: vec!["alpha".into(), "omega".into()],
                groups: vec![],
            },
            "--only: no label \"omega\"",
        ),
        (
            LabelSelection {
                only: vec![],
                groups: vec![group("x=alpha,beta"), group("y=beta,gamma")],
            },
            "label \"beta\" is in two groups",
        ),
        (
            LabelSelection {
                only: vec!["alpha".into(), "beta".into()],
                groups: vec![group("x=alpha,gamma")],
            },
            "label \"gamma\" is left out by --only",
        ),
        (
            LabelSelection {
                only: vec![],
                groups: vec![group("gamma=alpha,beta")],
            },
            "also a label outside the group",
        ),
    ];
    for (selection, needle) in cases {
        let err = selection.apply(file.clone()).unwrap_err().to_string();
        assert!(err.contains(needle), "{selection:?}: {err}");
    }
    let err = "solo=alpha".parse::<LabelGroup>().unwrap_err();
    assert!(err.contains("two or more labels"), "{err}");

    let input = fixture("sklearn_embeddings.npz");
    let input = input.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "a\nb\n").unwrap();
    let short = short.to_str().unwrap();
    assert_fails_cleanly(
        &["lda", "--input", input, "--labels", short],
        &["2 labels, but", "has 300 rows"],
    );
    assert_fails_cleanly(
        &["pca", "--input", input, "--only", "alpha,omega"],
        &["no label \"omega\"", "labels: alpha, beta, delta, gamma"],
    );
    let csv = fixture("sklearn_labels.csv");
    assert_fails_cleanly(
        &["pca", "--input", input, "--labels", csv.to_str().unwrap()],
        &["no column \"label\"", "columns: id, source"],
    );
    let text = dir.path().join("embeddings.txt");
    std::fs::write(&text, "1 2 3\n").unwrap();
    assert_fails_cleanly(
        &["pca", "--input", text.to_str().unwrap()],
        &["unsupported embeddings file"],
    );
}

#[test]
fn lda_and_pca_run_on_a_numpy_archive_with_a_selection() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lda.json");
    let input = fixture("sklearn_embeddings.npz");
    run_mscope_ok(&[
        "lda",
        "--input",
        input.to_str().unwrap(),
        "--group",
        "ab=alpha,beta",
        "--group",
        "gd=gamma,delta",
        "--splits",
        "5",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["labels"], serde_json::json!(["ab", "gd"]));
    let out = dir.path().join("pca.json");
    run_mscope_ok(&[
        "pca",
        "--input",
        input.to_str().unwrap(),
        "--only",
        "beta,gamma",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["n"], 150);
    let labels: Vec<&str> = report["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["beta", "gamma"]);
}

/// A `.npy` of `descr` and `shape` holding `data`, as numpy writes version 1.
fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

#[test]
fn npy_element_types_decode_as_numpy_stores_them() {
    use mscope::io::npy::NpyArray;
    let cases: [(&str, Vec<u8>, Vec<f64>); 6] = [
        ("<i1", vec![0xff, 0x7f], vec![-1.0, 127.0]),
        ("|u1", vec![0xff, 0x01], vec![255.0, 1.0]),
        ("<i2", vec![0x00, 0x80, 0x02, 0x00], vec![-32768.0, 2.0]),
        (
            "<u4",
            vec![0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0],
            vec![4294967295.0, 1.0],
        ),
        ("<f2", vec![0x00, 0x3c, 0x00, 0xc0], vec![1.0, -2.0]),
        ("|b1", vec![1, 0], vec![1.0, 0.0]),
    ];
    for (descr, data, want) in cases {
        let array = NpyArray::parse(npy_bytes(descr, "(2,)", &data), descr).unwrap();
        assert_eq!(array.to_f64().unwrap(), want, "{descr}");
    }
    let mut utf32 = Vec::new();
    for c in "ab\0é🦀\0".chars() {
        utf32.extend((c as u32).to_le_bytes());
    }
    let strings = NpyArray::parse(npy_bytes("<U3", "(2,)", &utf32), "U3").unwrap();
    assert_eq!(strings.to_strings().unwrap(), ["ab", "é🦀"]);
    assert!(strings.to_f64().is_none());
    for (descr, data, needle) in [
        (">f4", vec![0; 8], "`>f4` is not supported"),
        ("<c8", vec![0; 16], "`<c8` is not supported"),
        ("<f4", vec![0; 7], "7 data bytes for shape [2]"),
    ] {
        let err = NpyArray::parse(npy_bytes(descr, "(2,)", &data), "x.npy").unwrap_err();
        assert!(err.to_string().contains(needle), "{descr}: {err}");
    }
}

/// A `.npz` of one deflated member `embeddings.npy` (4 MiB of f32 zeros, a few KiB deflated),
/// written with zip64 size fields when `zip64`, and its member's inflated size.
fn zeros_npz(zip64: bool) -> (Vec<u8>, u64) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("zeros.npy");
    mscope::io::npy::write_f32(&npy, &[1 << 20], &vec![0.0; 1 << 20]).unwrap();
    let member = std::fs::read(&npy).unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(zip64);
    zip.start_file("embeddings.npy", options).unwrap();
    zip.write_all(&member).unwrap();
    (zip.finish().unwrap().into_inner(), member.len() as u64)
}

/// `bytes` with every occurrence of `from` replaced by `to` (the same length): the size fields
/// of a crafted archive.
fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut count = 0;
    let mut at = 0;
    while let Some(found) = out[at..].windows(from.len()).position(|w| w == from) {
        out[at + found..at + found + to.len()].copy_from_slice(to);
        at += found + to.len();
        count += 1;
    }
    assert!(count > 0, "no size field to replace");
    out
}

/// A deflate bomb is bounded: each member is inflated only to its declared size, the declared
/// sizes are checked against the available memory first, and a size that lies either way is an
/// error naming the archive and the member.
#[test]
fn npz_members_inflate_only_to_their_declared_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.npz");
    let (honest, size) = zeros_npz(false);
    assert!(honest.len() < 64 * 1024, "{} bytes", honest.len());
    std::fs::write(&path, &honest).unwrap();
    let arrays = mscope::io::npy::read_npz(&path).unwrap();
    assert_eq!(arrays[0].1.len(), 1 << 20, "the honest archive reads");

    let actual = (size as u32).to_le_bytes();
    for (declared, needle) in [
        (1000u32, "inflates to more bytes"),
        (size as u32 + 1, "inflates to only"),
    ] {
        std::fs::write(&path, replaced(&honest, &actual, &declared.to_le_bytes())).unwrap();
        let error = mscope::io::npy::read_npz(&path).unwrap_err().to_string();
        for needle in [
            needle,
            &format!("declares {declared}"),
            "bomb.npz",
            "embeddings.npy",
        ] {
            assert!(error.contains(needle), "`{needle}` not in: {error}");
        }
    }

    // A zip64 size of 2^60 bytes: refused for memory before anything is inflated.
    let (honest64, size) = zeros_npz(true);
    let huge = replaced(&honest64, &size.to_le_bytes(), &(1u64 << 60).to_le_bytes());
    std::fs::write(&path, huge).unwrap();
    let error = mscope::io::npy::read_npz(&path).unwrap_err().to_string();
    assert!(
        error.contains("bomb.npz") && error.contains("embeddings.npy") && error.contains("memory"),
        "{error}"
    );
    assert_fails_cleanly(
        &["pca", "--input", path.to_str().unwrap()],
        &["bomb.npz", "more than the", "available"],
    );
}

const FACTORS: [&str; 3] = ["language", "subject", "translated"];

fn factored(path: &str, labels: Option<&str>, factors: &[&str]) -> EmbeddingInput {
    EmbeddingInput {
        path: fixture(path),
        labels: labels.map(fixture),
        factors: factors.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

/// Several labels per row read alike from every source that holds them: the archive's arrays,
/// the Parquet table's columns, and the columns of a .csv or fields of a .jsonl labels file.
#[test]
fn factors_read_alike_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    // The .csv's rows as .jsonl objects, one field left null on the first row.
    let csv = std::fs::read_to_string(fixture("sklearn_factors.csv")).unwrap();
    let jsonl = dir.path().join("factors.jsonl");
    let lines: Vec<String> = csv
        .lines()
        .skip(1)
        .enumerate()
        .map(|(i, line)| {
            let v: Vec<&str> = line.split(',').collect();
            let translated = if i == 0 {
                "null".to_string()
            } else {
                format!("{:?}", v[2])
            };
            format!(
                r#"{{"language": {:?}, "subject": {:?}, "translated": {translated}}}"#,
                v[0], v[1]
            )
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();

    let (want_file, _, want) = factored("sklearn_factors.npz", None, &FACTORS)
        .read_factored(false)
        .unwrap();
    assert_eq!(want.len(), 3);
    assert_eq!(want[0].level_names, ["de", "es"]);
    assert_eq!(want[1].level_names, ["economics", "politics", "sports"]);
    assert_eq!(want[2].level_names, ["no", "yes"]);
    // The first factor is the rows' labels.
    assert_eq!(want_file.labels, want[0].levels);
    assert_eq!(want_file.label_names, want[0].level_names);
    for input in [
        factored("sklearn_factors.parquet", None, &FACTORS),
        factored("sklearn_factors.npz", Some("sklearn_factors.csv"), &FACTORS),
        EmbeddingInput {
            labels: Some(jsonl.clone()),
            ..factored("sklearn_factors.parquet", None, &FACTORS)
        },
    ] {
        let (file, _, got) = input.read_factored(false).unwrap();
        let what = format!("{} + {:?}", input.path.display(), input.labels);
        assert_eq!(file.embeddings, want_file.embeddings, "{what}");
        let mut want = want.clone();
        if input.labels.as_ref() == Some(&jsonl) {
            want[2].levels[0] = -1;
        }
        assert_eq!(got, want, "{what}");
    }
    // Factors in another order: the first is the labels.
    let (file, _, got) = factored("sklearn_factors.npz", None, &["subject", "language"])
        .read_factored(false)
        .unwrap();
    assert_eq!(got[0].name, "subject");
    assert_eq!(file.labels, want[1].levels);
}

#[test]
fn unknown_factors_and_label_fields_are_errors_listing_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let npz = fixture("sklearn_factors.npz");
    let parquet = fixture("sklearn_factors.parquet");
    let csv = fixture("sklearn_factors.csv");
    let (npz, parquet, csv) = (
        npz.to_str().unwrap(),
        parquet.to_str().unwrap(),
        csv.to_str().unwrap(),
    );
    let jsonl = dir.path().join("l.jsonl");
    std::fs::write(&jsonl, "{\"lang\": \"de\", \"n\": 1}\n{\"lang\": \"es\"}\n").unwrap();
    let jsonl = jsonl.to_str().unwrap();
    for command in ["pca", "lda"] {
        assert_fails_cleanly(
            &[
                command, "--input", npz, "--factor", "language", "--factor", "topic",
            ],
            &[
                "no label array `topic`",
                "arrays:",
                "embeddings",
                "subject",
                "translated",
            ],
        );
        assert_fails_cleanly(
            &[command, "--input", parquet, "--factor", "topic"],
            &["no label column `topic`", "columns:", "language string"],
        );
        assert_fails_cleanly(
            &[
                command, "--input", npz, "--labels", csv, "--factor", "topic",
            ],
            &[
                "no column \"topic\"",
                "columns: language, subject, translated",
            ],
        );
        // An unknown --label-field / --label-column, which used to leave every row unlabelled.
        assert_fails_cleanly(
            &[command, "--input", npz, "--label-field", "topic"],
            &["no label array `topic`", "language"],
        );
        assert_fails_cleanly(
            &[command, "--input", parquet, "--label-column", "topic"],
            &["no label column `topic`", "subject string"],
        );
        assert_fails_cleanly(
            &[
                command,
                "--input",
                npz,
                "--labels",
                jsonl,
                "--label-field",
                "language",
            ],
            &["no object has the field \"language\"", "fields: lang, n"],
        );
    }
    // Factors need label columns: mscope's own file has one label.
    let safetensors = fixture("sklearn_embeddings.safetensors");
    assert_fails_cleanly(
        &[
            "pca",
            "--input",
            safetensors.to_str().unwrap(),
            "--factor",
            "label",
        ],
        &["--factor reads label columns", "--labels"],
    );
    // A factor with one level separates nothing.
    let one = dir.path().join("one.csv");
    let rows: String = (0..222).map(|i| format!("x,{}\n", i % 2)).collect();
    std::fs::write(&one, format!("constant,parity\n{rows}")).unwrap();
    assert_fails_cleanly(
        &[
            "pca",
            "--input",
            npz,
            "--labels",
            one.to_str().unwrap(),
            "--factor",
            "parity",
            "--factor",
            "constant",
        ],
        &["factor `constant` has 1 level (x)", "at least two"],
    );
    assert_fails_cleanly(
        &[
            "pca", "--input", npz, "--factor", "language", "--factor", "language",
        ],
        &["--factor language: given twice"],
    );
    // Refused by the argument parser (exit status 2).
    let out = run_mscope(&[
        "pca",
        "--input",
        npz,
        "--factor",
        "language",
        "--label-field",
        "x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--factor") && err.contains("--label-field"),
        "{err}"
    );
}

/// --only and --group select levels of the first factor; the others keep the same rows.
#[test]
fn selections_apply_to_the_first_factor() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pca.json");
    let npz = fixture("sklearn_factors.npz");
    run_mscope_ok(&[
        "pca",
        "--input",
        npz.to_str().unwrap(),
        "--factor",
        "subject",
        "--factor",
        "language",
        "--only",
        "economics,sports",
        "--backend",
        "cpu",
        "--out",
        json.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let (_, _, all) = factored("sklearn_factors.npz", None, &["subject", "language"])
        .read_factored(false)
        .unwrap();
    let kept: Vec<usize> = (0..all[0].levels.len())
        .filter(|&r| all[0].levels[r] != 1)
        .collect();
    assert_eq!(report["n"], kept.len());
    let rows = |factor: usize, level: &str| -> usize {
        report["factors"][factor]["levels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["label"] == level)
            .map_or(0, |l| l["rows"].as_u64().unwrap() as usize)
    };
    let count = |f: usize, code: i64| kept.iter().filter(|&&r| all[f].levels[r] == code).count();
    assert_eq!(rows(0, "economics"), count(0, 0));
    assert_eq!(rows(0, "politics"), 0);
    assert_eq!(rows(1, "de"), count(1, 0));
    assert_eq!(rows(1, "es"), count(1, 1));
}
