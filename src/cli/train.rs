//! `mscope train`: an ensemble of MLP classifiers, one per seed, on a dataset of `mscope data`;
//! writes the models, a JSON report and every model's test logits for `mscope compare`. With
//! `--model DIR`, fine-tunes a transformer sequence classifier on labelled texts instead (AdamW,
//! linear warm-up/decay; a bare BERT or XLM-R encoder gets a new classification head; dropout
//! only with `--dropout`, as the checkpoint's config sets it, masks drawn from the seed and
//! step) and writes a classifier directory. Accuracy after each epoch is measured without dropout.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::instruments::ensemble::{train_ensemble, Named};
use crate::io::check_output_dir;
use crate::io::datasets::read_train_test;
use crate::io::texts::TextRow;
use crate::models::mlp::parse_activation;
use crate::models::train::{parse_hidden, parse_seeds, Optimizer, TrainConfig};
use crate::report;

#[derive(Args)]
pub struct TrainArgs {
    /// Training rows: safetensors `x` F32 [N, d], `y` I64 [N] (as `mscope data` writes); with
    /// --model, labelled texts (.jsonl, .csv, .tsv).
    #[arg(long)]
    data: PathBuf,
    /// A transformer to fine-tune on --data's texts: a classifier directory
    /// (BertForSequenceClassification, XLMRobertaForSequenceClassification), whose labels are
    /// config.json's, or a bare BERT or XLM-R encoder (BertModel, XLMRobertaModel,
    /// sentence-transformers), which gets a new classification head for the data's labels
    /// (sorted; numerically when integers) as transformers' from_pretrained of the family's
    /// sequence classifier makes it.
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
    /// With --model: train with the checkpoint config's dropout, as transformers does in train
    /// mode (hidden_dropout_prob, attention_probs_dropout_prob, classifier_dropout). Off by
    /// default; either way a run is a deterministic function of its seed.
    #[arg(long)]
    dropout: bool,
    /// Test rows in the same format. MLPs: their logits go to DIR/scores.safetensors. With
    /// --model: labelled texts whose accuracy train.json reports after every epoch.
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Hidden layer widths, comma-separated.
    #[arg(long, default_value = "100,100,100")]
    hidden: String,
    /// relu, tanh, gelu or sigmoid.
    #[arg(long, default_value = "relu")]
    activation: String,
    /// Epochs [default: 50; with --model 3, as transformers' Trainer].
    #[arg(long)]
    epochs: Option<usize>,
    /// Learning rate [default: 1e-3; with --model 5e-5, as transformers' Trainer].
    #[arg(long)]
    lr: Option<f64>,
    /// Minibatch size [default: 32; with --model 8, as transformers' Trainer].
    #[arg(long)]
    batch_size: Option<usize>,
    /// sgd or adam.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// Weight decay (with --model, AdamW's decoupled decay).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// One model per seed: A..B (B excluded) or a comma list. With --model, one seed: the batch
    /// order and any new head's initial weights.
    #[arg(long, visible_alias = "seed", default_value = "0")]
    seeds: String,
    /// Output directory, which must not exist yet: model-seed{S}.safetensors, train.json and, with
    /// --test-data, scores.safetensors; with --model, the classifier directory and train.json.
    #[arg(long)]
    out: PathBuf,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// The MLP defaults of --epochs, --lr and --batch-size.
const MLP_DEFAULTS: (usize, f64, usize) = (50, 1e-3, 32);
/// Those of fine-tuning a transformer: transformers' `TrainingArguments`.
const FINE_TUNING_DEFAULTS: (usize, f64, usize) = (3, 5e-5, 8);

const DEFAULT_MOMENTUM: f64 = 0.9;

pub fn run(args: TrainArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    if let Some(model) = &args.model {
        return fine_tune(&args, model);
    }
    if args.dropout {
        return Err(Error::input(
            "--dropout applies to fine-tuning a transformer (--model)",
        ));
    }
    let (epochs, lr, batch_size) = MLP_DEFAULTS;
    let optimizer: Optimizer = args.optimizer.parse()?;
    if optimizer == Optimizer::Adam && args.momentum.is_some() {
        return Err(Error::input(
            "--momentum applies to --optimizer sgd (Adam has its own moments)",
        ));
    }
    let config = TrainConfig {
        hidden: parse_hidden(&args.hidden)?,
        activation: parse_activation(&args.activation)?,
        epochs: args.epochs.unwrap_or(epochs),
        lr: args.lr.unwrap_or(lr),
        batch_size: args.batch_size.unwrap_or(batch_size),
        optimizer,
        momentum: args.momentum.unwrap_or(DEFAULT_MOMENTUM),
        weight_decay: args.weight_decay,
    };
    config.check()?;
    let seeds = parse_seeds(&args.seeds)?;
    check_output_dir(
        &[
            ("--data", Some(&args.data)),
            ("--test-data", args.test_data.as_deref()),
        ],
        "--out",
        &args.out,
    )?;

    let (data, test) = read_train_test(&args.data, args.test_data.as_deref())?;
    let created = !args.out.exists();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let trained = train_and_write(&args, &config, &seeds, &data, test.as_ref());
    if failed_before_writing(&trained) && created {
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
    out!("{}", report::train::markdown(&report, &args.out))?;
    Ok(())
}

/// One epoch's figures in `train.json` of a fine-tuning run.
#[derive(serde::Serialize)]
struct EpochReport {
    epoch: usize,
    /// Mean of the epoch's minibatch losses, as they went.
    loss: f64,
    /// Accuracy on the training texts after the epoch.
    train_accuracy: f64,
    /// Accuracy on --test-data's texts after the epoch (null without it).
    test_accuracy: Option<f64>,
}

/// Labelled texts tokenised for a classifier: token ids and class indices.
struct LabelledTexts {
    tokenized: Vec<crate::models::tokenize::TokenizedText>,
    labels: Vec<usize>,
}

/// The rows of a text file (`--data`, `--test-data`), at least one.
fn read_texts(path: &Path, args: &TrainArgs) -> Result<Vec<TextRow>> {
    use crate::io::texts::{read_rows, FieldNames, InputSpec};
    let spec = InputSpec {
        path: path.to_path_buf(),
        label: None,
    };
    let fields = FieldNames {
        text: args.text_field.clone(),
        label: args.label_field.clone(),
    };
    let rows = read_rows(&spec, &fields)?;
    if rows.is_empty() {
        return Err(Error::input(format!("{}: no texts", path.display())));
    }
    Ok(rows)
}

/// `rows`' class indices among the model's `labels` (as `ntk` reads them), every row labelled.
fn class_indices(
    path: &Path,
    rows: &[TextRow],
    labels: &[String],
    field: &str,
) -> Result<Vec<usize>> {
    crate::io::texts::text_label_indices(path, rows, labels)?
        .into_iter()
        .enumerate()
        .map(|(i, class)| {
            class.ok_or_else(|| {
                Error::input(format!(
                    "{}: row {} has no `{field}` field (every text needs a label)",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// Share of `texts` whose highest logit is their label's (the first on a tie), in batches.
fn accuracy(
    classifier: &crate::models::classifier::SequenceClassifier,
    texts: &LabelledTexts,
    batch_size: usize,
) -> Result<f64> {
    let logits = classifier.logits_of(&texts.tokenized, batch_size)?;
    let right = logits
        .chunks_exact(classifier.num_labels())
        .zip(&texts.labels)
        .filter(|(row, &y)| crate::data::scores::argmax(row) == y)
        .count();
    Ok(right as f64 / texts.labels.len() as f64)
}

/// Whether a run ended by an error before its outputs were complete: not a closed standard
/// output, which can only stop the summary printed after them.
fn failed_before_writing(outcome: &Result<()>) -> bool {
    matches!(outcome, Err(e) if !matches!(e, Error::StdoutClosed))
}

/// `--model`: fine-tunes the classifier (or the bare encoder with a new head) on `--data`'s
/// labelled texts (module docs).
fn fine_tune(args: &TrainArgs, model: &Path) -> Result<()> {
    let created = !args.out.exists();
    let tuned = fine_tune_into(args, model);
    if failed_before_writing(&tuned) && created {
        // The run made this directory (config, tokenizer) before it failed: leave nothing.
        let _ = std::fs::remove_dir_all(&args.out);
    }
    tuned
}

fn fine_tune_into(args: &TrainArgs, model: &Path) -> Result<()> {
    use std::sync::Arc;

    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::models::classifier_grad::loss_gradient_with_dropout;
    use crate::models::dropout::DropoutRates;
    use crate::models::finetune::{
        classifier_from_encoder, classifier_from_parameters, copy_classifier_files,
        has_classification_head, label_names, linear_schedule, read_parameters, write_parameters,
        AdamW,
    };
    use crate::models::tokenize::TextTokenizer;
    use crate::models::TokenBatch;
    use crate::random::SplitMix64;

    let (epochs, lr, batch_size) = FINE_TUNING_DEFAULTS;
    let (epochs, lr, batch_size) = (
        args.epochs.unwrap_or(epochs),
        args.lr.unwrap_or(lr),
        args.batch_size.unwrap_or(batch_size),
    );
    if batch_size == 0 {
        return Err(Error::input("--batch-size must be at least 1"));
    }
    let seeds = parse_seeds(&args.seeds)?;
    let [seed] = seeds[..] else {
        return Err(Error::input("--seeds: fine-tuning takes one seed"));
    };
    check_output_dir(
        &[
            ("--data", Some(&args.data)),
            ("--test-data", args.test_data.as_deref()),
        ],
        "--out",
        &args.out,
    )?;
    let rows = read_texts(&args.data, args)?;
    let test_rows = args
        .test_data
        .as_deref()
        .map(|path| read_texts(path, args))
        .transpose()?;

    // A bare encoder gets its head (and config.json with the data's labels) here; either way
    // the output directory holds the classifier's config and tokenizer from now on, and the
    // weights are written there once, at the end.
    let (mut params, new_config) = if has_classification_head(model)? {
        (read_parameters(&model.join("model.safetensors"))?, None)
    } else {
        let labels = label_names(rows.iter().filter_map(|r| r.label.as_deref()));
        let (params, config) = classifier_from_encoder(model, &labels, seed)?;
        (params, Some(config))
    };
    copy_classifier_files(model, &args.out, new_config.as_ref())?;
    // The backward pass runs on the host from f32 weights.
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let mut current = classifier_from_parameters(&args.out, &params, cpu.clone())?;
    let known = current.labels().to_vec();
    let rates = args
        .dropout
        .then(|| DropoutRates::of_config(current.encoder().config(), &model.join("config.json")))
        .transpose()?;
    let tokenizer = TextTokenizer::load(model, current.encoder().config().max_tokens())?;
    let labelled = |path: &Path, rows: &[TextRow]| -> Result<LabelledTexts> {
        let labels = class_indices(path, rows, &known, &args.label_field)?;
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        Ok(LabelledTexts {
            tokenized: tokenizer.encode(&texts)?,
            labels,
        })
    };
    let train = labelled(&args.data, &rows)?;
    if train.labels.iter().all(|&y| y == train.labels[0]) {
        return Err(Error::input(format!(
            "{}: every text has the label {:?}; fine-tuning needs at least two classes",
            args.data.display(),
            known[train.labels[0]]
        )));
    }
    let test = args
        .test_data
        .as_deref()
        .zip(test_rows.as_deref())
        .map(|(path, rows)| labelled(path, rows))
        .transpose()?;

    let head_names = current.head().kind.layer_names();
    let mut adamw = AdamW::new(args.weight_decay);
    let steps_per_epoch = rows.len().div_ceil(batch_size);
    let total = steps_per_epoch * epochs;
    let bar = super::progress_bar(total as u64, "{bar:40} {pos}/{len} steps  eta {eta}  {msg}");
    let mut rng = SplitMix64::new(seed);
    let mut report = Vec::new();
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for (b, chunk) in order.chunks(batch_size).enumerate() {
            let batch = TokenBatch::pack(
                &chunk
                    .iter()
                    .map(|&i| train.tokenized[i].clone())
                    .collect::<Vec<_>>(),
            );
            let y: Vec<usize> = chunk.iter().map(|&i| train.labels[i]).collect();
            let step = epoch * steps_per_epoch + b;
            let dropout = rates.map(|r| r.for_step(seed, step as u64));
            let mut got = loss_gradient_with_dropout(&current, &batch, &y, dropout.as_ref())?;
            loss_sum += got.loss;
            if args.freeze_encoder {
                got.grads
                    .retain(|(name, _)| head_names.iter().any(|h| name.starts_with(h)));
            }
            adamw.step(
                &mut params,
                &got.grads,
                lr * linear_schedule(step, args.warmup, total),
            )?;
            current = classifier_from_parameters(&args.out, &params, cpu.clone())?;
            bar.inc(1);
            bar.set_message(format!("epoch {} loss {:.4}", epoch + 1, got.loss));
        }
        report.push(EpochReport {
            epoch: epoch + 1,
            loss: loss_sum / steps_per_epoch as f64,
            train_accuracy: accuracy(&current, &train, batch_size)?,
            test_accuracy: test
                .as_ref()
                .map(|t| accuracy(&current, t, batch_size))
                .transpose()?,
        });
    }
    bar.finish_and_clear();
    write_parameters(&args.out.join("model.safetensors"), &params)?;
    report::write_json(&args.out.join("train.json"), &report)?;
    outln!(
        "fine-tuned {} for {epochs} epochs ({total} steps of {batch_size}, lr {lr}) into {}",
        model.display(),
        args.out.display()
    )?;
    for e in &report {
        let test = e.test_accuracy.map_or(String::new(), |a| {
            format!(", test accuracy {:.2}%", 100.0 * a)
        });
        outln!(
            "epoch {}: loss {:.4}, train accuracy {:.2}%{test}",
            e.epoch,
            e.loss,
            100.0 * e.train_accuracy
        )?;
    }
    Ok(())
}
