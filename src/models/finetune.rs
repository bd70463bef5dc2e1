//! Fine-tuning of transformer sequence classifiers: AdamW as `torch.optim.AdamW` makes it, the
//! linear warm-up then linear decay to zero of transformers' `get_linear_schedule_with_warmup`,
//! and the classifier's parameters held on the host by checkpoint name, written back as a
//! classifier directory that [`SequenceClassifier::load`](super::classifier::SequenceClassifier::load) (and transformers) read.
//!
//! The gradient of each step is [`loss_gradient`](super::classifier_grad::loss_gradient)'s; the
//! classifier is rebuilt from the written weights after each update (the forward runs on its
//! backend, the update on the host).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::tensor_file::{self, TensorFile, TensorOut};

/// AdamW's constants: PyTorch's defaults.
pub const ADAMW_BETAS: (f64, f64) = (0.9, 0.999);
pub const ADAMW_EPS: f64 = 1e-8;

/// The learning-rate factor of optimizer step `step` (0-based) of `total`: `step / warmup`
/// during the warm-up, then falling linearly to 0 at `total` (transformers'
/// `get_linear_schedule_with_warmup`, whose scheduler steps after each optimizer step).
pub fn linear_schedule(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0)
    }
}

/// Parameters by checkpoint name: shape and f32 values.
pub type Parameters = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every f32 tensor of a safetensors checkpoint (`model.safetensors`), by name.
pub fn read_parameters(path: &Path) -> Result<Parameters> {
    let file = TensorFile::read(path)?;
    file.names()
        .into_iter()
        .map(|name| {
            let tensor = file.f32(&name)?;
            Ok((name, tensor))
        })
        .collect()
}

/// Writes `params` as a safetensors checkpoint (F32, HF names).
pub fn write_parameters(path: &Path, params: &Parameters) -> Result<()> {
    let tensors = params
        .iter()
        .map(|(name, (shape, values))| TensorOut::f32(name.clone(), shape.clone(), values))
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    tensor_file::write(path, tensors, metadata)
}

/// Weight files a classifier directory may hold, which [`write_classifier`] replaces by its own
/// `model.safetensors` rather than copies.
const WEIGHT_FILES: [&str; 3] = [
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
];

/// Writes a classifier directory `to` (created if absent) holding `params` as
/// `model.safetensors` and a copy of every other file of the directory `from` it was loaded
/// from (config.json with its labels, the tokenizer files): what transformers'
/// `from_pretrained` and [`SequenceClassifier::load`](super::classifier::SequenceClassifier::load)
/// read.
pub fn write_classifier(from: &Path, to: &Path, params: &Parameters) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let path = entry.map_err(|e| Error::io(from, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.is_file() && !WEIGHT_FILES.contains(&name) {
            std::fs::copy(&path, to.join(name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    write_parameters(&to.join("model.safetensors"), params)
}

/// `torch.optim.AdamW` (no AMSGrad): per parameter tensor, decoupled weight decay
/// `p ← p·(1 − lr·λ)` then the bias-corrected Adam step.
pub struct AdamW {
    weight_decay: f64,
    steps: i32,
    /// First and second moments by parameter name.
    moments: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
}

impl AdamW {
    pub fn new(weight_decay: f64) -> Self {
        AdamW {
            weight_decay,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of the parameters named in `grads` with learning rate `lr` (this step's,
    /// schedule applied). Parameters without a gradient (a frozen encoder) are left alone.
    pub fn step(
        &mut self,
        params: &mut Parameters,
        grads: &[(String, Vec<f32>)],
        lr: f64,
    ) -> Result<()> {
        self.steps += 1;
        let (beta1, beta2) = ADAMW_BETAS;
        // PyTorch folds the bias corrections into the step size and the denominator.
        let step_size = (lr / (1.0 - beta1.powi(self.steps))) as f32;
        let correction2_sqrt = (1.0 - beta2.powi(self.steps)).sqrt() as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let (beta1, beta2, eps) = (beta1 as f32, beta2 as f32, ADAMW_EPS as f32);
        for (name, grad) in grads {
            let (_, values) = params.get_mut(name).ok_or_else(|| {
                Error::input(format!("AdamW: gradient of {name}, which the model lacks"))
            })?;
            if values.len() != grad.len() {
                return Err(Error::input(format!(
                    "AdamW: {name} has {} values, its gradient {}",
                    values.len(),
                    grad.len()
                )));
            }
            let (first, second) = self
                .moments
                .entry(name.clone())
                .or_insert_with(|| (vec![0.0; grad.len()], vec![0.0; grad.len()]));
            for (((p, &g), m), v) in values.iter_mut().zip(grad).zip(first).zip(second) {
                *p *= decay;
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                let denom = v.sqrt() / correction2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let lrs: Vec<f64> = (0..6).map(|s| linear_schedule(s, 2, 6)).collect();
        assert_eq!(lrs, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        assert_eq!(linear_schedule(7, 2, 6), 0.0);
        assert_eq!(linear_schedule(0, 0, 4), 1.0);
    }
}
