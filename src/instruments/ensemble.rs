//! An ensemble of MLP classifiers that differ only by their seed (`mscope train`): each model
//! is trained, saved and evaluated on the training and test rows; the report gathers their
//! losses and accuracies, and the test logits of all of them, ready for `mscope compare`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::train::{evaluate, train, Optimizer, TrainConfig};

/// A dataset and the file it came from.
#[derive(Clone, Copy)]
pub struct Named<'a> {
    pub path: &'a Path,
    pub data: &'a Dataset,
}

/// What `mscope train` reports; the serialised fields are the JSON report's keys.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub data: String,
    pub test_data: Option<String>,
    pub n_train: usize,
    pub n_test: Option<usize>,
    pub dim: usize,
    pub classes: usize,
    pub hidden: Vec<usize>,
    /// As it was asked for.
    pub activation: String,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub optimizer: &'static str,
    /// SGD only.
    pub momentum: Option<f64>,
    pub weight_decay: f64,
    pub seeds: Vec<u64>,
    pub models: Vec<SeedReport>,
    /// `[models, test rows, classes]` row-major: every model's logits on the test rows.
    #[serde(skip)]
    pub test_logits: Vec<f32>,
}

/// One seed's model.
#[derive(Clone, Debug, Serialize)]
pub struct SeedReport {
    pub seed: u64,
    /// Where the model was saved.
    pub path: String,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub epoch_losses: Vec<f64>,
}

/// Trains one model per seed on `train` with `config` (its activation named `activation`, as
/// asked for), saves each as `out/model-seed{S}.safetensors` and evaluates it on both
/// datasets; `on_epoch(seed, epoch, loss)` follows the progress.
pub fn train_ensemble(
    (train_set, test_set): (Named, Option<Named>),
    (config, activation): (&TrainConfig, &str),
    seeds: &[u64],
    out: &Path,
    on_epoch: &mut dyn FnMut(u64, usize, f64),
) -> Result<TrainReport> {
    let in_file = |path: &Path| {
        let path = path.display().to_string();
        move |e: Error| Error::input(format!("{path}: {e}"))
    };
    let classes = train_set.data.num_classes();
    let mut models = Vec::with_capacity(seeds.len());
    let mut test_logits = Vec::new();
    // Seeds one after another: the GEMMs inside each step already use every core.
    for &seed in seeds {
        let trained = train(train_set.data, classes, config, seed, &mut |epoch, loss| {
            on_epoch(seed, epoch, loss)
        })
        .map_err(in_file(train_set.path))?;
        let path: PathBuf = out.join(format!("model-seed{seed}.safetensors"));
        trained.model.write(&path)?;
        let train_eval =
            evaluate(&trained.model, train_set.data).map_err(in_file(train_set.path))?;
        let test_eval = match test_set {
            Some(test) => Some(evaluate(&trained.model, test.data).map_err(in_file(test.path))?),
            None => None,
        };
        if let Some(t) = &test_eval {
            test_logits.extend_from_slice(&t.logits);
        }
        models.push(SeedReport {
            seed,
            path: path.display().to_string(),
            train_loss: train_eval.loss,
            train_accuracy: train_eval.accuracy,
            test_loss: test_eval.as_ref().map(|t| t.loss),
            test_accuracy: test_eval.as_ref().map(|t| t.accuracy),
            epoch_losses: trained.epoch_losses,
        });
    }
    Ok(TrainReport {
        data: train_set.path.display().to_string(),
        test_data: test_set.map(|t| t.path.display().to_string()),
        n_train: train_set.data.len(),
        n_test: test_set.map(|t| t.data.len()),
        dim: train_set.data.dim,
        classes,
        hidden: config.hidden.clone(),
        activation: activation.to_string(),
        epochs: config.epochs,
        lr: config.lr,
        batch_size: config.batch_size,
        optimizer: config.optimizer.name(),
        momentum: (config.optimizer == Optimizer::Sgd).then_some(config.momentum),
        weight_decay: config.weight_decay,
        seeds: seeds.to_vec(),
        models,
        test_logits,
    })
}
