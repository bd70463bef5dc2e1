//! The CPU backward ops (`backend::cpu::backward`) against central finite differences of float64
//! forward references: for a random readout `R`, the gradient of `L = ⟨R, op(x)⟩` with respect
//! to every input entry, `(L(x + h) − L(x − h)) / 2h` in f64, against the f32 backward op. Each
//! f64 forward is first checked against the backend's own f32 op, so the differences are taken
//! of the function the encoder really computes.

mod common;

use common::{rel_error_f64, Rng};
use mscope::backend::cpu::backward::{
    activation_backward, attention_backward, layer_norm_backward, linear_input_backward,
    scatter_rows, sequence_sums,
};
use mscope::backend::cpu::{gemm, CpuBackend, Operand};
use mscope::backend::{Activation, AttentionSpec, Backend, DropoutMask, SeqLayout};

/// f32 backward against an f64 reference (the crate's numerics contract).
const F32_TOLERANCE: f64 = 1e-5;
/// Central-difference step: truncation error ~h², rounding ~1e-16/h, both far below 1e-5.
const STEP: f64 = 1e-5;

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `∂⟨R, f(x)⟩/∂x_k` for every k by central differences, in f64.
fn finite_differences(x: &[f64], readout: &[f64], f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let loss = |x: &[f64]| -> f64 { f(x).iter().zip(readout).map(|(a, b)| a * b).sum() };
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|k| {
            probe[k] = x[k] + STEP;
            let up = loss(&probe);
            probe[k] = x[k] - STEP;
            let down = loss(&probe);
            probe[k] = x[k];
            (up - down) / (2.0 * STEP)
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_close_f64(what, &widen(got), want);
}

fn assert_close_f64(what: &str, got: &[f64], want: &[f64]) {
    let err = rel_error_f64(got, want);
    assert!(err < F32_TOLERANCE, "{what}: rel err {err:.2e}");
}

fn activation_f64(act: Activation, z: f64) -> f64 {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    match act {
        Activation::Identity => z,
        Activation::Gelu => 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * z * (1.0 + (c * (z + 0.044_715 * z * z * z)).tanh())
        }
        Activation::QuickGelu => z * sigmoid(1.702 * z),
        Activation::Silu => z * sigmoid(z),
        Activation::Relu => z.max(0.0),
        Activation::Tanh => z.tanh(),
        Activation::Sigmoid => sigmoid(z),
    }
}

#[test]
fn activation_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    // Pre-activations over [-4, 4], none within 1e-3 of ReLU's kink.
    let z: Vec<f32> = (0..200)
        .map(|_| 4.0 * rng.uniform())
        .map(|v| if v.abs() < 1e-3 { 0.5 } else { v })
        .collect();
    let readout: Vec<f32> = rng.vec(z.len());
    for act in Activation::ALL {
        let forward_f32: Vec<f32> = z.iter().map(|&v| act.apply(v)).collect();
        let forward_f64: Vec<f64> = z.iter().map(|&v| activation_f64(act, v as f64)).collect();
        assert_close(&format!("{act:?} forward"), &forward_f32, &forward_f64);
        let want = finite_differences(&widen(&z), &widen(&readout), |x| {
            x.iter().map(|&v| activation_f64(act, v)).collect()
        });
        let got = activation_backward(act, &z, &readout);
        assert_close(&format!("{act:?} backward"), &got, &want);
    }
}

/// `act(x·Wᵀ + b)`, `x: [n, k]`, `w: [m, k]`, in f64.
fn linear_f64(x: &[f64], w: &[f64], b: &[f64], act: Activation, k: usize) -> Vec<f64> {
    let m = b.len();
    x.chunks_exact(k)
        .flat_map(|row| {
            (0..m).map(move |j| {
                let z: f64 = row
                    .iter()
                    .zip(&w[j * k..(j + 1) * k])
                    .map(|(a, b)| a * b)
                    .sum();
                activation_f64(act, z + b[j])
            })
        })
        .collect()
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (n, k, m) = (7, 5, 9);
    let mut rng = Rng::new(2);
    let (x, w, b, readout) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
    let be = CpuBackend::new();
    for act in [Activation::Identity, Activation::Gelu, Activation::Tanh] {
        let mut out = be.zeros(&[n, m]).unwrap();
        be.linear(
            &be.upload(&[n, k], &x).unwrap(),
            &be.upload(&[m, k], &w).unwrap(),
            Some(&be.upload(&[m], &b).unwrap()),
            act,
            None,
            &mut out,
        )
        .unwrap();
        let (xd, wd, bd) = (widen(&x), widen(&w), widen(&b));
        assert_close(
            &format!("{act:?} linear forward"),
            &be.download(&out).unwrap(),
            &linear_f64(&xd, &wd, &bd, act, k),
        );
        // The backward: δ = R ⊙ act'(z) with z the pre-activation, dx = δ·W, dW = δᵀ·x,
        // db = Σ_rows δ.
        let mut pre = be.zeros(&[n, m]).unwrap();
        be.linear(
            &be.upload(&[n, k], &x).unwrap(),
            &be.upload(&[m, k], &w).unwrap(),
            Some(&be.upload(&[m], &b).unwrap()),
            Activation::Identity,
            None,
            &mut pre,
        )
        .unwrap();
        let delta = activation_backward(act, &be.download(&pre).unwrap(), &readout);
        let mut dx = vec![0.0f32; n * k];
        linear_input_backward(&delta, &w, m, k, &mut dx, false);
        let mut dw = vec![0.0f32; m * k];
        gemm(
            &mut dw,
            Operand::transposed(&delta, n, m),
            Operand::plain(&x, n, k),
            false,
        );
        let db = sequence_sums(&delta, None, &SeqLayout::from_lengths([n]), m);
        let r = widen(&readout);
        let fd_x = finite_differences(&xd, &r, |x| linear_f64(x, &wd, &bd, act, k));
        let fd_w = finite_differences(&wd, &r, |w| linear_f64(&xd, w, &bd, act, k));
        let fd_b = finite_differences(&bd, &r, |b| linear_f64(&xd, &wd, b, act, k));
        assert_close(&format!("{act:?} dx"), &dx, &fd_x);
        assert_close(&format!("{act:?} dW"), &dw, &fd_w);
        assert_close(&format!("{act:?} db"), &db, &fd_b);
    }
    // The residual branch adds: dx accumulates onto what is there.
    let delta = rng.vec(n * m);
    let mut fresh = vec![0.0f32; n * k];
    linear_input_backward(&delta, &w, m, k, &mut fresh, false);
    let base = rng.vec(n * k);
    let mut summed = base.clone();
    linear_input_backward(&delta, &w, m, k, &mut summed, true);
    let want: Vec<f64> = base
        .iter()
        .zip(&fresh)
        .map(|(a, b)| (a + b) as f64)
        .collect();
    assert_close("accumulated dx", &summed, &want);
}

fn layer_norm_f64(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let d = gamma.len();
    x.chunks_exact(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(v, (g, b))| (v - mean) * inv * g + b)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let (n, d) = (6, 19);
    let mut rng = Rng::new(3);
    let x: Vec<f32> = rng.vec(n * d).iter().map(|v| 3.0 * v + 0.5).collect();
    let gamma: Vec<f32> = rng.vec(d).iter().map(|v| 1.0 + 0.3 * v).collect();
    let (beta, readout) = (rng.vec(d), rng.vec(n * d));
    let be = CpuBackend::new();
    for eps in [1e-12f32, 1e-5] {
        let mut t = be.upload(&[n, d], &x).unwrap();
        be.layer_norm(
            &mut t,
            &be.upload(&[d], &gamma).unwrap(),
            &be.upload(&[d], &beta).unwrap(),
            eps,
        )
        .unwrap();
        let (xd, gd, bd, e) = (widen(&x), widen(&gamma), widen(&beta), eps as f64);
        assert_close(
            "layer_norm forward",
            &be.download(&t).unwrap(),
            &layer_norm_f64(&xd, &gd, &bd, e),
        );
        let (dx, normed) = layer_norm_backward(&x, &gamma, eps, &readout);
        let one = SeqLayout::from_lengths([n]);
        let (dgamma, dbeta) = (
            sequence_sums(&readout, Some(&normed), &one, d),
            sequence_sums(&readout, None, &one, d),
        );
        let r = widen(&readout);
        let fd_x = finite_differences(&xd, &r, |x| layer_norm_f64(x, &gd, &bd, e));
        let fd_g = finite_differences(&gd, &r, |g| layer_norm_f64(&xd, g, &bd, e));
        let fd_b = finite_differences(&bd, &r, |b| layer_norm_f64(&xd, &gd, b, e));
        assert_close(&format!("eps {eps}: dx"), &dx, &fd_x);
        assert_close(&format!("eps {eps}: dγ"), &dgamma, &fd_g);
        assert_close(&format!("eps {eps}: dβ"), &dbeta, &fd_b);
    }
}

/// Bidirectional multi-head attention of each packed sequence, in f64, the probabilities
/// multiplied by `dropout`'s factors where given (row: query token · heads + head, column: key
/// position in the sequence).
fn attention_f64(
    qkv: &[f64],
    layout: &SeqLayout,
    heads: usize,
    hd: usize,
    dropout: Option<&DropoutMask>,
) -> Vec<f64> {
    let (width, out_width) = (3 * heads * hd, heads * hd);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; layout.num_tokens() * out_width];
    for s in 0..layout.num_sequences() {
        let rows = layout.range(s);
        for h in 0..heads {
            let col =
                |kind: usize, t: usize, e: usize| qkv[t * width + kind * out_width + h * hd + e];
            for i in rows.clone() {
                let scores: Vec<f64> = rows
                    .clone()
                    .map(|j| scale * (0..hd).map(|e| col(0, i, e) * col(1, j, e)).sum::<f64>())
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                let factor = |j: usize| {
                    dropout.map_or(1.0, |m| {
                        f64::from(m.factor((i * heads + h) as u64, (j - rows.start) as u64))
                    })
                };
                for e in 0..hd {
                    out[i * out_width + h * hd + e] = rows
                        .clone()
                        .zip(&exps)
                        .map(|(j, p)| p / total * factor(j) * col(2, j, e))
                        .sum();
                }
            }
        }
    }
    out
}

/// Heads and head size of the attention tests.
const HEADS: (usize, usize) = (2, 3);

/// The attention tests' inputs drawn from `seed`: a one-token sequence, a long one and a
/// middling one, packed back to back; `qkv` and a readout of the output.
fn attention_inputs(seed: u64) -> (SeqLayout, AttentionSpec, Vec<f32>, Vec<f32>) {
    attention_inputs_of(seed, &[1, 6, 3], HEADS)
}

/// Attention inputs drawn from `seed` for sequences of `lengths` and `(heads, head_dim)`: `qkv`
/// and a readout of the output.
fn attention_inputs_of(
    seed: u64,
    lengths: &[usize],
    (heads, hd): (usize, usize),
) -> (SeqLayout, AttentionSpec, Vec<f32>, Vec<f32>) {
    let layout = SeqLayout::from_lengths(lengths.iter().copied());
    let n = layout.num_tokens();
    let mut rng = Rng::new(seed);
    let qkv: Vec<f32> = rng
        .vec(n * 3 * heads * hd)
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    let readout = rng.vec(n * heads * hd);
    (
        layout,
        AttentionSpec::bidirectional(heads, hd),
        qkv,
        readout,
    )
}

#[test]
fn attention_backward_matches_finite_differences() {
    let (heads, hd) = HEADS;
    let (layout, spec, qkv, readout) = attention_inputs(4);
    let n = layout.num_tokens();
    let be = CpuBackend::new();
    let mut out = be.zeros(&[n, heads * hd]).unwrap();
    be.attention(
        &be.upload(&[n, 3 * heads * hd], &qkv).unwrap(),
        &layout,
        &spec,
        &mut out,
    )
    .unwrap();
    let qd = widen(&qkv);
    assert_close(
        "attention forward",
        &be.download(&out).unwrap(),
        &attention_f64(&qd, &layout, heads, hd, None),
    );
    let got = attention_backward(&qkv, &layout, &spec, &readout, None).unwrap();
    let want = finite_differences(&qd, &widen(&readout), |x| {
        attention_f64(x, &layout, heads, hd, None)
    });
    assert_close("attention d_qkv", &got, &want);
    // A token's gradient comes from its own sequence only: a readout on the last sequence alone
    // leaves the first two sequences' rows untouched.
    let mut last_only = vec![0.0f32; readout.len()];
    let last = layout.range(2);
    last_only[last.start * heads * hd..].copy_from_slice(&readout[last.start * heads * hd..]);
    let grad = attention_backward(&qkv, &layout, &spec, &last_only, None).unwrap();
    assert!(grad[..last.start * 3 * heads * hd]
        .iter()
        .all(|&v| v == 0.0));
    // Causal masks, windows and grouped heads have no backward pass yet: refused, not wrong.
    let causal = AttentionSpec {
        causal: true,
        ..spec
    };
    assert!(attention_backward(&qkv, &layout, &causal, &readout, None).is_err());
}

/// Attention with dropped probabilities: the CPU op against the f64 forward with the same mask,
/// and its backward pass against finite differences of that forward; some entries are dropped.
#[test]
fn attention_dropout_matches_finite_differences() {
    let (heads, hd) = HEADS;
    let (layout, spec, qkv, readout) = attention_inputs(5);
    let n = layout.num_tokens();
    let mask = DropoutMask::new(9, 0.4).unwrap();
    let be = CpuBackend::new();
    let mut out = be
        .upload(&[n, heads * hd], &vec![f32::NAN; n * heads * hd])
        .unwrap();
    let qkv_tensor = be.upload(&[n, 3 * heads * hd], &qkv).unwrap();
    be.attention_dropout(&qkv_tensor, &layout, &spec, &mask, &mut out)
        .unwrap();
    let qd = widen(&qkv);
    assert_close(
        "attention dropout forward",
        &be.download(&out).unwrap(),
        &attention_f64(&qd, &layout, heads, hd, Some(&mask)),
    );
    // (query token, head, key position) of every probability, the ones dropped counted.
    let dropped = (0..layout.num_sequences())
        .flat_map(|s| {
            let rows = layout.range(s);
            let len = rows.len() as u64;
            rows.flat_map(move |t| (0..heads).map(move |h| (t * heads + h) as u64))
                .flat_map(move |row| (0..len).map(move |col| (row, col)))
        })
        .filter(|&(row, col)| !mask.keeps(row, col))
        .count();
    assert!(dropped > 0, "the mask drops nothing at this size");
    let mut d_qkv = be.zeros(&[n, 3 * heads * hd]).unwrap();
    be.attention_dropout_backward(
        &qkv_tensor,
        &layout,
        &spec,
        &mask,
        &be.upload(&[n, heads * hd], &readout).unwrap(),
        &mut d_qkv,
    )
    .unwrap();
    let want = finite_differences(&qd, &widen(&readout), |x| {
        attention_f64(x, &layout, heads, hd, Some(&mask))
    });
    assert_close(
        "attention dropout d_qkv",
        &be.download(&d_qkv).unwrap(),
        &want,
    );
}

/// Attention's backward pass of each packed sequence in f64, by its closed form (the formulas
/// of `attention_backward`'s docs, `M` the `dropout` factors, all ones without): the reference
/// at lengths where finite differences would take too long.
fn attention_backward_f64(
    qkv: &[f64],
    layout: &SeqLayout,
    heads: usize,
    hd: usize,
    d_out: &[f64],
    dropout: Option<&DropoutMask>,
) -> Vec<f64> {
    let (width, out_width) = (3 * heads * hd, heads * hd);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut grad = vec![0.0; qkv.len()];
    for s in 0..layout.num_sequences() {
        let rows = layout.range(s);
        for h in 0..heads {
            let at = |kind: usize, t: usize| t * width + kind * out_width + h * hd;
            let dot = |a: usize, b: usize| (0..hd).map(|e| qkv[a + e] * qkv[b + e]).sum::<f64>();
            for i in rows.clone() {
                let factor = |j: usize| {
                    dropout.map_or(1.0, |m| {
                        f64::from(m.factor((i * heads + h) as u64, (j - rows.start) as u64))
                    })
                };
                let scores: Vec<f64> = rows
                    .clone()
                    .map(|j| scale * dot(at(0, i), at(1, j)))
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                let d_o = &d_out[i * out_width + h * hd..i * out_width + (h + 1) * hd];
                let dp: Vec<f64> = rows
                    .clone()
                    .map(|j| factor(j) * (0..hd).map(|e| d_o[e] * qkv[at(2, j) + e]).sum::<f64>())
                    .collect();
                let centre: f64 = exps.iter().zip(&dp).map(|(e, d)| e / total * d).sum();
                for (n, j) in rows.clone().enumerate() {
                    let p = exps[n] / total;
                    let ds = scale * p * (dp[n] - centre);
                    for e in 0..hd {
                        grad[at(0, i) + e] += ds * qkv[at(1, j) + e];
                        grad[at(1, j) + e] += ds * qkv[at(0, i) + e];
                        grad[at(2, j) + e] += factor(j) * p * d_o[e];
                    }
                }
            }
        }
    }
    grad
}

/// One sequence of hundreds of tokens (every thread on its heads; lengths and head size no
/// multiple of a vector), with and without dropout: the CPU ops against the f64 forward and the
/// closed-form backward, itself first checked against finite differences on the short inputs.
#[test]
fn attention_backward_of_one_long_sequence_matches_f64() {
    let mask = DropoutMask::new(3, 0.25).unwrap();
    let (heads, hd) = HEADS;
    let (short, _, qkv, readout) = attention_inputs(6);
    let qd = widen(&qkv);
    assert_close_f64(
        "closed-form reference",
        &attention_backward_f64(&qd, &short, heads, hd, &widen(&readout), Some(&mask)),
        &finite_differences(&qd, &widen(&readout), |x| {
            attention_f64(x, &short, heads, hd, Some(&mask))
        }),
    );
    let (heads, hd, len) = (3, 37, 301);
    let (layout, spec, qkv, readout) = attention_inputs_of(7, &[len], (heads, hd));
    let (qd, rd) = (widen(&qkv), widen(&readout));
    let be = CpuBackend::new();
    let qkv_tensor = be.upload(&[len, 3 * heads * hd], &qkv).unwrap();
    let readout_tensor = be.upload(&[len, heads * hd], &readout).unwrap();
    let mut out = be
        .upload(&[len, heads * hd], &vec![f32::NAN; len * heads * hd])
        .unwrap();
    be.attention_dropout(&qkv_tensor, &layout, &spec, &mask, &mut out)
        .unwrap();
    assert_close(
        "long dropout forward",
        &be.download(&out).unwrap(),
        &attention_f64(&qd, &layout, heads, hd, Some(&mask)),
    );
    for dropout in [None, Some(&mask)] {
        let mut d_qkv = be
            .upload(&[len, 3 * heads * hd], &vec![f32::NAN; qkv.len()])
            .unwrap();
        match dropout {
            Some(m) => be.attention_dropout_backward(
                &qkv_tensor,
                &layout,
                &spec,
                m,
                &readout_tensor,
                &mut d_qkv,
            ),
            None => be.attention_backward(&qkv_tensor, &layout, &spec, &readout_tensor, &mut d_qkv),
        }
        .unwrap();
        assert_close(
            &format!("long d_qkv, dropout {}", dropout.is_some()),
            &be.download(&d_qkv).unwrap(),
            &attention_backward_f64(&qd, &layout, heads, hd, &rd, dropout),
        );
    }
}

#[test]
fn scatter_rows_is_the_gradient_of_gather_rows() {
    let (rows, d) = (7, 4);
    let ids = [3u32, 0, 3, 6, 3, 1];
    let mut rng = Rng::new(5);
    let table = rng.vec(rows * d);
    let readout = rng.vec(ids.len() * d);
    let be = CpuBackend::new();
    let mut gathered = be.zeros(&[ids.len(), d]).unwrap();
    be.gather_rows(
        &be.upload(&[rows, d], &table).unwrap(),
        &ids,
        false,
        &mut gathered,
    )
    .unwrap();
    let gather = |t: &[f64]| -> Vec<f64> {
        ids.iter()
            .flat_map(|&i| t[i as usize * d..(i as usize + 1) * d].to_vec())
            .collect()
    };
    assert_close(
        "gather forward",
        &be.download(&gathered).unwrap(),
        &gather(&widen(&table)),
    );
    let want = finite_differences(&widen(&table), &widen(&readout), gather);
    assert_close(
        "scatter",
        &scatter_rows(&readout, &ids, rows, d).unwrap(),
        &want,
    );
    assert!(
        scatter_rows(&readout[..d], &[7], rows, d).is_err(),
        "an id past the table"
    );
}

#[test]
fn sequence_sums_sum_each_sequence() {
    let layout = SeqLayout::from_lengths([2, 0, 3]);
    let values: Vec<f32> = (0..10).map(|v| v as f32).collect();
    // Rows [0,1] [2,3] | none | [4,5] [6,7] [8,9]
    assert_eq!(
        sequence_sums(&values, None, &layout, 2),
        vec![2.0, 4.0, 0.0, 0.0, 18.0, 21.0]
    );
    // Weighted by the rows' own values: the sums of squares.
    assert_eq!(
        sequence_sums(&values, Some(&values), &layout, 2),
        vec![4.0, 10.0, 0.0, 0.0, 116.0, 155.0]
    );
}
