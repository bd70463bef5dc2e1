//! `mscope train`: an ensemble of MLP classifiers, one per seed, on a dataset of `mscope data`;
//! writes the models, a JSON report and every model's test logits for `mscope compare`.

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
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

const DEFAULT_MOMENTUM: f64 = 0.9;

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
