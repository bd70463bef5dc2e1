//! Fine-tuning from a bare encoder (`mscope train --model ENCODER_DIR`) against transformers and
//! torch (fixtures of `tools/make_finetune_fixtures.py`): the head transformers'
//! `BertForSequenceClassification.from_pretrained` makes, three AdamW steps with the parameters
//! kept in memory, the written directory's logits as transformers reads them (from a BERT and an
//! XLM-R encoder), `--test-data`'s report, and bad input. With dropout (`--dropout`): three AdamW
//! steps against torch with mscope's masks put in transformers' dropout sites, zero rates as no
//! dropout bit for bit, reproducible runs and masks, and bad probabilities.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{
    assert_matches_adamw_reference, reference_tensor, rel_error_f64, repo_path, run_mscope_ok,
};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::{Backend, BackendKind, DropoutMask, OpFamily};
use mscope::models::bert::BertConfig;
use mscope::models::classifier::SequenceClassifier;
use mscope::models::classifier_grad::{loss_gradient, loss_gradient_with_dropout};
use mscope::models::dropout::DropoutRates;
use mscope::models::finetune::{
    classifier_from_encoder, classifier_from_parameters, copy_classifier_files, linear_schedule,
    read_parameters, write_parameters, AdamW, Parameters,
};
use mscope::models::tokenize::{TextTokenizer, TokenizedText};
use mscope::models::{Encoder, TokenBatch};
use mscope::weights::WeightsDtype;

/// f32 paths against a float64 reference (the crate's numerics contract).
const F32_TOLERANCE: f64 = 1e-5;

const ENCODER: &str = "tests/fixtures/classifiers/tiny-bert-encoder";
const TEXTS: &str = "tests/fixtures/classifiers/texts.jsonl";
const ADAMW_REFERENCE: &str = "tests/fixtures/classifiers/bert_encoder_adamw_reference.safetensors";
const WRITTEN_REFERENCE: &str =
    "tests/fixtures/classifiers/bert_encoder_written_reference.safetensors";
/// The labels of the fixture texts, in class order.
const LABELS: [&str; 2] = ["negative", "positive"];

fn labels() -> Vec<String> {
    LABELS.map(String::from).to_vec()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

fn tokenized(dir: &Path, classifier: &SequenceClassifier) -> Vec<TokenizedText> {
    let tokenizer =
        TextTokenizer::load(dir, classifier.encoder().max_tokens()).expect("tokenizer loads");
    let texts: Vec<String> = std::fs::read_to_string(repo_path(TEXTS))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    tokenizer.encode(&refs).expect("tokenises")
}

fn mean_and_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// The head made from the encoder holds its tensors under `bert.` (pooler included, unchanged)
/// and a new classifier; with the fixture's initial classifier weights, three AdamW steps with
/// the model rebuilt from the parameters in memory match torch's from
/// `BertForSequenceClassification.from_pretrained(encoder)`.
#[test]
fn adamw_steps_from_an_encoder_match_torch() {
    let encoder = repo_path(ENCODER);
    let (mut params, config) = classifier_from_encoder(&encoder, &labels(), 3).expect("head");
    let original = read_parameters(&encoder.join("model.safetensors")).unwrap();
    assert_eq!(
        params["bert.pooler.dense.weight"], original["pooler.dense.weight"],
        "the checkpoint's pooler is kept"
    );
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "positive");
    assert_eq!(config["label2id"]["negative"], 0);
    for name in ["classifier.weight", "classifier.bias"] {
        let (shape, want) = reference_tensor(ADAMW_REFERENCE, &format!("init.{name}"));
        assert_eq!(params[name].0, shape, "{name}");
        params.get_mut(name).unwrap().1 = want.iter().map(|&v| v as f32).collect();
    }

    let tmp = tempfile::tempdir().unwrap();
    copy_classifier_files(&encoder, tmp.path(), Some(&config)).expect("writes the files");
    let (_, hparams) = reference_tensor(ADAMW_REFERENCE, "hparams");
    let (lr, weight_decay) = (hparams[0], hparams[1]);
    let (warmup, total) = (hparams[2] as usize, hparams[3] as usize);
    let (_, batches) = reference_tensor(ADAMW_REFERENCE, "batches");
    let (_, want_losses) = reference_tensor(ADAMW_REFERENCE, "losses");
    let (_, classes) = reference_tensor(ADAMW_REFERENCE, "labels");
    let mut adamw = AdamW::new(weight_decay);
    let mut classifier = classifier_from_parameters(tmp.path(), &params, cpu()).expect("builds");
    assert_eq!(classifier.labels(), LABELS);
    let texts = tokenized(tmp.path(), &classifier);
    for (step, rows) in batches.chunks_exact(2).enumerate() {
        let batch: Vec<TokenizedText> = rows.iter().map(|&r| texts[r as usize].clone()).collect();
        let y: Vec<usize> = rows.iter().map(|&r| classes[r as usize] as usize).collect();
        let got = loss_gradient(&classifier, &TokenBatch::pack(&batch), &y).expect("gradient");
        let err = ((got.loss - want_losses[step]) / want_losses[step]).abs();
        assert!(err < F32_TOLERANCE, "step {step}: loss rel err {err:.2e}");
        let step_lr = lr * linear_schedule(step, warmup, total);
        adamw
            .step(&mut params, &got.grads, step_lr)
            .expect("update");
        classifier = classifier_from_parameters(tmp.path(), &params, cpu()).expect("rebuilds");
    }
    assert_matches_adamw_reference(&params, ADAMW_REFERENCE);
}

/// An encoder saved without a pooler gets a new one: normal(0, initializer_range) weights and
/// zero biases, as the classifier's; the seed decides the draws.
#[test]
fn an_encoder_without_a_pooler_gets_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let encoder = repo_path(ENCODER);
    let mut params: Parameters = read_parameters(&encoder.join("model.safetensors")).unwrap();
    params.retain(|name, _| !name.starts_with("pooler."));
    copy_classifier_files(&encoder, tmp.path(), None).unwrap();
    write_parameters(&tmp.path().join("model.safetensors"), &params).unwrap();

    let (made, _) = classifier_from_encoder(tmp.path(), &labels(), 5).expect("head");
    let mut drawn = made["bert.pooler.dense.weight"].1.clone();
    drawn.extend(&made["classifier.weight"].1);
    let (mean, std) = mean_and_std(&drawn);
    // 288 draws of N(0, 0.02²): the mean within 3 standard errors, the spread within 15%.
    assert!(
        mean.abs() < 3.0 * 0.02 / (drawn.len() as f64).sqrt(),
        "mean {mean}"
    );
    assert!((std / 0.02 - 1.0).abs() < 0.15, "std {std}");
    assert!(made["bert.pooler.dense.bias"].1.iter().all(|&b| b == 0.0));
    assert!(made["classifier.bias"].1.iter().all(|&b| b == 0.0));

    let (again, _) = classifier_from_encoder(tmp.path(), &labels(), 5).unwrap();
    let (other, _) = classifier_from_encoder(tmp.path(), &labels(), 6).unwrap();
    assert_eq!(again["classifier.weight"], made["classifier.weight"]);
    assert_ne!(other["classifier.weight"], made["classifier.weight"]);
    assert_ne!(
        other["bert.pooler.dense.weight"],
        made["bert.pooler.dense.weight"]
    );
}

/// The fixture's `mscope train --model ENCODER` arguments (`mscope_args` of its metadata).
fn written_args() -> Vec<String> {
    let bytes = std::fs::read(repo_path(WRITTEN_REFERENCE)).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let args = header.metadata().as_ref().unwrap()["mscope_args"].clone();
    args.split(' ').map(String::from).collect()
}

/// Logits `[texts, classes]` of the classifier directory `dir` on the fixture texts.
fn logits(dir: &Path) -> Vec<f64> {
    let classifier = SequenceClassifier::load(dir, cpu(), WeightsDtype::F32).expect("loads");
    let texts = tokenized(dir, &classifier);
    let logits = classifier
        .logits(&TokenBatch::pack(&texts))
        .and_then(|t| classifier.encoder().backend().download(&t))
        .expect("logits");
    logits.iter().map(|&v| v as f64).collect()
}

/// The directory `mscope train --model ENCODER` writes (new head, then trained) is the one
/// transformers loaded in the fixture: the same logits; it is a classifier directory, not a
/// sentence-transformers one; `--test-data` adds the test accuracy after each epoch. For a bare
/// BERT encoder (pooler + classifier) and a bare XLM-R one (the RoBERTa head: dense + tanh +
/// out_proj, no pooler).
#[test]
fn cli_fine_tunes_an_encoder_into_what_transformers_loads() {
    for (encoder, reference, architecture) in [
        (ENCODER, WRITTEN_REFERENCE, "BertForSequenceClassification"),
        (
            "tests/fixtures/tiny-xlmr",
            "tests/fixtures/classifiers/xlmr_encoder_written_reference.safetensors",
            "XLMRobertaForSequenceClassification",
        ),
    ] {
        fine_tunes_an_encoder_into_what_transformers_loads(encoder, reference, architecture);
    }
}

fn fine_tunes_an_encoder_into_what_transformers_loads(
    encoder: &str,
    reference: &str,
    architecture: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (encoder, texts) = (repo_path(encoder), repo_path(TEXTS));
    for (key, epochs) in [("init_logits", "0"), ("logits", "2")] {
        let out = tmp.path().join(key);
        let mut args: Vec<String> = ["train", "--model", path_str(&encoder), "--data"]
            .into_iter()
            .chain([
                path_str(&texts),
                "--out",
                path_str(&out),
                "--epochs",
                epochs,
            ])
            .chain(["--test-data", path_str(&texts)])
            .map(String::from)
            .collect();
        args.extend(written_args());
        run_mscope_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let got = logits(&out);
        let (shape, want) = reference_tensor(reference, key);
        assert_eq!(shape, [4, 2]);
        let err = rel_error_f64(&got, &want);
        assert!(
            err < F32_TOLERANCE,
            "{architecture} {key}: rel err {err:.2e}"
        );

        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], architecture);
        assert!(!out.join("modules.json").exists());
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("train.json")).unwrap())
                .unwrap();
        let epochs_done = report.as_array().expect("one row per epoch");
        assert_eq!(epochs_done.len(), epochs.parse::<usize>().unwrap());
        if let Some(last) = epochs_done.last() {
            // The test texts are the training texts: the same accuracy, the written model's.
            let right = got
                .chunks_exact(2)
                .zip([1, 0, 0, 1])
                .filter(|(row, y)| (row[1] > row[0]) == (*y == 1))
                .count();
            assert_eq!(last["train_accuracy"].as_f64(), Some(right as f64 / 4.0));
            assert_eq!(last["test_accuracy"], last["train_accuracy"]);
        }
    }
}

#[test]
fn cli_fine_tuning_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (encoder, texts) = (repo_path(ENCODER), repo_path(TEXTS));
    let out = tmp.path().join("out");
    let train = |model: &Path, data: &Path, extra: &[&str], needles: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            path_str(model),
            "--data",
            path_str(data),
        ];
        args.extend(["--out", path_str(&out)]);
        args.extend(extra);
        common::assert_fails_cleanly(&args, needles);
    };
    // A dropout probability of 1 in the checkpoint's config, with --dropout.
    let bad_config = tmp.path().join("bad-config");
    copy_classifier_files(&encoder, &bad_config, None).unwrap();
    std::fs::copy(
        encoder.join("model.safetensors"),
        bad_config.join("model.safetensors"),
    )
    .unwrap();
    let config_path = bad_config.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 1.0.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    train(
        &bad_config,
        &texts,
        &["--dropout"],
        &["config.json", "hidden_dropout_prob 1", "outside [0, 1)"],
    );
    assert!(!out.exists(), "a failed run leaves no output directory");
    // A decoder gets no classification head.
    train(
        &repo_path("tests/fixtures/tiny-llama3"),
        &texts,
        &[],
        &["model_type \"llama\"", "BERT (\"bert\") and XLM-R"],
    );
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    train(&encoder, &empty, &[], &["empty.jsonl", "no texts"]);
    train(
        &encoder,
        &texts,
        &["--test-data", path_str(&empty)],
        &["empty.jsonl", "no texts"],
    );
    // A test label the new head (negative, positive) lacks.
    let odd = tmp.path().join("odd.jsonl");
    std::fs::write(&odd, "{\"text\": \"a\", \"label\": \"sideways\"}\n").unwrap();
    train(
        &encoder,
        &texts,
        &["--test-data", path_str(&odd)],
        &["odd.jsonl", "row 1", "\"sideways\"", "negative, positive"],
    );
    // One label only: no classifier.
    let one = tmp.path().join("one.jsonl");
    std::fs::write(
        &one,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"x\"}\n",
    )
    .unwrap();
    train(&encoder, &one, &[], &["at least two"]);
}

/// Three AdamW steps with dropout on against torch (`tools/make_finetune_fixtures.py dropout`):
/// transformers' classifier with every dropout site given mscope's mask of the same seed, step and
/// site, float64. Each step's loss and every parameter after the third within f32 rounding.
#[test]
fn dropout_adamw_steps_match_torch() {
    for (dir, reference) in [
        (
            "tests/fixtures/classifiers/tiny-bert-cls",
            "tests/fixtures/classifiers/bert_dropout_adamw_reference.safetensors",
        ),
        (
            "tests/fixtures/classifiers/tiny-xlmr-cls",
            "tests/fixtures/classifiers/xlmr_dropout_adamw_reference.safetensors",
        ),
    ] {
        dropout_adamw_steps_match(dir, reference);
    }
}

fn dropout_adamw_steps_match(dir: &str, reference: &str) {
    let dir = repo_path(dir);
    let mut params = read_parameters(&dir.join("model.safetensors")).expect("weights");
    let (_, hparams) = reference_tensor(reference, "hparams");
    let (lr, weight_decay) = (hparams[0], hparams[1]);
    let (warmup, total) = (hparams[2] as usize, hparams[3] as usize);
    let (_, dropout) = reference_tensor(reference, "dropout");
    let (seed, first_step) = (dropout[0] as u64, dropout[1] as u64);
    let rates = DropoutRates::new(dropout[2], dropout[3], dropout[4]).expect("rates");
    let (_, batches) = reference_tensor(reference, "batches");
    let (_, want_losses) = reference_tensor(reference, "losses");
    let (_, classes) = reference_tensor(reference, "labels");
    let mut adamw = AdamW::new(weight_decay);
    let mut classifier = classifier_from_parameters(&dir, &params, cpu()).expect("builds");
    let texts = tokenized(&dir, &classifier);
    for (step, rows) in batches.chunks_exact(2).enumerate() {
        let batch: Vec<TokenizedText> = rows.iter().map(|&r| texts[r as usize].clone()).collect();
        let y: Vec<usize> = rows.iter().map(|&r| classes[r as usize] as usize).collect();
        let dropout = rates.for_step(seed, first_step + step as u64);
        let got =
            loss_gradient_with_dropout(&classifier, &TokenBatch::pack(&batch), &y, Some(&dropout))
                .expect("gradient");
        let err = ((got.loss - want_losses[step]) / want_losses[step]).abs();
        assert!(
            err < F32_TOLERANCE,
            "{}: step {step}: loss rel err {err:.2e}",
            dir.display()
        );
        let step_lr = lr * linear_schedule(step, warmup, total);
        adamw
            .step(&mut params, &got.grads, step_lr)
            .expect("update");
        classifier = classifier_from_parameters(&dir, &params, cpu()).expect("rebuilds");
    }
    assert_matches_adamw_reference(&params, reference);
}

/// Rates of zero drop nothing and compute nothing more: the loss gradient is bit for bit the one
/// without dropout; nonzero rates change it.
#[test]
fn zero_dropout_is_no_dropout_bit_for_bit() {
    let dir = repo_path("tests/fixtures/classifiers/tiny-xlmr-cls");
    let classifier = SequenceClassifier::load(&dir, cpu(), WeightsDtype::F32).expect("loads");
    let batch = TokenBatch::pack(&tokenized(&dir, &classifier));
    let labels = [1, 0, 0, 1];
    let plain = loss_gradient(&classifier, &batch, &labels).expect("gradient");
    let zero = DropoutRates::new(0.0, 0.0, 0.0).unwrap().for_step(3, 0);
    let got = loss_gradient_with_dropout(&classifier, &batch, &labels, Some(&zero)).unwrap();
    assert_eq!(got.loss.to_bits(), plain.loss.to_bits());
    assert_eq!(got.grads, plain.grads);
    let some = DropoutRates::new(0.1, 0.1, 0.1).unwrap().for_step(3, 0);
    let dropped = loss_gradient_with_dropout(&classifier, &batch, &labels, Some(&some)).unwrap();
    assert_ne!(dropped.grads, plain.grads);
}

/// A large mask keeps a share of entries within four standard errors of 1 − p, each kept entry
/// scaled by exactly 1/(1 − p) in f32 and the residual added; the same key gives the same mask
/// whatever the thread count, another key another mask.
#[test]
fn dropout_masks_keep_one_minus_p_and_are_reproducible() {
    let (n, d, p) = (1000usize, 999usize, 0.3);
    let run = |key: u64, threads: usize| -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mask = DropoutMask::new(key, p).unwrap();
        pool.install(|| {
            let be = cpu();
            let x = be.upload(&[n, d], &vec![1.0; n * d]).unwrap();
            let residual = be.upload(&[n, d], &vec![0.5; n * d]).unwrap();
            let mut out = be.upload(&[n, d], &vec![f32::NAN; n * d]).unwrap();
            be.dropout(&x, &mask, Some(&residual), &mut out).unwrap();
            be.download(&out).unwrap()
        })
    };
    let got = run(11, 1);
    let scale = (1.0 / (1.0 - p)) as f32;
    assert!(got.iter().all(|&v| v == 0.5 || v == scale + 0.5));
    let kept = got.iter().filter(|&&v| v != 0.5).count() as f64 / got.len() as f64;
    let standard_error = (p * (1.0 - p) / got.len() as f64).sqrt();
    assert!(
        (kept - (1.0 - p)).abs() < 4.0 * standard_error,
        "kept {kept}, expected {} ± {standard_error:.1e}",
        1.0 - p
    );
    assert_eq!(run(11, 3), got, "the thread count changed the mask");
    assert_ne!(run(12, 1), got, "another key, the same mask");
    let mask = DropoutMask::new(11, p).unwrap();
    assert_eq!(mask.keeps(0, 0), got[0] != 0.5);
}

#[test]
fn dropout_probabilities_outside_zero_one_are_errors() {
    for p in [1.0, 1.5, -0.1, f64::NAN] {
        let err = DropoutMask::new(0, p).unwrap_err().to_string();
        assert!(err.contains("outside [0, 1)"), "{p}: {err}");
    }
    let err = DropoutRates::new(0.1, 1.0, 0.1).unwrap_err().to_string();
    assert!(err.contains("attention dropout probability 1"), "{err}");
    assert!(DropoutMask::new(0, 0.0).is_ok());
}

/// The rates of a config: `classifier_dropout` for the head, `hidden_dropout_prob` where it is
/// null; a probability of 1 is an error naming the file and the key.
#[test]
fn dropout_rates_follow_the_config() {
    let rates = |extra: serde_json::Value| {
        let mut config = serde_json::json!({
            "model_type": "bert", "vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
            "num_attention_heads": 1, "intermediate_size": 8, "max_position_embeddings": 8,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.2,
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let config: BertConfig = serde_json::from_value(config).unwrap();
        DropoutRates::of_config(&config, Path::new("dir/config.json"))
    };
    let head = |p: f64| DropoutRates::new(0.1, 0.2, p).unwrap();
    assert_eq!(rates(serde_json::json!({})).unwrap(), head(0.1));
    assert_eq!(
        rates(serde_json::json!({"classifier_dropout": null})).unwrap(),
        head(0.1)
    );
    assert_eq!(
        rates(serde_json::json!({"classifier_dropout": 0.3})).unwrap(),
        head(0.3)
    );
    let err = rates(serde_json::json!({"classifier_dropout": 1.0}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dir/config.json: classifier_dropout 1 is outside [0, 1)"),
        "{err}"
    );
}

/// `mscope train --dropout` twice with one seed writes the same model, and one that differs from
/// the run without dropout.
#[test]
fn cli_dropout_runs_are_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let (encoder, texts) = (repo_path(ENCODER), repo_path(TEXTS));
    let train = |name: &str, dropout: bool| -> Vec<u8> {
        let out = tmp.path().join(name);
        let mut args = vec!["train", "--model", path_str(&encoder), "--data"];
        args.extend([path_str(&texts), "--out", path_str(&out)]);
        args.extend([
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--seed",
            "5",
        ]);
        if dropout {
            args.push("--dropout");
        }
        run_mscope_ok(&args);
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let first = train("first", true);
    assert_eq!(train("again", true), first, "the same seed, another model");
    assert_ne!(train("plain", false), first, "--dropout changed nothing");
}

/// Training runs on the CPU: the GPU backends say they lack the training family, and its ops
/// fail with an error naming the op (each backend present; an absent one is reported skipped).
#[test]
fn gpu_backends_refuse_dropout_clearly() {
    assert!(cpu().supports(OpFamily::Training));
    for kind in [BackendKind::Wgpu, BackendKind::Cuda] {
        let Some(be) = common::backend(
            kind,
            OpFamily::Encoder,
            "gpu_backends_refuse_dropout_clearly",
        ) else {
            continue;
        };
        assert!(!be.supports(OpFamily::Training), "{}", be.name());
        let x = be.upload(&[2, 3], &[1.0; 6]).unwrap();
        let mut out = be.zeros(&[2, 3]).unwrap();
        let mask = DropoutMask::new(1, 0.5).unwrap();
        let err = be
            .dropout(&x, &mask, None, &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dropout") && err.contains("not supported"),
            "{}: {err}",
            be.name()
        );
    }
}
