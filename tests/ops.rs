//! Parity of every op in the set against straightforward f64 references, one test per op and
//! backend (`cpu::`, `wgpu::`, `cuda::`). The cases are the op cases the kernel bench times
//! (`mscope::bench::cases`), here at sizes that are not multiples of any tile, each run over an
//! output poisoned with NaN so an op that skips a row cannot pass.

mod common;

use std::sync::Arc;

use common::{
    backend_tests, check_case, current_test, poisoned, reference_tensor, rel_error, repo_path,
    report_skip,
};
use half::{bf16, f16};
use mscope::backend::cpu::{bf16_unit_available, bf16_unit_name, CpuBackend};
use mscope::backend::{
    Activation, AttentionSpec, AttentionVariant, Backend, GemmVariant, Pooling, RopeFrequencies,
    RopeScaling, RopeSpec, SeqLayout,
};
use mscope::bench::cases::{CaseOp, Fill, Inputs, Linear, LinearGated, OpCase, WeightsIn};
use mscope::models;

/// transformers' decoder references (tools/make_decoder_fixtures.py), which hold its RoPE
/// inverse frequencies.
const DECODER_REFERENCE: &str = "tests/fixtures/decoder_reference.safetensors";

backend_tests! {
    linear_with_epilogues,
    linear_with_f16_weights,
    linear_with_bf16_weights,
    linear_rejects_mismatched_shapes,
    linear_gated_matches_f64_and_the_two_ops,
    linear_gated_rejects_bad_shapes,
    gated_activation_of_every_activation,
    gated_activation_rejects_bad_shapes,
    gather_rows_copies_and_accumulates,
    gather_rows_from_f16_tables,
    layer_norm_rows,
    rms_norm_rows,
    l2_normalize_rows,
    rope_rotates_queries_and_keys_per_sequence,
    rms_norm_and_rope_reject_bad_shapes,
    attention_padding_causal_window_and_grouped_heads,
    attention_over_long_sequences,
    pooling_modes_and_normalize,
    activation_backward_of_every_activation: Backward,
    layer_norm_backward_rows: Backward,
    attention_backward_over_packed_sequences: Backward,
    scatter_rows_adds_by_id: Backward,
    sequence_sums_add_each_sequence: Backward,
    backward_ops_reject_bad_shapes: Backward,
}

/// The last spans several panels of the CPU's packed GEMM (8 × 32 tiles on AVX-512), none of
/// them whole; its depth blocks are at most 768 deep, so `cpu_packed_gemm_matches_faer` adds a
/// deeper case.
const LINEAR_SIZES: [(usize, usize, usize); 4] =
    [(1, 1, 1), (37, 53, 29), (130, 70, 97), (23, 600, 300)];

/// (bias, residual)
const EPILOGUES: [(bool, bool); 4] = [(false, false), (true, false), (true, true), (false, true)];

/// `linear` on every size, activation and epilogue, its weights f32 or rounded to f16 or bf16.
fn linear_cases(weights: WeightsIn, seed: u64) -> Vec<OpCase> {
    let mut cases = Vec::new();
    for (n, k, m) in LINEAR_SIZES {
        for act in Activation::ALL {
            for (bias, residual) in EPILOGUES {
                let op = Linear {
                    n,
                    k,
                    m,
                    act,
                    bias,
                    residual,
                    weights,
                };
                let name = format!("linear/{n}x{k}x{m} {act:?} bias={bias} residual={residual}");
                cases.push(OpCase::new(name, seed, CaseOp::Linear(op)));
            }
        }
    }
    cases
}

fn linear_with_epilogues(be: &Arc<dyn Backend>) {
    for case in linear_cases(WeightsIn::F32, 1) {
        check_case(be, &case);
    }
}

/// The CPU's packed GEMM (variant 8) on f32 weights: within the f32 tolerance of the f64
/// reference and of faer's result (variant 7) on every case, and on one three of the packed
/// GEMM's depth blocks deep (its tiles add over the blocks before the epilogue).
#[test]
fn cpu_packed_gemm_matches_faer() {
    let faer: Arc<dyn Backend> = Arc::new(CpuBackend::with_gemm(GemmVariant::Faer));
    let packed: Arc<dyn Backend> = Arc::new(CpuBackend::with_gemm(GemmVariant::Packed));
    let deep = Linear {
        n: 21,
        k: 2100,
        m: 67,
        act: Activation::Gelu,
        bias: true,
        residual: true,
        weights: WeightsIn::F32,
    };
    let deep = OpCase::new("linear/21x2100x67 deep", 32, CaseOp::Linear(deep));
    for case in linear_cases(WeightsIn::F32, 31).into_iter().chain([deep]) {
        let (_, want) = check_case(&faer, &case);
        let (_, got) = check_case(&packed, &case);
        let err = rel_error(&got, &want);
        assert!(err < 1e-5, "{}: packed is {err:e} from faer", case.name);
    }
}

/// The bf16 GEMMs (variants 11 on AMX tiles and 14 on AVX512_BF16: bf16 operands, f32 sums),
/// each where the CPU has its unit, on sizes that fill no tile, depth step or block (`k` up to
/// four of its 256-deep blocks), every epilogue (bias, activations, residual, gated SwiGLU and
/// GeGLU columns), weights f32, f16 and bf16, each output NaN-poisoned first: within the bf16
/// tolerance (1e-2) of the f64 reference on the f32 operands (outputs of 17 values or more), and
/// within f32's (1e-5) of it on operands rounded to bf16 beforehand — the only rounding the units
/// add — so a misplaced tile or depth pair cannot hide under the bf16 tolerance.
#[test]
fn cpu_bf16_gemms_match_the_reference() {
    for variant in [GemmVariant::AmxBf16, GemmVariant::DotBf16] {
        if bf16_unit_available(variant) {
            bf16_gemm_matches_the_reference(variant);
        } else {
            let why = format!(
                "variant {variant}: this CPU lacks {}",
                bf16_unit_name(variant)
            );
            report_skip(&current_test(), "cpu", &why);
        }
    }
}

fn bf16_gemm_matches_the_reference(variant: GemmVariant) {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::with_gemm(variant));
    let to_bf16 =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
    let check = |case: &OpCase, inputs: &Inputs, tol: f64, operands: &str| {
        let mut instance = case.instance(&be, inputs, Fill::Nan).unwrap();
        instance.run().unwrap();
        let got = instance.output().unwrap();
        let want: Vec<f32> = case.reference(inputs).iter().map(|&v| v as f32).collect();
        let err = rel_error(&got, &want);
        assert!(
            err < tol,
            "{variant} {} ({}), {operands} operands: relative error {err:e}",
            case.name,
            case.shape()
        );
    };
    let weights = [WeightsIn::F32, WeightsIn::F16, WeightsIn::Bf16];
    let linear = [
        (Activation::Identity, false, false),
        (Activation::Gelu, true, false),
        (Activation::Silu, true, true),
        (Activation::GeluTanh, false, true),
    ];
    let gated = [(Activation::Silu, true), (Activation::Gelu, false)];
    let sizes = [1, 17, 45]
        .into_iter()
        .flat_map(|n| [1, 31, 384, 1000].map(|k| (n, k)))
        .flat_map(|(n, k)| [1, 17, 100].map(|m| (n, k, m)))
        .chain([(130, 700, 300)]);
    for (s, (n, k, m)) in sizes.enumerate() {
        let mut cases = Vec::new();
        for (i, (act, bias, residual)) in linear.into_iter().enumerate() {
            let weights = weights[(s + i) % 3];
            let op = Linear {
                n,
                k,
                m,
                act,
                bias,
                residual,
                weights,
            };
            let name = format!("linear {act:?} bias={bias} residual={residual} {weights:?}");
            cases.push(OpCase::new(name, s as u64, CaseOp::Linear(op)));
        }
        for (i, (act, bias)) in gated.into_iter().enumerate() {
            let weights = weights[(s + i + 1) % 3];
            let op = LinearGated {
                n,
                k,
                m,
                act,
                bias,
                weights,
            };
            let name = format!("linear_gated {act:?} bias={bias} {weights:?}");
            cases.push(OpCase::new(name, s as u64, CaseOp::LinearGated(op)));
        }
        for case in &cases {
            let mut inputs = case.inputs();
            // A lone dot product can cancel far below its terms, where no rounding of the
            // operands keeps a relative error; over 17 or more outputs the chance that they all
            // do is nil, and fewer are covered by the rounded operands' check below.
            if n * m >= 17 {
                check(case, &inputs, 1e-2, "f32");
            }
            for operand in &mut inputs.tensors[..2] {
                *operand = to_bf16(operand);
            }
            check(case, &inputs, 1e-5, "bf16-rounded");
        }
    }
}

/// Each CPU attention kernel (faer blocks, packed tiles, query panels) on every attention case,
/// against the f64 reference — the default runs only the one chosen for each mask — and a CUDA
/// variant refused by name.
#[test]
fn every_cpu_attention_variant_matches_the_reference() {
    for variant in AttentionVariant::CPU {
        let be: Arc<dyn Backend> = Arc::new(CpuBackend::new().with_attention(Some(variant)));
        attention_padding_causal_window_and_grouped_heads(&be);
        attention_over_long_sequences(&be);
    }
    let be = CpuBackend::new().with_attention(Some(AttentionVariant::Flash));
    let spec = AttentionSpec::bidirectional(2, 4);
    let layout = SeqLayout::from_lengths([3]);
    let qkv = be.zeros(&[3, spec.qkv_width()]).unwrap();
    let mut out = be.zeros(&[3, 8]).unwrap();
    let err = be.attention(&qkv, &layout, &spec, &mut out).unwrap_err();
    assert!(err.to_string().contains("CUDA kernel"), "{err}");
}

/// The packed GEMM keeps f32 weights packed with their tensor: a second call reads that copy and
/// gives the same values, and writing the tensor (here as another op's output) drops the copy, so
/// the next call multiplies by the new weights (checked against faer, which keeps no copy).
#[test]
fn cpu_packed_weights_follow_their_tensor() {
    let faer = CpuBackend::with_gemm(GemmVariant::Faer);
    let packed = CpuBackend::with_gemm(GemmVariant::Packed);
    let (n, k, m) = (13, 70, 45);
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let x = packed.upload(&[n, k], &values(n * k, 1)).unwrap();
    let mut w = packed.upload(&[m, k], &values(m * k, 2)).unwrap();
    let run = |be: &CpuBackend, w: &mscope::backend::Tensor| {
        let mut out = be.zeros(&[n, m]).unwrap();
        be.linear(&x, w, None, Activation::Gelu, None, &mut out)
            .unwrap();
        be.download(&out).unwrap()
    };
    let first = run(&packed, &w);
    assert_eq!(run(&packed, &w), first, "second call, from the packed copy");
    assert!(rel_error(&first, &run(&faer, &w)) < 1e-5);

    // w ← y·zᵀ, written in place by linear itself.
    let y = packed.upload(&[m, 3], &values(m * 3, 3)).unwrap();
    let z = packed.upload(&[k, 3], &values(k * 3, 4)).unwrap();
    packed
        .linear(&y, &z, None, Activation::Identity, None, &mut w)
        .unwrap();
    let after = run(&packed, &w);
    assert!(rel_error(&after, &first) > 0.1, "the new weights differ");
    let err = rel_error(&after, &run(&faer, &w));
    assert!(
        err < 1e-5,
        "after the weights were written: {err:e} from faer"
    );
}

/// bf16 weights (kept bf16 and widened panel by panel on the CPU, f16 on wgpu with SHADER_F16,
/// bf16 widened as they are loaded on CUDA): the reference uses the same rounded weights, exact in f32 and in f16 but for
/// values under 2⁻¹⁷ (a rounding far below the tolerance), so the f32 tolerance holds.
fn linear_with_bf16_weights(be: &Arc<dyn Backend>) {
    for case in linear_cases(WeightsIn::Bf16, 41) {
        check_case(be, &case);
    }
}

/// f16 weights: the reference uses the same rounded weights, so only f32 accumulation separates
/// it from the backend and the f32 tolerance holds (f16 → f32 widening is exact). Against the
/// unrounded f32 weights the result must stay within the f16 paths' relative error of 1e-2.
fn linear_with_f16_weights(be: &Arc<dyn Backend>) {
    const F16_TOL: f64 = 1e-2;
    let mut worst_vs_f32: f64 = 0.0;
    for case in linear_cases(WeightsIn::F16, 21) {
        let CaseOp::Linear(op) = case.op else {
            unreachable!("linear cases")
        };
        let (inputs, got) = check_case(be, &case);
        let rounded = &inputs.tensors[1];
        let halves: Vec<f16> = rounded.iter().map(|&v| f16::from_f32(v)).collect();
        let wt = be.upload_f16(&[op.m, op.k], &halves).unwrap();
        assert_eq!(
            &be.download(&wt).unwrap(),
            rounded,
            "{}: f16 weights ({:?} on device) round trip",
            be.name(),
            wt.dtype()
        );
        let f32_case = OpCase {
            op: CaseOp::Linear(Linear {
                weights: WeightsIn::F32,
                ..op
            }),
            ..case.clone()
        };
        let f32_weights: Vec<f32> = f32_case
            .reference(&f32_case.inputs())
            .iter()
            .map(|&v| v as f32)
            .collect();
        let err = rel_error(&got, &f32_weights);
        assert!(
            err < F16_TOL,
            "{} {} f16 weights: {err:e} from the f32-weight result",
            be.name(),
            case.name
        );
        worst_vs_f32 = worst_vs_f32.max(err);
    }
    eprintln!(
        "{}: f16 weights are at most {worst_vs_f32:e} from the f32-weight result",
        be.name()
    );
}

fn linear_rejects_mismatched_shapes(be: &dyn Backend) {
    let x = be.zeros(&[3, 4]).unwrap();
    let w = be.zeros(&[5, 6]).unwrap();
    let mut out = be.zeros(&[3, 5]).unwrap();
    let err = be
        .linear(&x, &w, None, Activation::Identity, None, &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("4 features"), "{err}");
}

/// `linear_gated` (SwiGLU and GeGLU) with and without bias, its weights f32 or rounded to f16 or
/// bf16, on sizes that fill no tile: the CPU's packed GEMM pairs 16 gate and 16 up rows a panel
/// (8 and 8 on AVX2), so 29 and 300 columns leave a panel part full, and 600 is a depth block
/// that is no multiple of any. [`cpu_fused_linear_gated_matches_faer`] adds deeper ones.
fn linear_gated_cases(seed: u64) -> Vec<OpCase> {
    let mut cases = Vec::new();
    for (n, k, m) in [(1, 1, 1), (37, 53, 29), (23, 600, 300)] {
        for act in [Activation::Silu, Activation::Gelu] {
            for bias in [false, true] {
                for weights in [WeightsIn::F32, WeightsIn::F16, WeightsIn::Bf16] {
                    let op = LinearGated {
                        n,
                        k,
                        m,
                        act,
                        bias,
                        weights,
                    };
                    let name = format!("linear_gated/{n}x{k}x{m} {act:?} bias={bias} {weights:?}");
                    cases.push(OpCase::new(name, seed, CaseOp::LinearGated(op)));
                }
            }
        }
    }
    cases
}

/// `linear` into `[n, 2m]` then `gated_activation`: what `linear_gated` replaces, on `be`, from
/// the case's inputs (the weights uploaded in the case's element type).
fn linear_then_gated_activation(
    be: &dyn Backend,
    op: &LinearGated,
    inputs: &[Vec<f32>],
) -> Vec<f32> {
    let (n, k, m) = (op.n, op.k, op.m);
    let x = be.upload(&[n, k], &inputs[0]).unwrap();
    let shape = [2 * m, k];
    let w = match op.weights {
        WeightsIn::F32 => be.upload(&shape, &inputs[1]),
        WeightsIn::F16 => {
            let halves: Vec<f16> = inputs[1].iter().map(|&v| f16::from_f32(v)).collect();
            be.upload_f16(&shape, &halves)
        }
        WeightsIn::Bf16 => {
            let halves: Vec<bf16> = inputs[1].iter().map(|&v| bf16::from_f32(v)).collect();
            be.upload_bf16(&shape, &halves)
        }
    }
    .unwrap();
    let bias = inputs.get(2).map(|b| be.upload(&[2 * m], b).unwrap());
    let mut gate_up = poisoned(be, &[n, 2 * m]);
    be.linear(
        &x,
        &w,
        bias.as_ref(),
        Activation::Identity,
        None,
        &mut gate_up,
    )
    .unwrap();
    let mut out = poisoned(be, &[n, m]);
    be.gated_activation(&gate_up, op.act, &mut out).unwrap();
    be.download(&out).unwrap()
}

/// `linear_gated` against its f64 reference (over a NaN-poisoned output, within the f32
/// tolerance: the reference reads the same rounded weights) and against `linear` then
/// `gated_activation` on the same backend.
fn linear_gated_matches_f64_and_the_two_ops(be: &Arc<dyn Backend>) {
    for case in linear_gated_cases(51) {
        let CaseOp::LinearGated(op) = case.op else {
            unreachable!("linear_gated cases")
        };
        let (inputs, got) = check_case(be, &case);
        let two_ops = linear_then_gated_activation(be.as_ref(), &op, &inputs.tensors);
        let err = rel_error(&got, &two_ops);
        assert!(
            err < 1e-5,
            "{} {}: {err:e} from linear then gated_activation",
            be.name(),
            case.name
        );
    }
}

/// The CPU's `linear_gated` on f32 weights fused into our packed GEMM (variant 8) against faer's
/// `linear` then `gated_activation` (variant 7; half-precision weights run the fused GEMM on
/// both, and `linear_gated_matches_f64_and_the_two_ops` checks them), on the shared cases and
/// on products two and three depth blocks deep (768 a block), whose gated tiles add up in the
/// task's own buffer before their epilogue.
#[test]
fn cpu_fused_linear_gated_matches_faer() {
    let faer: Arc<dyn Backend> = Arc::new(CpuBackend::with_gemm(GemmVariant::Faer));
    let packed: Arc<dyn Backend> = Arc::new(CpuBackend::with_gemm(GemmVariant::Packed));
    let deep = [(21, 1000, 67), (9, 2100, 45)].map(|(n, k, m)| {
        let op = LinearGated {
            n,
            k,
            m,
            act: Activation::Silu,
            bias: true,
            weights: WeightsIn::F32,
        };
        OpCase::new(
            format!("linear_gated/{n}x{k}x{m} deep"),
            52,
            CaseOp::LinearGated(op),
        )
    });
    let f32_weights = linear_gated_cases(53)
        .into_iter()
        .filter(|case| matches!(&case.op, CaseOp::LinearGated(op) if op.weights == WeightsIn::F32));
    for case in f32_weights.chain(deep) {
        let (_, want) = check_case(&faer, &case);
        let (_, got) = check_case(&packed, &case);
        let err = rel_error(&got, &want);
        assert!(
            err < 1e-5,
            "{}: fused is {err:e} from faer's two ops",
            case.name
        );
    }
}

fn linear_gated_rejects_bad_shapes(be: &dyn Backend) {
    let x = be.zeros(&[3, 4]).unwrap();
    let mut out = be.zeros(&[3, 5]).unwrap();
    let mut gate_up = None;
    let mut run = |w: &[usize], bias: Option<usize>, out: &mut mscope::backend::Tensor| {
        let w = be.zeros(w).unwrap();
        let bias = bias.map(|len| be.zeros(&[len]).unwrap());
        be.linear_gated(&x, &w, bias.as_ref(), Activation::Silu, &mut gate_up, out)
            .unwrap_err()
            .to_string()
    };
    let err = run(&[10, 6], None, &mut out);
    assert!(err.contains("4 features"), "{err}");
    let err = run(&[9, 4], None, &mut out);
    assert!(err.contains("odd"), "{err}");
    let err = run(&[12, 4], None, &mut out);
    assert!(err.contains("expected [3, 6]"), "{err}");
    let err = run(&[10, 4], Some(5), &mut out);
    assert!(err.contains("expected [10]"), "{err}");
    assert!(gate_up.is_none(), "no product allocated for refused shapes");
}

/// `act(gate) ⊙ up` for every activation, on widths that are not multiples of a workgroup.
fn gated_activation_of_every_activation(be: &Arc<dyn Backend>) {
    for act in Activation::ALL {
        for (n, m) in [(1, 1), (13, 37), (70, 300)] {
            let op = CaseOp::GatedActivation { n, m, act };
            let name = format!("gated_activation/{act:?}/{n}x{m}");
            check_case(be, &OpCase::new(name, 9, op));
        }
    }
}

fn gated_activation_rejects_bad_shapes(be: &dyn Backend) {
    let mut out = be.zeros(&[3, 4]).unwrap();
    let odd = be.zeros(&[3, 7]).unwrap();
    let err = be
        .gated_activation(&odd, Activation::Silu, &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("odd"), "{err}");
    let wide = be.zeros(&[3, 10]).unwrap();
    let err = be
        .gated_activation(&wide, Activation::Silu, &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("expected [3, 5]"), "{err}");
}

/// Rows of a `41×19` table, copied and added to a seeded output, from an f32 or f16 table.
fn gather_cases(f16_table: bool, seed: u64) -> [OpCase; 2] {
    [false, true].map(|accumulate| {
        let name = format!("gather_rows/41x19 accumulate={accumulate} f16={f16_table}");
        let op = CaseOp::Gather {
            rows: 41,
            d: 19,
            ids: 23,
            accumulate,
            f16_table,
        };
        OpCase::new(name, seed, op)
    })
}

fn gather_rows_copies_and_accumulates(be: &Arc<dyn Backend>) {
    for case in gather_cases(false, 2) {
        check_case(be, &case);
    }
    let (rows, d) = (41, 19);
    let t = be.zeros(&[rows, d]).unwrap();
    let err = be
        .gather_rows(
            &t,
            &[rows as u32],
            false,
            &mut poisoned(be.as_ref(), &[1, d]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// An f16 table (kept f16 where the backend's gather reads it) gives the rows of its f32
/// widening exactly, copied or added.
fn gather_rows_from_f16_tables(be: &Arc<dyn Backend>) {
    for case in gather_cases(true, 22) {
        check_case(be, &case);
    }
}

fn layer_norm_rows(be: &Arc<dyn Backend>) {
    let op = CaseOp::LayerNorm {
        n: 29,
        d: 67,
        eps: 1e-5,
    };
    check_case(be, &OpCase::new("layer_norm/29x67", 3, op));
}

fn rms_norm_rows(be: &Arc<dyn Backend>) {
    // 67 fits one workgroup / block of 256; 517 has every invocation stride over the row.
    for (n, d) in [(29, 67), (7, 517), (3, 1)] {
        let op = CaseOp::RmsNorm { n, d, eps: 1e-6 };
        check_case(be, &OpCase::new(format!("rms_norm/{n}x{d}"), 6, op));
    }
}

fn l2_normalize_rows(be: &Arc<dyn Backend>) {
    for (n, d) in [(29, 67), (7, 517), (3, 1)] {
        let op = CaseOp::L2Normalize { n, d };
        check_case(be, &OpCase::new(format!("l2_normalize/{n}x{d}"), 8, op));
    }
}

/// θ without scaling.
fn unscaled(theta: f64) -> RopeFrequencies {
    RopeFrequencies {
        theta,
        scaling: RopeScaling::None,
    }
}

/// Llama 3.1's scaling at a context short enough that tiny heads have a pair in each of its
/// three bands (kept, blended, divided).
fn llama3(original_max_position_embeddings: usize) -> RopeFrequencies {
    RopeFrequencies {
        theta: 1e4,
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings,
        },
    }
}

fn rope_rotates_queries_and_keys_per_sequence(be: &Arc<dyn Backend>) {
    let spec = |heads, kv_heads, head_dim| RopeSpec {
        heads,
        kv_heads,
        head_dim,
    };
    let cases = [
        (
            "grouped-query 6/2 × 10",
            spec(6, 2, 10),
            unscaled(1e4),
            vec![1, 17, 5, 0, 33, 2],
        ),
        (
            "multi-head 3/3 × 2",
            spec(3, 3, 2),
            unscaled(1e6),
            vec![4, 9],
        ),
        // Positions into the thousands: every token must find its own row of the table.
        (
            "long sequence 2/1 × 16",
            spec(2, 1, 16),
            unscaled(1e4),
            vec![3, 2500],
        ),
        (
            "Mistral-7B 32/8 × 128",
            spec(32, 8, 128),
            unscaled(1e6),
            vec![45, 300],
        ),
        ("llama3 4/2 × 16", spec(4, 2, 16), llama3(32), vec![40, 7]),
    ];
    for (name, spec, frequencies, lengths) in cases {
        let op = CaseOp::Rope {
            lengths,
            spec,
            frequencies,
        };
        let (inputs, got) = check_case(be, &OpCase::new(format!("rope/{name}"), 7, op));
        let (width, rotated) = (spec.qkv_width(), spec.rotated_width());
        for (row, (got, given)) in got
            .chunks(width)
            .zip(inputs.tensors[0].chunks(width))
            .enumerate()
        {
            assert_eq!(
                got[rotated..],
                given[rotated..],
                "{} rope {name}: value heads of row {row} changed",
                be.name()
            );
        }
    }
}

/// The inverse frequencies against transformers' `inv_freq` (tools/make_decoder_fixtures.py):
/// Llama 3.1-8B's own RoPE (head_dim 128, θ 5e5, llama3 scaling of 8 over 8 192 positions) and
/// the tiny Llama fixture's. transformers evaluates the formulas in f32, rounding at each step;
/// mscope evaluates them in f64 and rounds once, so they agree to a few f32 ulps.
#[test]
fn rope_frequencies_match_transformers() {
    let llama31 = RopeFrequencies {
        theta: 5e5,
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        },
    };
    let tiny =
        models::decoder::DecoderConfig::read(&repo_path("tests/fixtures/tiny-llama3")).unwrap();
    for (name, frequencies, head_dim) in [
        ("llama-3.1-8b", llama31, 128),
        ("tiny-llama3", tiny.rope, tiny.head_dim),
    ] {
        let (_, want) = reference_tensor(DECODER_REFERENCE, &format!("{name}/inv_freq"));
        let got = frequencies.inv_freq(head_dim);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(f64::from(g), w, "{name} pair {i}: transformers' inv_freq");
        }
    }
}

#[test]
fn rope_frequencies_are_theta_powers_when_unscaled() {
    // inv_freq_i = θ^(−2i/d) (not θ^(−i/d)), to the f32 rounding of transformers' steps (the
    // exponent's rounding, scaled by ln θ, costs up to a few ulps).
    for (head_dim, theta) in [(128, 1e4f64), (128, 1e6), (10, 1e4)] {
        for (i, got) in unscaled(theta).inv_freq(head_dim).into_iter().enumerate() {
            let want = theta.powf(-2.0 * i as f64 / head_dim as f64);
            let ulps = (f64::from(got) - want).abs() / (want * f64::from(f32::EPSILON));
            assert!(
                ulps <= 4.0,
                "head_dim {head_dim} θ {theta} pair {i}: {ulps} ulps"
            );
        }
    }
}

#[test]
fn rope_table_is_exact_to_f32_rounding() {
    // An angle formed in f32 (as transformers does) is off by up to half its ulp, 2.4e-4 rad for
    // pair 1 at position 8000; the table rounds only the final cos and sin.
    let (positions, head_dim) = (8192, 128);
    for frequencies in [unscaled(1e6), llama3(2048)] {
        let table = frequencies.table(head_dim, positions);
        let inv_freq = frequencies.inv_freq(head_dim);
        assert_eq!(table.len(), positions * head_dim);
        for (pos, row) in table.chunks(head_dim).enumerate() {
            for (cs, &f) in row.chunks(2).zip(&inv_freq) {
                let (sin, cos) = (pos as f64 * f64::from(f)).sin_cos();
                // Half an ulp of values in [0.5, 1], and the same absolute bound below.
                let bound = 0.5f64.powi(24) + 1e-12;
                assert!(
                    (cs[0] as f64 - cos).abs() <= bound && (cs[1] as f64 - sin).abs() <= bound,
                    "position {pos} frequency {f}: ({}, {}) vs ({cos}, {sin})",
                    cs[0],
                    cs[1]
                );
            }
        }
    }
}

/// The llama3 bands the ops and decoder tests rely on: with θ 10⁴, 16-wide heads and 32
/// original positions, pair 0 (wavelength 6.3 < 32/4) keeps its frequency, pair 1 (19.9) is
/// blended between it and its eighth, pairs 2… (≥ 62.8 > 32/1) are divided by the factor 8.
#[test]
fn llama3_scaling_keeps_blends_and_divides() {
    let scaled = llama3(32).inv_freq(16);
    let plain = unscaled(1e4).inv_freq(16);
    assert_eq!(scaled[0], plain[0]);
    assert!(
        scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0,
        "pair 1: {}",
        scaled[1]
    );
    for (i, (&got, &f)) in scaled.iter().zip(&plain).enumerate().skip(2) {
        let want = f64::from(f) / 8.0;
        assert!(
            (f64::from(got) - want).abs() <= 1e-6 * want,
            "pair {i}: {got} vs {want}"
        );
    }
}

fn rms_norm_and_rope_reject_bad_shapes(be: &dyn Backend) {
    let x = be.zeros(&[3, 4]).unwrap();
    let mut out = be.zeros(&[3, 4]).unwrap();
    let err = be
        .rms_norm(&x, &be.zeros(&[5]).unwrap(), 1e-6, &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("gamma [5], expected [4]"), "{err}");
    let gamma = be.zeros(&[4]).unwrap();
    let err = be
        .rms_norm(&x, &gamma, 1e-6, &mut be.zeros(&[4, 3]).unwrap())
        .unwrap_err();
    assert!(
        err.to_string().contains("output [4, 3], expected [3, 4]"),
        "{err}"
    );
    let mut empty_rows = be.zeros(&[3, 0]).unwrap();
    let err = be
        .rms_norm(&empty_rows, &be.zeros(&[0]).unwrap(), 1e-6, &mut out)
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
    };
    let odd = RopeSpec {
        head_dim: 5,
        ..spec
    };
    let table = |positions, pairs| be.zeros(&[positions, pairs, 2]).unwrap();
    let cases = [
        (
            odd,
            [3, odd.qkv_width()],
            table(2, 2),
            "head_dim 5 must be even",
        ),
        (spec, [3, 15], table(2, 2), "qkv width 15, expected 16"),
        (spec, [4, 16], table(2, 2), "4 rows, layout has 3 tokens"),
        (
            RopeSpec {
                heads: 0,
                kv_heads: 0,
                ..spec
            },
            [3, 0],
            table(2, 2),
            "0 query heads cannot share 0 key/value heads",
        ),
        (
            RopeSpec {
                heads: 3,
                kv_heads: 2,
                ..spec
            },
            [3, 28],
            table(2, 2),
            "3 query heads cannot share 2",
        ),
        // Fewer positions than the longest sequence, pairs of another head size, no (cos, sin).
        (
            spec,
            [3, 16],
            table(1, 2),
            "table [1, 2, 2], expected [positions ≥ 2, 2, 2]",
        ),
        (spec, [3, 16], table(2, 3), "table [2, 3, 2], expected"),
        (
            spec,
            [3, 16],
            be.zeros(&[2, 4]).unwrap(),
            "table [2, 4], expected",
        ),
    ];
    for (spec, shape, table, needle) in cases {
        let mut qkv = be.zeros(&shape).unwrap();
        let err = be.rope(&mut qkv, &layout, &spec, &table).unwrap_err();
        assert!(err.to_string().contains(needle), "{}: {err}", be.name());
    }
}

fn attention_padding_causal_window_and_grouped_heads(be: &Arc<dyn Backend>) {
    let lengths = vec![1, 17, 5, 33, 2];
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
        let lengths = lengths.clone();
        let op = CaseOp::Attention { lengths, spec };
        check_case(be, &OpCase::new(format!("attention/{name}"), 4, op));
    }
}

/// Sequences of a thousand tokens and more at the head sizes of real decoders (SmolLM2's 64 with
/// 3 query heads per key/value head, Mistral's 128 with a window), next to a short one: every
/// query streams through dozens of key blocks.
fn attention_over_long_sequences(be: &Arc<dyn Backend>) {
    let cases = [
        (
            "causal head_dim 64, grouped 3/1",
            vec![3, 1030],
            AttentionSpec {
                kv_heads: 1,
                causal: true,
                ..AttentionSpec::bidirectional(3, 64)
            },
        ),
        (
            "causal window 300, head_dim 128",
            vec![1200, 5],
            AttentionSpec {
                causal: true,
                window: Some(300),
                ..AttentionSpec::bidirectional(1, 128)
            },
        ),
        (
            "bidirectional head_dim 80",
            vec![7, 700],
            AttentionSpec::bidirectional(1, 80),
        ),
        // MiniLM's heads, over lengths that fill no query block or key panel exactly.
        (
            "bidirectional head_dim 32, 12 heads",
            vec![130, 1, 65, 200],
            AttentionSpec::bidirectional(12, 32),
        ),
        (
            "bidirectional window 40, grouped 4/2, head_dim 33",
            vec![150, 7],
            AttentionSpec {
                kv_heads: 2,
                window: Some(40),
                ..AttentionSpec::bidirectional(4, 33)
            },
        ),
    ];
    for (name, lengths, spec) in cases {
        let op = CaseOp::Attention { lengths, spec };
        check_case(be, &OpCase::new(format!("attention/{name}"), 4, op));
    }
}

fn pooling_modes_and_normalize(be: &Arc<dyn Backend>) {
    for mode in Pooling::ALL {
        for normalize in [false, true] {
            let op = CaseOp::Pool {
                lengths: vec![3, 1, 8, 0, 5],
                d: 11,
                mode,
                normalize,
            };
            let name = format!("pool/{mode:?} normalize={normalize}");
            check_case(be, &OpCase::new(name, 5, op));
        }
    }
}

fn activation_backward_of_every_activation(be: &Arc<dyn Backend>) {
    for act in Activation::ALL {
        let op = CaseOp::ActivationBackward { n: 13, m: 37, act };
        check_case(
            be,
            &OpCase::new(format!("activation_backward/{act:?}"), 6, op),
        );
    }
}

/// dx and the normalised rows, the first row offset by 30 (statistics must be centred).
fn layer_norm_backward_rows(be: &Arc<dyn Backend>) {
    for (n, d, eps) in [(9, 75, 1e-12), (5, 3, 1e-5), (3, 300, 1e-5)] {
        let op = CaseOp::LayerNormBackward { n, d, eps };
        check_case(be, &OpCase::new("layer_norm_backward", 7, op));
    }
}

/// Packed sequences of uneven lengths with an empty one among them (a padded batch's layout):
/// each sequence's gradients come from its own rows only.
fn attention_backward_over_packed_sequences(be: &Arc<dyn Backend>) {
    // 70 keys and 70 channels: past one workgroup's chunk of keys and block of channels on wgpu.
    let lengths = vec![1, 17, 0, 5, 33, 2, 70];
    for (heads, head_dim) in [(3, 7), (2, 16), (1, 33), (1, 70)] {
        let spec = AttentionSpec::bidirectional(heads, head_dim);
        let op = CaseOp::AttentionBackward {
            lengths: lengths.clone(),
            spec,
        };
        let name = format!("attention_backward/{heads}×{head_dim}");
        check_case(be, &OpCase::new(name, 8, op));
    }
}

/// More ids than rows, so rows repeat; some rows named by no id; no ids at all.
fn scatter_rows_adds_by_id(be: &Arc<dyn Backend>) {
    for (rows, ids) in [(23, 50), (7, 3), (5, 0)] {
        for accumulate in [false, true] {
            let op = CaseOp::ScatterRows {
                rows,
                d: 19,
                ids,
                accumulate,
            };
            check_case(be, &OpCase::new("scatter_rows", 9, op));
        }
    }
}

/// Sequences of one token, of lengths not multiples of any tile, an empty one; with and without
/// weights.
fn sequence_sums_add_each_sequence(be: &Arc<dyn Backend>) {
    for lengths in [vec![1, 5, 17], vec![3, 0, 40, 2]] {
        for weighted in [false, true] {
            let op = CaseOp::SequenceSums {
                lengths: lengths.clone(),
                d: 37,
                weighted,
            };
            check_case(be, &OpCase::new("sequence_sums", 10, op));
        }
    }
}

fn backward_ops_reject_bad_shapes(be: &dyn Backend) {
    let t = |shape: &[usize]| poisoned(be, shape);
    let expect = |result: mscope::Result<()>, needle: &str| {
        let err = result.expect_err(needle);
        assert!(err.to_string().contains(needle), "{}: {err}", be.name());
    };
    expect(
        be.activation_backward(&t(&[3, 4]), &t(&[3, 5]), Activation::Gelu, &mut t(&[3, 4])),
        "activation_backward: gradient [3, 5] and output [3, 4], expected the pre-activation's \
         [3, 4]",
    );
    expect(
        be.layer_norm_backward(
            &t(&[2, 6]),
            &t(&[5]),
            1e-5,
            &t(&[2, 6]),
            &mut t(&[2, 6]),
            &mut t(&[2, 6]),
        ),
        "layer_norm_backward: gamma [5], expected [6]",
    );
    expect(
        be.layer_norm_backward(
            &t(&[2, 6]),
            &t(&[6]),
            1e-5,
            &t(&[2, 6]),
            &mut t(&[2, 6]),
            &mut t(&[3, 6]),
        ),
        "layer_norm_backward: normed rows [3, 6], expected the input's [2, 6]",
    );
    let layout = SeqLayout::from_lengths([2, 3]);
    let spec = AttentionSpec::bidirectional(2, 4);
    let causal = AttentionSpec {
        causal: true,
        ..spec
    };
    expect(
        be.attention_backward(
            &t(&[5, 24]),
            &layout,
            &causal,
            &t(&[5, 8]),
            &mut t(&[5, 24]),
        ),
        "attention_backward: only bidirectional attention",
    );
    expect(
        be.attention_backward(&t(&[5, 24]), &layout, &spec, &t(&[5, 7]), &mut t(&[5, 24])),
        "attention_backward: attention: gradient shape [5, 7], expected [5, 8]",
    );
    expect(
        be.attention_backward(&t(&[5, 24]), &layout, &spec, &t(&[5, 8]), &mut t(&[5, 23])),
        "attention_backward: d_qkv shape [5, 23], expected qkv's [5, 24]",
    );
    expect(
        be.scatter_rows(&t(&[2, 3]), &[0, 4], false, &mut t(&[4, 3])),
        "scatter_rows: index 4 out of range for a table of 4 rows",
    );
    expect(
        be.scatter_rows(&t(&[2, 3]), &[0], true, &mut t(&[4, 3])),
        "scatter_rows: gradient rows [2, 3], expected [1, 3] (one row per id)",
    );
    expect(
        be.sequence_sums(&t(&[4, 3]), None, &layout, &mut t(&[2, 3])),
        "sequence_sums: values [4, 3], expected one row per token of the layout's 5",
    );
    expect(
        be.sequence_sums(&t(&[5, 3]), Some(&t(&[5, 2])), &layout, &mut t(&[2, 3])),
        "sequence_sums: weights [5, 2], expected the values' [5, 3]",
    );
    expect(
        be.sequence_sums(&t(&[5, 3]), None, &layout, &mut t(&[5, 3])),
        "sequence_sums: output [5, 3], expected [2, 3] (one row per sequence)",
    );
}
