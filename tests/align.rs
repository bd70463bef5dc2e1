//! `mscope align` against numpy / scipy / scikit-learn references (tools/make_align_fixtures.py)
//! and the kernel-space CKA, plus its bad input.

mod common;

use common::{assert_fails_cleanly, repo_path, run_mscope_ok};
use mscope::instruments::align::{self, AlignOptions};
use mscope::instruments::kernel_compare;
use mscope::io::embedding_inputs::EmbeddingInput;
use mscope::io::embeddings::EmbeddingsFile;

fn read(name: &str) -> (String, EmbeddingsFile) {
    let path = repo_path(&format!("tests/fixtures/align/{name}.npy"));
    let file = EmbeddingInput {
        path,
        ..Default::default()
    }
    .read()
    .unwrap();
    (name.to_string(), file)
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_path("tests/fixtures/align/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_measure_matches_its_reference() {
    let want = reference();
    let files = [read("a"), read("b"), read("c")];
    let options = AlignOptions {
        k: want["k"].as_u64().unwrap() as usize,
        cca_dims: want["cca_dims"].as_u64().unwrap() as usize,
    };
    let report = align::report(&files, &options).unwrap();
    assert_eq!(report.pairs.len(), 3);
    for (got, want) in report.pairs.iter().zip(want["pairs"].as_array().unwrap()) {
        let what = format!("{} vs {}", files[got.a].0, files[got.b].0);
        assert_eq!(files[got.a].0, want["a"], "{what}");
        assert_eq!(files[got.b].0, want["b"], "{what}");
        let close = |x: f64, y: &serde_json::Value, tol: f64, name: &str| {
            let y = y.as_f64().unwrap();
            assert!((x - y).abs() <= tol, "{what} {name}: {x} vs {y}");
        };
        // f64 arithmetic on both sides from the same f32 values.
        close(got.cka, &want["cka"], 1e-9, "cka");
        close(
            got.procrustes_residual,
            &want["procrustes_residual"],
            1e-9,
            "procrustes_residual",
        );
        // scikit-learn's CCA is iterative (NIPALS with deflation); the closed form agrees to
        // its convergence.
        for (x, y) in got.cca.iter().zip(want["cca"].as_array().unwrap()) {
            close(*x, y, 1e-6, "cca");
        }
        close(got.mutual_knn, &want["mutual_knn"], 1e-12, "mutual_knn");
    }
}

#[test]
fn feature_space_cka_equals_the_kernel_alignment_of_linear_kernels() {
    let (_, a) = read("a");
    let (_, b) = read("b");
    let n = a.rows();
    let linear = |f: &EmbeddingsFile| -> Vec<f64> {
        (0..n * n)
            .map(|at| {
                let (i, j) = (at / n, at % n);
                f.row(i)
                    .iter()
                    .zip(f.row(j))
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum()
            })
            .collect()
    };
    let kernel = kernel_compare::cka(&linear(&a), &linear(&b), n);
    let options = AlignOptions { k: 5, cca_dims: 3 };
    let report = align::report(&[("a".into(), a), ("b".into(), b)], &options).unwrap();
    assert!((report.pairs[0].cka - kernel).abs() < 1e-9);
}

#[test]
fn aligned_rows_reach_the_target_up_to_the_residual() {
    // A rotated and scaled copy aligns back exactly (a shift would change cosine neighbours).
    let (_, a) = read("a");
    let mut b = a.clone();
    let dim = a.dim;
    for (r, row) in b.embeddings.chunks_exact_mut(dim).enumerate() {
        let x = a.row(r);
        for (j, v) in row.iter_mut().enumerate() {
            // A signed permutation (an orthogonal map), times 3.
            let k = (j * 5 + 3) % dim;
            let sign = if j % 2 == 0 { 1.0 } else { -1.0 };
            *v = 3.0 * sign * x[k];
        }
    }
    let aligned = align::aligned(&a, &b).unwrap();
    let err = common::rel_error(&aligned, &b.embeddings);
    assert!(err < 1e-5, "relative error {err}");
    let options = AlignOptions { k: 5, cca_dims: 3 };
    let report = align::report(&[("a".into(), a), ("b".into(), b)], &options).unwrap();
    assert!(report.pairs[0].procrustes_residual < 1e-6);
    assert!((report.pairs[0].cka - 1.0).abs() < 1e-9);
    assert_eq!(report.pairs[0].mutual_knn, 1.0);
}

#[test]
fn cli_writes_the_report_plots_and_aligned_rows_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = |n: &str| repo_path(&format!("tests/fixtures/align/{n}.npy"));
    let (a, b, c) = (fixture("a"), fixture("b"), fixture("c"));
    let (a, b, c) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
    );
    let json = dir.path().join("align.json");
    let plot = dir.path().join("align.png");
    let aligned = dir.path().join("aligned.safetensors");
    run_mscope_ok(&[
        "align",
        a,
        b,
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--aligned",
        aligned.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let want = reference();
    let cka = report["pairs"][0]["cka"].as_f64().unwrap();
    assert!((cka - want["pairs"][0]["cka"].as_f64().unwrap()).abs() < 1e-9);
    assert!(plot.is_file() && dir.path().join("align.mutual-knn.png").is_file());
    let rows = EmbeddingsFile::read(&aligned).unwrap();
    assert_eq!((rows.rows(), rows.dim), (200, 11));

    let out = run_mscope_ok(&["align", a, b, c]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("## Linear CKA"), "{text}");

    assert_fails_cleanly(
        &["align", a, b, "--k", "200"],
        &["--k 200 must be between 1 and"],
    );
    assert_fails_cleanly(
        &["align", a, b, "--cca-dims", "12"],
        &["--cca-dims 12 must be between 1 and min(dims, rows − 1) = 11"],
    );
    assert_fails_cleanly(
        &["align", a, b, c, "--aligned", "x.safetensors"],
        &["exactly two"],
    );
}
