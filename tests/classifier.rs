//! Transformer sequence classifiers against transformers and torch.func (fixtures of
//! `tools/make_classifier_fixtures.py`): logits on every backend; on the CPU, per-sample
//! per-class gradients assembled from the factors (`Δᵀ A` per Linear, `δ` rows scattered by id
//! per embedding table) against torch.func's, tensor by tensor, and the exact trNTK, trNTK0 and
//! pNTK from materialised gradients.

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use common::{
    assert_matches_adamw_reference, backend_tests, reference_names, reference_tensor,
    rel_error_f64, repo_path, run_mscope_ok,
};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::{Backend, JlDistribution, JlSpec};
use mscope::instruments::layers::LayerSpec;
use mscope::instruments::project::KernelKind;
use mscope::instruments::transformer_ntk::SequenceKernelJob;
use mscope::instruments::transformer_project::{dense_features, CHUNK_VALUES};
use mscope::io::checkpoint::Checkpoint;
use mscope::io::kernel_file::KernelFile;
use mscope::models::classifier::SequenceClassifier;
use mscope::models::classifier_grad::{
    class_seeds, factors, loss_gradient, summed_seed, SequenceFactors,
};
use mscope::models::finetune::{linear_schedule, read_parameters, write_classifier, AdamW};
use mscope::models::tokenize::{TextTokenizer, TokenizedText};
use mscope::models::{Encoder, TokenBatch};
use mscope::weights::WeightsDtype;

backend_tests! {
    bert_logits_match_transformers,
    xlmr_logits_match_transformers,
    factors_match_the_cpu_path: Backward,
    bert_per_sample_gradients_match_torch_func: Backward,
    xlmr_per_sample_gradients_match_torch_func: Backward,
    bert_exact_kernels_match_torch_func: Backward,
    xlmr_exact_kernels_match_torch_func: Backward,
    contracted_kernels_match_torch_func: Backward,
    cli_ntk_of_a_classifier_matches_torch_func: Backward,
}

/// f32 paths against a float64 reference (the crate's numerics contract).
const F32_TOLERANCE: f64 = 1e-5;

/// The two fixture classifiers: directory and reference file.
const MODELS: [(&str, &str); 2] = [
    (
        "tests/fixtures/classifiers/tiny-bert-cls",
        "tests/fixtures/classifiers/bert_reference.safetensors",
    ),
    (
        "tests/fixtures/classifiers/tiny-xlmr-cls",
        "tests/fixtures/classifiers/xlmr_reference.safetensors",
    ),
];

fn texts() -> Vec<String> {
    std::fs::read_to_string(repo_path("tests/fixtures/classifiers/texts.jsonl"))
        .expect("fixture texts")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["text"].as_str().expect("text field").to_string()
        })
        .collect()
}

fn load(dir: &str, be: Arc<dyn Backend>) -> SequenceClassifier {
    SequenceClassifier::load(&repo_path(dir), be, WeightsDtype::F32).expect("classifier loads")
}

/// The fixture texts tokenised and packed, checked against the reference's token ids.
fn batch(dir: &str, classifier: &SequenceClassifier, reference: &str) -> TokenBatch {
    let tokenizer = TextTokenizer::load(&repo_path(dir), classifier.encoder().max_tokens())
        .expect("tokenizer loads");
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
    let tokenized = tokenizer.encode(&refs).expect("tokenises");
    let (shape, want) = reference_tensor(reference, "input_ids");
    for (i, t) in tokenized.iter().enumerate() {
        let row: Vec<u32> = want[i * shape[1]..(i + 1) * shape[1]]
            .iter()
            .take_while(|&&v| v >= 0.0)
            .map(|&v| v as u32)
            .collect();
        assert_eq!(t.ids, row, "{dir}: token ids of text {i}");
    }
    TokenBatch::pack(&tokenized)
}

fn logits_match(be: &Arc<dyn Backend>, (dir, reference): (&str, &str)) {
    let classifier = load(dir, be.clone());
    let batch = batch(dir, &classifier, reference);
    let logits = be
        .download(&classifier.logits(&batch).expect("forward"))
        .expect("download");
    let got: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let (shape, want) = reference_tensor(reference, "logits");
    assert_eq!(shape, [texts().len(), classifier.num_labels()]);
    let err = rel_error_f64(&got, &want);
    assert!(
        err < F32_TOLERANCE,
        "{dir} on {}: logits rel err {err:.2e}",
        be.name()
    );
}

fn bert_logits_match_transformers(be: &Arc<dyn Backend>) {
    logits_match(be, MODELS[0]);
}

fn xlmr_logits_match_transformers(be: &Arc<dyn Backend>) {
    logits_match(be, MODELS[1]);
}

#[test]
fn labels_come_from_id2label() {
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    assert_eq!(
        load(MODELS[0].0, cpu.clone()).labels(),
        ["negative", "neutral", "positive"]
    );
    assert_eq!(load(MODELS[1].0, cpu).labels(), ["negative", "positive"]);
}

/// Every sample's gradient of every seed, per checkpoint tensor: name → rows (sample, seed).
fn materialised(f: &SequenceFactors) -> BTreeMap<String, Vec<Vec<f64>>> {
    let mut out: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    for i in 0..f.num_samples() {
        for k in 0..f.seeds {
            for (name, g) in f.materialize(i, k).expect("materialises") {
                out.entry(name)
                    .or_default()
                    .push(g.iter().map(|&v| v as f64).collect());
            }
        }
    }
    out
}

fn gram(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.iter()
        .flat_map(|a| {
            rows.iter()
                .map(move |b| a.iter().zip(b).map(|(x, y)| x * y).sum())
        })
        .collect()
}

/// The factors of the fixture texts, computed on `be` (recorded forward and backward passes).
fn factors_on(
    be: &Arc<dyn Backend>,
    (dir, reference): (&str, &str),
    seeds: fn(usize) -> Vec<f32>,
) -> SequenceFactors {
    let classifier = load(dir, be.clone());
    let batch = batch(dir, &classifier, reference);
    factors(&classifier, &batch, &seeds(classifier.num_labels())).expect("factors")
}

fn cpu_factors(model: (&str, &str), seeds: fn(usize) -> Vec<f32>) -> SequenceFactors {
    factors_on(
        &(Arc::new(CpuBackend::new()) as Arc<dyn Backend>),
        model,
        seeds,
    )
}

/// Every factor a backend computes (layer inputs, output gradients, embedding gradients,
/// per-sample vectors) against the CPU path's, within f32 tolerance, for both models and both
/// kinds of seeds.
fn factors_match_the_cpu_path(be: &Arc<dyn Backend>) {
    let close = |what: String, got: &[f32], want: &[f32]| {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let err = rel_error_f64(&widen32(got), &widen32(want));
        assert!(
            err < F32_TOLERANCE,
            "{what} on {}: rel err {err:.2e}",
            be.name()
        );
    };
    for model in MODELS {
        for seeds in [class_seeds as fn(usize) -> Vec<f32>, summed_seed] {
            let (got, want) = (factors_on(be, model, seeds), cpu_factors(model, seeds));
            assert_eq!(got.seeds, want.seeds);
            assert_eq!(got.parameter_names(), want.parameter_names());
            for (g, w) in got.linears.iter().zip(&want.linears) {
                let name = &w.parts[0].0;
                close(format!("{name} inputs"), &g.acts, &w.acts);
                close(format!("{name} output gradients"), &g.deltas, &w.deltas);
            }
            let (ge, we) = (&got.embeddings, &want.embeddings);
            close(
                format!("{}: embedding gradients", model.0),
                &ge.deltas,
                &we.deltas,
            );
            for (g, w) in ge.tables.iter().zip(&we.tables) {
                assert_eq!(g.ids, w.ids, "{}: ids", w.name);
            }
            for (g, w) in got.vectors.iter().zip(&want.vectors) {
                if w.name.ends_with("attention.self.key.bias") {
                    // Rounding alone (see per_sample_gradients_match_torch_func).
                    continue;
                }
                close(w.name.clone(), &g.grads, &w.grads);
            }
        }
    }
}

/// Names of the reference tensors with `prefix`, the prefix removed.
fn per_sample_gradients_match_torch_func(be: &Arc<dyn Backend>, model: (&str, &str)) {
    let (dir, reference) = model;
    let dir = &format!("{dir} on {}", be.name());
    let grads = materialised(&factors_on(be, model, class_seeds));
    // Every parameter of the checkpoint, and nothing else.
    let names: Vec<String> = grads.keys().cloned().collect();
    assert_eq!(
        names,
        reference_names(reference, "gram."),
        "{dir}: parameters"
    );
    let trace = |g: &[f64]| -> f64 {
        let m = (g.len() as f64).sqrt() as usize;
        (0..m).map(|i| g[i * m + i]).sum()
    };
    let total: f64 = grads.values().map(|rows| trace(&gram(rows))).sum();
    let mut worst = (0.0f64, String::new());
    for (name, rows) in &grads {
        let (_, want) = reference_tensor(reference, &format!("gram.{name}"));
        let got = gram(rows);
        if name.ends_with("attention.self.key.bias") {
            // Softmax ignores what a key bias adds to every score of a query (q·b), so its
            // gradient is zero: both sides hold only rounding, far below the whole gradient.
            for (side, g) in [("mscope", &got), ("torch.func", &want)] {
                let share = trace(g) / total;
                assert!(
                    share < 1e-12,
                    "{dir}: {side} {name} holds {share:.1e} of ‖g‖²"
                );
            }
            continue;
        }
        let err = rel_error_f64(&got, &want);
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    assert!(
        worst.0 < F32_TOLERANCE,
        "{dir}: per-tensor Gram of the per-sample per-class gradients, worst {} rel err {:.2e}",
        worst.1,
        worst.0
    );
    let full = reference_names(reference, "grad.");
    assert!(full.len() >= 4, "{dir}: the reference holds full gradients");
    for name in full {
        let (_, want) = reference_tensor(reference, &format!("grad.{name}"));
        let got: Vec<f64> = grads[&name].concat();
        let err = rel_error_f64(&got, &want);
        assert!(
            err < F32_TOLERANCE,
            "{dir}: gradient of {name}: rel err {err:.2e}"
        );
    }
}

fn bert_per_sample_gradients_match_torch_func(be: &Arc<dyn Backend>) {
    per_sample_gradients_match_torch_func(be, MODELS[0]);
}

fn xlmr_per_sample_gradients_match_torch_func(be: &Arc<dyn Backend>) {
    per_sample_gradients_match_torch_func(be, MODELS[1]);
}

/// The mean cross-entropy loss of the fixture texts and its gradient, parameter by parameter,
/// against float64 autograd (`tools/make_finetune_fixtures.py`).
fn loss_gradient_matches_torch((dir, reference): (&str, &str), loss_reference: &str) {
    let classifier = load(dir, Arc::new(CpuBackend::new()));
    let batch = batch(dir, &classifier, reference);
    let (_, labels) = reference_tensor(loss_reference, "labels");
    let labels: Vec<usize> = labels.iter().map(|&y| y as usize).collect();
    let got = loss_gradient(&classifier, &batch, &labels).expect("loss gradient");
    let (_, want_loss) = reference_tensor(loss_reference, "loss");
    let err = ((got.loss - want_loss[0]) / want_loss[0]).abs();
    assert!(err < F32_TOLERANCE, "{dir}: loss rel err {err:.2e}");
    let mut names: Vec<String> = got.grads.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        reference_names(loss_reference, "grad."),
        "{dir}: parameters"
    );
    let total: f64 = names
        .iter()
        .map(|n| {
            let (_, g) = reference_tensor(loss_reference, &format!("grad.{n}"));
            g.iter().map(|v| v * v).sum::<f64>()
        })
        .sum();
    for (name, grad) in &got.grads {
        let (_, want) = reference_tensor(loss_reference, &format!("grad.{name}"));
        let grad: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
        if name.ends_with("attention.self.key.bias") {
            // Zero but for rounding on both sides (softmax ignores q·b).
            for (side, g) in [("mscope", &grad), ("torch", &want)] {
                let share = g.iter().map(|v| v * v).sum::<f64>() / total;
                assert!(
                    share < 1e-12,
                    "{dir}: {side} {name} holds {share:.1e} of ‖g‖²"
                );
            }
            continue;
        }
        let err = rel_error_f64(&grad, &want);
        assert!(
            err < F32_TOLERANCE,
            "{dir}: loss gradient of {name}: rel err {err:.2e}"
        );
    }
}

#[test]
fn bert_loss_gradient_matches_torch() {
    loss_gradient_matches_torch(
        MODELS[0],
        "tests/fixtures/classifiers/bert_loss_reference.safetensors",
    );
}

#[test]
fn xlmr_loss_gradient_matches_torch() {
    loss_gradient_matches_torch(
        MODELS[1],
        "tests/fixtures/classifiers/xlmr_loss_reference.safetensors",
    );
}

#[test]
fn loss_gradient_refuses_bad_labels() {
    let (dir, reference) = MODELS[1];
    let classifier = load(dir, Arc::new(CpuBackend::new()));
    let batch = batch(dir, &classifier, reference);
    let err = loss_gradient(&classifier, &batch, &[0, 1, 2, 0]).unwrap_err();
    assert!(err.to_string().contains("label index 2"), "{err}");
    let err = loss_gradient(&classifier, &batch, &[0, 1]).unwrap_err();
    assert!(err.to_string().contains("2 labels for 4 texts"), "{err}");
}

/// Three AdamW steps under the linear warm-up/decay schedule, each on two fixture texts, against
/// `torch.optim.AdamW` with transformers' scheduler from the same weights and batches: each
/// step's loss and every parameter after the third step. The classifier is reloaded from the
/// written weights after each update, as fine-tuning does.
#[test]
fn adamw_steps_match_torch() {
    let (dir, reference) = MODELS[0];
    let fixture = "tests/fixtures/classifiers/bert_adamw_reference.safetensors";
    let (_, hparams) = reference_tensor(fixture, "hparams");
    let (lr, weight_decay) = (hparams[0], hparams[1]);
    let (warmup, total) = (hparams[2] as usize, hparams[3] as usize);
    let (_, batches) = reference_tensor(fixture, "batches");
    let (_, want_losses) = reference_tensor(fixture, "losses");
    let (_, labels) = reference_tensor(
        "tests/fixtures/classifiers/bert_loss_reference.safetensors",
        "labels",
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut params = read_parameters(&repo_path(dir).join("model.safetensors")).expect("weights");
    write_classifier(&repo_path(dir), tmp.path(), &params).expect("writes the directory");
    let mut adamw = AdamW::new(weight_decay);
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let tokenized = {
        let classifier = load(dir, cpu.clone());
        let _ = batch(dir, &classifier, reference); // the ids agree with transformers'
        tokenized(dir, &classifier)
    };
    for (step, rows) in batches.chunks_exact(2).enumerate() {
        let classifier = SequenceClassifier::load(tmp.path(), cpu.clone(), WeightsDtype::F32)
            .expect("written classifier loads");
        let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        let texts: Vec<TokenizedText> = rows.iter().map(|&r| tokenized[r].clone()).collect();
        let y: Vec<usize> = rows.iter().map(|&r| labels[r] as usize).collect();
        let got = loss_gradient(&classifier, &TokenBatch::pack(&texts), &y).expect("gradient");
        let err = ((got.loss - want_losses[step]) / want_losses[step]).abs();
        assert!(err < F32_TOLERANCE, "step {step}: loss rel err {err:.2e}");
        let step_lr = lr * linear_schedule(step, warmup, total);
        adamw
            .step(&mut params, &got.grads, step_lr)
            .expect("update");
        write_classifier(&repo_path(dir), tmp.path(), &params).expect("writes");
    }
    assert_matches_adamw_reference(&params, fixture);
    // The written directory holds the labels and tokenizer of the original.
    let written = load(path_str(tmp.path()), cpu);
    assert_eq!(written.labels(), ["negative", "neutral", "positive"]);
    TextTokenizer::load(tmp.path(), written.encoder().max_tokens()).expect("tokenizer copied");
}

/// `Σ_tensors` of the Gram of rows (sample, seed), summed over equal seeds: `[n, n]`.
fn kernel(f: &SequenceFactors) -> Vec<f64> {
    let (n, r) = (f.num_samples(), f.seeds);
    let mut k = vec![0.0f64; n * n];
    for rows in materialised(f).values() {
        let g = gram(rows);
        for i in 0..n {
            for j in 0..n {
                k[i * n + j] += (0..r)
                    .map(|c| g[(i * r + c) * n * r + j * r + c])
                    .sum::<f64>();
            }
        }
    }
    k
}

fn exact_kernels_match_torch_func(be: &Arc<dyn Backend>, model: (&str, &str)) {
    let (dir, reference) = model;
    let dir = &format!("{dir} on {}", be.name());
    let trntk0 = kernel(&factors_on(be, model, class_seeds));
    let n = (trntk0.len() as f64).sqrt() as usize;
    let norms: Vec<f64> = (0..n).map(|i| trntk0[i * n + i].sqrt()).collect();
    let trntk: Vec<f64> = (0..n * n)
        .map(|ij| trntk0[ij] / (norms[ij / n] * norms[ij % n]))
        .collect();
    let pntk = kernel(&factors_on(be, model, summed_seed));
    for (what, got) in [("trntk0", trntk0), ("trntk", trntk), ("pntk", pntk)] {
        let (_, want) = reference_tensor(reference, what);
        let err = rel_error_f64(&got, &want);
        assert!(err < F32_TOLERANCE, "{dir}: {what} rel err {err:.2e}");
    }
}

fn bert_exact_kernels_match_torch_func(be: &Arc<dyn Backend>) {
    exact_kernels_match_torch_func(be, MODELS[0]);
}

fn xlmr_exact_kernels_match_torch_func(be: &Arc<dyn Backend>) {
    exact_kernels_match_torch_func(be, MODELS[1]);
}

/// Packing must not leak: each text's gradients in the batch of four equal its gradients alone.
#[test]
fn packed_samples_do_not_see_each_other() {
    let (dir, reference) = MODELS[1];
    let classifier = load(dir, Arc::new(CpuBackend::new()));
    let packed = batch(dir, &classifier, reference);
    let seeds = class_seeds(classifier.num_labels());
    let together = factors(&classifier, &packed, &seeds).expect("factors");
    let starts = packed.layout.starts().to_vec();
    for i in 0..together.num_samples() {
        let rows = starts[i]..starts[i + 1];
        let alone = TokenBatch {
            ids: packed.ids[rows.clone()].to_vec(),
            type_ids: packed.type_ids[rows.clone()].to_vec(),
            layout: mscope::backend::SeqLayout::from_lengths([rows.len()]),
        };
        let single = factors(&classifier, &alone, &seeds).expect("factors");
        for k in 0..together.seeds {
            let widen = |g: Vec<(String, Vec<f32>)>| -> Vec<f64> {
                g.into_iter()
                    .flat_map(|(_, v)| v.into_iter().map(f64::from))
                    .collect()
            };
            let got = widen(together.materialize(i, k).expect("materialises"));
            let want = widen(single.materialize(0, k).expect("materialises"));
            let err = rel_error_f64(&got, &want);
            assert!(
                err < F32_TOLERANCE,
                "text {i}, class {k}: packed vs alone rel err {err:.2e}"
            );
        }
    }
}

#[test]
fn a_checkpoint_without_a_head_is_refused() {
    let err = SequenceClassifier::load(
        &repo_path("tests/fixtures/tiny-xlmr"),
        Arc::new(CpuBackend::new()),
        WeightsDtype::F32,
    )
    .err()
    .expect("no head")
    .to_string();
    assert!(
        err.contains("no sequence-classification head") && err.contains("XLMRobertaModel"),
        "{err}"
    );
}

/// The tokenised fixture texts of a model.
fn tokenized(dir: &str, classifier: &SequenceClassifier) -> Vec<TokenizedText> {
    let tokenizer = TextTokenizer::load(&repo_path(dir), classifier.encoder().max_tokens())
        .expect("tokenizer loads");
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
    tokenizer.encode(&refs).expect("tokenises")
}

fn run_job(job: &SequenceKernelJob) -> Vec<f32> {
    run_job_on(&CpuBackend::new(), job)
}

fn run_job_on(be: &dyn Backend, job: &SequenceKernelJob) -> Vec<f32> {
    job.run(be, None, &mut |_| ControlFlow::Continue(()))
        .expect("kernel")
        .expect("not stopped")
        .values
}

/// The instrument's contracted kernels (factors and the token-level, id-matching and
/// materialised forms on the backend, tiles of 3 texts so one tile is ragged) against
/// torch.func's, square and against.
fn contracted_kernels_match_torch_func(be: &Arc<dyn Backend>) {
    let run_job = |job: &SequenceKernelJob| run_job_on(be.as_ref(), job);
    for (dir, reference) in MODELS {
        let classifier = load(dir, be.clone());
        let texts = tokenized(dir, &classifier);
        let dir = &format!("{dir} on {}", be.name());
        let n = texts.len();
        for kind in [KernelKind::Trntk, KernelKind::Trntk0, KernelKind::Pntk] {
            let (_, want) = reference_tensor(reference, kind.name());
            let mut job = SequenceKernelJob {
                classifier: &classifier,
                rows: &texts,
                cols: None,
                row_labels: None,
                col_labels: None,
                kind,
                block_rows: 1,
                tile_rows: 3,
                layers: LayerSpec::default(),
                projection: None,
                kronecker: false,
            };
            let square = run_job(&job);
            let err = rel_error_f64(&square.iter().map(|&v| v as f64).collect::<Vec<_>>(), &want);
            assert!(
                err < F32_TOLERANCE,
                "{dir} {}: square rel err {err:.2e}",
                kind.name()
            );
            // Blocks do not change a bit.
            job.block_rows = n;
            assert_eq!(run_job(&job), square, "{dir} {}: one block", kind.name());
            // Texts 1.. against every text: the reference's rows 1...
            job.rows = &texts[1..];
            job.cols = Some(&texts);
            let against: Vec<f64> = run_job(&job).iter().map(|&v| v as f64).collect();
            let err = rel_error_f64(&against, &want[n..]);
            assert!(
                err < F32_TOLERANCE,
                "{dir} {}: against rel err {err:.2e}",
                kind.name()
            );
        }
    }
}

/// A run stopped after two blocks resumes from its checkpoint to the one-pass kernel, bit for
/// bit.
#[test]
fn a_resumed_run_gives_the_one_pass_kernel_exactly() {
    let (dir, _) = MODELS[0];
    let classifier = load(dir, Arc::new(CpuBackend::new()));
    let texts = tokenized(dir, &classifier);
    let job = SequenceKernelJob {
        classifier: &classifier,
        rows: &texts,
        cols: None,
        row_labels: None,
        col_labels: None,
        kind: KernelKind::Trntk,
        block_rows: 1,
        tile_rows: 2,
        layers: LayerSpec::default(),
        projection: None,
        kronecker: false,
    };
    let one_pass = run_job(&job);
    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = Checkpoint::open(tmp.path(), &serde_json::json!({"test": "resume"})).unwrap();
    let mut done = 0;
    let stopped = job
        .run(&CpuBackend::new(), Some(&checkpoint), &mut |_| {
            done += 1;
            if done == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert!(stopped.is_none());
    let mut resumed = Vec::new();
    let kernel = job
        .run(&CpuBackend::new(), Some(&checkpoint), &mut |b| {
            resumed.push(b.resumed);
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(resumed, [true, true, false, false]);
    assert_eq!(kernel.values, one_pass);
}

/// The fixture texts' labels as the classifier's class indices.
fn labels(classifier: &SequenceClassifier) -> Vec<usize> {
    std::fs::read_to_string(repo_path("tests/fixtures/classifiers/texts.jsonl"))
        .expect("fixture texts")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            let name = v["label"].as_str().expect("label field");
            classifier
                .labels()
                .iter()
                .position(|l| l == name)
                .expect("a label of the model")
        })
        .collect()
}

/// The gradient cosine and embedding kernels (`tools/make_kernel_kind_fixtures.py`) against
/// torch.func's loss gradients and transformers' hidden states, square (tiles of 3 texts, so
/// one tile is ragged and the texts of a tile have different lengths) and against.
#[test]
fn gradient_cosine_and_embedding_kernels_match_torch() {
    for (dir, reference) in MODELS {
        let kinds_reference = reference.replace("_reference", "_kinds_reference");
        let classifier = load(dir, Arc::new(CpuBackend::new()));
        let texts = tokenized(dir, &classifier);
        let labels = labels(&classifier);
        let n = texts.len();
        for kind in [KernelKind::Gradcos, KernelKind::Embedding] {
            let (_, want) = reference_tensor(&kinds_reference, kind.name());
            let mut job = SequenceKernelJob {
                classifier: &classifier,
                rows: &texts,
                cols: None,
                row_labels: Some(&labels),
                col_labels: None,
                kind,
                block_rows: 2,
                tile_rows: 3,
                layers: LayerSpec::default(),
                projection: None,
                kronecker: false,
            };
            let square: Vec<f64> = run_job(&job).iter().map(|&v| v as f64).collect();
            let err = rel_error_f64(&square, &want);
            assert!(
                err < F32_TOLERANCE,
                "{dir} {}: square rel err {err:.2e}",
                kind.name()
            );
            job.rows = &texts[1..];
            job.row_labels = Some(&labels[1..]);
            job.cols = Some(&texts);
            job.col_labels = Some(&labels);
            let against: Vec<f64> = run_job(&job).iter().map(|&v| v as f64).collect();
            let err = rel_error_f64(&against, &want[n..]);
            assert!(
                err < F32_TOLERANCE,
                "{dir} {}: against rel err {err:.2e}",
                kind.name()
            );
        }
    }
}

/// `ntk --kind gradcos|embedding` writes the kernels torch gives, and refuses what they cannot
/// take: unlabelled texts for the gradient cosine, a projection or a layer subset for the
/// embedding kernel, an MLP for either.
#[test]
fn cli_ntk_gradient_cosine_and_embedding_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_path("tests/fixtures/classifiers/texts.jsonl");
    let out = tmp.path().join("k.safetensors");
    let (dir, reference) = MODELS[1];
    let model = repo_path(dir);
    let kinds_reference = reference.replace("_reference", "_kinds_reference");
    let ntk = |kind: &str, data: &std::path::Path, extra: &[&str]| -> Vec<String> {
        [
            "ntk",
            "--model",
            path_str(&model),
            "--data",
            path_str(data),
            "--kind",
            kind,
            "--backend",
            "cpu",
            "--out",
            path_str(&out),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    for kind in ["gradcos", "embedding"] {
        run_mscope_ok(&as_strs(&ntk(kind, &data, &[])));
        let k = KernelFile::read(&out).unwrap();
        assert_eq!(
            (k.rows, k.cols, k.kind.as_str(), k.normalized),
            (4, 4, kind, true)
        );
        let got: Vec<f64> = k.values.iter().map(|&v| v as f64).collect();
        let err = rel_error_f64(&got, &reference_tensor(&kinds_reference, kind).1);
        assert!(err < F32_TOLERANCE, "{kind}: rel err {err:.2e}");
        std::fs::remove_file(&out).unwrap();
    }
    let unlabelled = tmp.path().join("unlabelled.jsonl");
    std::fs::write(&unlabelled, "{\"text\": \"fine\"}\n").unwrap();
    common::assert_fails_cleanly(
        &as_strs(&ntk("gradcos", &unlabelled, &[])),
        &["unlabelled.jsonl", "--kind gradcos needs a label"],
    );
    common::assert_fails_cleanly(
        &as_strs(&ntk(
            "embedding",
            &data,
            &["--projection", "rademacher", "--projection-dim", "4"],
        )),
        &["--kind embedding", "--projection"],
    );
    common::assert_fails_cleanly(
        &as_strs(&ntk("embedding", &data, &["--layers", "head"])),
        &["--kind embedding", "--layers"],
    );
}

fn as_strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `mscope ntk --model` on the test's backend: the factors' backward passes and the contraction
/// both run there.
fn cli_ntk_of_a_classifier_matches_torch_func(be: &dyn Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_path("tests/fixtures/classifiers/texts.jsonl");
    for (dir, reference) in MODELS {
        for kind in ["trntk", "trntk0", "pntk"] {
            let out = tmp.path().join(format!("{kind}.safetensors"));
            let model = repo_path(dir);
            let stdout = run_mscope_ok(&[
                "ntk",
                "--model",
                path_str(&model),
                "--data",
                path_str(&data),
                "--kind",
                kind,
                "--block-rows",
                "2",
                "--backend",
                be.name(),
                "--out",
                path_str(&out),
            ])
            .stdout;
            let stdout = String::from_utf8_lossy(&stdout);
            assert!(stdout.contains(&format!("{kind} 4×4 (exact)")), "{stdout}");
            let k = KernelFile::read(&out).unwrap();
            assert_eq!((k.rows, k.cols, k.kind.as_str()), (4, 4, kind));
            let got: Vec<f64> = k.values.iter().map(|&v| v as f64).collect();
            let err = rel_error_f64(&got, &reference_tensor(reference, kind).1);
            assert!(
                err < F32_TOLERANCE,
                "{dir} {kind} on {}: rel err {err:.2e}",
                be.name()
            );
            assert!(
                !Checkpoint::dir_for(&out).exists(),
                "blocks removed when done"
            );
        }
    }
}

#[test]
fn cli_ntk_of_a_classifier_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("k.safetensors");
    let bert = repo_path(MODELS[0].0);
    let texts = repo_path("tests/fixtures/classifiers/texts.jsonl");
    let write = |name: &str, body: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let ntk = |model: &std::path::Path, data: &std::path::Path| -> Vec<String> {
        ["ntk", "--model", path_str(model), "--data", path_str(data)]
            .into_iter()
            .chain(["--backend", "cpu", "--out", path_str(&out)])
            .map(str::to_string)
            .collect()
    };
    // A checkpoint without a classification head.
    let no_head = ntk(&repo_path("tests/fixtures/tiny-xlmr"), &texts);
    common::assert_fails_cleanly(
        &as_strs(&no_head),
        &["no sequence-classification head", "XLMRobertaModel"],
    );
    // A label the model does not have (it has negative, neutral, positive).
    let bad_label = write(
        "bad_label.jsonl",
        "{\"text\": \"fine\", \"label\": \"positive\"}\n{\"text\": \"odd\", \"label\": \"sideways\"}\n",
    );
    common::assert_fails_cleanly(
        &as_strs(&ntk(&bert, &bad_label)),
        &[
            "bad_label.jsonl",
            "row 2",
            "\"sideways\"",
            "negative, neutral, positive",
        ],
    );
    let bad_index = write(
        "bad_index.jsonl",
        "{\"text\": \"fine\", \"label\": \"3\"}\n",
    );
    common::assert_fails_cleanly(&as_strs(&ntk(&bert, &bad_index)), &["row 1", "\"3\""]);
    // An empty data file.
    let empty = write("empty.jsonl", "");
    common::assert_fails_cleanly(&as_strs(&ntk(&bert, &empty)), &["empty.jsonl", "no texts"]);
    // A projection needs a dimension.
    let mut projected = ntk(&bert, &texts);
    projected.extend(["--projection", "kronecker"].map(String::from));
    common::assert_fails_cleanly(&as_strs(&projected), &["--projection-dim"]);
    // A text longer than the 32 positions is truncated as the tokenizer says, and reported.
    let long = write(
        "long.jsonl",
        &format!(
            "{{\"text\": \"short\"}}\n{{\"text\": \"{}\"}}\n",
            "the quick brown fox jumps over the lazy dog ".repeat(8)
        ),
    );
    let run = run_mscope_ok(&as_strs(&ntk(&bert, &long)));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("1 of 2 texts (the first: row 2)") && stderr.contains("truncated to 32"),
        "{stderr}"
    );
    assert_eq!(KernelFile::read(&out).unwrap().rows, 2);
}

/// The trNTK0 of the parameters `keep` selects, from torch.func's per-tensor Grams (rows
/// (sample, class)): `Σ_names Σ_c gram[(i, c), (j, c)]`.
fn reference_trntk0(reference: &str, keep: &dyn Fn(&str) -> bool) -> Vec<f64> {
    let mut k: Vec<f64> = Vec::new();
    let mut n = 0;
    for name in reference_names(reference, "gram.")
        .iter()
        .filter(|n| keep(n))
    {
        let (_, g) = reference_tensor(reference, &format!("gram.{name}"));
        let (_, pntk) = reference_tensor(reference, "pntk");
        n = (pntk.len() as f64).sqrt() as usize;
        let rc = (g.len() as f64).sqrt() as usize;
        let c = rc / n;
        k.resize(n * n, 0.0);
        for i in 0..n {
            for j in 0..n {
                k[i * n + j] += (0..c).map(|s| g[(i * c + s) * rc + j * c + s]).sum::<f64>();
            }
        }
    }
    assert!(n > 0, "{reference}: the selection holds parameters");
    k
}

/// Which parameters a spec should select.
type Selection = Box<dyn Fn(&str) -> bool>;

/// The encoder layer of a parameter name, if any (independent of the crate's parser).
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.split("encoder.layer.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

/// `--layers` restricts the contracted kernel to exactly the selected tensors' Grams: the last
/// encoder layer with the head, and a pattern that splits the fused QKV projection (queries
/// only) together with the head's output layer.
#[test]
fn kernels_restricted_to_layers_match_torch_func() {
    for (dir, reference) in MODELS {
        let classifier = load(dir, Arc::new(CpuBackend::new()));
        let texts = tokenized(dir, &classifier);
        let names = reference_names(reference, "gram.");
        let last = names.iter().filter_map(|n| layer_of(n)).max().unwrap();
        let head = |n: &str| layer_of(n).is_none() && !n.contains("embeddings.");
        let out_layer = if dir.contains("bert-cls") {
            "classifier."
        } else {
            "classifier.out_proj."
        };
        let specs: [(String, Selection); 2] = [
            (
                "last:1".into(),
                Box::new(move |n: &str| head(n) || layer_of(n) == Some(last)),
            ),
            (
                format!("*.attention.self.query.,{out_layer}"),
                Box::new(move |n: &str| {
                    n.contains(".attention.self.query.") || n.starts_with(out_layer)
                }),
            ),
        ];
        for (spec, keep) in &specs {
            let want = reference_trntk0(reference, keep.as_ref());
            let job = SequenceKernelJob {
                classifier: &classifier,
                rows: &texts,
                cols: None,
                row_labels: None,
                col_labels: None,
                kind: KernelKind::Trntk0,
                block_rows: 2,
                tile_rows: 3,
                layers: spec.parse().unwrap(),
                projection: None,
                kronecker: false,
            };
            let got: Vec<f64> = run_job(&job).iter().map(|&v| v as f64).collect();
            let err = rel_error_f64(&got, &want);
            assert!(
                err < F32_TOLERANCE,
                "{dir} --layers {spec}: rel err {err:.2e}"
            );
            let all = reference_tensor(reference, "trntk0").1;
            assert!(
                rel_error_f64(&got, &all) > 1e-2,
                "{dir} --layers {spec}: a strict subset of the parameters"
            );
        }
    }
}

/// The CLI's `--layers`: the kernel of the selected tensors, the spec in the shards' manifest,
/// and a clear refusal of a spec that matches nothing.
#[test]
fn cli_ntk_layers_restricts_the_kernel_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_path("tests/fixtures/classifiers/texts.jsonl");
    let (dir, reference) = MODELS[0];
    let model = repo_path(dir);
    let out = tmp.path().join("k.safetensors");
    let args = |layers: &str| -> Vec<String> {
        [
            "ntk",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--kind",
            "trntk0",
            "--layers",
            layers,
            "--backend",
            "cpu",
            "--out",
            path_str(&out),
        ]
        .map(String::from)
        .to_vec()
    };
    let mut sharded = args("head");
    sharded.extend(["--shard", "0/1"].map(String::from));
    run_mscope_ok(&as_strs(&sharded));
    let shards = mscope::io::shards::read_all(&out).unwrap();
    assert_eq!(shards[0].manifest.job["layers"], "head");
    run_mscope_ok(&["merge", path_str(&out)]);
    let k = KernelFile::read(&out).unwrap();
    let got: Vec<f64> = k.values.iter().map(|&v| v as f64).collect();
    let want = reference_trntk0(reference, &|n| {
        layer_of(n).is_none() && !n.contains("embeddings.")
    });
    let err = rel_error_f64(&got, &want);
    assert!(err < F32_TOLERANCE, "--layers head: rel err {err:.2e}");
    let failed = common::run_mscope(&as_strs(&args("roberta.encoder")));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        stderr.contains("--layers roberta.encoder: matches none"),
        "{stderr}"
    );
}

/// Dense JL and Kronecker kernels of a classifier: approach torch.func's exact trNTK0 as k
/// grows (within three standard deviations of the JL error), do not change a bit with the
/// block size, and match across tile sizes to f32 rounding.
#[test]
fn projected_kernels_approach_the_exact_one() {
    let (dir, reference) = MODELS[0];
    let classifier = load(dir, Arc::new(CpuBackend::new()));
    let texts = tokenized(dir, &classifier);
    let (_, want) = reference_tensor(reference, "trntk0");
    let job = |k: usize, tile_rows: usize, block_rows: usize, kronecker: bool| SequenceKernelJob {
        classifier: &classifier,
        rows: &texts,
        cols: None,
        row_labels: None,
        col_labels: None,
        kind: KernelKind::Trntk0,
        block_rows,
        tile_rows,
        layers: LayerSpec::default(),
        projection: Some(JlSpec {
            seed: 7,
            dim: k,
            distribution: JlDistribution::Gaussian,
            column_offset: 0,
        }),
        kronecker,
    };
    for kronecker in [false, true] {
        let err = |k: usize| {
            let got: Vec<f64> = run_job(&job(k, 2, 1, kronecker))
                .iter()
                .map(|&v| v as f64)
                .collect();
            rel_error_f64(&got, &want)
        };
        // The Kronecker product of two maps has about twice the relative variance.
        let (coarse, fine, variance) = if kronecker {
            (err(2), err(64), 4.0 / 64.0)
        } else {
            (err(4), err(512), 2.0 / 512.0)
        };
        assert!(
            fine < 3.0 * f64::sqrt(variance) && fine < coarse,
            "kronecker {kronecker}: rel err coarse {coarse:.3}, fine {fine:.3}"
        );
        let tiled = run_job(&job(16, 2, 1, kronecker));
        assert_eq!(
            run_job(&job(16, 2, 4, kronecker)),
            tiled,
            "blocks change no bit"
        );
        let one_tile: Vec<f64> = run_job(&job(16, 4, 4, kronecker))
            .iter()
            .map(|&v| v as f64)
            .collect();
        let tiled: Vec<f64> = tiled.iter().map(|&v| v as f64).collect();
        assert!(
            rel_error_f64(&tiled, &one_tile) < 1e-6,
            "kronecker {kronecker}: tiles"
        );
    }
}

/// The tile-batched dense features (only the table rows the tile read, weights in row blocks
/// for every sample at once) equal the definition: each (sample, seed) gradient materialised
/// whole, in `materialize` order, times one map — for every parameter, for a `--layers` subset
/// that splits the fused QKV weight, with the default chunk and with chunks so small that every
/// weight is cut into row blocks and every table's ids into runs of one or two.
#[test]
fn dense_features_equal_the_materialised_projection() {
    let be = CpuBackend::new();
    let jl = JlSpec {
        seed: 11,
        dim: 24,
        distribution: JlDistribution::Rademacher,
        column_offset: 5,
    };
    for model in MODELS {
        for spec in ["all", "embeddings,*.attention.self.key.,*.output.dense."] {
            let mut f = cpu_factors(model, class_seeds);
            let keep = spec
                .parse::<LayerSpec>()
                .unwrap()
                .select(&f.parameter_names())
                .unwrap();
            f.retain(&keep);
            let rows = f.num_samples() * f.seeds;
            let whole: Vec<f32> = (0..rows)
                .flat_map(|row| {
                    f.materialize(row / f.seeds, row % f.seeds)
                        .expect("materialises")
                        .into_iter()
                        .flat_map(|(_, g)| g)
                })
                .collect();
            let width = whole.len() / rows;
            let mut want = be.zeros(&[rows, jl.dim]).unwrap();
            be.jl_project(
                &be.upload(&[rows, width], &whole).unwrap(),
                &jl,
                false,
                &mut want,
            )
            .unwrap();
            let want: Vec<f64> = widen32(&be.download(&want).unwrap());
            let hidden = f.embeddings.width;
            for chunk in [CHUNK_VALUES, 2 * rows * hidden] {
                let got = widen32(&dense_features(&be, &f, &jl, chunk).unwrap());
                let err = rel_error_f64(&got, &want);
                assert!(
                    err < F32_TOLERANCE,
                    "{} --layers {spec}, chunk {chunk}: rel err {err:.2e}",
                    model.0
                );
            }
        }
    }
}

fn widen32(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn cli_ntk_of_a_classifier_projects() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_path("tests/fixtures/classifiers/texts.jsonl");
    let model = repo_path(MODELS[0].0);
    let out = tmp.path().join("p.safetensors");
    let run = |projection: &str| {
        common::run_mscope(&[
            "ntk",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--kind",
            "pntk",
            "--projection",
            projection,
            "--projection-dim",
            "32",
            "--backend",
            "cpu",
            "--out",
            path_str(&out),
        ])
    };
    let done = run("rademacher");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("pntk 4×4 (rademacher k=32)"), "{stdout}");
    let k = KernelFile::read(&out).unwrap();
    assert_eq!((k.rows, k.projection_dim), (4, 32));
    std::fs::remove_file(&out).unwrap();
    let done = run("kronecker");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("pntk 4×4 (kronecker k=32)"), "{stdout}");
    assert_eq!(KernelFile::read(&out).unwrap().projection_dim, 32);
}

/// `mscope ntk --test-data`: the train × train and test × train kernels of one run, from one set
/// of training factors, are the bytes of the two separate runs (several tiles and blocks, exact
/// and projected, a normalised and a loss-seeded kind); the combinations it does not take are
/// refused.
#[test]
fn cli_ntk_test_data_matches_two_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let train = repo_path("tests/fixtures/classifiers/texts.jsonl");
    let test = tmp.path().join("test.jsonl");
    std::fs::write(
        &test,
        "{\"text\": \"Rain again.\", \"label\": \"neutral\"}\n\
         {\"text\": \"The fox sat on the dog.\", \"label\": \"negative\"}\n\
         {\"text\": \"Close meanings, close points.\", \"label\": \"positive\"}\n",
    )
    .unwrap();
    let model = repo_path(MODELS[0].0);
    let ntk = |kind: &str, extra: &[&str], rest: &[&str]| -> Vec<String> {
        [
            "ntk",
            "--model",
            path_str(&model),
            "--kind",
            kind,
            "--tile-rows",
            "2",
            "--backend",
            "cpu",
        ]
        .iter()
        .chain(extra)
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
    };
    let file = |name: &str| tmp.path().join(name);
    let projected = ["--projection", "rademacher", "--projection-dim", "8"];
    for (kind, extra) in [
        ("trntk", &[][..]),
        ("gradcos", &[][..]),
        ("pntk", &projected[..]),
    ] {
        // Blocks of two rows: checkpoints on both kernels' way.
        let extra: Vec<&str> = extra
            .iter()
            .chain(&["--block-rows", "2"])
            .copied()
            .collect();
        let extra = extra.as_slice();
        let (one_train, one_test) = (file("one-train"), file("one-test"));
        let (train_out, test_out) = (file("train"), file("test"));
        let stdout = run_mscope_ok(&as_strs(&ntk(
            kind,
            extra,
            &[
                "--data",
                path_str(&train),
                "--out",
                path_str(&one_train),
                "--test-data",
                path_str(&test),
                "--test-out",
                path_str(&one_test),
            ],
        )))
        .stdout;
        let stdout = String::from_utf8_lossy(&stdout);
        assert!(
            stdout.contains(&format!("{kind} 4×4")) && stdout.contains(&format!("{kind} 3×4")),
            "{stdout}"
        );
        run_mscope_ok(&as_strs(&ntk(
            kind,
            extra,
            &["--data", path_str(&train), "--out", path_str(&train_out)],
        )));
        run_mscope_ok(&as_strs(&ntk(
            kind,
            extra,
            &[
                "--data",
                path_str(&test),
                "--against",
                path_str(&train),
                "--out",
                path_str(&test_out),
            ],
        )));
        for (together, separate) in [(&one_train, &train_out), (&one_test, &test_out)] {
            assert!(
                std::fs::read(together).unwrap() == std::fs::read(separate).unwrap(),
                "{kind}: {} differs from its own run",
                together.display()
            );
            std::fs::remove_file(together).unwrap();
            std::fs::remove_file(separate).unwrap();
        }
    }
    let (k_out, t_out) = (file("k"), file("t"));
    let both = [
        "--data",
        path_str(&train),
        "--out",
        path_str(&k_out),
        "--test-data",
        path_str(&test),
        "--test-out",
        path_str(&t_out),
    ];
    for (extra, needle) in [
        (&["--against", path_str(&train)][..], "--against"),
        (&["--shard", "0/2"][..], "--shard"),
        (&["--devices", "0"][..], "--devices"),
    ] {
        common::assert_fails_cleanly(
            &as_strs(&ntk("trntk", extra, &both)),
            &["--test-data", needle],
        );
    }
    let points = repo_path("tests/fixtures/ntk/test.safetensors");
    common::assert_fails_cleanly(
        &[
            "ntk",
            "--model",
            path_str(&repo_path("tests/fixtures/ntk/mlp_relu.safetensors")),
            "--data",
            path_str(&points),
            "--out",
            path_str(&file("k")),
            "--test-data",
            path_str(&points),
            "--test-out",
            path_str(&file("t")),
        ],
        &["--test-data", "an MLP"],
    );
}

/// `mscope train --model`: a fine-tuned directory that loads, with one report row per epoch and
/// the loss of the first epoch's first batch equal to the fixture's; bad input refused.
#[test]
fn cli_fine_tunes_a_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tuned");
    let (dir, _) = MODELS[0];
    let model = repo_path(dir);
    let data = repo_path("tests/fixtures/classifiers/texts.jsonl");
    let common_args = [
        "train",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--lr",
        "1e-2",
        "--warmup",
        "0",
    ];
    let mut args = common_args.to_vec();
    args.extend([
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--out",
        path_str(&out),
    ]);
    run_mscope_ok(&args);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train.json")).unwrap()).unwrap();
    let epochs = report.as_array().expect("one row per epoch");
    assert_eq!(epochs.len(), 2);
    // One batch of every text: the first loss is the untrained model's (the loss fixture's).
    let (_, want) = reference_tensor(
        "tests/fixtures/classifiers/bert_loss_reference.safetensors",
        "loss",
    );
    let first = epochs[0]["loss"].as_f64().unwrap();
    assert!(
        ((first - want[0]) / want[0]).abs() < F32_TOLERANCE,
        "{first}"
    );
    assert!(
        epochs[1]["loss"].as_f64().unwrap() < first,
        "a step lowers the loss"
    );
    let tuned = load(path_str(&out), Arc::new(CpuBackend::new()));
    assert_eq!(tuned.labels(), ["negative", "neutral", "positive"]);

    // --freeze-encoder moves the head (pooler dense and classifier) only.
    let frozen = tmp.path().join("frozen");
    let mut args = common_args.to_vec();
    args.extend(["--epochs", "1", "--batch-size", "2", "--freeze-encoder"]);
    args.extend(["--out", path_str(&frozen)]);
    run_mscope_ok(&args);
    let before = read_parameters(&model.join("model.safetensors")).unwrap();
    let after = read_parameters(&frozen.join("model.safetensors")).unwrap();
    let moved: Vec<&String> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(
        moved,
        [
            "bert.pooler.dense.bias",
            "bert.pooler.dense.weight",
            "classifier.bias",
            "classifier.weight"
        ]
    );

    let bad = |name: &str, content: &str, extra: &[&str], needle: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, content).unwrap();
        let mut args = common_args.to_vec();
        args[4] = path_str(&path);
        let out = tmp.path().join(format!("{name}.out"));
        args.extend(["--out", path_str(&out)]);
        args.extend(extra);
        common::assert_fails_cleanly(&args, &[needle]);
    };
    bad("empty.jsonl", "", &[], "no texts");
    bad(
        "one.jsonl",
        "{\"text\":\"a\",\"label\":\"positive\"}\n{\"text\":\"b\",\"label\":\"positive\"}\n",
        &[],
        "at least two classes",
    );
    bad(
        "unknown.jsonl",
        "{\"text\":\"a\",\"label\":\"sad\"}\n",
        &[],
        "not one of the model's 3 labels (negative, neutral, positive)",
    );
    bad(
        "unlabelled.jsonl",
        "{\"text\":\"a\"}\n{\"text\":\"b\"}\n",
        &[],
        "no `label` field",
    );
    bad(
        "ok.jsonl",
        "{\"text\":\"a\",\"label\":\"positive\"}\n",
        &["--batch-size", "0"],
        "--batch-size must be at least 1",
    );
}
