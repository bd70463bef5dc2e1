//! `mscope alpha` and `mscope compare` end to end: the report's fixed JSON keys, the
//! sample formats (text, .npy, safetensors), the metrics against straightforward recomputations,
//! and clear errors with exit status 1 and no report left behind for bad input.

mod common;

use std::path::Path;

use common::{assert_fails_cleanly, reports_on_cpu_and_wgpu, run_mscope, Rng};
use mscope::backend::{self, BackendKind, OpFamily, TrimReference, TrimSpec, W2Grid};
use serde_json::Value;

const SPEC: TrimSpec = TrimSpec {
    level: 0.05,
    w2_alpha: None,
    w2_grid: W2Grid::Auto,
};

fn stdout_of(args: &[&str]) -> String {
    let out = run_mscope(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 stdout")
}

/// A NumPy .npy file (version 1.0, C order) of little-endian values.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

fn f32_tensor<'a>(shape: &[usize], values: &'a [f32]) -> safetensors::tensor::TensorView<'a> {
    let bytes = bytemuck::cast_slice(values);
    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), bytes).unwrap()
}

fn write_scores(path: &Path, shape: &[usize], values: &[f32]) {
    let bytes = safetensors::serialize([("scores", f32_tensor(shape, values))], None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// serde_json parses floats to within an ulp (without its `float_roundtrip` feature).
fn assert_json_f64(value: &Value, want: f64) {
    let got = value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number"));
    assert!(
        (got - want).abs() <= 2.0 * f64::EPSILON * want.abs(),
        "JSON {got} vs {want}"
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn alpha_reads_text_and_npy_and_reports_the_design_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(31);
    let candidate: Vec<f32> = (0..500).map(|_| rng.normal() as f32 + 0.3).collect();
    let reference: Vec<f64> = (0..700).map(|_| rng.normal()).collect();
    let mut text = String::from("# candidate scores\n\n");
    for v in &candidate {
        text += &format!("{v}  # a comment\n\n");
    }
    let cand_path = dir.path().join("cand.txt");
    std::fs::write(&cand_path, text).unwrap();
    let ref_path = dir.path().join("ref.npy");
    let data: Vec<u8> = reference.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&ref_path, npy("<f8", &[reference.len()], &data)).unwrap();

    let json: Value = serde_json::from_str(&stdout_of(&[
        "alpha",
        "--candidate",
        path_str(&cand_path),
        "--reference",
        path_str(&ref_path),
        "--json",
        "--curve",
        "4",
    ]))
    .unwrap();
    let reference32: Vec<f32> = reference.iter().map(|&v| v as f32).collect();
    let want = backend::open(BackendKind::Cpu, OpFamily::Trim)
        .unwrap()
        .trim_search(&[&candidate], TrimReference::Sample(&reference32), &SPEC)
        .unwrap()[0];
    assert_json_f64(&json["alpha_hat"], want.alpha_hat);
    assert!(want.alpha_hat > 0.0, "a shift of 0.3 must be detected");
    assert_json_f64(&json["ks"], want.ks);
    assert_json_f64(&json["threshold"], want.threshold);
    assert_json_f64(&json["level"], 0.05);
    assert_eq!(json["n_candidate"].as_u64(), Some(500));
    assert_eq!(json["n_reference"].as_u64(), Some(700));
    let curve = json["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 4);
    assert_json_f64(&curve[0]["distance"], want.ks);

    let plot = dir.path().join("curve.png");
    let summary = stdout_of(&[
        "alpha",
        "--candidate",
        path_str(&cand_path),
        "--reference",
        path_str(&ref_path),
        "--plot",
        path_str(&plot),
    ]);
    assert!(
        summary.contains(&format!("{:.6}", want.alpha_hat)),
        "{summary}"
    );
    assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));
}

/// Accuracy, mean churn, churn against the majority and 15-bin ECE, computed the plain way.
fn metrics_by_hand(scores: &[Vec<f32>], labels: &[i64]) -> Vec<[f64; 4]> {
    let n = labels.len();
    let predict = |s: f32| i64::from(s > 0.0);
    let confidence = |s: f32| 1.0 / (1.0 + (-(s.abs() as f64)).exp());
    let majority: Vec<i64> = (0..n)
        .map(|p| {
            let ones = scores.iter().filter(|row| predict(row[p]) == 1).count();
            i64::from(2 * ones > scores.len())
        })
        .collect();
    scores
        .iter()
        .enumerate()
        .map(|(k, row)| {
            let accuracy =
                (0..n).filter(|&p| predict(row[p]) == labels[p]).count() as f64 / n as f64;
            let mut churn = 0.0;
            for (j, other) in scores.iter().enumerate() {
                if j != k {
                    let differ = (0..n)
                        .filter(|&p| predict(row[p]) != predict(other[p]))
                        .count();
                    churn += differ as f64 / n as f64 / (scores.len() - 1) as f64;
                }
            }
            let off = (0..n).filter(|&p| predict(row[p]) != majority[p]).count() as f64 / n as f64;
            let mut ece = 0.0;
            for b in 0..15 {
                let (lo, hi) = (b as f64 / 15.0, (b + 1) as f64 / 15.0);
                let bin: Vec<usize> = (0..n)
                    .filter(|&p| confidence(row[p]) > lo && confidence(row[p]) <= hi)
                    .collect();
                if !bin.is_empty() {
                    let acc = bin
                        .iter()
                        .filter(|&&p| predict(row[p]) == labels[p])
                        .count() as f64;
                    let conf: f64 = bin.iter().map(|&p| confidence(row[p])).sum();
                    ece += (acc - conf).abs() / n as f64;
                }
            }
            [accuracy, churn, off, ece]
        })
        .collect()
}

#[test]
fn compare_reports_every_model() {
    let dir = tempfile::tempdir().unwrap();
    let (models, points) = (7, 400);
    let mut rng = Rng::new(37);
    let labels: Vec<i64> = (0..points).map(|_| rng.below(2) as i64).collect();
    // An odd number of models keeps the binary majority vote free of ties.
    let rows: Vec<Vec<f32>> = (0..models)
        .map(|k| {
            let scale = if k == 3 { 2.5 } else { 1.0 };
            labels
                .iter()
                .map(|&y| (scale * ((2 * y - 1) as f64 + rng.normal())) as f32)
                .collect()
        })
        .collect();
    let flat: Vec<f32> = rows.concat();
    let scores = dir.path().join("scores.safetensors");
    write_scores(&scores, &[models, points], &flat);
    let label_path = dir.path().join("labels.txt");
    let label_text: Vec<String> = labels.iter().map(|y| y.to_string()).collect();
    std::fs::write(&label_path, label_text.join("\n")).unwrap();
    let (report, plot) = (dir.path().join("report.json"), dir.path().join("alpha.png"));

    let summary = stdout_of(&[
        "compare",
        "--scores",
        path_str(&scores),
        "--labels",
        path_str(&label_path),
        "--out",
        path_str(&report),
        "--plot",
        path_str(&plot),
    ]);
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let got = json["models"].as_array().unwrap();
    assert_eq!(got.len(), models);

    let views: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let trims = backend::open(BackendKind::Cpu, OpFamily::Trim)
        .unwrap()
        .trim_search(&views, TrimReference::LeaveOneOut, &SPEC)
        .unwrap();
    let by_hand = metrics_by_hand(&rows, &labels);
    for (k, m) in got.iter().enumerate() {
        assert_eq!(m["index"].as_u64(), Some(k as u64));
        assert_json_f64(&m["alpha_hat"], trims[k].alpha_hat);
        assert_json_f64(&m["ks"], trims[k].ks);
        assert_json_f64(&m["trimmed_w2"], trims[k].trimmed_w2);
        let keys = ["accuracy", "churn_mean", "churn_vs_majority", "ece"];
        for (key, want) in keys.iter().zip(by_hand[k]) {
            let value = m[key].as_f64().unwrap();
            assert!(
                (value - want).abs() < 1e-12,
                "model {k} {key}: {value} vs {want}"
            );
        }
    }
    // The overconfident model is the most atypical and leads the table.
    let worst = (0..models)
        .max_by(|&a, &b| trims[a].alpha_hat.total_cmp(&trims[b].alpha_hat))
        .unwrap();
    assert_eq!(worst, 3);
    let first_row = summary.lines().find(|l| l.starts_with("| 3 |"));
    assert!(
        first_row.is_some() && summary.find("| 3 |") < summary.find("| 0 |"),
        "{summary}"
    );
    assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn compare_takes_logit_margins() {
    let dir = tempfile::tempdir().unwrap();
    let (models, points, classes) = (4, 300, 3);
    let mut rng = Rng::new(41);
    let labels: Vec<i64> = (0..points).map(|_| rng.below(3) as i64).collect();
    let logits: Vec<f32> = (0..models * points * classes)
        .map(|_| rng.normal() as f32)
        .collect();
    let scores = dir.path().join("logits.npy");
    let data: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&scores, npy("<f4", &[models, points, classes], &data)).unwrap();
    let label_path = dir.path().join("labels.npy");
    let data: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&label_path, npy("<i8", &[points], &data)).unwrap();
    let report = dir.path().join("report.json");
    stdout_of(&[
        "compare",
        "--scores",
        path_str(&scores),
        "--labels",
        path_str(&label_path),
        "--out",
        path_str(&report),
    ]);
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();

    // Margin of the true class over the best other class.
    let margins: Vec<Vec<f32>> = (0..models)
        .map(|k| {
            (0..points)
                .map(|p| {
                    let row = &logits[(k * points + p) * classes..][..classes];
                    let y = labels[p] as usize;
                    let other = (0..classes)
                        .filter(|&c| c != y)
                        .map(|c| row[c])
                        .fold(f32::MIN, f32::max);
                    row[y] - other
                })
                .collect()
        })
        .collect();
    let views: Vec<&[f32]> = margins.iter().map(|r| r.as_slice()).collect();
    let trims = backend::open(BackendKind::Cpu, OpFamily::Trim)
        .unwrap()
        .trim_search(&views, TrimReference::LeaveOneOut, &SPEC)
        .unwrap();
    for (k, m) in json["models"].as_array().unwrap().iter().enumerate() {
        assert_json_f64(&m["alpha_hat"], trims[k].alpha_hat);
        assert_json_f64(&m["ks"], trims[k].ks);
        let accuracy = margins[k].iter().filter(|&&s| s > 0.0).count() as f64 / points as f64;
        assert_json_f64(&m["accuracy"], accuracy);
    }
}

#[test]
fn compare_synthetic_ensemble_flags_the_overconfident_model() {
    let summary = stdout_of(&["compare", "--synthetic", "12x3000", "--top", "1"]);
    let row = summary
        .lines()
        .find(|l| l.starts_with("| ") && !l.starts_with("| model"));
    assert!(row.is_some_and(|r| r.starts_with("| 11 |")), "{summary}");
}

#[test]
fn compare_and_alpha_on_wgpu_equal_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let (models, points) = (5, 3000);
    let mut rng = Rng::new(41);
    let flat: Vec<f32> = (0..models * points)
        .map(|i| ((i / points) as f64 * 0.05 + rng.normal()) as f32)
        .collect();
    let scores = dir.path().join("scores.safetensors");
    write_scores(&scores, &[models, points], &flat);
    let Some((cpu, gpu)) = reports_on_cpu_and_wgpu(&["compare", "--scores", path_str(&scores)])
    else {
        return;
    };
    assert_eq!(gpu["models"], cpu["models"]);

    let (candidate, reference) = (dir.path().join("c.txt"), dir.path().join("r.txt"));
    for (path, row) in [(&candidate, 0), (&reference, 1)] {
        let lines: Vec<String> = flat[row * points..(row + 1) * points]
            .iter()
            .map(|v| v.to_string())
            .collect();
        std::fs::write(path, lines.join("\n")).unwrap();
    }
    let alpha = |backend| {
        let mut args = alpha_args(path_str(&candidate), path_str(&reference));
        args.extend(["--json", "--backend", backend]);
        serde_json::from_str::<Value>(&stdout_of(&args)).unwrap()
    };
    let (cpu, gpu) = (alpha("cpu"), alpha("wgpu"));
    assert_eq!(gpu, cpu);
}

fn alpha_args<'a>(candidate: &'a str, reference: &'a str) -> Vec<&'a str> {
    vec!["alpha", "--candidate", candidate, "--reference", reference]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A clean failure that leaves no report behind.
fn assert_fails(args: &[&str], needles: &[&str], report: &Path) {
    assert_fails_cleanly(args, needles);
    assert!(!report.exists(), "{args:?} left {}", report.display());
}

#[test]
fn bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = file("good.txt", b"1\n2\n3\n");
    let empty = file("empty.txt", b"# nothing\n\n");
    let nan = file("nan.txt", b"1\nNaN\n");
    let inf = file("inf.txt", b"1\n2\n-inf\n");
    let words = file("words.txt", b"0.5\nhello world\n");
    // Big-endian values are not read (numpy writes little-endian on every common platform).
    let bad_dtype = file(
        "bad.npy",
        &npy(">f4", &[2], &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]),
    );
    let report = dir.path().join("report.json");
    let alpha = |cand| alpha_args(cand, &good);
    assert_fails(&alpha(&empty), &["empty.txt", "empty sample"], &report);
    assert_fails(&alpha(&nan), &["nan.txt:2", "not finite"], &report);
    assert_fails(&alpha(&inf), &["inf.txt:3", "not finite"], &report);
    assert_fails(
        &alpha(&words),
        &["words.txt:2", "`hello world` is not a number"],
        &report,
    );
    assert_fails(
        &alpha(&bad_dtype),
        &["bad.npy", ">f4", "not supported"],
        &report,
    );
    let mut level = alpha(&good);
    level.extend(["--level", "1.5"]);
    assert_fails(&level, &["level 1.5 is outside (0, 1)"], &report);

    let scores = dir.path().join("scores.safetensors");
    write_scores(&scores, &[3, 4], &[0.5; 12]);
    let short_labels = file("labels.txt", b"0\n1\n1\n");
    let bad_labels = file("labels2.txt", b"0\n1\n2\n1\n");
    let one_model = dir.path().join("one.safetensors");
    write_scores(&one_model, &[1, 4], &[0.5; 4]);
    let out = report.to_str().unwrap();
    let compare = |scores: &Path, labels: &str| {
        vec![
            "compare".to_string(),
            "--scores".into(),
            scores.to_str().unwrap().into(),
            "--labels".into(),
            labels.into(),
            "--out".into(),
            out.into(),
        ]
    };
    assert_fails(
        &strs(&compare(&scores, &short_labels)),
        &["labels.txt", "3 labels for 4 scored points"],
        &report,
    );
    assert_fails(
        &strs(&compare(&scores, &bad_labels)),
        &["labels2.txt", "label 2 at row 3 is outside 0..2"],
        &report,
    );
    let mut nan_scores = [0.5f32; 6];
    nan_scores[5] = f32::NAN;
    let data: Vec<u8> = nan_scores.iter().flat_map(|v| v.to_le_bytes()).collect();
    let nan_npy = file("nan.npy", &npy("<f4", &[2, 3], &data));
    assert_fails(
        &["compare", "--scores", &nan_npy, "--out", out],
        &["nan.npy", "NaN at index [1, 2] is not finite"],
        &report,
    );
    let two = dir.path().join("two.safetensors");
    let ones = [1.0f32; 3];
    let tensors = [
        ("a", f32_tensor(&[3], &ones)),
        ("b", f32_tensor(&[3], &ones)),
    ];
    let bytes = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(&two, bytes).unwrap();
    assert_fails(
        &alpha(two.to_str().unwrap()),
        &["two.safetensors", "a single tensor or one named `scores`"],
        &report,
    );
    let four_labels = file("labels4.txt", b"0\n1\n0\n1\n");
    assert_fails(
        &strs(&compare(&one_model, &four_labels)),
        &["one.safetensors", "at least 2"],
        &report,
    );
}
