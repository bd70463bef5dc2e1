//! The stats ops (scatter, symmetric eigen, SPD solve) on every backend present, `Pca` against
//! scikit-learn and against data of known covariance, and `mscope pca` end to end.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{
    assert_fails_cleanly, backend_tests, eigen_residuals, poke_tensor, random_orthogonal,
    reference_tensor, rel_error_f64, repo_path, reports_on_cpu_and_wgpu, run_mscope, run_mscope_ok,
    wgpu_with, Rng,
};
use mscope::backend::wgpu::WgpuOptions;
use mscope::backend::{self, Backend, BackendKind, Matrix64, OpFamily};
use mscope::instruments::pca::{separation, Pca};
use mscope::io::embeddings::{texts_sidecar_path, write_texts_beside, EmbeddingsFile};

backend_tests! {
    scatter_matches_f64_reference: Stats,
    symmetric_eigen_residuals: Stats,
    spd_solve_residuals_and_indefinite_error: Stats,
}

/// The stats ops compute in f64: agreement with an f64 reference far below f32's 1e-5.
const F64_TOL: f64 = 1e-10;

const REFERENCE: &str = "tests/fixtures/sklearn_reference.safetensors";

fn fixture(name: &str) -> EmbeddingsFile {
    EmbeddingsFile::read(&repo_path(&format!("tests/fixtures/{name}"))).unwrap()
}

fn random_symmetric(rng: &mut Rng, d: usize) -> Matrix64 {
    let mut a = Matrix64::zeros(d, d);
    for i in 0..d {
        for j in 0..=i {
            let v = rng.uniform() as f64;
            (*a.at_mut(i, j), *a.at_mut(j, i)) = (v, v);
        }
    }
    a
}

fn scatter_matches_f64_reference(be: &Arc<dyn Backend>) {
    check_scatter(be.as_ref(), &[(1, 1), (37, 5), (301, 67), (2100, 9)]);
    let t = be.upload(&[3, 2], &[0.0; 6]).unwrap();
    let err = be.scatter(&t, &[&[0, 3]]).unwrap_err().to_string();
    assert!(err.contains("row 3"), "{err}");
}

/// wgpu with a storage-binding cap of 8 KiB: the input is held in parts of 107 rows, and each
/// dispatch's partial results hold five 19×19 matrices, so items run in several batches.
#[test]
fn wgpu_scatter_runs_on_split_inputs() {
    let options = WgpuOptions {
        max_binding_bytes: Some(8 << 10),
        ..WgpuOptions::from_env()
    };
    if let Some(be) = wgpu_with(&options) {
        check_scatter(&be, &[(301, 19), (2100, 3)]);
    }
}

/// `scatter` of groups of the rows of random `[n, d]` inputs against an f64 reference: every
/// row, the odd rows, an empty group and 13 classes (`row % 13`) in one call. The CPU computes in
/// f64; wgpu accumulates each partial in f32 (WGSL has no portable f64), so it gets f32's
/// tolerance.
fn check_scatter(be: &dyn Backend, sizes: &[(usize, usize)]) {
    let tol = if be.name() == "cpu" { F64_TOL } else { 1e-5 };
    let mut rng = Rng::new(7);
    for &(n, d) in sizes {
        let x = rng.vec(n * d);
        let t = be.upload(&[n, d], &x).unwrap();
        let all: Vec<u32> = (0..n as u32).collect();
        let odd: Vec<u32> = all.iter().copied().filter(|r| r % 2 == 1).collect();
        let classes: Vec<Vec<u32>> = (0..13)
            .map(|c| all.iter().copied().filter(|r| r % 13 == c).collect())
            .collect();
        let groups: Vec<&[u32]> = [&all[..], &odd, &[]]
            .into_iter()
            .chain(classes.iter().map(|c| &c[..]))
            .collect();
        let got = be.scatter(&t, &groups).unwrap();
        for (g, rows) in groups.iter().enumerate() {
            let m = rows.len();
            let mean: Vec<f64> = (0..d)
                .map(|j| {
                    rows.iter()
                        .map(|&r| x[r as usize * d + j] as f64)
                        .sum::<f64>()
                        / m.max(1) as f64
                })
                .collect();
            let mut scatter = vec![0.0; d * d];
            for &r in rows.iter() {
                for i in 0..d {
                    for j in 0..d {
                        scatter[i * d + j] += (x[r as usize * d + i] as f64 - mean[i])
                            * (x[r as usize * d + j] as f64 - mean[j]);
                    }
                }
            }
            assert_eq!(got[g].count, m);
            if m == 0 {
                assert!(got[g]
                    .mean
                    .iter()
                    .chain(&got[g].scatter.data)
                    .all(|&v| v == 0.0));
                continue;
            }
            let mean_err = rel_error_f64(&got[g].mean, &mean);
            assert!(
                mean_err < tol,
                "{} n={n} d={d} group {g}: mean error {mean_err:e}",
                be.name()
            );
            if m > 1 {
                let err = rel_error_f64(&got[g].scatter.data, &scatter);
                assert!(
                    err < tol,
                    "{} n={n} d={d} group {g}: scatter error {err:e}",
                    be.name()
                );
            }
        }
    }
}

fn symmetric_eigen_residuals(be: &Arc<dyn Backend>) {
    let mut rng = Rng::new(11);
    // A batch of several (one solve per core) and a batch of one (all cores).
    for sizes in [vec![1, 2, 7, 33, 150], vec![97]] {
        let batch: Vec<Matrix64> = sizes
            .iter()
            .map(|&d| random_symmetric(&mut rng, d))
            .collect();
        let got = be.symmetric_eigen(&batch).unwrap();
        for (a, e) in batch.iter().zip(&got) {
            let d = a.rows;
            assert!(
                e.values.windows(2).all(|w| w[0] >= w[1]),
                "{}: not descending",
                be.name()
            );
            let (residual, orthogonality) = eigen_residuals(a, e);
            assert!(
                residual < F64_TOL,
                "{} d={d}: ‖AU − UΛ‖/‖UΛ‖ = {residual:e}",
                be.name()
            );
            assert!(
                orthogonality < F64_TOL,
                "{} d={d}: ‖UᵀU − I‖ = {orthogonality:e}",
                be.name()
            );
        }
    }
}

fn spd_solve_residuals_and_indefinite_error(be: &Arc<dyn Backend>) {
    let mut rng = Rng::new(13);
    let systems: Vec<(Matrix64, Matrix64)> = [(1, 1), (9, 3), (120, 4)]
        .iter()
        .map(|&(d, m)| {
            let g = random_symmetric(&mut rng, d);
            // GᵀG + I is positive definite.
            let mut a = Matrix64::zeros(d, d);
            for i in 0..d {
                for j in 0..d {
                    *a.at_mut(i, j) = (0..d).map(|k| g.at(k, i) * g.at(k, j)).sum::<f64>()
                        + f64::from(u8::from(i == j));
                }
            }
            let b = Matrix64 {
                rows: d,
                cols: m,
                data: rng.vec(d * m).into_iter().map(f64::from).collect(),
            };
            (a, b)
        })
        .collect();
    let got = be.spd_solve(&systems).unwrap();
    for ((a, b), x) in systems.iter().zip(&got) {
        let ax: Vec<f64> = (0..b.rows * b.cols)
            .map(|idx| {
                (0..a.rows)
                    .map(|k| a.at(idx / b.cols, k) * x.at(k, idx % b.cols))
                    .sum()
            })
            .collect();
        let err = rel_error_f64(&ax, &b.data);
        assert!(
            err < F64_TOL,
            "{} d={}: ‖AX − B‖/‖B‖ = {err:e}",
            be.name(),
            a.rows
        );
    }
    let mut indefinite = systems.clone();
    *indefinite[1].0.at_mut(0, 0) = -1.0;
    let err = be.spd_solve(&indefinite).unwrap_err().to_string();
    assert!(
        err.contains("matrix 1") && err.contains("not positive definite"),
        "{err}"
    );
}

#[test]
fn pca_matches_scikit_learn() {
    let file = fixture("sklearn_embeddings.safetensors");
    let be = backend::open(BackendKind::Cpu, OpFamily::Stats).unwrap();
    let x = be
        .upload(&[file.rows(), file.dim], &file.embeddings)
        .unwrap();
    let pca = Pca::fit(be.as_ref(), &x, file.dim).unwrap();
    let (_, ratio) = reference_tensor(REFERENCE, "pca_explained_variance_ratio");
    let (_, variance) = reference_tensor(REFERENCE, "pca_explained_variance");
    let (_, components) = reference_tensor(REFERENCE, "pca_components");
    // References are stored as f32: 6e-8 of rounding, well inside the tolerances.
    let err = rel_error_f64(&pca.explained_variance_ratio, &ratio);
    assert!(
        err < 1e-6,
        "explained_variance_ratio: relative error {err:e}"
    );
    let err = rel_error_f64(&pca.explained_variance, &variance);
    assert!(err < 1e-6, "explained_variance: relative error {err:e}");
    for c in 0..file.dim {
        let ours = &pca.components.data[c * file.dim..(c + 1) * file.dim];
        let theirs = &components[c * file.dim..(c + 1) * file.dim];
        let sign = if ours.iter().zip(theirs).map(|(a, b)| a * b).sum::<f64>() < 0.0 {
            -1.0
        } else {
            1.0
        };
        let ours: Vec<f64> = ours.iter().map(|v| sign * v).collect();
        let err = rel_error_f64(&ours, theirs);
        assert!(
            err < 1e-5,
            "component {c}: relative error {err:e} (up to sign)"
        );
    }
}

/// Rows `μ ± c_i q_i` (q_i orthonormal) have mean μ and covariance exactly `Σ λ_i q_i q_iᵀ` when
/// `c_i² = λ_i (n − 1) / 2`: PCA must recover the λ_i and the q_i, signed as scikit-learn signs.
#[test]
fn pca_recovers_a_known_covariance() {
    let mut rng = Rng::new(17);
    let be = backend::open(BackendKind::Cpu, OpFamily::Stats).unwrap();
    for d in [3, 16, 41] {
        let q = random_orthogonal(&mut rng, d);
        let lambdas: Vec<f64> = (0..d).map(|i| 4.0 * 0.8f64.powi(i as i32)).collect();
        let mean: Vec<f64> = (0..d).map(|_| 10.0 * rng.uniform() as f64).collect();
        let n = 2 * d;
        let mut x = Vec::with_capacity(n * d);
        for i in 0..d {
            let c = (lambdas[i] * (n - 1) as f64 / 2.0).sqrt();
            for sign in [1.0, -1.0] {
                x.extend((0..d).map(|j| (mean[j] + sign * c * q[i * d + j]) as f32));
            }
        }
        let t = be.upload(&[n, d], &x).unwrap();
        let k = d.min(5);
        let pca = Pca::fit(be.as_ref(), &t, k).unwrap();
        // The rows are f32: relative errors of ~1e-7 in the data bound what can be recovered.
        let err = rel_error_f64(&pca.explained_variance, &lambdas[..k]);
        assert!(err < 1e-5, "d={d}: eigenvalues off by {err:e}");
        let total: f64 = lambdas.iter().sum();
        let ratio: Vec<f64> = lambdas[..k].iter().map(|l| l / total).collect();
        assert!(
            rel_error_f64(&pca.explained_variance_ratio, &ratio) < 1e-5,
            "d={d}: ratios"
        );
        for c in 0..k {
            let want = &q[c * d..(c + 1) * d];
            let largest = want
                .iter()
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { *v } else { m });
            let want: Vec<f64> = want.iter().map(|v| v * largest.signum()).collect();
            let err = rel_error_f64(&pca.components.data[c * d..(c + 1) * d], &want);
            assert!(err < 1e-4, "d={d} component {c}: error {err:e}");
        }
    }
}

#[test]
fn separation_ranks_labels_along_a_component() {
    // One component; label 0 scores lowest, label 1 highest, label 2 ties label 0 on one row.
    let scores = [0.0, 1.0, 5.0, 6.0, 1.0, 9.0];
    let labels = [0, 0, 1, 1, 2, -1];
    let names = vec![
        "a".to_string(),
        "b".to_string(),
        "c".to_string(),
        "unused".to_string(),
    ];
    let s = separation(&scores, 1, &labels, &names);
    assert_eq!(s.len(), 3, "labels without rows are skipped");
    assert_eq!(
        (s[0].label.as_str(), s[0].rows, s[0].mean_score[0]),
        ("a", 2, 0.5)
    );
    // a's rows beat none of b's and c's rows, and tie with c's on one: (0 + 0.5) / (2·3).
    assert!(
        (s[0].auc_vs_rest[0] - 0.5 / 6.0).abs() < 1e-12,
        "{:?}",
        s[0]
    );
    assert_eq!(s[1].auc_vs_rest[0], 1.0);
}

#[test]
fn cli_writes_report_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo_path("tests/fixtures/sklearn_embeddings.safetensors");
    let (json, png) = (dir.path().join("pca.json"), dir.path().join("pca.png"));
    let out = run_mscope_ok(&[
        "pca",
        "--input",
        input.to_str().unwrap(),
        "--components",
        "3",
        "--explain",
        "2",
        "--out",
        json.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| PC1 |") && stdout.contains("| alpha | 100 |"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["n"], 300);
    assert_eq!(report["dim"], 24);
    assert_eq!(
        report["explained_variance_ratio"].as_array().unwrap().len(),
        3
    );
    assert_eq!(report["components"][2].as_array().unwrap().len(), 24);
    assert_eq!(report["explain"][0]["highest"].as_array().unwrap().len(), 2);
    // The fixture has no texts sidecar: rows only, and the summary says why.
    assert!(report["explain"][0].get("highest_words").is_none());
    assert!(stdout.contains("Texts unavailable (no sidecar"), "{stdout}");
    for name in ["pca.png", "pca.pc2-pc3.png", "pca.variance.png"] {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name} is not a PNG");
    }
}

/// 40 rows whose PC1 score is their index (plus small noise): the ten highest talk about apples,
/// the ten lowest about rivers, the rest about nothing in particular.
fn write_explain_fixture(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(5);
    let n = 40;
    let mut embeddings = Vec::new();
    for i in 0..n {
        embeddings.extend([
            i as f32,
            0.01 * rng.normal() as f32,
            0.01 * rng.normal() as f32,
        ]);
    }
    let texts: Vec<String> = (0..n)
        .map(|i| {
            if i >= 30 {
                format!("Apple cider and apple pie, batch {i}")
            } else if i < 10 {
                format!("River water and river stones, bend {i}")
            } else {
                "Nothing much happened today".to_string()
            }
        })
        .collect();
    let file = EmbeddingsFile {
        embeddings,
        dim: 3,
        labels: (0..n).map(|i| i64::from(i >= 20)).collect(),
        label_names: vec!["low".into(), "high".into()],
        model: String::new(),
        pooling: String::new(),
        normalized: false,
        max_length: 0,
    };
    let path = dir.join("explain.safetensors");
    file.write(&path).unwrap();
    write_texts_beside(&path, &texts, &file.labels, &file.label_names).unwrap();
    path
}

#[test]
fn cli_explain_shows_texts_and_words_at_each_end() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_explain_fixture(dir.path());
    let json = dir.path().join("pca.json");
    let out = run_mscope(&[
        "pca",
        "--input",
        input.to_str().unwrap(),
        "--components",
        "1",
        "--explain",
        "3",
        "--out",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let pc1 = &report["explain"][0];
    // The component points along +x (largest entry positive), so the high end is the apple end.
    let highest = pc1["highest"].as_array().unwrap();
    let lowest = pc1["lowest"].as_array().unwrap();
    assert_eq!((highest.len(), lowest.len()), (3, 3));
    assert_eq!(highest[0]["row"], 39);
    assert!(highest[0]["score"].as_f64().unwrap() > 0.0);
    assert_eq!(highest[0]["label"], "high");
    assert_eq!(highest[0]["text"], "Apple cider and apple pie, batch 39");
    assert_eq!(lowest[0]["row"], 0);
    assert_eq!(lowest[0]["text"], "River water and river stones, bend 0");
    assert_eq!(pc1["highest_words"][0]["word"], "apple");
    assert_eq!(pc1["lowest_words"][0]["word"], "river");
    let words = |end: &str| -> Vec<&str> {
        pc1[end]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["word"].as_str().unwrap())
            .collect()
    };
    // "and" is equally common at both ends, so neither over-uses it.
    assert!(!words("highest_words").contains(&"and"));
    assert!(!words("lowest_words").contains(&"and"));
    assert!(
        stdout.contains("Apple cider and apple pie, batch 39")
            && stdout.contains("high end apple (")
            && stdout.contains("low end river ("),
        "{stdout}"
    );
}

#[test]
fn cli_explain_rejects_a_mismatched_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_explain_fixture(dir.path());
    let sidecar = texts_sidecar_path(&input);
    let lines = std::fs::read_to_string(&sidecar).unwrap();
    let args = ["pca", "--input", input.to_str().unwrap(), "--explain", "3"];
    let all: Vec<&str> = lines.lines().collect();
    std::fs::write(&sidecar, all[..all.len() - 1].join("\n")).unwrap();
    assert_fails_cleanly(
        &args,
        &["explain.safetensors.texts.jsonl", "39 texts", "40 rows"],
    );
    std::fs::write(&sidecar, lines.replacen("{\"label", "not json {\"label", 1)).unwrap();
    assert_fails_cleanly(
        &args,
        &["explain.safetensors.texts.jsonl:2:", "invalid JSON"],
    );
    // Rows and count intact, but the embeddings file changed after its sidecar was written.
    std::fs::write(&sidecar, &lines).unwrap();
    poke_tensor(&input, "embeddings", 0, &1.5f32.to_le_bytes());
    assert_fails_cleanly(
        &args,
        &[
            "explain.safetensors.texts.jsonl: belongs to other contents of",
            "rerun the command that wrote them",
        ],
    );
}

#[test]
fn cli_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo_path("tests/fixtures/sklearn_embeddings.safetensors");
    let input = input.to_str().unwrap();
    assert_fails_cleanly(
        &["pca", "--input", input, "--components", "25"],
        &["25 components", "dimension 24"],
    );

    // The writer refuses NaN embeddings, so the NaN is put into a written file.
    let file = fixture("sklearn_embeddings.safetensors");
    let bad = dir.path().join("nan.safetensors");
    file.write(&bad).unwrap();
    let offset = (7 * file.dim + 3) * 4;
    poke_tensor(&bad, "embeddings", offset, &f32::NAN.to_le_bytes());
    assert_fails_cleanly(
        &["pca", "--input", bad.to_str().unwrap()],
        &["nan.safetensors", "row 7, column 3", "NaN"],
    );

    let json = dir.path().join("never.json");
    assert_fails_cleanly(
        &[
            "pca",
            "--input",
            bad.to_str().unwrap(),
            "--out",
            json.to_str().unwrap(),
        ],
        &["row 7"],
    );
    assert!(!json.exists(), "a failed run wrote its report");
}

/// `mscope pca --backend wgpu` against `--backend cpu`: the same spectrum and components (up to
/// each component's sign) from the wgpu scatter, within f32's tolerance.
#[test]
fn cli_wgpu_pca_equals_cpu() {
    let input = repo_path("tests/fixtures/sklearn_embeddings.safetensors");
    let Some((cpu, gpu)) = reports_on_cpu_and_wgpu(&[
        "pca",
        "--input",
        input.to_str().unwrap(),
        "--components",
        "3",
    ]) else {
        return;
    };
    let numbers = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for key in ["explained_variance", "explained_variance_ratio"] {
        let err = rel_error_f64(&numbers(&gpu[key]), &numbers(&cpu[key]));
        assert!(err < 1e-5, "{key}: wgpu against cpu {err:e}");
    }
    for c in 0..3 {
        let want = numbers(&cpu["components"][c]);
        let got = numbers(&gpu["components"][c]);
        let flipped: Vec<f64> = got.iter().map(|v| -v).collect();
        let err = rel_error_f64(&got, &want).min(rel_error_f64(&flipped, &want));
        assert!(err < 1e-5, "component {c}: wgpu against cpu {err:e}");
    }
}

const FACTORS_REFERENCE: &str = "tests/fixtures/sklearn_factors_reference.safetensors";

/// `mscope pca --factor` on rows with three label columns (language × subject × translated),
/// read from each source that holds several: every level's AUC vs rest on every component equals
/// scikit-learn's `roc_auc_score` (a ratio of rank counts: exact unless two scores tie), and its
/// mean score matches scikit-learn's PCA scores.
#[test]
fn cli_factor_aucs_match_roc_auc_score() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = |name: &str| repo_path(&format!("tests/fixtures/{name}"));
    let (npz, csv, parquet) = (
        fixture("sklearn_factors.npz"),
        fixture("sklearn_factors.csv"),
        fixture("sklearn_factors.parquet"),
    );
    let factors = ["language", "subject", "translated"];
    let sources: [&[&str]; 3] = [
        &["--input", npz.to_str().unwrap()],
        &["--input", parquet.to_str().unwrap()],
        &[
            "--input",
            npz.to_str().unwrap(),
            "--labels",
            csv.to_str().unwrap(),
        ],
    ];
    for (s, source) in sources.iter().enumerate() {
        let json = dir.path().join(format!("{s}.json"));
        let mut args = vec!["pca", "--components", "3", "--backend", "cpu"];
        args.extend_from_slice(source);
        for f in factors {
            args.extend(["--factor", f]);
        }
        args.extend(["--out", json.to_str().unwrap()]);
        let out = run_mscope_ok(&args);
        let md = String::from_utf8_lossy(&out.stdout);
        assert!(
            md.contains("## Factor `subject` along the components"),
            "{md}"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let got = report["factors"].as_array().unwrap();
        assert_eq!(got.len(), factors.len(), "{source:?}");
        // The first factor is also the rows' labels.
        assert_eq!(report["labels"], got[0]["levels"], "{source:?}");
        for (factor, entry) in factors.iter().zip(got) {
            assert_eq!(entry["factor"], *factor);
            let levels = entry["levels"].as_array().unwrap();
            assert!(levels.len() >= 2);
            for level in levels {
                let name = level["label"].as_str().unwrap();
                let what = format!("{source:?} {factor}={name}");
                let values = |key: &str| -> Vec<f64> {
                    level[key]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                };
                let (_, auc) =
                    reference_tensor(FACTORS_REFERENCE, &format!("pca_{factor}_{name}_auc"));
                let (_, mean) =
                    reference_tensor(FACTORS_REFERENCE, &format!("pca_{factor}_{name}_mean"));
                for (c, (got, want)) in values("auc_vs_rest").iter().zip(&auc).enumerate() {
                    assert!(
                        (got - want).abs() < 1e-12,
                        "{what} PC{}: AUC {got} vs {want}",
                        c + 1
                    );
                }
                // Mean scores: f64 PCA of the same f32 rows on both sides.
                for (c, (got, want)) in values("mean_score").iter().zip(&mean).enumerate() {
                    assert!(
                        (got - want).abs() < 1e-9 * (1.0 + want.abs()),
                        "{what} PC{}: mean score {got} vs {want}",
                        c + 1
                    );
                }
            }
        }
    }
}

/// Without --factor the report has no `factors` key (the single-label report is unchanged).
#[test]
fn cli_report_without_factors_has_no_factors_key() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let input = repo_path("tests/fixtures/sklearn_embeddings.safetensors");
    run_mscope_ok(&[
        "pca",
        "--input",
        input.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        json.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report.get("factors").is_none());
    assert_eq!(report["labels"].as_array().unwrap().len(), 4);
}
