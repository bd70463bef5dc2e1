//! The CUDA backend's own kernels: every numbered variant of GEMM and of the NTK contraction
//! against the CPU backend, the generated JL entries against `JlSpec::entry`, the batched Jacobi
//! eigensolver's residuals at every size 2…64, and the clean failure where no CUDA is present.
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
use mscope::backend::GemmVariant;
use mscope::backend::{
    self, Activation, AttentionSpec, Backend, BackendKind, JlDistribution, JlSpec, Matrix64,
    OpFamily, SeqLayout,
};

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
        let tol = if variant == GemmVariant::MmaBf16 {
            1e-2
        } else {
            1e-5
        };
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

#[test]
fn flash_and_naive_attention_match_the_cpu_with_windows() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(36);
    let layout = SeqLayout::from_lengths([1, 70, 0, 131]);
    // head_dim 32 and 64 take the flash kernel, 24 the naive one.
    for head_dim in [32, 64, 24] {
        for (causal, window) in [
            (false, None),
            (true, None),
            (true, Some(5)),
            (false, Some(0)),
        ] {
            let spec = AttentionSpec {
                heads: 4,
                kv_heads: 2,
                head_dim,
                causal,
                window,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            let qkv = rng.vec(layout.num_tokens() * spec.qkv_width());
            let run = |be: &dyn Backend| {
                let t = be
                    .upload(&[layout.num_tokens(), spec.qkv_width()], &qkv)
                    .unwrap();
                let mut out = poisoned(be, &[layout.num_tokens(), 4 * head_dim]);
                be.attention(&t, &layout, &spec, &mut out).unwrap();
                be.download(&out).unwrap()
            };
            let (got, want) = (run(&be), run(&cpu));
            let err = if window == Some(0) {
                // Every key masked: zeros on both (rel_error of zeros would divide by zero).
                assert!(want.iter().all(|&v| v == 0.0));
                got.iter().map(|v| v.abs() as f64).fold(0.0, f64::max)
                    + f64::from(u8::from(got.iter().any(|v| v.is_nan())))
            } else {
                rel_error(&got, &want)
            };
            assert!(
                err < 1e-5,
                "attention hd={head_dim} causal={causal} window={window:?}: {err:e}"
            );
        }
    }
}

#[test]
fn stats_family_runs_on_cuda() {
    let Some(be) = cuda(CudaOptions::default()) else {
        return;
    };
    assert!(be.supports(OpFamily::Stats) && be.supports(OpFamily::Ntk));
    assert!(!be.supports(OpFamily::Trim), "trim has no CUDA kernels");
    let err = be
        .trim_search(
            &[&[1.0]],
            mscope::backend::TrimReference::Sample(&[1.0]),
            &mscope::backend::TrimSpec {
                level: 0.05,
                w2_alpha: None,
                w2_grid: mscope::backend::W2Grid::Merged,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
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
