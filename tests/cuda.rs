//! The CUDA backend's own kernels: every numbered variant of GEMM (on f32, f16 and bf16 weights),
//! of attention and of the NTK contraction against the CPU backend, gathers from half-precision
//! tables, the generated JL entries against `JlSpec::entry`, the batched Jacobi
//! eigensolver's residuals at every size 2…64, `trim_search` (segmented radix sort, merged ECDF
//! counts) bit for bit against the CPU, and the clean failure where no CUDA is present.
//! The op-set parity tests of ops.rs, ntk.rs and pca.rs run on CUDA too (their `cuda::` tests).
//!
//! Without a CUDA device every test here but the failure checks reports itself skipped on stderr,
//! and fails where `MSCOPE_REQUIRE_CUDA=1` says the machine has one.

mod common;

use common::{
    assert_fails_cleanly, cuda_with, current_test, eigen_residuals, poisoned, rel_error,
    report_skip, Rng,
};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::cuda::{CudaBackend, CudaOptions};
use std::sync::Arc;

use half::{bf16, f16};
use mscope::backend::GemmVariant;
use mscope::backend::{
    self, Activation, AttentionSpec, AttentionVariant, Backend, BackendKind, JlDistribution,
    JlSpec, Matrix64, OpFamily, SeqLayout, Tensor, TrimReference, TrimSpec, W2Grid,
};
use mscope::tensor::{DType, HalfMatrix, SharedBytes};

/// The CUDA backend with `options`, or `None` after reporting the running test skipped.
fn cuda(options: CudaOptions) -> Option<CudaBackend> {
    cuda_with(&options)
}

#[test]
fn every_gemm_variant_matches_the_cpu() {
    let cpu = CpuBackend::new();
    for variant in CudaBackend::GEMM_VARIANTS {
        let Some(be) = cuda(CudaOptions {
            gemm: Some(variant),
            ..Default::default()
        }) else {
            return;
        };
        // bf16 operands carry 8 bits of mantissa: the f16/bf16 paths' tolerance.
        let tol = if variant.bf16_operands() { 1e-2 } else { 1e-5 };
        let mut rng = Rng::new(31);
        for (n, k, m) in [(1, 1, 1), (37, 53, 29), (130, 70, 97), (65, 257, 129)] {
            let (x, w, b, r) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
            for act in [Activation::Identity, Activation::Gelu, Activation::Silu] {
                let run = |be: &dyn Backend| {
                    let up = |shape: &[usize], v: &[f32]| be.upload(shape, v).unwrap();
                    let (xt, wt, bt, rt) = (
                        up(&[n, k], &x),
                        up(&[m, k], &w),
                        up(&[m], &b),
                        up(&[n, m], &r),
                    );
                    let mut out = poisoned(be, &[n, m]);
                    be.linear(&xt, &wt, Some(&bt), act, Some(&rt), &mut out)
                        .unwrap();
                    be.download(&out).unwrap()
                };
                let err = rel_error(&run(&be), &run(&cpu));
                assert!(
                    err < tol,
                    "gemm {} {n}x{k}x{m} {act:?}: relative error {err:e}",
                    variant.name()
                );
            }
        }
    }
}

/// Variant 10 (Hopper: wgmma on TMA-staged bf16 tiles, kernels/gemm_sm90.cu) against the CPU at
/// the bf16 tolerance, on f32 weights (through their bf16 copy) and bf16 weights as uploaded:
/// model shapes (MiniLM and BERT-base feed-forward up and down, SmolLM2's MLP, many more K
/// slices than pipeline stages) and shapes that are not multiples of its 128 × 128 × 64 tile in
/// any dimension, every epilogue input present or absent. K not a multiple of 8 (which TMA cannot
/// describe) runs variant 4 and must agree too.
#[test]
fn wgmma_gemm_matches_the_cpu_on_model_and_ragged_shapes() {
    let Some(be) = cuda(CudaOptions {
        gemm: Some(GemmVariant::WgmmaBf16),
        ..Default::default()
    }) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(41);
    let model = [(256, 384, 1536), (200, 3072, 768), (77, 576, 1536)];
    let ragged = [(1, 8, 1), (37, 200, 97), (130, 72, 129), (300, 520, 260)];
    let fallback = [(37, 53, 29)];
    for (n, k, m) in model.into_iter().chain(ragged).chain(fallback) {
        let (x, w, b, r) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
        for dtype in [DType::F32, DType::BF16] {
            for (act, fused) in [
                (Activation::Identity, false),
                (Activation::Gelu, true),
                (Activation::Silu, true),
            ] {
                let run = |be: &dyn Backend| {
                    let wt = match dtype {
                        DType::F32 => be.upload(&[m, k], &w).unwrap(),
                        _ => upload_rounded(be, dtype, &[m, k], &w),
                    };
                    let up = |shape: &[usize], v: &[f32]| be.upload(shape, v).unwrap();
                    let (xt, bt, rt) = (up(&[n, k], &x), up(&[m], &b), up(&[n, m], &r));
                    let (bias, residual) = if fused {
                        (Some(&bt), Some(&rt))
                    } else {
                        (None, None)
                    };
                    let mut out = poisoned(be, &[n, m]);
                    be.linear(&xt, &wt, bias, act, residual, &mut out).unwrap();
                    be.download(&out).unwrap()
                };
                let err = rel_error(&run(&be), &run(&cpu));
                assert!(
                    err < 1e-2,
                    "wgmma-bf16 {n}x{k}x{m} on {dtype:?} weights, {act:?}: relative error {err:e}"
                );
            }
        }
    }
}

/// `values` rounded to `dtype` and uploaded in it (kept 16-bit on CUDA).
fn upload_rounded(be: &dyn Backend, dtype: DType, shape: &[usize], values: &[f32]) -> Tensor {
    match dtype {
        DType::F16 => {
            let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            be.upload_f16(shape, &halves).unwrap()
        }
        _ => {
            let halves: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
            be.upload_bf16(shape, &halves).unwrap()
        }
    }
}

/// Every GEMM variant reads f16 and bf16 weights as they were uploaded (no f32 copy on the
/// device): against the CPU on the same rounded weights, variants 1 and 2 widen exactly and keep
/// the f32 tolerance; variant 4 rounds activations (and f16 weights) to bf16: the f16/bf16
/// paths' tolerance.
#[test]
fn every_gemm_variant_reads_half_weights() {
    let cpu = CpuBackend::new();
    for variant in CudaBackend::GEMM_VARIANTS {
        let Some(be) = cuda(CudaOptions {
            gemm: Some(variant),
            ..Default::default()
        }) else {
            return;
        };
        let tol = if variant.bf16_operands() { 1e-2 } else { 1e-5 };
        let mut rng = Rng::new(37);
        for dtype in [DType::F16, DType::BF16] {
            for (n, k, m) in [(1, 1, 1), (37, 53, 29), (130, 70, 97), (65, 257, 129)] {
                let (x, w, b, r) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
                let run = |be: &dyn Backend| {
                    let wt = upload_rounded(be, dtype, &[m, k], &w);
                    let up = |shape: &[usize], v: &[f32]| be.upload(shape, v).unwrap();
                    let (xt, bt, rt) = (up(&[n, k], &x), up(&[m], &b), up(&[n, m], &r));
                    let mut out = poisoned(be, &[n, m]);
                    be.linear(&xt, &wt, Some(&bt), Activation::Silu, Some(&rt), &mut out)
                        .unwrap();
                    (wt.dtype(), be.download(&out).unwrap())
                };
                let ((kept, got), (_, want)) = (run(&be), run(&cpu));
                assert_eq!(kept, dtype, "CUDA keeps {dtype:?} weights as uploaded");
                let err = rel_error(&got, &want);
                assert!(
                    err < tol,
                    "gemm {} on {dtype:?} weights {n}x{k}x{m}: relative error {err:e}",
                    variant.name()
                );
            }
        }
    }
}

/// Half-precision tensors come back widened (exactly); `upload_half` copies a matrix of several
/// parts, one of them at an odd address, in row order; ops other than `linear` and
/// `gather_rows` refuse such a tensor by name.
#[test]
fn half_tensors_round_trip_and_only_gemm_and_gather_read_them() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    let mut rng = Rng::new(38);
    let (rows, cols) = (11, 7);
    let values: Vec<bf16> = rng
        .vec(rows * cols)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let wide: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
    let t = be.upload_bf16(&[rows, cols], &values).unwrap();
    assert_eq!(t.dtype(), DType::BF16);
    assert_eq!(be.download(&t).unwrap(), wide, "bf16 round trip");

    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let split = 4 * cols * 2; // four rows in the first part
    let mut odd = vec![0u8];
    odd.extend_from_slice(&bytes[split..]);
    let odd_len = odd.len();
    let parts = vec![
        SharedBytes::owned(bytes[..split].to_vec()),
        SharedBytes::new(Arc::new(odd), 1..odd_len).unwrap(),
    ];
    let matrix = HalfMatrix::new(DType::BF16, cols, parts).unwrap();
    let stacked = be.upload_half(&matrix).unwrap();
    assert_eq!(
        (stacked.shape(), stacked.dtype()),
        (&[rows, cols][..], DType::BF16)
    );
    assert_eq!(
        be.download(&stacked).unwrap(),
        wide,
        "upload_half of two parts"
    );

    let mut t = upload_rounded(&be, DType::F16, &[rows, cols], &wide);
    let err = be.l2_normalize(&mut t).unwrap_err().to_string();
    assert!(
        err.contains("F16") && err.contains("half precision"),
        "{err}"
    );
    let x = be.zeros(&[rows, cols]).unwrap();
    let mut out = be.zeros(&[rows, cols]).unwrap();
    let err = be.rms_norm(&t, &x, 1e-6, &mut out).unwrap_err().to_string();
    assert!(err.contains("half precision"), "{err}");
}

/// Rows of f16 and bf16 tables, copied and added, are the CPU's exactly (widening is exact).
#[test]
fn gather_reads_half_tables() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(39);
    let (rows, d) = (41, 300);
    let table = rng.vec(rows * d);
    let ids: Vec<u32> = (0..23).map(|_| rng.below(rows as u64) as u32).collect();
    let start = rng.vec(ids.len() * d);
    for dtype in [DType::F16, DType::BF16] {
        for accumulate in [false, true] {
            let run = |be: &dyn Backend| {
                let t = upload_rounded(be, dtype, &[rows, d], &table);
                let mut out = be.upload(&[ids.len(), d], &start).unwrap();
                be.gather_rows(&t, &ids, accumulate, &mut out).unwrap();
                be.download(&out).unwrap()
            };
            assert_eq!(
                run(&be),
                run(&cpu),
                "gather from {dtype:?} accumulate={accumulate}"
            );
        }
    }
}

#[test]
fn mma_weights_follow_writes_to_the_tensor() {
    let Some(be) = cuda(CudaOptions {
        gemm: Some(GemmVariant::MmaBf16),
        ..Default::default()
    }) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(32);
    let (n, k, m) = (19, 40, 23);
    let (x, w) = (rng.vec(n * k), rng.vec(m * k));
    let run = |be: &dyn Backend| {
        let xt = be.upload(&[n, k], &x).unwrap();
        let mut wt = be.upload(&[m, k], &w).unwrap();
        let mut out = poisoned(be, &[n, m]);
        be.linear(&xt, &wt, None, Activation::Identity, None, &mut out)
            .unwrap();
        // Writing the weights must drop their bf16 copy.
        be.l2_normalize(&mut wt).unwrap();
        be.linear(&xt, &wt, None, Activation::Identity, None, &mut out)
            .unwrap();
        be.download(&out).unwrap()
    };
    let err = rel_error(&run(&be), &run(&cpu));
    assert!(err < 1e-2, "mma after a weight update: {err:e}");
}

#[test]
fn every_ntk_variant_matches_the_cpu() {
    let cpu = CpuBackend::new();
    for variant in CudaBackend::NTK_VARIANTS {
        let Some(be) = cuda(CudaOptions {
            ntk: Some(variant),
            ..Default::default()
        }) else {
            return;
        };
        let mut rng = Rng::new(33);
        for (nr, nc, p, q) in [(1, 1, 1, 1), (13, 29, 37, 19), (70, 131, 100, 65)] {
            let (dr, dc, ar, ac) = (
                rng.vec(nr * p),
                rng.vec(nc * p),
                rng.vec(nr * q),
                rng.vec(nc * q),
            );
            for (with_acts, cols) in [(true, 0..nc), (false, 0..nc), (true, nc / 3..nc)] {
                let start = rng.vec(nr * cols.len());
                let run = |be: &dyn Backend| {
                    let up = |v: &[f32], r: usize, c: usize| be.upload(&[r, c], v).unwrap();
                    let (tar, tac) = (up(&ar, nr, q), up(&ac, nc, q));
                    let mut out = up(&start, nr, cols.len());
                    be.ntk_contract(
                        &up(&dr, nr, p),
                        &up(&dc, nc, p),
                        with_acts.then_some((&tar, &tac)),
                        0.5,
                        cols.clone(),
                        &mut out,
                    )
                    .unwrap();
                    be.download(&out).unwrap()
                };
                let err = rel_error(&run(&be), &run(&cpu));
                assert!(
                    err < 1e-5,
                    "ntk {variant:?} {nr}x{nc} p={p} q={q} acts={with_acts} cols={cols:?}: {err:e}"
                );
            }
        }
    }
}

#[test]
fn generated_jl_entries_are_jlspec_entries() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    // x = I picks out every entry: out[i, j] = P(j, i), one product with 1 and the rest zeros.
    let (d, k) = (70, 67);
    let mut identity = vec![0.0f32; d * d];
    (0..d).for_each(|i| identity[i * d + i] = 1.0);
    let x = be.upload(&[d, d], &identity).unwrap();
    for distribution in [JlDistribution::Rademacher, JlDistribution::Gaussian] {
        let spec = JlSpec {
            seed: 0xDEAD_BEEF_1234,
            dim: k,
            distribution,
            column_offset: (1 << 40) + 7, // beyond u32: the offset is 64-bit arithmetic
        };
        let mut out = poisoned(&be, &[d, k]);
        be.jl_project(&x, &spec, false, &mut out).unwrap();
        let got = be.download(&out).unwrap();
        for i in 0..d {
            for j in 0..k {
                let (g, want) = (got[i * k + j], spec.entry(j, i));
                match distribution {
                    JlDistribution::Rademacher => assert_eq!(g, want, "entry ({j}, {i})"),
                    // The device's logf/cosf may differ from libm's by an ulp or two.
                    JlDistribution::Gaussian => assert!(
                        (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "entry ({j}, {i}): {g} vs {want}"
                    ),
                }
            }
        }
        // accumulate adds to what is there.
        be.jl_project(&x, &spec, true, &mut out).unwrap();
        let twice = be.download(&out).unwrap();
        let err = rel_error(&twice, &got.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        assert!(err == 0.0, "{distribution:?} accumulate: {err:e}");
    }
}

fn random_symmetric(rng: &mut Rng, d: usize) -> Matrix64 {
    let g: Vec<f64> = rng.vec(d * d).into_iter().map(f64::from).collect();
    let mut a = Matrix64::zeros(d, d);
    for i in 0..d {
        for j in 0..d {
            *a.at_mut(i, j) = g[i * d + j] + g[j * d + i];
        }
    }
    a
}

#[test]
fn jacobi_eigen_residuals_at_every_size_to_64() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    let mut rng = Rng::new(35);
    // Sizes 2…64 in one batch (one launch per size), plus repeated eigenvalues.
    let mut batch: Vec<Matrix64> = (2..=64).map(|d| random_symmetric(&mut rng, d)).collect();
    let mut repeated = Matrix64::zeros(6, 6);
    [3.0, 3.0, 3.0, -1.0, 0.0, 0.0]
        .iter()
        .enumerate()
        .for_each(|(i, v)| *repeated.at_mut(i, i) = *v);
    batch.push(repeated);
    let got = be.symmetric_eigen(&batch).unwrap();
    for (a, e) in batch.iter().zip(&got) {
        let d = a.rows;
        assert!(
            e.values.windows(2).all(|w| w[0] >= w[1]),
            "d={d}: not descending"
        );
        let (residual, orthogonality) = eigen_residuals(a, e);
        assert!(residual < 1e-12, "d={d}: ‖AV − VΛ‖/‖VΛ‖ = {residual:e}");
        assert!(
            orthogonality < 1e-12,
            "d={d}: ‖VᵀV − I‖ = {orthogonality:e}"
        );
    }
}

/// `spec` with the usual 1/√head_dim scale.
fn attention_spec(
    (heads, kv_heads): (usize, usize),
    head_dim: usize,
    causal: bool,
    window: Option<usize>,
) -> AttentionSpec {
    AttentionSpec {
        heads,
        kv_heads,
        head_dim,
        causal,
        window,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

/// `be`'s attention on `qkv` against the CPU's: their relative error, or where a window of 0
/// masks every key (zeros on both; rel_error of zeros would divide by zero) `be`'s largest
/// magnitude, plus 1 if it wrote a NaN.
fn attention_error(
    be: &dyn Backend,
    cpu: &CpuBackend,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    qkv: &[f32],
) -> f64 {
    let run = |be: &dyn Backend| {
        let t = be
            .upload(&[layout.num_tokens(), spec.qkv_width()], qkv)
            .unwrap();
        let mut out = poisoned(be, &[layout.num_tokens(), spec.heads * spec.head_dim]);
        be.attention(&t, layout, spec, &mut out).unwrap();
        be.download(&out).unwrap()
    };
    let (got, want) = (run(be), run(cpu));
    if spec.window == Some(0) {
        assert!(want.iter().all(|&v| v == 0.0));
        got.iter().map(|v| v.abs() as f64).fold(0.0, f64::max)
            + f64::from(u8::from(got.iter().any(|v| v.is_nan())))
    } else {
        rel_error(&got, &want)
    }
}

/// Every f32 attention variant on every head_dim it has a kernel for (and the default choice, 0
/// in the messages): grouped and plain heads, odd and empty sequences packed together, causal or
/// not, windows shorter than the sequences and a window of 0 that masks every key. The bf16
/// tensor-core variant has its own test at the bf16 tolerance.
#[test]
fn flash_and_naive_attention_match_the_cpu_with_windows() {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(36);
    let layout = SeqLayout::from_lengths([1, 70, 0, 131, 17]);
    let variants = AttentionVariant::CUDA
        .into_iter()
        .filter(|v| !v.bf16_operands())
        .map(Some);
    for variant in [None].into_iter().chain(variants) {
        let Some(be) = cuda(CudaOptions {
            attention: variant,
            ..Default::default()
        }) else {
            return;
        };
        let number = variant.map_or(0, AttentionVariant::number);
        for head_dim in [24, 32, 64, 128] {
            if variant.is_some_and(|v| !v.supports_head_dim(head_dim)) {
                continue;
            }
            for (heads, kv_heads) in [(4, 2), (3, 3), (8, 1)] {
                for (causal, window) in [
                    (false, None),
                    (true, None),
                    (true, Some(5)),
                    (false, Some(40)),
                    (false, Some(0)),
                ] {
                    let spec = attention_spec((heads, kv_heads), head_dim, causal, window);
                    let qkv = rng.vec(layout.num_tokens() * spec.qkv_width());
                    let err = attention_error(&be, &cpu, &layout, &spec, &qkv);
                    assert!(
                        err < 1e-5,
                        "attention variant {number} hd={head_dim} heads {heads}/{kv_heads} \
                         causal={causal} window={window:?}: {err:e}"
                    );
                }
            }
        }
    }
}

/// Variant 4 (tensor cores, kernels/attention_mma.cu) against the CPU at the bf16 tolerance, on
/// head_dim 64 and 128: ragged sequences packed together (shorter than one 16-query warp tile,
/// empty, across several 64-query and 64-key tiles, none a multiple of a tile), grouped heads
/// (4 query heads on 2 key/value heads, 8 on 1) and plain ones, bidirectional and causal, windows
/// shorter than the sequences (so whole key tiles are skipped on both sides), and a window of 0
/// that masks every key. Other head_dims run the default kernel, at the f32 tolerance, with no
/// error.
#[test]
fn tensor_core_attention_matches_the_cpu_at_bf16_tolerance() {
    let Some(be) = cuda(CudaOptions {
        attention: Some(AttentionVariant::MmaBf16),
        ..Default::default()
    }) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(44);
    let layout = SeqLayout::from_lengths([1, 70, 0, 131, 17, 300]);
    for head_dim in [64, 128, 32, 24] {
        // bf16 operands carry 8 bits of mantissa: the f16/bf16 paths' tolerance.
        let tensor_cores = AttentionVariant::MmaBf16.supports_head_dim(head_dim);
        let tol = if tensor_cores { 1e-2 } else { 1e-5 };
        for (heads, kv_heads) in [(4, 2), (8, 1), (3, 3)] {
            for (causal, window) in [
                (false, None),
                (true, None),
                (true, Some(5)),
                (true, Some(100)),
                (false, Some(40)),
                (false, Some(0)),
            ] {
                let spec = attention_spec((heads, kv_heads), head_dim, causal, window);
                // Scores spread over several units, so the softmax is not near uniform.
                let qkv: Vec<f32> = rng
                    .vec(layout.num_tokens() * spec.qkv_width())
                    .iter()
                    .map(|v| 2.0 * v)
                    .collect();
                let err = attention_error(&be, &cpu, &layout, &spec, &qkv);
                let what = format!(
                    "mma-bf16 attention hd={head_dim} heads {heads}/{kv_heads} causal={causal} \
                     window={window:?}"
                );
                assert!(err < tol, "{what}: {err:e}");
                // bf16 operands leave an error no f32 kernel has: the tensor cores ran.
                if tensor_cores && window != Some(0) {
                    assert!(err > 1e-5, "{what}: {err:e}, an f32 kernel's error");
                }
            }
        }
    }
}

/// A variant asked for a head_dim it has no kernel for says which it has.
#[test]
fn attention_variant_without_a_kernel_for_the_head_dim_is_refused() {
    let Some(be) = cuda(CudaOptions {
        attention: Some(AttentionVariant::FlashWarp),
        ..Default::default()
    }) else {
        return;
    };
    let spec = AttentionSpec {
        heads: 2,
        kv_heads: 1,
        head_dim: 32,
        causal: true,
        window: None,
        scale: 1.0,
    };
    let layout = SeqLayout::from_lengths([3]);
    let qkv = be.zeros(&[3, spec.qkv_width()]).unwrap();
    let mut out = be.zeros(&[3, 64]).unwrap();
    let err = be.attention(&qkv, &layout, &spec, &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("variant 3 (flash-warp) has CUDA kernels for head_dim [64, 128], not 32"),
        "{err}"
    );
}

#[test]
fn stats_family_runs_on_cuda() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    assert!(be.supports(OpFamily::Stats) && be.supports(OpFamily::Ntk));
    assert!(
        !be.supports(OpFamily::Training),
        "training runs on the CPU only"
    );
}

#[test]
fn device_timer_reports_no_device_time_for_host_work() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    let mut rng = Rng::new(11);
    let x = be.upload(&[40, 24], &rng.vec(40 * 24)).unwrap();
    let w = be.upload(&[16, 24], &rng.vec(16 * 24)).unwrap();
    let mut out = be.zeros(&[40, 16]).unwrap();
    assert!(be.start_device_timer().unwrap());
    be.linear(&x, &w, None, Activation::Gelu, None, &mut out)
        .unwrap();
    let device = be.stop_device_timer().unwrap();
    assert!(device.is_some_and(|s| s > 0.0), "{device:?}");
    // Eigenproblems above the Jacobi kernel's 64 are faer's on the host.
    assert!(be.start_device_timer().unwrap());
    be.linear(&x, &w, None, Activation::Gelu, None, &mut out)
        .unwrap();
    be.symmetric_eigen(&[random_symmetric(&mut rng, 65)])
        .unwrap();
    assert_eq!(be.stop_device_timer().unwrap(), None);
}

/// Each form of the comparison on both backends — against `reference`, leave-one-out on each of
/// `grids`, a part of the leave-one-out models — both without and with a W2 trimming level: the
/// CUDA results are the CPU's bit for bit (the sort is exact, the ECDF counts are integers and
/// the f64 scan is shared code).
fn assert_trim_search_equals_the_cpu(
    be: &CudaBackend,
    rows: &[Vec<f32>],
    reference: &[f32],
    grids: &[W2Grid],
) {
    let cpu = CpuBackend::new();
    let views: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let part = TrimReference::LeaveOneOutPart {
        start: 1,
        end: rows.len() - 1,
    };
    let forms = [
        (TrimReference::Sample(reference), W2Grid::Merged),
        (part, W2Grid::Auto),
    ]
    .into_iter()
    .chain(grids.iter().map(|&g| (TrimReference::LeaveOneOut, g)));
    for (reference, grid) in forms {
        for w2_alpha in [None, Some(0.1)] {
            let spec = TrimSpec {
                level: 0.05,
                w2_alpha,
                w2_grid: grid,
            };
            let want = cpu.trim_search(&views, reference, &spec).unwrap();
            let got = be.trim_search(&views, reference, &spec).unwrap();
            assert_eq!(got, want, "{reference:?} {spec:?}");
        }
    }
}

/// Lengths that are not powers of two, of one point, of exactly a 2 048-key sort tile and
/// either side of it, and a sample at the extremes of the floats (every digit of the keys
/// varies); a 300 001-point reference sorts as 147 tiles of one segment, whose 37 632 digit counts
/// take 19 blocks of the scan.
#[test]
fn trim_search_equals_the_cpu_bit_for_bit() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    assert!(be.supports(OpFamily::Trim));
    let mut rng = Rng::new(23);
    let mut rows = rng.tied_samples(&[1, 2, 3, 700, 2047, 2048, 2049, 5000, 17, 190]);
    let tiny = f32::from_bits(1);
    rows.push(vec![
        f32::MAX,
        -f32::MAX,
        tiny,
        -tiny,
        f32::MIN_POSITIVE,
        0.0,
        -0.0,
        1.0,
        f32::from_bits(1.0f32.to_bits() + 1),
        1.0,
    ]);
    let reference: Vec<f32> = (0..300_001).map(|_| rng.normal() as f32).collect();
    assert_trim_search_equals_the_cpu(&be, &rows, &reference, &[W2Grid::Merged, W2Grid::Candidate]);
}

/// 20 000 models of one to three points: as many sort tiles, whose 5 120 000 digit counts take
/// 2 500 blocks of the scan, more than the one block that scans their sums holds at once. (The
/// exact leave-one-out W2 would take each model's 40 000-point reference: the candidate grid.)
#[test]
fn trim_search_of_many_small_models_equals_the_cpu() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    let mut rng = Rng::new(31);
    let lengths: Vec<usize> = (0..20_000).map(|_| 1 + rng.below(3) as usize).collect();
    let rows = rng.tied_samples(&lengths);
    let reference: Vec<f32> = (0..999).map(|_| rng.normal() as f32).collect();
    assert_trim_search_equals_the_cpu(&be, &rows, &reference, &[W2Grid::Candidate]);
}

/// Where no CUDA driver is present, asking for the backend is a clean error, not a panic.
#[test]
fn without_a_driver_cuda_is_a_clean_error() {
    let err = match backend::open(BackendKind::Cuda, OpFamily::Encoder) {
        Ok(_) => {
            report_skip(&current_test(), "cuda", "a CUDA device is present");
            return;
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cuda backend unavailable"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("s.txt");
    std::fs::write(&sample, "1\n2\n3\n").unwrap();
    let s = sample.to_str().unwrap();
    assert_fails_cleanly(
        &[
            "alpha",
            "--candidate",
            s,
            "--reference",
            s,
            "--backend",
            "cuda",
        ],
        &[
            "cuda backend unavailable",
            &err["cuda backend unavailable: ".len()..],
        ],
    );
}
