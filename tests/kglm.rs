//! The kernel GLM against scikit-learn, Kendall τ-b and R² against scipy / scikit-learn, kernel
//! comparison against numpy (fixtures of tools/make_kglm_fixtures.py), the properties each
//! measure must have, `mscope kglm` / `mscope ntk-compare` end to end, and the faithfulness to a
//! transformer classifier against transformers' logits and scipy's τ
//! (tools/make_kglm_classifier_fixtures.py).

mod common;

use std::path::Path;

use common::{assert_fails_cleanly, rel_error_f64, repo_path, run_mscope, run_mscope_ok, Rng};
use mscope::backend::Activation;
use mscope::data::Dataset;
use mscope::instruments::kernel_compare::{cka, compare};
use mscope::instruments::kglm::{
    self, faithfulness, kendall_tau_b, r2_score, softmax, FitOptions, KernelGlm,
};
use mscope::io::kernel_file::KernelFile;
use mscope::io::kernel_inputs::{KglmInputs, KglmPaths, NetworkPaths};
use mscope::io::tensor_file::TensorFile;
use mscope::io::texts::FieldNames;
use mscope::models::mlp::{Layer, Mlp};

const FIXTURES: &str = "tests/fixtures/kglm";

fn fixture_kernel(name: &str) -> KernelFile {
    KernelFile::read(&repo_path(&format!("{FIXTURES}/{name}.safetensors"))).unwrap()
}

fn reference() -> TensorFile {
    TensorFile::read(&repo_path(&format!("{FIXTURES}/reference.safetensors"))).unwrap()
}

fn f64s(file: &TensorFile, name: &str) -> Vec<f64> {
    file.f64(name).unwrap().1
}

fn labels(file: &TensorFile, name: &str) -> Vec<usize> {
    file.i64(name)
        .unwrap()
        .1
        .iter()
        .map(|&y| y as usize)
        .collect()
}

#[test]
fn kglm_matches_scikit_learn() {
    let reference = reference();
    let (train, test) = (
        fixture_kernel("train_kernel"),
        fixture_kernel("test_kernel"),
    );
    let options = FitOptions {
        l2: 1.0 / 0.5, // the fixture's C = 0.5
        tol: 1e-10,
        max_iter: 10_000,
    };
    let glm = KernelGlm::fit(&train.values, &labels(&reference, "y_train"), 3, &options).unwrap();
    assert!(glm.converged, "‖∇‖∞ = {}", glm.gradient_norm);

    // scikit-learn's coef_ is [classes, features]; ours is its transpose.
    let coef = f64s(&reference, "coef");
    let transposed: Vec<f64> = (0..3 * 60).map(|at| coef[(at % 3) * 60 + at / 3]).collect();
    let coef_error = rel_error_f64(&glm.weights, &transposed);
    assert!(
        coef_error < 1e-4,
        "coefficients: relative error {coef_error:.2e}"
    );
    let intercept_error = rel_error_f64(&glm.intercept, &f64s(&reference, "intercept"));
    assert!(glm.intercept.iter().sum::<f64>().abs() < 1e-12);
    assert!(
        intercept_error < 1e-4,
        "intercepts: relative error {intercept_error:.2e}"
    );

    let proba = softmax(&glm.logits(&test.values), 3);
    let worst = proba
        .iter()
        .zip(f64s(&reference, "proba"))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-6,
        "test probabilities differ by up to {worst:.2e}"
    );
}

#[test]
fn kglm_reports_when_it_stops_short() {
    let reference = reference();
    let train = fixture_kernel("train_kernel");
    let y = labels(&reference, "y_train");
    let options = FitOptions {
        max_iter: 3,
        ..FitOptions::default()
    };
    let glm = KernelGlm::fit(&train.values, &y, 3, &options).unwrap();
    assert_eq!((glm.iterations, glm.converged), (3, false));
    assert!(glm.gradient_norm > options.tol);
    let no_penalty = FitOptions {
        l2: 0.0,
        ..FitOptions::default()
    };
    assert!(KernelGlm::fit(&train.values, &y, 3, &no_penalty).is_err());
    assert!(KernelGlm::fit(&train.values, &y, 2, &FitOptions::default()).is_err());
}

#[test]
fn kendall_tau_and_r2_match_scipy_and_scikit_learn() {
    let reference = reference();
    let tau = kendall_tau_b(&f64s(&reference, "tau_x"), &f64s(&reference, "tau_y"));
    let want = f64s(&reference, "tau")[0];
    assert!(
        (tau - want).abs() < 1e-12,
        "τ-b {tau} against scipy's {want}"
    );
    let r2 = r2_score(&f64s(&reference, "r2_true"), &f64s(&reference, "r2_pred"));
    let want = f64s(&reference, "r2")[0];
    assert!(
        (r2 - want).abs() < 1e-12,
        "R² {r2} against scikit-learn's {want}"
    );
}

#[test]
fn kernel_comparison_matches_numpy() {
    let reference = reference();
    let (a, b) = (
        reference.f32("cka_a").unwrap().1,
        reference.f32("cka_b").unwrap().1,
    );
    let c = compare(&a, &b, 40).unwrap();
    let close = |got: f64, name: &str, tol: f64| {
        let want = f64s(&reference, name)[0];
        assert!(
            (got - want).abs() < tol,
            "{name}: {got} against numpy's {want}"
        );
    };
    close(c.cka, "cka", 1e-10);
    close(c.relative_frobenius, "relative_frobenius", 1e-12);
    // Eigenvalues from two LAPACK-class solvers agree to rounding of the largest one.
    close(c.spectrum_l1, "spectrum_l1", 1e-9);
    close(c.spectrum_l2, "spectrum_l2", 1e-9);
    let ranks = f64s(&reference, "effective_rank");
    for (got, want) in c.effective_rank.iter().zip(&ranks) {
        assert!(
            (got - want).abs() < 1e-8,
            "effective rank {got} against {want}"
        );
    }
}

/// Every pair, counted directly: the O(n²) definition of τ-b.
fn kendall_brute_force(x: &[f64], y: &[f64]) -> f64 {
    let (mut concordant, mut discordant, mut tied_x, mut tied_y) = (0.0f64, 0.0, 0.0, 0.0);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            let s = (x[i] - x[j]).signum() * (y[i] - y[j]).signum();
            match (x[i] == x[j], y[i] == y[j]) {
                (true, true) => {}
                (true, false) => tied_x += 1.0,
                (false, true) => tied_y += 1.0,
                _ if s > 0.0 => concordant += 1.0,
                _ => discordant += 1.0,
            }
        }
    }
    let untied = concordant + discordant;
    (concordant - discordant) / ((untied + tied_x) * (untied + tied_y)).sqrt()
}

#[test]
fn kendall_tau_properties() {
    let x: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
    let increasing: Vec<f64> = x.iter().map(|v| 3.0 * v + 1.0).collect();
    let reversed: Vec<f64> = x.iter().map(|v| -v.exp()).collect();
    assert!((kendall_tau_b(&x, &increasing) - 1.0).abs() < 1e-15);
    assert!((kendall_tau_b(&x, &reversed) + 1.0).abs() < 1e-15);
    // Of the 6 pairs one is tied in y, the other five concordant: 5 / √(6·5).
    let tau = kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[1.0, 1.0, 2.0, 3.0]);
    assert!((tau - 5.0 / 30f64.sqrt()).abs() < 1e-15, "{tau}");
    assert!(kendall_tau_b(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());

    let mut rng = Rng::new(11);
    for n in [2, 3, 17, 200] {
        let a: Vec<f64> = (0..n).map(|_| rng.below(7) as f64).collect();
        let b: Vec<f64> = (0..n).map(|_| rng.below(5) as f64).collect();
        let (fast, slow) = (kendall_tau_b(&a, &b), kendall_brute_force(&a, &b));
        assert!((fast - slow).abs() < 1e-12, "n = {n}: {fast} vs {slow}");
    }
}

fn rbf(points: &[f64], dim: usize, gamma: f64) -> Vec<f32> {
    let n = points.len() / dim;
    let mut k = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let d2: f64 = (0..dim)
                .map(|c| (points[i * dim + c] - points[j * dim + c]).powi(2))
                .sum();
            k.push((-gamma * d2).exp() as f32);
        }
    }
    k
}

#[test]
fn kernel_comparison_properties() {
    let mut rng = Rng::new(5);
    let points: Vec<f64> = (0..30 * 3).map(|_| rng.normal()).collect();
    let (a, b) = (rbf(&points, 3, 0.4), rbf(&points, 3, 2.0));
    let same = compare(&a, &a, 30).unwrap();
    assert!((same.cka - 1.0).abs() < 1e-12);
    assert_eq!((same.spectrum_l1, same.spectrum_l2), (0.0, 0.0));
    assert_eq!(same.relative_frobenius, 0.0);
    assert_eq!(same.effective_rank[0], same.effective_rank[1]);
    assert!(same.effective_rank[0] > 1.0 && same.effective_rank[0] < 30.0);

    // CKA and the normalised spectra ignore the kernels' scale (a power of two, so the f32
    // kernel is scaled exactly).
    let scaled: Vec<f32> = b.iter().map(|v| 4.0 * v).collect();
    let (plain, rescaled) = (
        compare(&a, &b, 30).unwrap(),
        compare(&a, &scaled, 30).unwrap(),
    );
    assert!(plain.cka < 0.999);
    assert!((plain.cka - rescaled.cka).abs() < 1e-12);
    assert!((plain.spectrum_l1 - rescaled.spectrum_l1).abs() < 1e-12);
    let widen = |k: &[f32]| k.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    let symmetric = cka(&widen(&b), &widen(&a), 30);
    assert!((symmetric - plain.cka).abs() < 1e-14);

    assert!(compare(&a, &b[..29 * 30], 30).is_err());
}

#[test]
fn faithfulness_of_a_binary_network() {
    // The surrogate's log-odds z₁ − z₀ equal the network's logit: perfect agreement, except
    // that the saturated point (p = 1 in f64) is left out of τ.
    let network = [2.0f32, -1.0, 0.5, -3.0, 800.0];
    let surrogate: Vec<f64> = network
        .iter()
        .flat_map(|&z| [-0.25 * f64::from(z), 0.75 * f64::from(z)])
        .collect();
    let labels = [1, 0, 0, 0, 1];
    let f = faithfulness(&surrogate, 2, &network, 1, &labels).unwrap();
    assert_eq!(f.dropped_points, 1);
    assert!((f.kendall_tau - 1.0).abs() < 1e-15);
    assert!((f.r2_logits - 1.0).abs() < 1e-15 && (f.pearson_logits - 1.0).abs() < 1e-15);
    assert_eq!(f.accuracy_surrogate, 0.8);
    assert_eq!(f.accuracy_network, 0.8);

    assert!(faithfulness(&surrogate, 2, &network, 3, &labels).is_err());
    assert!(faithfulness(&surrogate, 2, &network, 1, &[1, 0, 2, 0, 1]).is_err());
}

/// A seeded tanh MLP `dim → 12 → outputs`.
fn random_mlp(rng: &mut Rng, dim: usize, outputs: usize) -> Mlp {
    let layer = |rng: &mut Rng, d_in: usize, d_out: usize| Layer {
        weight: rng.vec(d_in * d_out),
        bias: rng.vec(d_out),
        d_in,
        d_out,
    };
    Mlp::new(
        vec![layer(rng, dim, 12), layer(rng, 12, outputs)],
        Activation::Tanh,
    )
    .unwrap()
}

/// Points, kernels, labels (the network's own predictions) and the model in `dir`.
struct Setup {
    train_kernel: String,
    test_kernel: String,
    train: String,
    test: String,
    model: String,
}

fn setup(dir: &Path, outputs: usize) -> Setup {
    let (dim, n_train, n_test) = (3, 40, 16);
    let classes = outputs.max(2);
    // The first seed whose network predicts every class on the training points.
    let (mlp, x, y) = (0..)
        .map(|seed| {
            let mut rng = Rng::new(seed);
            let mlp = random_mlp(&mut rng, dim, outputs);
            let x: Vec<f32> = rng
                .vec((n_train + n_test) * dim)
                .iter()
                .map(|v| 3.0 * v)
                .collect();
            let y: Vec<i64> = mlp
                .logits(&x)
                .unwrap()
                .chunks_exact(outputs)
                .map(|z| match outputs {
                    1 => i64::from(z[0] > 0.0),
                    _ => (0..outputs).fold(0, |b, c| if z[c] > z[b] { c } else { b }) as i64,
                })
                .collect();
            (mlp, x, y)
        })
        .find(|(_, _, y)| (0..classes as i64).all(|c| y[..n_train].contains(&c)))
        .unwrap();
    let all = Dataset::new(x.clone(), dim, y).unwrap();
    let kernel = rbf(
        &x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        dim,
        0.8,
    );
    let n = n_train + n_test;
    let block = |rows: std::ops::Range<usize>| KernelFile {
        values: rows
            .clone()
            .flat_map(|i| kernel[i * n..i * n + n_train].to_vec())
            .collect(),
        rows: rows.len(),
        cols: n_train,
        kind: "trntk".into(),
        normalized: true,
        projection_dim: 0,
    };
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let s = Setup {
        train_kernel: path("k_tt.safetensors"),
        test_kernel: path("k_st.safetensors"),
        train: path("train.safetensors"),
        test: path("test.safetensors"),
        model: path("mlp.safetensors"),
    };
    block(0..n_train).write(Path::new(&s.train_kernel)).unwrap();
    block(n_train..n).write(Path::new(&s.test_kernel)).unwrap();
    all.slice(0..n_train).write(Path::new(&s.train)).unwrap();
    all.slice(n_train..n).write(Path::new(&s.test)).unwrap();
    mlp.write(Path::new(&s.model)).unwrap();
    s
}

#[test]
fn kglm_cli_end_to_end() {
    for outputs in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let s = setup(dir.path(), outputs);
        let (json, png) = (dir.path().join("r.json"), dir.path().join("r.png"));
        let out = run_mscope_ok(&[
            "kglm",
            "--train-kernel",
            &s.train_kernel,
            "--train-labels",
            &s.train,
            "--test-kernel",
            &s.test_kernel,
            "--test-labels",
            &s.test,
            "--model",
            &s.model,
            "--test-data",
            &s.test,
            "--l2",
            "0.1",
            "--out",
            json.to_str().unwrap(),
            "--plot",
            png.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Kendall τ"), "{stdout}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        for key in [
            "kendall_tau",
            "r2_logits",
            "pearson_logits",
            "accuracy_surrogate",
            "accuracy_network",
            "accuracy_differential",
            "l2",
        ] {
            assert!(report[key].is_f64(), "{key}: {}", report[key]);
        }
        assert_eq!(report["n_train"], 40);
        assert_eq!(report["n_test"], 16);
        assert_eq!(report["classes"], outputs.max(2));
        assert_eq!(report["converged"], true);
        assert_eq!(report["kernel_kind"], "trntk");
        assert_eq!(report["projection_dim"], 0);
        assert_eq!(
            report["accuracy_network"], 1.0,
            "labels are its predictions"
        );
        assert!(report["iterations"].as_u64().unwrap() > 0);
        assert!(report["dropped_points"].is_u64());
        let tau = report["kendall_tau"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&tau));
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    }
}

#[test]
fn kglm_cli_without_a_model_and_with_text_labels() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), 3);
    let text_labels = dir.path().join("test_labels.txt");
    let y = Dataset::read(Path::new(&s.test)).unwrap().y;
    let text: String = y.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&text_labels, format!("# test labels\n{text}")).unwrap();
    let json = dir.path().join("r.json");
    run_mscope_ok(&[
        "kglm",
        "--train-kernel",
        &s.train_kernel,
        "--train-labels",
        &s.train,
        "--test-kernel",
        &s.test_kernel,
        "--test-labels",
        text_labels.to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["accuracy_surrogate"].is_f64());
    assert!(report["kendall_tau"].is_null());
}

/// The fixture of tools/make_kglm_classifier_fixtures.py: `tests/fixtures/kglm/classifier_NAME`.
fn classifier_fixture(name: &str) -> String {
    repo_path(&format!("{FIXTURES}/classifier_{name}"))
        .to_string_lossy()
        .into_owned()
}

const TINY_BERT: &str = "tests/fixtures/classifiers/tiny-bert-cls";

#[test]
fn kglm_of_a_transformer_classifier_matches_transformers_and_scipy() {
    let reference =
        TensorFile::read(Path::new(&classifier_fixture("reference.safetensors"))).unwrap();
    let (model, test_texts) = (repo_path(TINY_BERT), classifier_fixture("test.jsonl"));
    let (train_kernel, test_kernel) = (
        classifier_fixture("train_kernel.safetensors"),
        classifier_fixture("test_kernel.safetensors"),
    );
    let train_texts = classifier_fixture("train.jsonl");
    let fields = FieldNames::default();
    // Labels straight from the texts' label names (id2label).
    let inputs = KglmInputs::read(&KglmPaths {
        train_kernel: Path::new(&train_kernel),
        train_labels: Path::new(&train_texts),
        test_kernel: Path::new(&test_kernel),
        test_labels: Path::new(&test_texts),
        network: Some(NetworkPaths {
            model: &model,
            test_data: Path::new(&test_texts),
            fields: &fields,
        }),
    })
    .unwrap();
    let network = inputs.network.as_ref().unwrap();
    assert_eq!((inputs.classes, network.outputs), (3, 3));
    let logits: Vec<f64> = network.values.iter().map(|&v| f64::from(v)).collect();
    let logits_error = rel_error_f64(&logits, &f64s(&reference, "logits"));
    assert!(
        logits_error < 1e-5,
        "logits vs transformers: {logits_error:.2e}"
    );

    let options = FitOptions {
        tol: 1e-10,
        ..FitOptions::default()
    };
    let files = (
        Path::new(&train_kernel),
        Path::new(&test_kernel),
        Some(model.as_path()),
    );
    let report = kglm::report(&inputs, files, &options).unwrap();
    let faithful = report.faithfulness.as_ref().unwrap();
    let (surrogate_p, network_p): (Vec<f64>, Vec<f64>) =
        faithful.correct_class_probability.iter().copied().unzip();
    let network_error = rel_error_f64(&network_p, &f64s(&reference, "network_p"));
    assert!(network_error < 1e-5, "network p: {network_error:.2e}");
    let surrogate_error = rel_error_f64(&surrogate_p, &f64s(&reference, "surrogate_p"));
    assert!(
        surrogate_error < 1e-6,
        "surrogate p vs scikit-learn: {surrogate_error:.2e}"
    );
    let want_tau = f64s(&reference, "tau")[0];
    assert_eq!(report.dropped_points, Some(0));
    assert!(
        (report.kendall_tau.unwrap() - want_tau).abs() < 1e-12,
        "τ {} vs scipy {want_tau}",
        report.kendall_tau.unwrap()
    );

    // The command gives the same τ, with label files of either kind.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let test_labels = dir.path().join("test_labels.txt");
    let indices: String = inputs.test_y.iter().map(|y| format!("{y}\n")).collect();
    std::fs::write(&test_labels, indices).unwrap();
    run_mscope_ok(&[
        "kglm",
        "--train-kernel",
        &train_kernel,
        "--train-labels",
        &train_texts,
        "--test-kernel",
        &test_kernel,
        "--test-labels",
        test_labels.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--test-data",
        &test_texts,
        "--tol",
        "1e-10",
        "--out",
        json.to_str().unwrap(),
    ]);
    let cli: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!((cli["kendall_tau"].as_f64().unwrap() - want_tau).abs() < 1e-12);
    assert_eq!(cli["classes"], 3);
    assert_eq!(cli["n_test"], 10);
}

#[test]
fn kglm_of_a_transformer_classifier_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo_path(TINY_BERT).to_string_lossy().into_owned();
    let test_texts = classifier_fixture("test.jsonl");
    let args = |test_data: &str, test_labels: &str| -> Vec<String> {
        [
            "kglm",
            "--train-kernel",
            &classifier_fixture("train_kernel.safetensors"),
            "--train-labels",
            &classifier_fixture("train.jsonl"),
            "--test-kernel",
            &classifier_fixture("test_kernel.safetensors"),
            "--test-labels",
            test_labels,
            "--model",
            &model,
            "--test-data",
            test_data,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: &[String], needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails_cleanly(&args, needles);
    };
    // Texts in another order than the kernel's rows.
    let lines: Vec<String> = std::fs::read_to_string(&test_texts)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut reordered = lines.clone();
    let j = (1..lines.len())
        .find(|&j| label_of(&lines[0]) != label_of(&lines[j]))
        .unwrap();
    reordered.swap(0, j);
    let shuffled = dir.path().join("shuffled.jsonl");
    std::fs::write(&shuffled, reordered.join("\n") + "\n").unwrap();
    run(
        &args(shuffled.to_str().unwrap(), &test_texts),
        &["shuffled.jsonl", "row 1", "test kernel's order"],
    );
    // A label the model does not have.
    let unknown = dir.path().join("unknown.jsonl");
    std::fs::write(
        &unknown,
        lines[0].replace(&label_of(&lines[0]), "sarcastic") + "\n",
    )
    .unwrap();
    run(
        &args(&test_texts, unknown.to_str().unwrap()),
        &["unknown.jsonl", "sarcastic", "negative, neutral, positive"],
    );
    // Fewer texts than test labels.
    let short = dir.path().join("short.jsonl");
    std::fs::write(&short, lines[..3].join("\n") + "\n").unwrap();
    run(
        &args(short.to_str().unwrap(), &test_texts),
        &["short.jsonl", "3 texts", "10 test labels"],
    );
}

fn label_of(jsonl_line: &str) -> String {
    let row: serde_json::Value = serde_json::from_str(jsonl_line).unwrap();
    row["label"].as_str().unwrap().to_string()
}

#[test]
fn kglm_cli_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), 3);
    let base = |train_kernel: &str, test_kernel: &str, test_labels: &str| {
        vec![
            "kglm".to_string(),
            "--train-kernel".into(),
            train_kernel.into(),
            "--train-labels".into(),
            s.train.clone(),
            "--test-kernel".into(),
            test_kernel.into(),
            "--test-labels".into(),
            test_labels.into(),
        ]
    };
    let fails = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails_cleanly(&args, needles);
    };
    // Train and test kernels swapped: K_TT is not square.
    fails(
        base(&s.test_kernel, &s.train_kernel, &s.test),
        &["k_st.safetensors", "square"],
    );
    // A 30-point training kernel against a test kernel with 40 columns.
    let small = dir.path().join("small.safetensors");
    let k = KernelFile::read(Path::new(&s.train_kernel)).unwrap();
    KernelFile {
        values: (0..30).flat_map(|i| k.row(i)[..30].to_vec()).collect(),
        rows: 30,
        cols: 30,
        ..k.clone()
    }
    .write(&small)
    .unwrap();
    let small = small.to_str().unwrap();
    fails(
        base(small, &s.test_kernel, &s.test),
        &["columns", "30 training points"],
    );
    let square_test = dir.path().join("square_test.safetensors");
    KernelFile {
        values: k.values[..30 * 40].to_vec(),
        rows: 30,
        ..k.clone()
    }
    .write(&square_test)
    .unwrap();
    fails(
        base(&s.train_kernel, square_test.to_str().unwrap(), &s.test),
        &["test.safetensors", "16 labels", "30 rows"],
    );
    // A projected test kernel beside an exact train kernel.
    let projected = dir.path().join("projected.safetensors");
    KernelFile {
        projection_dim: 64,
        ..KernelFile::read(Path::new(&s.test_kernel)).unwrap()
    }
    .write(&projected)
    .unwrap();
    fails(
        base(&s.train_kernel, projected.to_str().unwrap(), &s.test),
        &["projected.safetensors", "64"],
    );
    // A test label the 3-class model cannot give.
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "0\n".repeat(15) + "7\n").unwrap();
    let mut args = base(&s.train_kernel, &s.test_kernel, labels.to_str().unwrap());
    args.extend([
        "--model".into(),
        s.model.clone(),
        "--test-data".into(),
        s.test.clone(),
    ]);
    fails(args, &["labels.txt"]);
    fails(
        base(&s.train_kernel, &s.test_kernel, labels.to_str().unwrap()),
        &["labels.txt", "label 7 of row 15", "outside 0..3"],
    );
    let one_class = dir.path().join("one_class.txt");
    std::fs::write(&one_class, "1\n".repeat(40)).unwrap();
    let mut args = base(&s.train_kernel, &s.test_kernel, &s.test);
    args[4] = one_class.to_string_lossy().into_owned();
    fails(args, &["one_class.txt", "1 distinct class"]);
    std::fs::write(&labels, "-1\n".repeat(16)).unwrap();
    fails(
        base(&s.train_kernel, &s.test_kernel, labels.to_str().unwrap()),
        &["labels.txt", "label -1 of row 0"],
    );
    // A usage error (clap's exit status 2): the network needs the test points.
    let mut args = base(&s.train_kernel, &s.test_kernel, &s.test);
    args.extend(["--model".into(), s.model.clone()]);
    let out = run_mscope(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--test-data"));
}

#[test]
fn ntk_compare_cli() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), 3);
    let (json, png) = (dir.path().join("c.json"), dir.path().join("c.png"));
    let other = dir.path().join("other.safetensors");
    let k = KernelFile::read(Path::new(&s.train_kernel)).unwrap();
    KernelFile {
        values: k.values.iter().map(|v| v * v).collect(),
        ..k.clone()
    }
    .write(&other)
    .unwrap();
    let other = other.to_str().unwrap();
    let out = run_mscope_ok(&[
        "ntk-compare",
        &s.train_kernel,
        other,
        "--json",
        json.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("CKA"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cka = report["cka"].as_f64().unwrap();
    assert!(cka > 0.0 && cka < 1.0, "{cka}");
    for key in ["spectrum_l1", "spectrum_l2", "relative_frobenius"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert_eq!(report["effective_rank"].as_array().unwrap().len(), 2);
    assert_eq!(report["n"], 40);
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);

    assert_fails_cleanly(
        &["ntk-compare", &s.train_kernel, &s.test_kernel],
        &["k_st.safetensors", "[16, 40]", "square"],
    );
    let small = dir.path().join("small.safetensors");
    KernelFile {
        values: (0..30).flat_map(|i| k.row(i)[..30].to_vec()).collect(),
        rows: 30,
        cols: 30,
        ..k.clone()
    }
    .write(&small)
    .unwrap();
    assert_fails_cleanly(
        &["ntk-compare", &s.train_kernel, small.to_str().unwrap()],
        &["small.safetensors", "same points"],
    );
}

/// `ntk-compare --export-spectrum` writes numpy's normalised `eigvalsh` of each kernel, and
/// `mscope alpha` takes the two files as its samples.
#[test]
fn exported_spectra_match_numpy_and_feed_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference();
    let kernel = |name: &str| {
        let path = dir.path().join(format!("{name}.safetensors"));
        KernelFile {
            values: reference.f32(name).unwrap().1,
            rows: 40,
            cols: 40,
            kind: "rbf".into(),
            normalized: false,
            projection_dim: 0,
        }
        .write(&path)
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let (a, b) = (kernel("cka_a"), kernel("cka_b"));
    let stem = dir.path().join("spectra.txt");
    let out = run_mscope_ok(&[
        "ntk-compare",
        &a,
        &b,
        "--export-spectrum",
        stem.to_str().unwrap(),
    ]);
    let (first, second) = (
        dir.path().join("spectra.first.txt"),
        dir.path().join("spectra.second.txt"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("spectra.first.txt"));
    for (path, name) in [(&first, "spectrum_a"), (&second, "spectrum_b")] {
        let got: Vec<f64> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let want = f64s(&reference, name);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Two LAPACK-class solvers agree to rounding of the largest eigenvalue.
            assert!(
                (g - w).abs() < 1e-12,
                "{name}[{i}]: {g} against numpy's {w}"
            );
        }
    }
    let out = run_mscope_ok(&[
        "alpha",
        "--candidate",
        first.to_str().unwrap(),
        "--reference",
        second.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alpha_hat = report["alpha_hat"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&alpha_hat), "{alpha_hat}");
    assert_eq!(report["n_candidate"], 40);

    assert_fails_cleanly(
        &["ntk-compare", &a, &b, "--export-spectrum", "spectra.npy"],
        &["--export-spectrum", "spectra.npy", ".txt"],
    );
}
