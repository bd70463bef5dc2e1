//! The sequence forms of the tangent-kernel contraction (`ntk_contract_seq`,
//! `ntk_sample_gradients`) on every backend, against kernels of explicitly materialised per-sample
//! gradients in f64: a Linear layer's `Σ_t δ_tᵀ[a_t, 1]` and an embedding table's `δ` rows
//! scattered by id, on seeded random factors of ragged packed samples (1 to 40 tokens, classes
//! side by side in the gradient rows). The token-level and materialised forms agree, over
//! column sub-ranges of rectangular blocks, accumulating into a non-zero output.

mod common;

use std::ops::Range;

use common::{backend_tests, rel_error_f64, wgpu_with, Rng};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::wgpu::WgpuOptions;
use mscope::backend::{Backend, GemmVariant, SeqFactors, SeqLayout, Tensor, TokenPairing};

backend_tests! {
    seq_linear_form_matches_materialised_gradients: Ntk,
    seq_embedding_form_matches_scattered_gradients: Ntk,
    sample_gradients_match_the_reference_and_the_token_form: Ntk,
    seq_ops_refuse_bad_shapes: Ntk,
}

/// Classes side by side in each gradient row, as the MLP factors hold them.
const CLASSES: usize = 3;
const D_OUT: usize = 7;
const P: usize = CLASSES * D_OUT;
const Q: usize = 19;

/// Ragged lengths in 1..=40 with a one-token sample among them.
fn lengths(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut lengths: Vec<usize> = (0..n).map(|_| 1 + rng.below(40) as usize).collect();
    lengths[n / 2] = 1;
    lengths
}

/// One side's factors on the host: gradients `[tokens, P]`, activations `[tokens, Q]`, ids.
struct Side {
    layout: SeqLayout,
    delta: Vec<f32>,
    acts: Vec<f32>,
    ids: Vec<u32>,
}

impl Side {
    fn new(rng: &mut Rng, n: usize, vocab: u64) -> Side {
        let layout = SeqLayout::from_lengths(lengths(rng, n));
        let t = layout.num_tokens();
        Side {
            delta: rng.vec(t * P),
            acts: rng.vec(t * Q),
            ids: (0..t).map(|_| rng.below(vocab) as u32).collect(),
            layout,
        }
    }

    fn n(&self) -> usize {
        self.layout.num_sequences()
    }

    fn tokens(&self) -> usize {
        self.layout.num_tokens()
    }

    /// Sample `i`'s gradient of a Linear layer `[W | b]` in f64, row-major `[P, Q + 1]`, with
    /// the bias input `bias`: formed token by token, the definition the ops avoid forming.
    fn linear_gradient(&self, i: usize, bias: f64) -> Vec<f64> {
        let mut g = vec![0.0f64; P * (Q + 1)];
        for t in self.layout.range(i) {
            for o in 0..P {
                let d = self.delta[t * P + o] as f64;
                for k in 0..Q {
                    g[o * (Q + 1) + k] += d * self.acts[t * Q + k] as f64;
                }
                g[o * (Q + 1) + Q] += d * bias;
            }
        }
        g
    }

    /// Sample `i`'s gradient of an embedding table of `vocab` rows in f64: its δ rows
    /// scattered by id, `[vocab, P]`.
    fn embedding_gradient(&self, i: usize, vocab: usize) -> Vec<f64> {
        let mut g = vec![0.0f64; vocab * P];
        for t in self.layout.range(i) {
            let id = self.ids[t] as usize;
            for o in 0..P {
                g[id * P + o] += self.delta[t * P + o] as f64;
            }
        }
        g
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `start + [⟨g_i, g_j⟩]` over the columns `cols` from per-sample gradients.
fn kernel_reference(
    rows: &[Vec<f64>],
    cols: &[Vec<f64>],
    samples: &Range<usize>,
    start: &[f32],
) -> Vec<f64> {
    (0..rows.len())
        .flat_map(|i| samples.clone().map(move |j| (i, j)))
        .zip(start)
        .map(|((i, j), s)| *s as f64 + dot(&rows[i], &cols[j]))
        .collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn upload(be: &dyn Backend, v: &[f32], width: usize) -> Tensor {
    be.upload(&[v.len() / width, width], v).unwrap()
}

/// Rectangular blocks (rows ≠ columns), the column ranges each block is contracted over.
fn blocks() -> Vec<(usize, usize, Vec<Range<usize>>)> {
    vec![
        (7, 11, vec![0..11, 3..9, 10..11, 4..4]),
        (12, 5, vec![0..5, 1..4]),
    ]
}

fn seq_linear_form_matches_materialised_gradients(be: &dyn Backend) {
    let mut rng = Rng::new(170);
    for (n_r, n_c, ranges) in blocks() {
        let (r, c) = (Side::new(&mut rng, n_r, 1), Side::new(&mut rng, n_c, 1));
        let (dr, dc) = (upload(be, &r.delta, P), upload(be, &c.delta, P));
        let (ar, ac) = (upload(be, &r.acts, Q), upload(be, &c.acts, Q));
        for offset in [1.0f32, 0.0, 0.5] {
            // The bias input √offset makes ⟨G_i, G_j⟩ carry offset·⟨Σδ, Σδ⟩.
            let bias = (offset as f64).sqrt();
            let g_r: Vec<_> = (0..n_r).map(|i| r.linear_gradient(i, bias)).collect();
            let g_c: Vec<_> = (0..n_c).map(|j| c.linear_gradient(j, bias)).collect();
            for samples in &ranges {
                let start = rng.vec(n_r * samples.len());
                let mut out = be.upload(&[n_r, samples.len()], &start).unwrap();
                be.ntk_contract_seq(
                    SeqFactors {
                        delta: &dr,
                        layout: &r.layout,
                    },
                    SeqFactors {
                        delta: &dc,
                        layout: &c.layout,
                    },
                    TokenPairing::Linear {
                        rows: &ar,
                        cols: &ac,
                        offset,
                    },
                    samples.clone(),
                    &mut out,
                )
                .unwrap();
                let want = kernel_reference(&g_r, &g_c, samples, &start);
                let err = rel_error_f64(&widen(&be.download(&out).unwrap()), &want);
                assert!(
                    err < 1e-5,
                    "{} ntk_contract_seq linear {n_r}×{n_c} tokens {}×{} offset {offset} \
                     columns {samples:?}: {err:e}",
                    be.name(),
                    r.tokens(),
                    c.tokens()
                );
            }
        }
    }
}

fn seq_embedding_form_matches_scattered_gradients(be: &dyn Backend) {
    let mut rng = Rng::new(171);
    // A small vocabulary makes matches common; one id per position is the position table.
    for vocab in [13usize, 40] {
        for (n_r, n_c, ranges) in blocks() {
            let (mut r, mut c) = (
                Side::new(&mut rng, n_r, vocab as u64),
                Side::new(&mut rng, n_c, vocab as u64),
            );
            if vocab == 40 {
                for side in [&mut r, &mut c] {
                    side.ids = side.layout.positions().map(|p| p as u32).collect();
                }
            }
            let (dr, dc) = (upload(be, &r.delta, P), upload(be, &c.delta, P));
            let g_r: Vec<_> = (0..n_r).map(|i| r.embedding_gradient(i, vocab)).collect();
            let g_c: Vec<_> = (0..n_c).map(|j| c.embedding_gradient(j, vocab)).collect();
            for samples in &ranges {
                let start = rng.vec(n_r * samples.len());
                let mut out = be.upload(&[n_r, samples.len()], &start).unwrap();
                be.ntk_contract_seq(
                    SeqFactors {
                        delta: &dr,
                        layout: &r.layout,
                    },
                    SeqFactors {
                        delta: &dc,
                        layout: &c.layout,
                    },
                    TokenPairing::Embedding {
                        rows: &r.ids,
                        cols: &c.ids,
                    },
                    samples.clone(),
                    &mut out,
                )
                .unwrap();
                let want = kernel_reference(&g_r, &g_c, samples, &start);
                let err = rel_error_f64(&widen(&be.download(&out).unwrap()), &want);
                assert!(
                    err < 1e-5,
                    "{} ntk_contract_seq embedding (vocabulary {vocab}) {n_r}×{n_c} columns \
                     {samples:?}: {err:e}",
                    be.name()
                );
            }
        }
    }
}

/// The materialised form: each side's per-sample gradients against the f64 definition
/// (overwriting a NaN-poisoned output), and their contraction against the token-level form.
fn sample_gradients_match_the_reference_and_the_token_form(be: &dyn Backend) {
    let mut rng = Rng::new(172);
    let (n_r, n_c) = (6, 9);
    let (r, c) = (Side::new(&mut rng, n_r, 1), Side::new(&mut rng, n_c, 1));
    let (dr, dc) = (upload(be, &r.delta, P), upload(be, &c.delta, P));
    let (ar, ac) = (upload(be, &r.acts, Q), upload(be, &c.acts, Q));
    let width = P * (Q + 1);
    for offset in [1.0f32, 0.0, 2.25] {
        let mut gradients = Vec::new();
        for (side, delta, acts) in [(&r, &dr, &ar), (&c, &dc, &ac)] {
            let n = side.n();
            let mut g = be.upload(&[n, width], &vec![f32::NAN; n * width]).unwrap();
            let factors = SeqFactors {
                delta,
                layout: &side.layout,
            };
            be.ntk_sample_gradients(factors, acts, offset, &mut g)
                .unwrap();
            let want: Vec<f64> = (0..n)
                .flat_map(|i| side.linear_gradient(i, (offset as f64).sqrt()))
                .collect();
            let err = rel_error_f64(&widen(&be.download(&g).unwrap()), &want);
            assert!(
                err < 1e-5,
                "{} ntk_sample_gradients of {n} samples, offset {offset}: {err:e}",
                be.name()
            );
            gradients.push(g);
        }
        let samples = 2..8;
        let m = samples.len();
        let start = rng.vec(n_r * m);
        let mut materialised = be.upload(&[n_r, m], &start).unwrap();
        be.ntk_contract(
            &gradients[0],
            &gradients[1],
            None,
            0.0,
            samples.clone(),
            &mut materialised,
        )
        .unwrap();
        let mut tokens = be.upload(&[n_r, m], &start).unwrap();
        be.ntk_contract_seq(
            SeqFactors {
                delta: &dr,
                layout: &r.layout,
            },
            SeqFactors {
                delta: &dc,
                layout: &c.layout,
            },
            TokenPairing::Linear {
                rows: &ar,
                cols: &ac,
                offset,
            },
            samples,
            &mut tokens,
        )
        .unwrap();
        let err = rel_error_f64(
            &widen(&be.download(&materialised).unwrap()),
            &widen(&be.download(&tokens).unwrap()),
        );
        assert!(
            err < 1e-5,
            "{} materialised and token-level forms, offset {offset}: {err:e}",
            be.name()
        );
    }
}

/// wgpu with a storage-binding cap of 8 KiB: factors held in parts of a few dozen token rows
/// and a 45×45-token scratch tile, so chunks of the token Gram cut through samples, with both
/// contraction variants. (`ntk_sample_gradients` reads its factors from one binding each.)
#[test]
fn wgpu_seq_contraction_runs_on_split_operands() {
    for variant in [GemmVariant::Tiled, GemmVariant::Direct] {
        let options = WgpuOptions {
            max_binding_bytes: Some(8 << 10),
            gemm: Some(variant),
            ..WgpuOptions::from_env()
        };
        let Some(be) = wgpu_with(&options) else {
            return;
        };
        seq_linear_form_matches_materialised_gradients(&be);
        seq_embedding_form_matches_scattered_gradients(&be);
    }
}

/// Longer than the CPU's Gram chunk (`GRAM_CHUNK` entries of row × column tokens): the row
/// samples are contracted in several chunks.
#[test]
fn cpu_seq_contraction_spans_gram_chunks() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(173);
    let (p, q) = (2, 3);
    let (r_lengths, c_lengths): (Vec<usize>, Vec<usize>) = (
        (0..150).map(|_| 20 + rng.below(21) as usize).collect(),
        (0..140).map(|_| 20 + rng.below(21) as usize).collect(),
    );
    let (lr, lc) = (
        SeqLayout::from_lengths(r_lengths),
        SeqLayout::from_lengths(c_lengths),
    );
    let (t_r, t_c) = (lr.num_tokens(), lc.num_tokens());
    assert!(t_r * t_c > 2 << 22, "{t_r}×{t_c} tokens fit in two chunks");
    let (dr, dc, ar, ac) = (
        rng.vec(t_r * p),
        rng.vec(t_c * p),
        rng.vec(t_r * q),
        rng.vec(t_c * q),
    );
    let (n_r, n_c) = (lr.num_sequences(), lc.num_sequences());
    let mut out = be.zeros(&[n_r, n_c]).unwrap();
    let (tdr, tdc) = (upload(&be, &dr, p), upload(&be, &dc, p));
    let (tar, tac) = (upload(&be, &ar, q), upload(&be, &ac, q));
    be.ntk_contract_seq(
        SeqFactors {
            delta: &tdr,
            layout: &lr,
        },
        SeqFactors {
            delta: &tdc,
            layout: &lc,
        },
        TokenPairing::Linear {
            rows: &tar,
            cols: &tac,
            offset: 1.0,
        },
        0..n_c,
        &mut out,
    )
    .unwrap();
    // Per-sample sums Σ_t δ_t ⊗ [a_t, 1], contracted: the materialised form in f64.
    let gradient = |l: &SeqLayout, d: &[f32], a: &[f32], i: usize| -> Vec<f64> {
        let mut g = vec![0.0f64; p * (q + 1)];
        for t in l.range(i) {
            for o in 0..p {
                for k in 0..=q {
                    let x = if k < q { a[t * q + k] as f64 } else { 1.0 };
                    g[o * (q + 1) + k] += d[t * p + o] as f64 * x;
                }
            }
        }
        g
    };
    let g_r: Vec<_> = (0..n_r).map(|i| gradient(&lr, &dr, &ar, i)).collect();
    let g_c: Vec<_> = (0..n_c).map(|j| gradient(&lc, &dc, &ac, j)).collect();
    let want = kernel_reference(&g_r, &g_c, &(0..n_c), &vec![0.0; n_r * n_c]);
    let err = rel_error_f64(&widen(&be.download(&out).unwrap()), &want);
    assert!(err < 1e-5, "chunked contraction: {err:e}");
}

/// A call given the right output and one of the wrong shape.
type BadCall<'a> = Box<dyn Fn(&mut Tensor, &mut Tensor) -> mscope::Result<()> + 'a>;

fn seq_ops_refuse_bad_shapes(be: &dyn Backend) {
    let mut rng = Rng::new(174);
    let side = Side::new(&mut rng, 4, 5);
    let t = side.tokens();
    let (d, a) = (upload(be, &side.delta, P), upload(be, &side.acts, Q));
    let short = SeqLayout::from_lengths([1, 2]);
    let f = SeqFactors {
        delta: &d,
        layout: &side.layout,
    };
    let linear = TokenPairing::Linear {
        rows: &a,
        cols: &a,
        offset: 1.0,
    };
    let mut out = be.zeros(&[4, 4]).unwrap();
    let mut wrong_out = be.zeros(&[4, 3]).unwrap();
    let few_ids = vec![0u32; t - 1];
    let cases: Vec<(&str, BadCall)> = vec![
        (
            "layout",
            Box::new(|o, _| {
                let bad = SeqFactors {
                    delta: &d,
                    layout: &short,
                };
                be.ntk_contract_seq(bad, f, linear, 0..4, o)
            }),
        ),
        (
            "outside",
            Box::new(|o, _| be.ntk_contract_seq(f, f, linear, 2..5, o)),
        ),
        (
            "output shape",
            Box::new(|_, w| be.ntk_contract_seq(f, f, linear, 0..4, w)),
        ),
        (
            "token ids",
            Box::new(|o, _| {
                let ids = TokenPairing::Embedding {
                    rows: &side.ids,
                    cols: &few_ids,
                };
                be.ntk_contract_seq(f, f, ids, 0..4, o)
            }),
        ),
        (
            "activations",
            Box::new(|o, _| {
                let swapped = TokenPairing::Linear {
                    rows: &d,
                    cols: &a,
                    offset: 1.0,
                };
                be.ntk_contract_seq(f, f, swapped, 0..4, o)
            }),
        ),
        (
            "offset",
            Box::new(|o, _| be.ntk_sample_gradients(f, &a, -1.0, o)),
        ),
        (
            "output shape",
            Box::new(|o, _| be.ntk_sample_gradients(f, &a, 1.0, o)),
        ),
    ];
    for (needle, case) in cases {
        let err = case(&mut out, &mut wrong_out).unwrap_err().to_string();
        assert!(err.contains(needle), "{}: {err}", be.name());
    }
}
