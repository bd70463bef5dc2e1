//! Parity of every op in the set against straightforward f64 references, written once and run on
//! every backend present. Sizes are not multiples of any tile; outputs are poisoned with NaN
//! before each run so an op that skips a row cannot pass.

mod common;

use common::{backends, l2_normalize_ref, layer_norm_ref, rel_error, rms_norm_ref, Rng};
use half::f16;
use mscope::backend::{Activation, AttentionSpec, Backend, Pooling, RopeSpec, SeqLayout, Tensor};

/// f32 paths must agree with the f64 reference well under 1e-5 (DESIGN › Numerics).
const F32_TOL: f64 = 1e-5;

fn poisoned(be: &dyn Backend, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    be.upload(shape, &vec![f32::NAN; n]).unwrap()
}

fn upload(be: &dyn Backend, shape: &[usize], data: &[f32]) -> Tensor {
    be.upload(shape, data).unwrap()
}

fn check(be: &dyn Backend, what: &str, got: &Tensor, want: &[f64]) {
    let got = be.download(got).unwrap();
    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    let err = rel_error(&got, &want);
    assert!(
        err < F32_TOL,
        "{} {what}: relative error {err:e}",
        be.name()
    );
}

fn act_f64(act: Activation, x: f64) -> f64 {
    let erf = |x: f64| libm::erf(x);
    match act {
        Activation::Identity => x,
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

const ACTIVATIONS: [Activation; 8] = [
    Activation::Identity,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::QuickGelu,
    Activation::Silu,
    Activation::Relu,
    Activation::Tanh,
    Activation::Sigmoid,
];

/// `act(x·wᵀ + bias) + residual` in f64 for `x: [n, k]`, `w: [m, k]`.
fn linear_reference(
    (n, k, m): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
) -> Vec<f64> {
    (0..n * m)
        .map(|idx| {
            let (i, j) = (idx / m, idx % m);
            let mut acc: f64 = (0..k)
                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                .sum();
            if let Some(b) = bias {
                acc += b[j] as f64;
            }
            let mut y = act_f64(act, acc);
            if let Some(r) = residual {
                y += r[idx] as f64;
            }
            y
        })
        .collect()
}

const EPILOGUES: [(bool, bool); 4] = [(false, false), (true, false), (true, true), (false, true)];

#[test]
fn linear_with_epilogues() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(1);
        for (n, k, m) in [(1, 1, 1), (37, 53, 29), (130, 70, 97)] {
            let (x, w, b, r) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
            for act in ACTIVATIONS {
                for (with_bias, with_residual) in EPILOGUES {
                    let want = linear_reference(
                        (n, k, m),
                        &x,
                        &w,
                        with_bias.then_some(&b[..]),
                        act,
                        with_residual.then_some(&r[..]),
                    );
                    let (xt, wt) = (upload(be, &[n, k], &x), upload(be, &[m, k], &w));
                    let bt = upload(be, &[m], &b);
                    let rt = upload(be, &[n, m], &r);
                    let mut out = poisoned(be, &[n, m]);
                    be.linear(
                        &xt,
                        &wt,
                        with_bias.then_some(&bt),
                        act,
                        with_residual.then_some(&rt),
                        &mut out,
                    )
                    .unwrap();
                    check(
                        be,
                        &format!(
                            "linear {n}x{k}x{m} {act:?} bias={with_bias} residual={with_residual}"
                        ),
                        &out,
                        &want,
                    );
                }
            }
        }
    }
}

/// f16 weights: the reference uses the same rounded weights, so only f32 accumulation separates
/// it from the backend and the f32 tolerance holds (f16 → f32 widening is exact). Against the
/// unrounded f32 weights the result must stay within the f16 paths' 1e-2 (DESIGN › Numerics).
#[test]
fn linear_with_f16_weights() {
    const F16_TOL: f64 = 1e-2;
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(21);
        let mut worst_vs_f32: f64 = 0.0;
        for (n, k, m) in [(1, 1, 1), (37, 53, 29), (130, 70, 97)] {
            let (x, w, b, r) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let w_rounded: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
            let (xt, wt) = (
                upload(be, &[n, k], &x),
                be.upload_f16(&[m, k], &w16).unwrap(),
            );
            assert_eq!(
                be.download(&wt).unwrap(),
                w_rounded,
                "{}: f16 weights round trip",
                be.name()
            );
            let (bt, rt) = (upload(be, &[m], &b), upload(be, &[n, m], &r));
            for act in ACTIVATIONS {
                for (with_bias, with_residual) in EPILOGUES {
                    let (bias, residual) =
                        (with_bias.then_some(&b[..]), with_residual.then_some(&r[..]));
                    let mut out = poisoned(be, &[n, m]);
                    be.linear(
                        &xt,
                        &wt,
                        with_bias.then_some(&bt),
                        act,
                        with_residual.then_some(&rt),
                        &mut out,
                    )
                    .unwrap();
                    let what = format!(
                        "linear f16 weights ({:?} on device) {n}x{k}x{m} {act:?} bias={with_bias} \
                         residual={with_residual}",
                        wt.dtype()
                    );
                    check(
                        be,
                        &what,
                        &out,
                        &linear_reference((n, k, m), &x, &w_rounded, bias, act, residual),
                    );
                    let got = be.download(&out).unwrap();
                    let f32_weights: Vec<f32> =
                        linear_reference((n, k, m), &x, &w, bias, act, residual)
                            .iter()
                            .map(|&v| v as f32)
                            .collect();
                    let err = rel_error(&got, &f32_weights);
                    assert!(
                        err < F16_TOL,
                        "{} {what}: {err:e} from the f32-weight result",
                        be.name()
                    );
                    worst_vs_f32 = worst_vs_f32.max(err);
                }
            }
        }
        eprintln!(
            "{}: f16 weights are at most {worst_vs_f32:e} from the f32-weight result",
            be.name()
        );
    }
}

#[test]
fn linear_rejects_mismatched_shapes() {
    for be in backends() {
        let be = be.as_ref();
        let x = be.zeros(&[3, 4]).unwrap();
        let w = be.zeros(&[5, 6]).unwrap();
        let mut out = be.zeros(&[3, 5]).unwrap();
        let err = be
            .linear(&x, &w, None, Activation::Identity, None, &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("4 features"), "{err}");
    }
}

#[test]
fn gather_rows_copies_and_accumulates() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(2);
        let (rows, d, n) = (41, 19, 23);
        let table = rng.vec(rows * d);
        let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
        let base = rng.vec(n * d);
        let t = upload(be, &[rows, d], &table);
        let mut out = poisoned(be, &[n, d]);
        be.gather_rows(&t, &ids, false, &mut out).unwrap();
        let copied: Vec<f64> = (0..n * d)
            .map(|i| table[ids[i / d] as usize * d + i % d] as f64)
            .collect();
        check(be, "gather", &out, &copied);
        let mut acc = upload(be, &[n, d], &base);
        be.gather_rows(&t, &ids, true, &mut acc).unwrap();
        let summed: Vec<f64> = copied
            .iter()
            .zip(&base)
            .map(|(c, b)| c + *b as f64)
            .collect();
        check(be, "gather accumulate", &acc, &summed);
        let err = be
            .gather_rows(&t, &[rows as u32], false, &mut poisoned(be, &[1, d]))
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

/// An f16 table (kept f16 where the backend's gather reads it) gives the rows of its f32
/// widening exactly, copied or added.
#[test]
fn gather_rows_from_f16_tables() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(22);
        let (rows, d, n) = (41, 19, 23);
        let table: Vec<f16> = rng
            .vec(rows * d)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let wide: Vec<f32> = table.iter().map(|v| v.to_f32()).collect();
        let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
        let base = rng.vec(n * d);
        let t = be.upload_f16(&[rows, d], &table).unwrap();
        let mut out = poisoned(be, &[n, d]);
        be.gather_rows(&t, &ids, false, &mut out).unwrap();
        let copied: Vec<f32> = (0..n * d)
            .map(|i| wide[ids[i / d] as usize * d + i % d])
            .collect();
        assert_eq!(
            be.download(&out).unwrap(),
            copied,
            "{} f16 gather",
            be.name()
        );
        let mut acc = upload(be, &[n, d], &base);
        be.gather_rows(&t, &ids, true, &mut acc).unwrap();
        let summed: Vec<f32> = copied.iter().zip(&base).map(|(c, b)| c + b).collect();
        assert_eq!(
            be.download(&acc).unwrap(),
            summed,
            "{} f16 gather accumulate",
            be.name()
        );
    }
}

#[test]
fn layer_norm_rows() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(3);
        let (n, d, eps) = (29, 67, 1e-5);
        // An offset row checks the statistics are centred before squaring.
        let x: Vec<f32> = rng
            .vec(n * d)
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i < d { 30.0 } else { 0.0 })
            .collect();
        let (g, b) = (rng.vec(d), rng.vec(d));
        let want = layer_norm_ref(&x, &g, &b, eps);
        let mut t = upload(be, &[n, d], &x);
        be.layer_norm(
            &mut t,
            &upload(be, &[d], &g),
            &upload(be, &[d], &b),
            eps as f32,
        )
        .unwrap();
        check(be, "layer_norm", &t, &want);
    }
}

#[test]
fn rms_norm_rows() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(6);
        let eps = 1e-6;
        // 67 fits one workgroup / block of 256; 517 has every invocation stride over the row.
        for (n, d) in [(29, 67), (7, 517), (3, 1)] {
            // Row 1 is large, row 2 so small that eps matters: RMSNorm's output ignores the
            // row's scale only where the mean square dwarfs eps.
            let x: Vec<f32> = rng
                .vec(n * d)
                .iter()
                .enumerate()
                .map(|(i, v)| match i / d {
                    1 => v * 300.0,
                    2 => v * 1e-3,
                    _ => *v,
                })
                .collect();
            let g = rng.vec(d);
            let mut t = upload(be, &[n, d], &x);
            be.rms_norm(&mut t, &upload(be, &[d], &g), eps as f32)
                .unwrap();
            check(
                be,
                &format!("rms_norm {n}x{d}"),
                &t,
                &rms_norm_ref(&x, &g, eps),
            );
        }
    }
}

/// Rotates the query and key pairs of each sequence in f64 with `rotate_half` pairs
/// `(i, i + head_dim/2)`; value heads are copied.
fn rope_reference(qkv: &[f32], lengths: &[usize], spec: &RopeSpec) -> Vec<f64> {
    let (hd, width) = (spec.head_dim, spec.qkv_width());
    let half = hd / 2;
    let mut out: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
    let mut row = 0;
    for &len in lengths {
        for pos in 0..len {
            for head in 0..spec.heads + spec.kv_heads {
                for i in 0..half {
                    let (sin, cos) = (pos as f64 * spec.inv_freq(i) as f64).sin_cos();
                    let at = row * width + head * hd + i;
                    let (a, b) = (qkv[at] as f64, qkv[at + half] as f64);
                    out[at] = a * cos - b * sin;
                    out[at + half] = b * cos + a * sin;
                }
            }
            row += 1;
        }
    }
    out
}

#[test]
fn rope_rotates_queries_and_keys_per_sequence() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(7);
        let spec = |heads, kv_heads, head_dim, theta| RopeSpec {
            heads,
            kv_heads,
            head_dim,
            theta,
        };
        let cases = [
            (
                "grouped-query 6/2 × 10",
                spec(6, 2, 10, 1e4),
                vec![1, 17, 5, 0, 33, 2],
            ),
            ("multi-head 3/3 × 2", spec(3, 3, 2, 1e6), vec![4, 9]),
            // Positions into the thousands: every token must find its own row of the table.
            ("long sequence 2/1 × 16", spec(2, 1, 16, 1e4), vec![3, 2500]),
            (
                "Mistral-7B 32/8 × 128",
                spec(32, 8, 128, 1e6),
                vec![45, 300],
            ),
        ];
        for (name, spec, lengths) in cases {
            let layout = SeqLayout::from_lengths(lengths.iter().copied());
            let (tokens, width) = (layout.num_tokens(), spec.qkv_width());
            let qkv = rng.vec(tokens * width);
            let mut t = upload(be, &[tokens, width], &qkv);
            be.rope(&mut t, &layout, &spec).unwrap();
            let got = be.download(&t).unwrap();
            let rotated = spec.rotated_width();
            for (row, (got, given)) in got.chunks(width).zip(qkv.chunks(width)).enumerate() {
                assert_eq!(
                    got[rotated..],
                    given[rotated..],
                    "{} rope {name}: value heads of row {row} changed",
                    be.name()
                );
            }
            check(
                be,
                &format!("rope {name}"),
                &t,
                &rope_reference(&qkv, &lengths, &spec),
            );
        }
    }
}

#[test]
fn rope_frequencies_are_transformers_inv_freq() {
    // inv_freq_i = θ^(−2i/d) to within f32 rounding (not θ^(−i/d)).
    for (head_dim, theta) in [(128, 1e4f64), (128, 1e6), (10, 1e4)] {
        let spec = RopeSpec {
            heads: 1,
            kv_heads: 1,
            head_dim,
            theta: theta as f32,
        };
        for i in 0..head_dim / 2 {
            let want = theta.powf(-2.0 * i as f64 / head_dim as f64);
            let got = spec.inv_freq(i) as f64;
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "head_dim {head_dim} θ {theta} pair {i}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn rope_table_is_exact_to_f32_rounding() {
    // An angle formed in f32 (as transformers does) is off by up to half its ulp, 2.4e-4 rad for
    // pair 1 at position 8000; the table rounds only the final cos and sin.
    let spec = RopeSpec {
        heads: 1,
        kv_heads: 1,
        head_dim: 128,
        theta: 1e6,
    };
    let positions = 8192;
    let table = spec.table(positions);
    assert_eq!(table.len(), positions * 128);
    for (pos, row) in table.chunks(128).enumerate() {
        for (i, cs) in row.chunks(2).enumerate() {
            let (sin, cos) = (pos as f64 * spec.inv_freq(i) as f64).sin_cos();
            // Half an ulp of values in [0.5, 1], and the same absolute bound below.
            let bound = 0.5f64.powi(24) + 1e-12;
            assert!(
                (cs[0] as f64 - cos).abs() <= bound && (cs[1] as f64 - sin).abs() <= bound,
                "position {pos} pair {i}: ({}, {}) vs ({cos}, {sin})",
                cs[0],
                cs[1]
            );
        }
    }
}

#[test]
fn rms_norm_and_rope_reject_bad_shapes() {
    for be in backends() {
        let be = be.as_ref();
        let mut x = be.zeros(&[3, 4]).unwrap();
        let err = be
            .rms_norm(&mut x, &be.zeros(&[5]).unwrap(), 1e-6)
            .unwrap_err();
        assert!(err.to_string().contains("gamma [5], expected [4]"), "{err}");
        let mut empty_rows = be.zeros(&[3, 0]).unwrap();
        let err = be
            .rms_norm(&mut empty_rows, &be.zeros(&[0]).unwrap(), 1e-6)
            .unwrap_err();
        assert!(err.to_string().contains("rows of width 0"), "{err}");
        let err = be.l2_normalize(&mut empty_rows).unwrap_err();
        assert!(
            err.to_string().contains("l2_normalize: rows of width 0"),
            "{err}"
        );

        let layout = SeqLayout::from_lengths([2, 1]);
        let spec = RopeSpec {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            theta: 1e4,
        };
        let odd = RopeSpec {
            head_dim: 5,
            ..spec
        };
        let cases = [
            (odd, [3, odd.qkv_width()], "head_dim 5 must be even"),
            (spec, [3, 15], "qkv width 15, expected 16"),
            (spec, [4, 16], "4 rows, layout has 3 tokens"),
            (
                RopeSpec { theta: 0.0, ..spec },
                [3, 16],
                "theta 0 must be positive",
            ),
            (
                RopeSpec {
                    heads: 0,
                    kv_heads: 0,
                    ..spec
                },
                [3, 0],
                "0 query heads cannot share 0 key/value heads",
            ),
            (
                RopeSpec {
                    heads: 3,
                    kv_heads: 2,
                    ..spec
                },
                [3, 28],
                "3 query heads cannot share 2",
            ),
        ];
        for (spec, shape, needle) in cases {
            let mut qkv = be.zeros(&shape).unwrap();
            let err = be.rope(&mut qkv, &layout, &spec).unwrap_err();
            assert!(err.to_string().contains(needle), "{}: {err}", be.name());
        }
    }
}

/// Dense-mask attention over each sequence separately: the textbook definition.
fn attention_reference(qkv: &[f32], lengths: &[usize], spec: &AttentionSpec) -> Vec<f64> {
    let (hd, heads, kvh) = (spec.head_dim, spec.heads, spec.kv_heads);
    let width = spec.qkv_width();
    let tokens: usize = lengths.iter().sum();
    let mut out = vec![0.0f64; tokens * heads * hd];
    let mut start = 0;
    for &len in lengths {
        for h in 0..heads {
            let kv = h / (heads / kvh);
            let q = |i: usize, c: usize| qkv[(start + i) * width + h * hd + c] as f64;
            let k = |j: usize, c: usize| qkv[(start + j) * width + (heads + kv) * hd + c] as f64;
            let v =
                |j: usize, c: usize| qkv[(start + j) * width + (heads + kvh + kv) * hd + c] as f64;
            for i in 0..len {
                let scores: Vec<Option<f64>> = (0..len)
                    .map(|j| {
                        spec.allows(i, j).then(|| {
                            (0..hd).map(|c| q(i, c) * k(j, c)).sum::<f64>() * spec.scale as f64
                        })
                    })
                    .collect();
                let max = scores
                    .iter()
                    .flatten()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores
                    .iter()
                    .map(|s| s.map_or(0.0, |s| (s - max).exp()))
                    .collect();
                let total: f64 = weights.iter().sum();
                for c in 0..hd {
                    let o: f64 = (0..len).map(|j| weights[j] * v(j, c)).sum();
                    out[(start + i) * heads * hd + h * hd + c] = o / total;
                }
            }
        }
        start += len;
    }
    out
}

#[test]
fn attention_padding_causal_window_and_grouped_heads() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(4);
        let lengths = [1, 17, 5, 33, 2];
        let cases = [
            ("bidirectional", AttentionSpec::bidirectional(3, 7)),
            (
                "causal",
                AttentionSpec {
                    causal: true,
                    ..AttentionSpec::bidirectional(2, 9)
                },
            ),
            (
                "causal window 4",
                AttentionSpec {
                    causal: true,
                    window: Some(4),
                    ..AttentionSpec::bidirectional(2, 5)
                },
            ),
            (
                "grouped-query 6/2",
                AttentionSpec {
                    kv_heads: 2,
                    causal: true,
                    ..AttentionSpec::bidirectional(6, 4)
                },
            ),
        ];
        for (name, spec) in cases {
            let tokens: usize = lengths.iter().sum();
            // Scaled so the softmax is far from uniform.
            let qkv: Vec<f32> = rng
                .vec(tokens * spec.qkv_width())
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let layout = SeqLayout::from_lengths(lengths);
            let mut out = poisoned(be, &[tokens, spec.heads * spec.head_dim]);
            be.attention(
                &upload(be, &[tokens, spec.qkv_width()], &qkv),
                &layout,
                &spec,
                &mut out,
            )
            .unwrap();
            check(
                be,
                &format!("attention {name}"),
                &out,
                &attention_reference(&qkv, &lengths, &spec),
            );
        }
    }
}

#[test]
fn pooling_modes_and_normalize() {
    for be in backends() {
        let be = be.as_ref();
        let mut rng = Rng::new(5);
        let (lengths, d) = ([3usize, 1, 8, 0, 5], 11);
        let tokens: usize = lengths.iter().sum();
        let h = rng.vec(tokens * d);
        let layout = SeqLayout::from_lengths(lengths);
        let hidden = upload(be, &[tokens, d], &h);
        for mode in [
            Pooling::Cls,
            Pooling::Mean,
            Pooling::Max,
            Pooling::Last,
            Pooling::MeanSqrtLen,
        ] {
            let mut want = Vec::new();
            let mut start = 0;
            for &len in &lengths {
                let h = &h;
                let col = |c: usize| (start..start + len).map(move |t| h[t * d + c] as f64);
                for c in 0..d {
                    want.push(match (len, mode) {
                        (0, _) => 0.0,
                        (_, Pooling::Cls) => h[start * d + c] as f64,
                        (_, Pooling::Last) => h[(start + len - 1) * d + c] as f64,
                        (_, Pooling::Max) => col(c).fold(f64::NEG_INFINITY, f64::max),
                        (_, Pooling::Mean) => col(c).sum::<f64>() / len as f64,
                        (_, Pooling::MeanSqrtLen) => col(c).sum::<f64>() / (len as f64).sqrt(),
                    });
                }
                start += len;
            }
            let mut out = poisoned(be, &[lengths.len(), d]);
            be.pool(&hidden, &layout, mode, &mut out).unwrap();
            check(be, &format!("pool {mode:?}"), &out, &want);

            let normalized = l2_normalize_ref(&want, d);
            be.l2_normalize(&mut out).unwrap();
            check(
                be,
                &format!("l2_normalize after {mode:?}"),
                &out,
                &normalized,
            );
        }
    }
}
