//! The kernel suite: one op of the op set per case, on the shapes of the models the instruments
//! run (MiniLM, BERT-base, e5-large, a Mistral-7B layer, a CLIP ViT-H block) and on the
//! instruments' own sizes (covariance of 10 000 rows, α̂ over 100 models, NTK tiles).
//!
//! Counted work: `linear` `2·n·k·m` FLOPs (`linear_gated` `2·n·k·2m`, gate and up); attention
//! `4·head_dim` FLOPs per (query, key, head) the mask allows (QKᵀ and PV; softmax not counted),
//! its backward pass `10·head_dim` (S, dP, dV, dQ, dK); covariance `n·d²` f64 FLOPs (the lower
//! half); eigen `9·d³` f64 FLOPs (Golub–Van Loan's count for values and vectors); contraction
//! `2·r·c·(p + q)` (over tokens for the sequence form), a per-sample gradient `2·T·p·(q + 1)`;
//! projection `2·n·d·k`. Bytes are each op's inputs read once and outputs
//! written once, in their element type (f16 weights count 2 bytes each), except the sort of
//! `trim_search` (see [`trim`]).
//!
//! The encoder and backward ops' cases are [`super::cases`]' op cases, the ones `tests/ops.rs` checks at test
//! sizes; the stats, trim and NTK cases are timed here only (tests/pca.rs, tests/alpha.rs and
//! tests/ntk.rs check those ops).

use std::sync::Arc;

use super::cases::{CaseOp, Fill, Linear, LinearGated, OpCase, WeightsIn};
use super::{uniform, Case, Op, Prepared, Scale, Work};
use crate::backend::{
    Activation, AttentionSpec, Backend, JlDistribution, JlSpec, Matrix64, OpFamily, Pooling,
    RopeFrequencies, RopeScaling, RopeSpec, SeqFactors, SeqLayout, TokenPairing, TrimReference,
    TrimSpec, W2Grid,
};
use crate::data::scores::synthetic_ensemble;

const F32: f64 = 4.0;

pub fn cases(scale: Scale) -> Vec<Case> {
    let tokens = scale.rows(2048, 64);
    let decoder_tokens = scale.rows(512, 64);
    let mut cases = vec![
        linear("minilm-qkv", tokens, 384, 1152, Activation::Identity, false),
        linear("minilm-ffn-up", tokens, 384, 1536, Activation::Gelu, false),
        linear(
            "minilm-ffn-down",
            tokens,
            1536,
            384,
            Activation::Identity,
            true,
        ),
        linear(
            "bert-base-ffn-up",
            tokens,
            768,
            3072,
            Activation::Gelu,
            false,
        ),
        linear(
            "e5-large-ffn-up",
            tokens,
            1024,
            4096,
            Activation::Gelu,
            false,
        ),
        // Mistral-7B's gate and up projections (4096 → 2 × 14336) with SwiGLU in the epilogue
        // where the GEMM fuses it; one decode-sized batch of rows keeps it quick on a CPU.
        linear_gated("mistral-7b-mlp-gate-up", scale.rows(256, 32), 4096, 14336),
        // SmolLM2-135M's layer (hidden 576, 9 + 2·3 heads of 64, MLP 1536) on a batch of 32
        // short texts: the decoder anchor's batches hold 305–828 tokens.
        linear(
            "smollm2-qkv",
            decoder_tokens,
            576,
            960,
            Activation::Identity,
            false,
        ),
        linear(
            "smollm2-o",
            decoder_tokens,
            576,
            576,
            Activation::Identity,
            true,
        ),
        linear_gated("smollm2-mlp-gate-up", decoder_tokens, 576, 1536),
        linear(
            "smollm2-mlp-down",
            decoder_tokens,
            1536,
            576,
            Activation::Identity,
            true,
        ),
        // 8 images × 257 tokens (256 patches + CLS).
        linear(
            "clip-vit-h-mlp-up",
            scale.rows(8, 1) * 257,
            1280,
            5120,
            Activation::Gelu,
            false,
        ),
    ];
    let (minilm_seqs, bert_seqs) = (scale.rows(32, 4), scale.rows(16, 2));
    cases.extend([
        attention(
            "minilm",
            vec![128; minilm_seqs],
            AttentionSpec::bidirectional(12, 32),
        ),
        attention(
            "bert-base",
            vec![256; bert_seqs],
            AttentionSpec::bidirectional(12, 64),
        ),
        {
            let len = scale.rows(1024, 128);
            attention(
                "mistral-7b-gqa-window",
                vec![len],
                AttentionSpec {
                    heads: 32,
                    kv_heads: 8,
                    head_dim: 128,
                    causal: true,
                    window: Some(len / 2),
                    scale: 1.0 / (128f32).sqrt(),
                },
            )
        },
    ]);
    let rows = scale.rows(16_384, 512);
    cases.extend([
        layer_norm("e5-large", rows, 1024),
        rms_norm("mistral-7b", scale.rows(4096, 256), 4096),
        // Mistral-7B's SwiGLU between its gate/up and down projections.
        gated_activation("mistral-7b-swiglu", scale.rows(1024, 64), 14_336),
        rope(
            "mistral-7b",
            vec![scale.rows(1024, 128); 4],
            RopeSpec {
                heads: 32,
                kv_heads: 8,
                head_dim: 128,
            },
        ),
        l2_normalize("bert-base", rows, 768),
        gather("bert-base-vocab", 30_522, 768, rows),
        pool("minilm-mean", rows / 128, 128, 384),
        // The backward family at BERT-base's shapes over CoLA-length (12-token) sentences.
        activation_backward("bert-base-ffn", rows, 3072),
        layer_norm_backward("bert-base", rows, 768),
        attention_backward("bert-base-cola", vec![12; scale.rows(1024, 32)]),
        scatter_rows("bert-base-vocab", 30_522, 768, 12),
        sequence_sums("bert-base-layernorm", vec![12; scale.rows(1024, 32)], 768),
        scatter("covariance", scale.rows(10_000, 1_000), 1024),
        // PCA of a 10⁵-text corpus of MiniLM embeddings: few output tiles for many rows, where
        // the GPU kernels split the rows across blocks.
        scatter("minilm-embeddings", scale.rows(100_000, 12_500), 384),
        eigen(8, scale.rows(256, 64)),
        eigen(1, scale.rows(1024, 128)),
        trim(100, scale.rows(10_000, 1_000)),
        // Issue 21's target size: 10⁸ pooled points, 2 GB of floor traffic.
        trim(1000, scale.rows(100_000, 10_000)),
        ntk_contract(128, scale.rows(4096, 512), 1000, 784),
        // A BERT-base attention projection (768×768, two classes) between CoLA-length sentences,
        // and the same layer's gradients formed per sample at 128 tokens (SeqForm::choose).
        ntk_contract_seq(scale.rows(64, 8), scale.rows(256, 32), 12, 2 * 768, 768),
        ntk_sample_gradients(scale.rows(16, 2), 128, 2 * 768, 768),
        // Both forms of one block, either side of SeqForm::choose's crossover.
        ntk_seq_materialised(scale.rows(64, 8), scale.rows(256, 32), 12, 2 * 768, 768),
        ntk_contract_seq(8, 32, 128, 2 * 768, 768),
        ntk_seq_materialised(8, 32, 128, 2 * 768, 768),
        jl_project(JlDistribution::Rademacher, scale.rows(320, 40), 8192, 1024),
        jl_project(JlDistribution::Gaussian, scale.rows(320, 40), 8192, 1024),
    ]);
    cases
}

/// A device tensor of seeded uniform values.
fn random(
    be: &Arc<dyn Backend>,
    shape: &[usize],
    seed: u64,
) -> crate::Result<crate::backend::Tensor> {
    be.upload(shape, &uniform(shape.iter().product(), seed))
}

/// The bench case of an op case: its inputs built on the target's backend with a zeroed output,
/// `linear`'s weights in the element type the target's GEMM variant reads.
fn timed(case: OpCase) -> Case {
    Case::on_target(case.name.clone(), case.family(), move |target| {
        let mut case = case.clone();
        if target.gemm.f16_weights() {
            match &mut case.op {
                CaseOp::Linear(linear) => linear.weights = WeightsIn::F16,
                CaseOp::LinearGated(gated) => gated.weights = WeightsIn::F16,
                _ => {}
            }
        }
        let mut instance = case.instance(&target.backend, &case.inputs(), Fill::Zeros)?;
        Ok(Prepared {
            shape: case.shape(),
            work: case.work(),
            op: Box::new(move || instance.run()),
        })
    })
}

/// A `linear` case with a bias; its weights are f16 (2 bytes each) on variants that read f16
/// weights.
fn linear(model: &str, n: usize, k: usize, m: usize, act: Activation, residual: bool) -> Case {
    let op = CaseOp::Linear(Linear {
        n,
        k,
        m,
        act,
        bias: true,
        residual,
        weights: WeightsIn::F32,
    });
    timed(OpCase::new(format!("linear/{model}"), 1, op)).with_linear_weights(k * m)
}

/// A bias-free `linear_gated` case with SiLU (SwiGLU), `m` output columns from `2m` weight rows;
/// f16 weights on variants that read them.
fn linear_gated(model: &str, n: usize, k: usize, m: usize) -> Case {
    let op = CaseOp::LinearGated(LinearGated {
        n,
        k,
        m,
        act: Activation::Silu,
        bias: false,
        weights: WeightsIn::F32,
    });
    timed(OpCase::new(format!("linear_gated/{model}"), 1, op))
}

fn attention(model: &str, lengths: Vec<usize>, spec: AttentionSpec) -> Case {
    let head_dim = spec.head_dim;
    let op = CaseOp::Attention { lengths, spec };
    timed(OpCase::new(format!("attention/{model}"), 5, op)).with_attention_head_dim(head_dim)
}

fn layer_norm(model: &str, n: usize, d: usize) -> Case {
    let op = CaseOp::LayerNorm { n, d, eps: 1e-12 };
    timed(OpCase::new(format!("layer_norm/{model}"), 6, op))
}

fn rms_norm(model: &str, n: usize, d: usize) -> Case {
    let op = CaseOp::RmsNorm { n, d, eps: 1e-5 };
    timed(OpCase::new(format!("rms_norm/{model}"), 20, op))
}

fn gated_activation(model: &str, n: usize, m: usize) -> Case {
    let op = CaseOp::GatedActivation {
        n,
        m,
        act: Activation::Silu,
    };
    timed(OpCase::new(format!("gated_activation/{model}"), 23, op))
}

/// RoPE on the query and key heads of packed sequences (θ 10⁶, Mistral-7B v0.2's), from a
/// `(cos, sin)` table built before the runs, as a model builds it once.
fn rope(model: &str, lengths: Vec<usize>, spec: RopeSpec) -> Case {
    let frequencies = RopeFrequencies {
        theta: 1e6,
        scaling: RopeScaling::None,
    };
    let op = CaseOp::Rope {
        lengths,
        spec,
        frequencies,
    };
    timed(OpCase::new(format!("rope/{model}"), 22, op))
}

fn l2_normalize(model: &str, n: usize, d: usize) -> Case {
    let op = CaseOp::L2Normalize { n, d };
    timed(OpCase::new(format!("l2_normalize/{model}"), 9, op))
}

fn gather(model: &str, vocab: usize, d: usize, ids: usize) -> Case {
    let op = CaseOp::Gather {
        rows: vocab,
        d,
        ids,
        accumulate: false,
        f16_table: false,
    };
    timed(OpCase::new(format!("gather_rows/{model}"), 10, op))
}

fn pool(model: &str, sequences: usize, len: usize, d: usize) -> Case {
    let op = CaseOp::Pool {
        lengths: vec![len; sequences],
        d,
        mode: Pooling::Mean,
        normalize: false,
    };
    timed(OpCase::new(format!("pool/{model}"), 12, op))
}

fn activation_backward(model: &str, n: usize, m: usize) -> Case {
    let op = CaseOp::ActivationBackward {
        n,
        m,
        act: Activation::Gelu,
    };
    timed(OpCase::new(format!("activation_backward/{model}"), 30, op))
}

fn layer_norm_backward(model: &str, n: usize, d: usize) -> Case {
    let op = CaseOp::LayerNormBackward { n, d, eps: 1e-12 };
    timed(OpCase::new(format!("layer_norm_backward/{model}"), 31, op))
}

fn attention_backward(model: &str, lengths: Vec<usize>) -> Case {
    let spec = AttentionSpec::bidirectional(12, 64);
    let op = CaseOp::AttentionBackward { lengths, spec };
    timed(OpCase::new(format!("attention_backward/{model}"), 32, op))
}

/// A LayerNorm γ's per-sample gradients: `dy ⊙ x̂` summed over each sentence's tokens.
fn sequence_sums(model: &str, lengths: Vec<usize>, d: usize) -> Case {
    let op = CaseOp::SequenceSums {
        lengths,
        d,
        weighted: true,
    };
    timed(OpCase::new(format!("sequence_sums/{model}"), 34, op))
}

/// One sentence's gradient rows scattered into a vocabulary-sized table (a per-sample
/// embedding gradient).
fn scatter_rows(model: &str, vocab: usize, d: usize, ids: usize) -> Case {
    let op = CaseOp::ScatterRows {
        rows: vocab,
        d,
        ids,
        accumulate: false,
    };
    timed(OpCase::new(format!("scatter_rows/{model}"), 33, op))
}

fn scatter(what: &str, n: usize, d: usize) -> Case {
    Case::new(
        format!("scatter/{what}"),
        OpFamily::Stats,
        format!("{n}×{d}, one group"),
        Work::f64((n * d * d) as f64, (n * d) as f64 * F32),
        move |be| {
            let x = random(be, &[n, d], 13)?;
            let all: Vec<u32> = (0..n as u32).collect();
            let be = be.clone();
            Ok(Box::new(move || be.scatter(&x, &[&all]).map(drop)) as Op)
        },
    )
}

fn eigen(batch: usize, d: usize) -> Case {
    Case::new(
        format!("symmetric_eigen/{batch}x{d}"),
        OpFamily::Stats,
        format!("{batch} × {d}×{d} f64"),
        Work::f64(9.0 * batch as f64 * (d as f64).powi(3), 0.0),
        move |be| {
            let matrices: Vec<Matrix64> = (0..batch)
                .map(|b| {
                    let values = uniform(d * d, 14 + b as u64);
                    let mut a = Matrix64::zeros(d, d);
                    for i in 0..d {
                        for j in 0..=i {
                            let v = f64::from(values[i * d + j]);
                            (*a.at_mut(i, j), *a.at_mut(j, i)) = (v, v);
                        }
                    }
                    a
                })
                .collect();
            let be = be.clone();
            Ok(Box::new(move || be.symmetric_eigen(&matrices).map(drop)) as Op)
        },
    )
}

/// Leave-one-out α̂ of every model of a synthetic ensemble. Its floor is a sort: read each
/// score once, write and read back one 8-byte (value, model) key per score — 20 bytes per
/// point, a single-pass sort no implementation beats.
fn trim(models: usize, points: usize) -> Case {
    Case::new(
        format!("trim_search/{models}x{points}"),
        OpFamily::Trim,
        format!("{models} models × {points} points, leave-one-out"),
        Work::bytes((models * points * 20) as f64),
        move |be| {
            let (scores, _) = synthetic_ensemble(models, points, 0);
            // The search's own cost: the exact W2 would add O(M²·N) merged-grid work.
            let spec = TrimSpec {
                level: 0.05,
                w2_alpha: None,
                w2_grid: W2Grid::Candidate,
            };
            let be = be.clone();
            Ok(Box::new(move || {
                let rows: Vec<&[f32]> = scores.values.chunks_exact(points).collect();
                be.trim_search(&rows, TrimReference::LeaveOneOut, &spec)
                    .map(drop)
            }) as Op)
        },
    )
}

/// One NTK tile of the 784-100-100-100-10 MLP's first layer (benches/ntk.rs): 10 classes ×
/// 100 outputs of gradient, 784 inputs.
fn ntk_contract(rows: usize, cols: usize, p: usize, q: usize) -> Case {
    let bytes = (rows * p + cols * p + rows * q + cols * q + 2 * rows * cols) as f64 * F32;
    Case::new(
        format!("ntk_contract/{rows}x{cols}"),
        OpFamily::Ntk,
        format!("{rows}×{cols} tile, p {p}, q {q}"),
        Work::f32(2.0 * (rows * cols * (p + q)) as f64, bytes),
        move |be| {
            let dr = random(be, &[rows, p], 15)?;
            let dc = random(be, &[cols, p], 16)?;
            let ar = random(be, &[rows, q], 17)?;
            let ac = random(be, &[cols, q], 18)?;
            let mut out = be.zeros(&[rows, cols])?;
            let be = be.clone();
            Ok(
                Box::new(move || {
                    be.ntk_contract(&dr, &dc, Some((&ar, &ac)), 1.0, 0..cols, &mut out)
                }) as Op,
            )
        },
    )
}

/// The token-level form of one Linear layer's share of a kernel block between `rows` and `cols`
/// samples of `tokens` tokens each: two Gram products over the blocks' tokens.
fn ntk_contract_seq(rows: usize, cols: usize, tokens: usize, p: usize, q: usize) -> Case {
    let (t_r, t_c) = (rows * tokens, cols * tokens);
    let bytes = ((t_r + t_c) * (p + q) + 2 * rows * cols) as f64 * F32;
    Case::new(
        format!("ntk_contract_seq/{rows}x{cols}x{tokens}tok"),
        OpFamily::Ntk,
        format!("{rows}×{cols} samples of {tokens} tokens, p {p}, q {q}"),
        Work::f32(2.0 * (t_r * t_c * (p + q)) as f64, bytes),
        move |be| {
            let dr = random(be, &[t_r, p], 19)?;
            let dc = random(be, &[t_c, p], 20)?;
            let ar = random(be, &[t_r, q], 21)?;
            let ac = random(be, &[t_c, q], 22)?;
            let (row_layout, col_layout) = (
                SeqLayout::from_lengths(vec![tokens; rows]),
                SeqLayout::from_lengths(vec![tokens; cols]),
            );
            let mut out = be.zeros(&[rows, cols])?;
            let be = be.clone();
            Ok(Box::new(move || {
                be.ntk_contract_seq(
                    SeqFactors {
                        delta: &dr,
                        layout: &row_layout,
                    },
                    SeqFactors {
                        delta: &dc,
                        layout: &col_layout,
                    },
                    TokenPairing::Linear {
                        rows: &ar,
                        cols: &ac,
                        offset: 1.0,
                    },
                    0..cols,
                    &mut out,
                )
            }) as Op)
        },
    )
}

/// The materialised form of [`ntk_contract_seq`]'s block, both sides' per-sample gradients
/// included: what [`SeqForm::choose`](crate::backend::SeqForm::choose) weighs against it.
fn ntk_seq_materialised(rows: usize, cols: usize, tokens: usize, p: usize, q: usize) -> Case {
    let width = p * (q + 1);
    let t = (rows + cols) * tokens;
    let bytes = (t * (p + q) + 2 * (rows + cols) * width + rows * cols) as f64 * F32;
    let flops = 2.0 * (t * width + rows * cols * width) as f64;
    Case::new(
        format!("ntk_contract_seq/materialised/{rows}x{cols}x{tokens}tok"),
        OpFamily::Ntk,
        format!("{rows}×{cols} samples of {tokens} tokens, p {p}, q {q}"),
        Work::f32(flops, bytes),
        move |be| {
            let sides = [(rows, 25), (cols, 27)].map(|(n, seed)| {
                let t = n * tokens;
                Ok::<_, crate::Error>((
                    random(be, &[t, p], seed)?,
                    random(be, &[t, q], seed + 1)?,
                    SeqLayout::from_lengths(vec![tokens; n]),
                    be.zeros(&[n, width])?,
                ))
            });
            let [r, c] = sides;
            let (mut r, mut c) = (r?, c?);
            let mut out = be.zeros(&[rows, cols])?;
            let be = be.clone();
            Ok(Box::new(move || {
                for (delta, acts, layout, g) in [&mut r, &mut c] {
                    let factors = SeqFactors { delta, layout };
                    be.ntk_sample_gradients(factors, acts, 1.0, g)?;
                }
                be.ntk_contract(&r.3, &c.3, None, 0.0, 0..cols, &mut out)
            }) as Op)
        },
    )
}

/// The materialised form's per-sample gradients of one Linear layer for `n` samples of `tokens`
/// tokens each.
fn ntk_sample_gradients(n: usize, tokens: usize, p: usize, q: usize) -> Case {
    let t = n * tokens;
    let bytes = (t * (p + q) + n * p * (q + 1)) as f64 * F32;
    Case::new(
        format!("ntk_sample_gradients/{n}x{tokens}tok"),
        OpFamily::Ntk,
        format!("{n} samples of {tokens} tokens, p {p}, q {q}"),
        Work::f32(2.0 * (t * p * (q + 1)) as f64, bytes),
        move |be| {
            let delta = random(be, &[t, p], 23)?;
            let acts = random(be, &[t, q], 24)?;
            let layout = SeqLayout::from_lengths(vec![tokens; n]);
            let mut out = be.zeros(&[n, p * (q + 1)])?;
            let be = be.clone();
            Ok(Box::new(move || {
                let factors = SeqFactors {
                    delta: &delta,
                    layout: &layout,
                };
                be.ntk_sample_gradients(factors, &acts, 1.0, &mut out)
            }) as Op)
        },
    )
}

/// Dense JL projection of one tile of materialised first-layer gradients (benches/ntk.rs).
fn jl_project(distribution: JlDistribution, n: usize, d: usize, k: usize) -> Case {
    let name = match distribution {
        JlDistribution::Rademacher => "rademacher",
        JlDistribution::Gaussian => "gaussian",
    };
    Case::new(
        format!("jl_project/{name}"),
        OpFamily::Ntk,
        format!("{n}×{d} → {k}"),
        Work::f32(2.0 * (n * d * k) as f64, ((n * d + n * k) as f64) * F32),
        move |be| {
            let x = random(be, &[n, d], 19)?;
            let mut out = be.zeros(&[n, k])?;
            let spec = JlSpec {
                seed: 0,
                dim: k,
                distribution,
                column_offset: 0,
            };
            let be = be.clone();
            Ok(Box::new(move || be.jl_project(&x, &spec, false, &mut out)) as Op)
        },
    )
}
