//! The pipeline suite: each instrument end to end, as its command runs it, in items per second.
//!
//! - `embed`: the real all-MiniLM-L6-v2 (`MSCOPE_MINILM_DIR`, else
//!   `.cache/models/all-MiniLM-L6-v2` as tools/fetch-model.sh places it) on the demo corpus
//!   (tools/demo-corpus), batch 32, tokenisation included: texts/s and tokens/s;
//! - `lda`: 50 stratified splits of a synthetic 2 000 × 384 set with 4 labels, Ledoit–Wolf
//!   shrinkage: splits/s;
//! - `ntk`: the exact trNTK of a 784-100-100-100-10 ReLU MLP on 1 000 samples: pairs/s;
//! - `compare`: every model of a 1 000 × 10 000 synthetic ensemble against the pooled others,
//!   with the classifier metrics: models/s.
//!
//! Paths are relative to the working directory (the repository root); a missing model or
//! corpus skips `embed` with the reason.

use std::ops::ControlFlow;
use std::path::PathBuf;

use super::{uniform, Case, Prepared, Scale, Work};
use crate::backend::{Activation, OpFamily, TrimReference, TrimSpec, W2Grid};
use crate::data::scores::synthetic_ensemble;
use crate::instruments::embed::{EncoderOptions, SentenceEncoder};
use crate::instruments::lda::{evaluate, Classes, Shrinkage};
use crate::instruments::metrics::model_metrics;
use crate::instruments::ntk::{KernelJob, DEFAULT_TILE_ROWS};
use crate::instruments::project::{FactorSpec, KernelKind, ProjectionKind};
use crate::instruments::splits;
use crate::io::texts::{read_corpus, FieldNames, InputSpec};
use crate::models::mlp::Mlp;

const DEMO_CORPUS: [&str; 3] = [
    "tools/demo-corpus/news.txt",
    "tools/demo-corpus/reviews.jsonl",
    "tools/demo-corpus/multilingual.csv",
];

pub fn cases(scale: Scale) -> Vec<Case> {
    vec![embed(scale), lda(scale), ntk(scale), compare(scale)]
}

fn embed(scale: Scale) -> Case {
    Case::prepared("pipeline/embed", OpFamily::Encoder, move |be| {
        let model = std::env::var_os("MSCOPE_MINILM_DIR").map_or_else(
            || PathBuf::from(".cache/models/all-MiniLM-L6-v2"),
            PathBuf::from,
        );
        let encoder = SentenceEncoder::load(&model, be.clone(), &EncoderOptions::default())
            .map_err(|e| crate::Error::input(format!("{e} (run tools/fetch-model.sh)")))?;
        let specs: Vec<InputSpec> = DEMO_CORPUS
            .iter()
            .map(|path| InputSpec {
                path: path.into(),
                label: None,
            })
            .collect();
        let mut texts = read_corpus(&specs, &FieldNames::default())?.texts;
        texts.truncate(scale.rows(texts.len(), 8));
        let tokens: usize = encoder.tokenize(&texts)?.iter().map(|t| t.ids.len()).sum();
        Ok(Prepared {
            shape: format!("{} texts, {tokens} tokens, batch 32", texts.len()),
            work: Work::items(vec![
                (texts.len() as f64, "texts"),
                (tokens as f64, "tokens"),
            ]),
            op: Box::new(move || encoder.embed(&texts, 32, &mut |_, _| {}).map(drop)),
        })
    })
}

fn lda(scale: Scale) -> Case {
    Case::prepared("pipeline/lda", OpFamily::Stats, move |be| {
        let (n, d, labels, split_count) = (scale.rows(2000, 400), 384, 4, scale.rows(50, 8));
        // Each class: its own mean plus noise with per-dimension scales, rows interleaved.
        let means: Vec<Vec<f32>> = (0..labels).map(|k| uniform(d, 20 + k as u64)).collect();
        let noise = uniform(n * d, 30);
        let y: Vec<i64> = (0..n).map(|i| (i % labels) as i64).collect();
        let x: Vec<f32> = (0..n * d)
            .map(|at| {
                let (i, j) = (at / d, at % d);
                means[y[i] as usize][j] + (0.5 + j as f32 / d as f32) * noise[at]
            })
            .collect();
        let names: Vec<String> = (0..labels).map(|k| format!("source{k}")).collect();
        let classes = Classes::from_labels(&y, &names)?;
        let splits = splits::stratified(&classes.rows, split_count, 0.2, 0)?;
        let tensor = be.upload(&[n, d], &x)?;
        let be = be.clone();
        Ok(Prepared {
            shape: format!("{n}×{d}, {labels} labels, shrinkage auto"),
            work: Work::items(vec![(split_count as f64, "splits")]),
            op: Box::new(move || {
                evaluate(
                    be.as_ref(),
                    &tensor,
                    &x,
                    &classes,
                    &splits,
                    Shrinkage::Auto,
                    false,
                )
                .map(drop)
            }),
        })
    })
}

fn ntk(scale: Scale) -> Case {
    Case::prepared("pipeline/ntk", OpFamily::Ntk, move |be| {
        let n = scale.rows(1000, 128);
        let mlp = Mlp::init(&[784, 100, 100, 100, 10], Activation::Relu, 0)?;
        let x = uniform(n * 784, 40);
        let be = be.clone();
        Ok(Prepared {
            shape: format!("exact trNTK, 784-100-100-100-10, {n} samples"),
            work: Work::items(vec![((n * n) as f64, "pairs")]),
            op: Box::new(move || {
                let job = KernelJob {
                    mlp: &mlp,
                    rows: &x,
                    cols: None,
                    row_labels: None,
                    col_labels: None,
                    spec: FactorSpec {
                        kind: KernelKind::Trntk,
                        projection: ProjectionKind::None,
                        projection_dim: 0,
                        seed: 0,
                    },
                    block_rows: n,
                    tile_rows: DEFAULT_TILE_ROWS,
                };
                job.run(be.as_ref(), None, &mut |_| ControlFlow::Continue(()))
                    .map(drop)
            }),
        })
    })
}

fn compare(scale: Scale) -> Case {
    Case::prepared("pipeline/compare", OpFamily::Trim, move |be| {
        let (models, points) = (1000, scale.rows(10_000, 1_000));
        let (scores, labels) = synthetic_ensemble(models, points, 0);
        // What `mscope compare` does by default (candidate grid at this size).
        let spec = TrimSpec {
            level: 0.05,
            w2_alpha: None,
            w2_grid: W2Grid::Auto,
        };
        let be = be.clone();
        Ok(Prepared {
            shape: format!("{models} models × {points} points, leave-one-out + metrics"),
            work: Work::items(vec![(models as f64, "models")]),
            op: Box::new(move || {
                let decisions = scores.soft_decisions(Some(&labels));
                let rows: Vec<&[f32]> = decisions.chunks_exact(points).collect();
                be.trim_search(&rows, TrimReference::LeaveOneOut, &spec)?;
                model_metrics(&scores, Some(&labels));
                Ok(())
            }),
        })
    })
}
