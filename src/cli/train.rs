//! `mscope train`: an ensemble of MLP classifiers, one per seed, on a dataset of `mscope data`;
//! writes the models, a JSON report and every model's test logits for `mscope compare`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::tensor_file::{self, TensorOut};
use crate::models::mlp::parse_activation;
use crate::models::train::{
    evaluate, parse_hidden, parse_seeds, train, Evaluation, Optimizer, TrainConfig,
};
use crate::report;

#[derive(Args)]
pub struct TrainArgs {
    /// Training rows: safetensors `x` F32 [N, d], `y` I64 [N] (as `mscope data` writes).
    #[arg(long)]
    data: PathBuf,
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
    /// CPU threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

const DEFAULT_MOMENTUM: f64 = 0.9;

/// What is reported of one seed's model.
struct SeedResult {
    seed: u64,
    path: PathBuf,
    epoch_losses: Vec<f64>,
    train: Evaluation,
    test: Option<Evaluation>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    super::set_threads(args.threads)?;
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

    let in_file = |path: &Path| {
        let path = path.display().to_string();
        move |e: Error| Error::input(format!("{path}: {e}"))
    };
    let data = Dataset::read(&args.data)?;
    if data.is_empty() {
        return Err(Error::input(format!("{}: no rows", args.data.display())));
    }
    let classes = data.num_classes();
    if classes < 2 {
        return Err(Error::input(format!(
            "{}: every label is {}; a classifier needs at least 2 classes",
            args.data.display(),
            data.y[0]
        )));
    }
    let test = match &args.test_data {
        Some(path) => {
            let test = Dataset::read(path)?;
            if test.is_empty() {
                return Err(Error::input(format!("{}: no rows", path.display())));
            }
            if test.dim != data.dim {
                return Err(Error::input(format!(
                    "{}: rows of dimension {}, but the training data {} has {}",
                    path.display(),
                    test.dim,
                    args.data.display(),
                    data.dim
                )));
            }
            test.check_labels(classes, path)?;
            Some(test)
        }
        None => None,
    };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;

    let bar = super::progress_bar(
        (seeds.len() * config.epochs) as u64,
        "{bar:40} {pos}/{len} epochs  eta {eta}  {msg}",
    );
    let mut results = Vec::with_capacity(seeds.len());
    // Seeds one after another: the GEMMs inside each step already use every core.
    for &seed in &seeds {
        let trained = train(&data, classes, &config, seed, &mut |epoch, loss| {
            bar.inc(1);
            bar.set_message(format!("seed {seed} epoch {} loss {loss:.4}", epoch + 1));
        })
        .map_err(in_file(&args.data))?;
        let path = args.out.join(format!("model-seed{seed}.safetensors"));
        trained.model.write(&path)?;
        let train_eval = evaluate(&trained.model, &data).map_err(in_file(&args.data))?;
        let test_eval = match (&test, &args.test_data) {
            (Some(test), Some(test_path)) => {
                Some(evaluate(&trained.model, test).map_err(in_file(test_path))?)
            }
            _ => None,
        };
        results.push(SeedResult {
            seed,
            path,
            epoch_losses: trained.epoch_losses,
            train: train_eval,
            test: test_eval,
        });
    }
    bar.finish_and_clear();

    if let Some(test) = &test {
        let scores: Vec<f32> = results
            .iter()
            .flat_map(|r| {
                r.test
                    .as_ref()
                    .expect("evaluated on the test set")
                    .logits
                    .iter()
            })
            .copied()
            .collect();
        tensor_file::write(
            &args.out.join("scores.safetensors"),
            vec![
                TensorOut::f32("scores", vec![results.len(), test.len(), classes], &scores),
                TensorOut::i64("labels", vec![test.len()], &test.y),
            ],
            HashMap::new(),
        )?;
    }
    report::write_json(
        &args.out.join("train.json"),
        &json!({
            "data": args.data.display().to_string(),
            "test_data": args.test_data.as_ref().map(|p| p.display().to_string()),
            "n_train": data.len(),
            "n_test": test.as_ref().map(Dataset::len),
            "dim": data.dim,
            "classes": classes,
            "hidden": config.hidden,
            "activation": args.activation,
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "optimizer": optimizer.name(),
            "momentum": (optimizer == Optimizer::Sgd).then_some(config.momentum),
            "weight_decay": config.weight_decay,
            "seeds": seeds,
            "models": results.iter().map(|r| json!({
                "seed": r.seed,
                "path": r.path.display().to_string(),
                "train_loss": r.train.loss,
                "train_accuracy": r.train.accuracy,
                "test_loss": r.test.as_ref().map(|t| t.loss),
                "test_accuracy": r.test.as_ref().map(|t| t.accuracy),
                "epoch_losses": r.epoch_losses,
            })).collect::<Vec<_>>(),
        }),
    )?;

    let mut md = format!(
        "# Trained {} MLP(s) on {} -> {}\n\n{} rows × {} dims, {classes} classes; hidden {:?}, {}, \
         {} epochs of batches of {}, {} lr {}.\n\n| seed | train loss | train accuracy | test accuracy |\n|---|---|---|---|\n",
        results.len(),
        args.data.display(),
        args.out.display(),
        data.len(),
        data.dim,
        config.hidden,
        args.activation,
        config.epochs,
        config.batch_size,
        optimizer.name(),
        config.lr,
    );
    for r in &results {
        let test_accuracy = r
            .test
            .as_ref()
            .map_or("–".to_string(), |t| format!("{:.2}%", 100.0 * t.accuracy));
        md += &format!(
            "| {} | {:.4} | {:.2}% | {test_accuracy} |\n",
            r.seed,
            r.train.loss,
            100.0 * r.train.accuracy
        );
    }
    print!("{md}");
    Ok(())
}
