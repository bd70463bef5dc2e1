//! The trainer and its data: the loss gradient against finite differences (which also checks
//! `Mlp::backward`), accuracy reached on moons and blobs, determinism per seed, the digits
//! reader, and `mscope data` → `mscope train` → `mscope compare` end to end with bad input.

mod common;

use std::path::Path;

use common::{assert_fails_cleanly, current_test, repo_path, report_skip, run_mscope, Rng};
use mscope::backend::Activation;
use mscope::data::{digits, synthetic, Dataset};
use mscope::models::mlp::Mlp;
use mscope::models::train::{evaluate, loss_and_gradient, train, Optimizer, TrainConfig};
use serde_json::Value;

fn config(hidden: &[usize], optimizer: Optimizer, lr: f64, epochs: usize) -> TrainConfig {
    TrainConfig {
        hidden: hidden.to_vec(),
        activation: Activation::Relu,
        epochs,
        lr,
        batch_size: 32,
        optimizer,
        momentum: 0.9,
        weight_decay: 0.0,
    }
}

fn train_accuracy(data: &Dataset, config: &TrainConfig, seed: u64) -> (Mlp, f64) {
    let trained = train(data, data.num_classes(), config, seed, &mut |_, _| {}).unwrap();
    let first = trained.epoch_losses[0];
    let last = *trained.epoch_losses.last().unwrap();
    assert!(last < first, "loss went from {first} to {last}");
    let accuracy = evaluate(&trained.model, data).unwrap().accuracy;
    (trained.model, accuracy)
}

#[test]
fn loss_gradient_matches_central_differences_for_every_activation() {
    // f32 forward passes: a step of 3e-3 keeps rounding (~1e-7 / eps) and truncation (~eps²)
    // errors both near 1e-4 of the gradient's size.
    const EPS: f32 = 3e-3;
    let mut rng = Rng::new(5);
    let x = rng.vec(7 * 3);
    let labels: Vec<i64> = (0..7).map(|_| rng.below(4) as i64).collect();
    for activation in [
        Activation::Relu,
        Activation::Tanh,
        Activation::Gelu,
        Activation::Sigmoid,
    ] {
        let model = Mlp::init(&[3, 6, 5, 4], activation, 11).unwrap();
        let (_, grads) = loss_and_gradient(&model, &x, &labels).unwrap();
        let loss_at = |m: &Mlp| loss_and_gradient(m, &x, &labels).unwrap().0;
        let mut analytic = Vec::new();
        let mut numeric = Vec::new();
        for (l, layer) in model.layers.iter().enumerate() {
            for (param, grad) in [
                (&layer.weight, &grads[2 * l]),
                (&layer.bias, &grads[2 * l + 1]),
            ] {
                assert_eq!(param.len(), grad.len(), "fc{l} gradient size");
                for k in 0..param.len() {
                    let nudged = |sign: f32| {
                        let mut m = model.clone();
                        let target = if std::ptr::eq(param, &layer.weight) {
                            &mut m.layers[l].weight[k]
                        } else {
                            &mut m.layers[l].bias[k]
                        };
                        *target += sign * EPS;
                        let step = (*target - param[k]) as f64;
                        (loss_at(&m), step)
                    };
                    let ((up, h_up), (down, h_down)) = (nudged(1.0), nudged(-1.0));
                    numeric.push((up - down) / (h_up - h_down));
                    analytic.push(grad[k] as f64);
                }
            }
        }
        let diff: f64 = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, b)| (a - b).powi(2))
            .sum();
        let norm: f64 = numeric.iter().map(|v| v * v).sum();
        let rel = (diff / norm).sqrt();
        assert!(
            rel < 1e-2,
            "{activation:?}: relative error {rel} over {} parameters",
            numeric.len()
        );
    }
}

#[test]
fn adam_learns_the_moons_and_sgd_learns_the_blobs() {
    let moons = synthetic::moons(400, 0.1, 0).unwrap();
    let (_, accuracy) = train_accuracy(&moons, &config(&[32, 32], Optimizer::Adam, 0.01, 40), 0);
    assert!(accuracy >= 0.95, "moons train accuracy {accuracy}");

    let blobs = synthetic::blobs(300, 3, 2, 0.5, 1).unwrap();
    let (_, accuracy) = train_accuracy(&blobs, &config(&[16], Optimizer::Sgd, 0.05, 20), 0);
    assert!(accuracy >= 0.95, "blobs train accuracy {accuracy}");
}

#[test]
fn one_seed_gives_the_same_bytes_and_other_seeds_other_models() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic::moons(200, 0.2, 3).unwrap();
    let cfg = config(&[8, 8], Optimizer::Adam, 0.01, 5);
    let bytes = |seed: u64, name: &str| {
        let trained = train(&data, 2, &cfg, seed, &mut |_, _| {}).unwrap();
        let path = dir.path().join(name);
        trained.model.write(&path).unwrap();
        std::fs::read(path).unwrap()
    };
    let (a, b, c) = (bytes(7, "a"), bytes(7, "b"), bytes(8, "c"));
    assert_eq!(a, b, "seed 7 twice gave different model files");
    assert_ne!(a, c, "seeds 7 and 8 gave the same model");
}

#[test]
fn trainer_rejects_data_the_model_cannot_take() {
    let data = synthetic::moons(50, 0.1, 0).unwrap();
    let cfg = config(&[4], Optimizer::Adam, 0.01, 1);
    let message = error(train(&data, 1, &cfg, 0, &mut |_, _| {}));
    assert!(message.contains("at least 2"), "{message}");
    let message = error(train(&data.slice(0..0), 2, &cfg, 0, &mut |_, _| {}));
    assert!(message.contains("no training rows"), "{message}");
    let mut bad = cfg.clone();
    bad.epochs = 0;
    let message = error(train(&data, 2, &bad, 0, &mut |_, _| {}));
    assert!(message.contains("--epochs"), "{message}");

    let model = Mlp::init(&[3, 4, 2], Activation::Tanh, 0).unwrap();
    let message = error(evaluate(&model, &data));
    assert!(
        message.contains("dimension 2") && message.contains("takes 3"),
        "{message}"
    );
    let model = Mlp::init(&[2, 4, 2], Activation::Tanh, 0).unwrap();
    let three = Dataset::new(vec![0.0; 4], 2, vec![0, 2]).unwrap();
    let message = error(evaluate(&model, &three));
    assert!(message.contains("label 2 of row 1"), "{message}");
}

#[test]
fn digits_csv_has_1797_images_of_64_pixels() {
    let path = repo_path(digits::DEFAULT_PATH);
    if !path.is_file() {
        report_skip(
            &current_test(),
            "cpu",
            "no digits: run tools/fetch-digits.sh",
        );
        return;
    }
    let data = digits::read(&path).unwrap();
    assert_eq!((data.len(), data.dim), (1797, 64));
    assert_eq!(data.num_classes(), 10);
    for k in 0..10 {
        assert!(data.y.contains(&k), "no digit {k}");
    }
    assert!(data.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(data.x.contains(&1.0), "pixels 16 scale to 1");
}

#[test]
fn malformed_digits_rows_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = vec!["1"; 64].join(",") + ",3";
    let cases = [
        (format!("{good}\n1,2,3\n"), ":2: 3 values"),
        (
            good.replacen('1', "x", 1),
            ":1: column 1: `x` is not a number",
        ),
        (good.replacen('1', "17", 1), ":1: column 1: pixel 17"),
        (good.replace(",3", ",10"), ":1: label 10 is not a digit"),
        (String::new(), "no rows"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.csv"));
        std::fs::write(&path, text).unwrap();
        let message = digits::read(&path).unwrap_err().to_string();
        assert!(
            message.contains(&format!("bad{i}.csv")) && message.contains(needle),
            "{message} lacks {needle}"
        );
    }
    let message = digits::read(&dir.path().join("absent.csv"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("tools/fetch-digits.sh"), "{message}");
}

fn error<T>(result: mscope::Result<T>) -> String {
    result.err().expect("an error").to_string()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn succeed(args: &[&str]) -> String {
    let out = run_mscope(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn data_train_compare_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let (train_file, test_file, plot, out) =
        (at("train.st"), at("test.st"), at("m.png"), at("run"));
    let summary = succeed(&[
        "data",
        "moons",
        "--n",
        "300",
        "--noise",
        "0.1",
        "--seed",
        "4",
        "--test-fraction",
        "0.2",
        "--out",
        path_str(&train_file),
        "--test-out",
        path_str(&test_file),
        "--plot",
        path_str(&plot),
    ]);
    assert!(
        summary.contains("240 training rows") && summary.contains("60 test rows"),
        "{summary}"
    );
    assert!(
        std::fs::metadata(&plot).unwrap().len() > 1000,
        "plot is written"
    );
    let test = Dataset::read(&test_file).unwrap();
    assert_eq!(test.y.iter().filter(|&&l| l == 0).count(), 30, "stratified");

    let report = succeed(&[
        "train",
        "--data",
        path_str(&train_file),
        "--test-data",
        path_str(&test_file),
        "--hidden",
        "16,16",
        "--epochs",
        "30",
        "--lr",
        "0.01",
        "--seeds",
        "0..3",
        "--out",
        path_str(&out),
    ]);
    assert!(report.contains("| 2 |"), "{report}");
    let json = read_json(&out.join("train.json"));
    let models = json["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    assert_eq!(json["hidden"], serde_json::json!([16, 16]));
    for (seed, m) in models.iter().enumerate() {
        assert_eq!(m["seed"], seed);
        assert!(out.join(format!("model-seed{seed}.safetensors")).is_file());
        assert!(m["train_accuracy"].as_f64().unwrap() >= 0.9, "{m}");
        assert!(m["train_loss"].as_f64().unwrap().is_finite());
    }
    // The scores file holds every model's test logits in seed order.
    // An absolute path: `reference_tensor` joins it onto the repository root, which keeps it.
    let (shape, scores) =
        common::reference_tensor(path_str(&out.join("scores.safetensors")), "scores");
    assert_eq!(shape, [3, 60, 2]);
    let model = Mlp::read(&out.join("model-seed1.safetensors")).unwrap();
    let logits = model.logits(&test.x).unwrap();
    let from_file: Vec<f32> = scores[120..240].iter().map(|&v| v as f32).collect();
    assert_eq!(from_file, logits);

    let scores_path = out.join("scores.safetensors");
    let compare_json = at("compare.json");
    succeed(&[
        "compare",
        "--scores",
        path_str(&scores_path),
        "--labels",
        path_str(&scores_path),
        "--out",
        path_str(&compare_json),
    ]);
    let compared = read_json(&compare_json);
    for (i, m) in compared["models"].as_array().unwrap().iter().enumerate() {
        let want = models[i]["test_accuracy"].as_f64().unwrap();
        assert!(
            (m["accuracy"].as_f64().unwrap() - want).abs() < 1e-9,
            "model {i}"
        );
    }
}

#[test]
fn bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let (moons, moons_test) = (at("moons.st"), at("moons-test.st"));
    succeed(&[
        "data",
        "moons",
        "--n",
        "60",
        "--out",
        path_str(&moons),
        "--test-out",
        path_str(&moons_test),
    ]);
    let (blobs3, blobs3_test) = (at("blobs3.st"), at("blobs3-test.st"));
    succeed(&[
        "data",
        "blobs",
        "--n",
        "60",
        "--classes",
        "3",
        "--dim",
        "3",
        "--test-fraction",
        "0",
        "--out",
        path_str(&blobs3),
    ]);
    succeed(&[
        "data",
        "blobs",
        "--n",
        "60",
        "--classes",
        "3",
        "--dim",
        "2",
        "--test-fraction",
        "0",
        "--out",
        path_str(&blobs3_test),
    ]);
    let out = at("out");
    let train = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["train", "--data", path_str(&moons), "--out", path_str(&out)];
        args.extend(extra);
        assert_fails_cleanly(&args, needles);
        assert!(!out.exists(), "{extra:?} left an output directory behind");
    };
    train(
        &["--test-data", path_str(&blobs3)],
        &["blobs3.st", "dimension 3"],
    );
    train(
        &["--test-data", path_str(&blobs3_test)],
        &["blobs3-test.st", "label 2", "2 classes"],
    );
    train(&["--activation", "swish"], &["unknown activation `swish`"]);
    train(
        &["--optimizer", "rmsprop"],
        &["unknown optimizer `rmsprop`"],
    );
    train(&["--epochs", "0"], &["--epochs"]);
    train(&["--lr", "0"], &["--lr 0"]);
    train(&["--hidden", "10,,10"], &["--hidden `10,,10`"]);
    train(&["--seeds", "3..3"], &["--seeds `3..3`"]);
    train(
        &["--momentum", "0.5"],
        &["--momentum applies to --optimizer sgd"],
    );

    let csv = at("digits.csv");
    std::fs::write(&csv, vec!["0"; 64].join(",") + ",1\n1,2\n").unwrap();
    let digits_out = at("digits.st");
    assert_fails_cleanly(
        &[
            "data",
            "digits",
            "--source",
            path_str(&csv),
            "--test-fraction",
            "0",
            "--out",
            path_str(&digits_out),
        ],
        &["digits.csv:2:", "2 values"],
    );
    assert_fails_cleanly(
        &[
            "data",
            "digits",
            "--source",
            path_str(&at("none.csv")),
            "--test-fraction",
            "0",
            "--out",
            path_str(&digits_out),
        ],
        &["tools/fetch-digits.sh"],
    );
    assert_fails_cleanly(
        &["data", "moons", "--out", path_str(&digits_out)],
        &["--test-out"],
    );
    assert_fails_cleanly(
        &[
            "data",
            "blobs",
            "--dim",
            "3",
            "--test-fraction",
            "0",
            "--out",
            path_str(&digits_out),
            "--plot",
            path_str(&at("p.png")),
        ],
        &["--plot", "3 dimensions"],
    );
    assert!(
        !digits_out.exists(),
        "a failed `mscope data` wrote its output"
    );
}
