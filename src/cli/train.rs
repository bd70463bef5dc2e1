//! `mscope train`: an ensemble of MLP classifiers, one per seed, on a dataset of `mscope data`;
//! writes the models, a JSON report and every model's test logits for `mscope compare`. With
//! `--model CLASSIFIER_DIR`, fine-tunes a transformer sequence classifier on labelled texts
//! instead (AdamW, linear warm-up/decay) and writes a classifier directory.

use std::path::PathBuf;

use clap::Args;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::instruments::ensemble::{train_ensemble, Named};
use crate::io::check_outputs;
use crate::io::datasets::read_train_test;
use crate::models::mlp::parse_activation;
use crate::models::train::{parse_hidden, parse_seeds, Optimizer, TrainConfig};
use crate::report;

#[derive(Args)]
pub struct TrainArgs {
    /// Training rows: safetensors `x` F32 [N, d], `y` I64 [N] (as `mscope data` writes); with
    /// --model, labelled texts (.jsonl, .csv, .tsv).
    #[arg(long)]
    data: PathBuf,
    /// A transformer classifier directory (BertForSequenceClassification,
    /// XLMRobertaForSequenceClassification) to fine-tune on --data's texts; its labels are
    /// config.json's. Set --lr (e.g. 2e-5) and --epochs (e.g. 3) for it.
    #[arg(long)]
    model: Option<PathBuf>,
    /// With --model: the text field of --data.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// With --model: the label field of --data.
    #[arg(long, default_value = "label")]
    label_field: String,
    /// With --model: warm-up steps of the linear learning-rate schedule.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// With --model: train only the classification head.
    #[arg(long)]
    freeze_encoder: bool,
    /// Test rows in the same format; their logits go to DIR/scores.safetensors.
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Hidden layer widths, comma-separated.
    #[arg(long, default_value = "100,100,100")]
    hidden: String,
    /// relu, tanh, gelu or sigmoid.
    #[arg(long, default_value = "relu")]
    activation: String,
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// sgd or adam.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// One model per seed: A..B (B excluded) or a comma list.
    #[arg(long, default_value = "0")]
    seeds: String,
    /// Output directory (created if absent): model-seed{S}.safetensors, train.json and, with
    /// --test-data, scores.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

const DEFAULT_MOMENTUM: f64 = 0.9;

pub fn run(args: TrainArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    if let Some(model) = &args.model {
        return fine_tune(&args, model);
    }
    let optimizer: Optimizer = args.optimizer.parse()?;
    if optimizer == Optimizer::Adam && args.momentum.is_some() {
        return Err(Error::input(
            "--momentum applies to --optimizer sgd (Adam has its own moments)",
        ));
    }
    let config = TrainConfig {
        hidden: parse_hidden(&args.hidden)?,
        activation: parse_activation(&args.activation)?,
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        optimizer,
        momentum: args.momentum.unwrap_or(DEFAULT_MOMENTUM),
        weight_decay: args.weight_decay,
    };
    config.check()?;
    let seeds = parse_seeds(&args.seeds)?;
    check_outputs(
        &[
            ("--data", Some(&args.data)),
            ("--test-data", args.test_data.as_deref()),
        ],
        &[("--out", Some(&args.out))],
    )?;

    let (data, test) = read_train_test(&args.data, args.test_data.as_deref())?;
    let created = !args.out.exists();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let trained = train_and_write(&args, &config, &seeds, &data, test.as_ref());
    if trained.is_err() && created {
        // A run that fails before its first model (diverged, too large) leaves no empty
        // directory behind; `remove_dir` never deletes a directory with files in it.
        let _ = std::fs::remove_dir(&args.out);
    }
    trained
}

fn train_and_write(
    args: &TrainArgs,
    config: &TrainConfig,
    seeds: &[u64],
    data: &Dataset,
    test: Option<&Dataset>,
) -> Result<()> {
    let bar = super::progress_bar(
        (seeds.len() * config.epochs) as u64,
        "{bar:40} {pos}/{len} epochs  eta {eta}  {msg}",
    );
    let report = train_ensemble(
        (
            Named {
                path: &args.data,
                data,
            },
            args.test_data
                .as_deref()
                .zip(test)
                .map(|(path, data)| Named { path, data }),
        ),
        (config, &args.activation),
        seeds,
        &args.out,
        &mut |seed, epoch, loss| {
            bar.inc(1);
            bar.set_message(format!("seed {seed} epoch {} loss {loss:.4}", epoch + 1));
        },
    )?;
    bar.finish_and_clear();

    if let Some(test) = test {
        report::train::write_scores(&report, test, &args.out.join("scores.safetensors"))?;
    }
    report::write_json(&args.out.join("train.json"), &report)?;
    print!("{}", report::train::markdown(&report, &args.out));
    Ok(())
}

/// One epoch's figures in `train.json` of a fine-tuning run.
#[derive(serde::Serialize)]
struct EpochReport {
    epoch: usize,
    /// Mean of the epoch's minibatch losses, as they went.
    loss: f64,
    /// Accuracy of the epoch's minibatch logits (before each update), as they went.
    train_accuracy: f64,
}

/// `--model`: fine-tunes the classifier directory on `--data`'s labelled texts (module docs).
fn fine_tune(args: &TrainArgs, model: &std::path::Path) -> Result<()> {
    use std::sync::Arc;

    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::io::texts::{read_rows, FieldNames, InputSpec};
    use crate::models::classifier::SequenceClassifier;
    use crate::models::classifier_grad::loss_gradient;
    use crate::models::finetune::{linear_schedule, read_parameters, write_classifier, AdamW};
    use crate::models::tokenize::TextTokenizer;
    use crate::models::TokenBatch;
    use crate::random::SplitMix64;
    use crate::weights::WeightsDtype;

    if args.batch_size == 0 {
        return Err(Error::input("--batch-size must be at least 1"));
    }
    if args.test_data.is_some() {
        return Err(Error::input(
            "--test-data with --model is not implemented yet: evaluate the written directory",
        ));
    }
    let seeds = parse_seeds(&args.seeds)?;
    let [seed] = seeds[..] else {
        return Err(Error::input("--seeds: fine-tuning takes one seed"));
    };
    check_outputs(
        &[("--data", Some(&args.data))],
        &[("--out", Some(&args.out))],
    )?;
    // The backward pass runs on the host from f32 weights.
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let classifier = SequenceClassifier::load(model, cpu.clone(), WeightsDtype::F32)?;
    let tokenizer = TextTokenizer::load(model, classifier.encoder().config().max_tokens())?;
    let spec = InputSpec {
        path: args.data.clone(),
        label: None,
    };
    let fields = FieldNames {
        text: args.text_field.clone(),
        label: args.label_field.clone(),
    };
    let rows = read_rows(&spec, &fields)?;
    let path = args.data.display();
    if rows.is_empty() {
        return Err(Error::input(format!("{path}: no texts")));
    }
    let known = classifier.labels().to_vec();
    let labels = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let label = r.label.as_deref().ok_or_else(|| {
                Error::input(format!(
                    "{path}: row {} has no `{}` field (every text needs a label)",
                    i + 1,
                    args.label_field
                ))
            })?;
            known.iter().position(|l| l == label).ok_or_else(|| {
                Error::input(format!(
                    "{path}: row {}: label {label:?} is not one of the model's labels {known:?}",
                    i + 1
                ))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    if labels.iter().all(|&y| y == labels[0]) {
        return Err(Error::input(format!(
            "{path}: every text has the label {:?}; fine-tuning needs at least two classes",
            known[labels[0]]
        )));
    }
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let tokenized = tokenizer.encode(&texts)?;

    let head_names = classifier.head().kind.layer_names();
    let mut params = read_parameters(&model.join("model.safetensors"))?;
    let mut adamw = AdamW::new(args.weight_decay);
    let steps_per_epoch = rows.len().div_ceil(args.batch_size);
    let total = steps_per_epoch * args.epochs;
    let bar = super::progress_bar(total as u64, "{bar:40} {pos}/{len} steps  eta {eta}  {msg}");
    let mut rng = SplitMix64::new(seed);
    let mut current = classifier;
    let mut report = Vec::new();
    for epoch in 0..args.epochs {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for (b, chunk) in order.chunks(args.batch_size).enumerate() {
            let batch = TokenBatch::pack(
                &chunk
                    .iter()
                    .map(|&i| tokenized[i].clone())
                    .collect::<Vec<_>>(),
            );
            let y: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
            let mut got = loss_gradient(&current, &batch, &y)?;
            let classes = known.len();
            correct += got
                .logits
                .chunks_exact(classes)
                .zip(&y)
                .filter(|(row, &label)| {
                    row.iter()
                        .enumerate()
                        .all(|(c, &z)| c == label || z < row[label])
                })
                .count();
            loss_sum += got.loss;
            if args.freeze_encoder {
                got.grads
                    .retain(|(name, _)| head_names.iter().any(|h| name.starts_with(h)));
            }
            let step = epoch * steps_per_epoch + b;
            adamw.step(
                &mut params,
                &got.grads,
                args.lr * linear_schedule(step, args.warmup, total),
            )?;
            write_classifier(model, &args.out, &params)?;
            current = SequenceClassifier::load(&args.out, cpu.clone(), WeightsDtype::F32)?;
            bar.inc(1);
            bar.set_message(format!("epoch {} loss {:.4}", epoch + 1, got.loss));
        }
        report.push(EpochReport {
            epoch: epoch + 1,
            loss: loss_sum / steps_per_epoch as f64,
            train_accuracy: correct as f64 / rows.len() as f64,
        });
    }
    bar.finish_and_clear();
    if args.epochs == 0 {
        write_classifier(model, &args.out, &params)?;
    }
    report::write_json(&args.out.join("train.json"), &report)?;
    println!(
        "fine-tuned {} for {} epochs ({total} steps) into {}",
        model.display(),
        args.epochs,
        args.out.display()
    );
    Ok(())
}
