//! `mscope align` against numpy / scipy / scikit-learn references (tools/make_align_fixtures.py)
//! and the kernel-space CKA, plus its bad input.

mod common;

use common::{assert_fails_cleanly, repo_path, run_mscope_ok};
use mscope::instruments::align::{self, AlignOptions};
use mscope::instruments::kernel_compare;
use mscope::instruments::neighbours::{cosine_neighbours, NeighbourScreen};
use mscope::io::embedding_inputs::EmbeddingInput;
use mscope::io::embeddings::EmbeddingsFile;
use mscope::random::SplitMix64;

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
        screen: NeighbourScreen::fastest(),
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
    let options = AlignOptions {
        k: 5,
        cca_dims: 3,
        screen: NeighbourScreen::fastest(),
    };
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
    let options = AlignOptions {
        k: 5,
        cca_dims: 3,
        screen: NeighbourScreen::fastest(),
    };
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
    assert_fails_cleanly(
        &["align", a, b, "--neighbour-variant", "4"],
        &["--neighbour-variant 4: allowed are 1"],
    );
    // Both variants through the CLI give the fixture's mutual k-NN.
    for variant in NeighbourScreen::ALL.iter().filter(|v| v.supported()) {
        let json = dir.path().join(format!("v{}.json", variant.number()));
        let number = variant.number().to_string();
        run_mscope_ok(&[
            "align",
            a,
            b,
            "--neighbour-variant",
            &number,
            "--json",
            json.to_str().unwrap(),
        ]);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(
            report["pairs"][0]["mutual_knn"], want["pairs"][0]["mutual_knn"],
            "variant {number}"
        );
    }
}

/// Rows with exact duplicates, near-ties far below bf16's resolution (similarities 10⁻⁶ apart),
/// a zero row and an odd width, over several tiles of both variants.
fn tricky_rows(rows: usize, dim: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(7);
    let centres: Vec<Vec<f64>> = (0..12)
        .map(|_| (0..dim).map(|_| rng.normal()).collect())
        .collect();
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(rows);
    while out.len() < rows {
        let i = out.len();
        let row: Vec<f32> = match i % 10 {
            // An exact copy of an earlier row: its similarities tie, the lower index wins.
            3 | 7 if i > 20 => out[rng.below(i)].clone(),
            // An earlier row nudged by 10⁻⁵ of its scale.
            5 if i > 20 => {
                let base = out[rng.below(i)].clone();
                base.iter()
                    .map(|&v| v + (1e-5 * rng.normal()) as f32)
                    .collect()
            }
            _ if i == 11 => vec![0.0; dim],
            _ => {
                let centre = &centres[rng.below(centres.len())];
                centre
                    .iter()
                    .map(|&c| (c + 0.4 * rng.normal()) as f32)
                    .collect()
            }
        };
        out.push(row);
    }
    out.concat()
}

/// Every row's other rows, best first, by the documented definition evaluated one pair at a time
/// in f64: `(similarity, index)`.
fn brute_force_ranking(values: &[f32], dim: usize) -> Vec<Vec<(f64, u32)>> {
    let rows = values.len() / dim;
    let row = |i: usize| &values[i * dim..(i + 1) * dim];
    let dot = |i: usize, j: usize| -> f64 {
        row(i)
            .iter()
            .zip(row(j))
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum()
    };
    let inverse: Vec<f64> = (0..rows)
        .map(|i| {
            let n = dot(i, i).sqrt();
            if n > 0.0 {
                1.0 / n
            } else {
                0.0
            }
        })
        .collect();
    (0..rows)
        .map(|i| {
            let mut all: Vec<(f64, u32)> = (0..rows)
                .filter(|&j| j != i)
                .map(|j| (dot(i, j) * inverse[i] * inverse[j], j as u32))
                .collect();
            all.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            all
        })
        .collect()
}

#[test]
fn neighbours_equal_brute_force_with_ties_and_near_ties_on_every_variant() {
    let (rows, dim, k) = (1300, 67, 7);
    let values = tricky_rows(rows, dim);
    let ranking = brute_force_ranking(&values, dim);
    let want: Vec<Vec<u32>> = ranking
        .iter()
        .map(|all| {
            let mut best: Vec<u32> = all[..k].iter().map(|e| e.1).collect();
            best.sort_unstable();
            best
        })
        .collect();
    // The k-th and (k+1)-th closer than bf16 resolves (exact ties included) on many rows: the
    // screen alone cannot order them, the re-rank must.
    let close = ranking
        .iter()
        .filter(|all| all[k - 1].0 - all[k].0 < 1e-4)
        .count();
    assert!(
        close > 100,
        "only {close} rows with a near-tie at the k-th place"
    );
    let supported: Vec<_> = NeighbourScreen::ALL
        .into_iter()
        .filter(|v| v.supported())
        .collect();
    eprintln!("variants run here: {supported:?}");
    for variant in supported {
        let got = cosine_neighbours(&values, dim, k, variant).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "variant {variant:?}, row {i}");
        }
    }
    assert_eq!(
        cosine_neighbours(&values, dim, k, NeighbourScreen::F32).unwrap(),
        cosine_neighbours(&values, dim, k, NeighbourScreen::fastest()).unwrap()
    );
}

#[test]
fn neighbours_of_a_duplicated_row_break_ties_by_index() {
    // Rows 0–3 are one row repeated: each one's first 3 neighbours are the other copies; its
    // fourth ties between rows 4 and 5 (copies of another row) and row 4 wins.
    let dim = 33;
    let base: Vec<f32> = (0..dim).map(|t| (t as f32 * 0.37).sin()).collect();
    let other: Vec<f32> = base
        .iter()
        .enumerate()
        .map(|(t, v)| v + if t == 0 { 0.5 } else { 0.0 })
        .collect();
    let far: Vec<f32> = (0..dim).map(|t| (t as f32 * 1.9).cos()).collect();
    let mut values = Vec::new();
    for _ in 0..4 {
        values.extend_from_slice(&base);
    }
    values.extend_from_slice(&other);
    values.extend_from_slice(&other);
    for _ in 0..10 {
        values.extend_from_slice(&far);
    }
    for variant in NeighbourScreen::ALL.into_iter().filter(|v| v.supported()) {
        let got = cosine_neighbours(&values, dim, 4, variant).unwrap();
        assert_eq!(got[0], vec![1, 2, 3, 4], "{variant:?}");
        assert_eq!(got[3], vec![0, 1, 2, 4], "{variant:?}");
    }
}
