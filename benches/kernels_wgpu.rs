//! WGSL kernels on the adapter `MSCOPE_WGPU_ADAPTER` picks (else the most hardware-like one,
//! lavapipe included): the GEMM (`linear` with bias + GELU, shaders/gemm.wgsl) on MiniLM's shapes,
//! the NTK contraction (both variants) and JL projection (shaders/ntk.wgsl), and the per-group
//! scatter (shaders/stats.wgsl), attention, LayerNorm and RMSNorm with both row reductions
//! (shaders/attention.wgsl, norm.wgsl, norm_subgroup.wgsl) and
//! the leave-one-out trim search (shaders/trim.wgsl), on the kernel suite's shapes
//! (src/bench/kernels.rs). Throughput is counted FLOPs, reported as elements/s: GEMM 2·n·k·m,
//! contraction 2·r·c·(p + q), projection 2·n·d·k (generation not counted), scatter n·d² (one
//! triangle), attention 4·Σ len²·d; the norms and trim count bytes (read + write once; trim 20 per
//! point as in the kernel suite). Each iteration waits for the device, and inputs stay on the
//! device between iterations (trim takes host slices by design).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mscope::backend::wgpu::{WgpuBackend, WgpuOptions};
use mscope::backend::GemmVariant;
use mscope::backend::{
    Activation, AttentionSpec, Backend, JlDistribution, JlSpec, SeqLayout, TrimReference, TrimSpec,
    W2Grid,
};

/// `(tokens, in, out)`: MiniLM-L6's QKV, FFN-up and FFN-down projections over 2048 tokens.
const SHAPES: [(usize, usize, usize); 3] =
    [(2048, 384, 1152), (2048, 384, 1536), (2048, 1536, 384)];

fn gemm(c: &mut Criterion) {
    for variant in [GemmVariant::Tiled, GemmVariant::Direct] {
        let options = WgpuOptions {
            gemm: Some(variant),
            ..WgpuOptions::from_env()
        };
        let be = match WgpuBackend::open(&options) {
            Ok(be) => be,
            Err(why) => {
                eprintln!("skipped wgpu GEMM bench: {why}");
                return;
            }
        };
        let adapter = be.adapter_info().name.clone();
        let mut group = c.benchmark_group(format!("gemm/wgpu/{variant:?}"));
        group.sample_size(10);
        for (n, k, m) in SHAPES {
            let x = be.upload(&[n, k], &vec![0.5; n * k]).unwrap();
            let w = be.upload(&[m, k], &vec![0.01; m * k]).unwrap();
            let b = be.upload(&[m], &vec![0.1; m]).unwrap();
            let mut out = be.zeros(&[n, m]).unwrap();
            group.throughput(Throughput::Elements((2 * n * k * m) as u64));
            let id = BenchmarkId::new(format!("{n}x{k}x{m}"), &adapter);
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    be.linear(&x, &w, Some(&b), Activation::Gelu, None, &mut out)
                        .unwrap();
                    be.synchronize().unwrap();
                })
            });
        }
        group.finish();
    }
}

/// Opens wgpu with `gemm` as the GEMM-style variant, or reports the bench `what` skipped.
fn open(gemm: Option<GemmVariant>, what: &str) -> Option<WgpuBackend> {
    let options = WgpuOptions {
        gemm,
        ..WgpuOptions::from_env()
    };
    WgpuBackend::open(&options)
        .inspect_err(|why| eprintln!("skipped wgpu {what} bench: {why}"))
        .ok()
}

/// Seeded values in [-1, 1) on the device.
fn random(be: &WgpuBackend, shape: &[usize], seed: u64) -> mscope::backend::Tensor {
    let mut rng = mscope::random::SplitMix64::new(seed);
    let len = shape.iter().product();
    let values: Vec<f32> = (0..len)
        .map(|_| 2.0 * rng.next_f64() as f32 - 1.0)
        .collect();
    be.upload(shape, &values).unwrap()
}

/// One layer of an MLP on 28×28 inputs: 128 row samples against 4096 columns, 10 classes of
/// 100-wide output gradients (p = 1000) and 784 inputs (q).
fn ntk_contract(c: &mut Criterion) {
    let (r, n, p, q) = (128, 4096, 1000, 784);
    for variant in [GemmVariant::Tiled, GemmVariant::Direct] {
        let Some(be) = open(Some(variant), "ntk_contract") else {
            return;
        };
        let mut group = c.benchmark_group(format!("ntk_contract/wgpu/{variant:?}"));
        group.sample_size(10);
        let (dr, dc) = (random(&be, &[r, p], 1), random(&be, &[n, p], 2));
        let (ar, ac) = (random(&be, &[r, q], 3), random(&be, &[n, q], 4));
        let mut out = be.zeros(&[r, n]).unwrap();
        group.throughput(Throughput::Elements((2 * r * n * (p + q)) as u64));
        let id = BenchmarkId::new(format!("{r}x{n}x({p}+{q})"), &be.adapter_info().name);
        group.bench_function(id, |bench| {
            bench.iter(|| {
                be.ntk_contract(&dr, &dc, Some((&ar, &ac)), 1.0, 0..n, &mut out)
                    .unwrap();
                be.synchronize().unwrap();
            })
        });
        group.finish();
    }
}

/// 320 per-class gradient rows of an 8192-parameter tile projected to 1024 dimensions.
fn jl_project(c: &mut Criterion) {
    let (n, d, k) = (320, 8192, 1024);
    let Some(be) = open(None, "jl_project") else {
        return;
    };
    let mut group = c.benchmark_group("jl_project/wgpu");
    group.sample_size(10);
    let x = random(&be, &[n, d], 5);
    let mut out = be.zeros(&[n, k]).unwrap();
    group.throughput(Throughput::Elements((2 * n * d * k) as u64));
    for distribution in [JlDistribution::Rademacher, JlDistribution::Gaussian] {
        let spec = JlSpec {
            seed: 7,
            dim: k,
            distribution,
            column_offset: 0,
        };
        let id = BenchmarkId::new(
            format!("{distribution:?}/{n}x{d}x{k}"),
            &be.adapter_info().name,
        );
        group.bench_function(id, |bench| {
            bench.iter(|| {
                be.jl_project(&x, &spec, false, &mut out).unwrap();
                be.synchronize().unwrap();
            })
        });
    }
    group.finish();
}

/// The covariance of 10 000 rows of 1024 features (one group), and 16 class scatters of the same
/// rows (LDA).
fn scatter(c: &mut Criterion) {
    let (n, d) = (10_000, 1024);
    let Some(be) = open(None, "scatter") else {
        return;
    };
    let mut group = c.benchmark_group("scatter/wgpu");
    group.sample_size(10);
    let x = random(&be, &[n, d], 6);
    let all: Vec<u32> = (0..n as u32).collect();
    let classes: Vec<Vec<u32>> = (0..16)
        .map(|c| all.iter().copied().filter(|r| r % 16 == c).collect())
        .collect();
    group.throughput(Throughput::Elements((n * d * d) as u64));
    for (what, groups) in [
        ("covariance", vec![&all[..]]),
        ("16-classes", classes.iter().map(|c| &c[..]).collect()),
    ] {
        let id = BenchmarkId::new(format!("{what}/{n}x{d}"), &be.adapter_info().name);
        group.bench_function(id, |bench| bench.iter(|| be.scatter(&x, &groups).unwrap()));
    }
    group.finish();
}

/// MiniLM's self-attention (12 heads of 32) over 16 packed sequences of 128 tokens.
fn attention(c: &mut Criterion) {
    let (sequences, len, heads, head_dim) = (16, 128, 12, 32);
    let Some(be) = open(None, "attention") else {
        return;
    };
    let spec = AttentionSpec::bidirectional(heads, head_dim);
    let layout = SeqLayout::from_lengths(vec![len; sequences]);
    let tokens = layout.num_tokens();
    let qkv = random(&be, &[tokens, spec.qkv_width()], 8);
    let mut out = be.zeros(&[tokens, heads * head_dim]).unwrap();
    let mut group = c.benchmark_group("attention/wgpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(
        (4 * sequences * len * len * heads * head_dim) as u64,
    ));
    let id = BenchmarkId::new(
        format!("{sequences}x{len}x{heads}x{head_dim}"),
        &be.adapter_info().name,
    );
    group.bench_function(id, |bench| {
        bench.iter(|| {
            be.attention(&qkv, &layout, &spec, &mut out).unwrap();
            be.synchronize().unwrap();
        })
    });
    group.finish();
}

/// LayerNorm of 2048 tokens of 384 (MiniLM) and 1024 (e5-large) features and RMSNorm of 2048 of
/// 4096 (Mistral-7B), in place, with the subgroup reduction (where the adapter has subgroups) and
/// the shared-memory one.
fn norms(c: &mut Criterion) {
    for subgroups in [true, false] {
        let options = WgpuOptions {
            subgroups,
            ..WgpuOptions::from_env()
        };
        let be = match WgpuBackend::open(&options) {
            Ok(be) => be,
            Err(why) => return eprintln!("skipped wgpu norm bench: {why}"),
        };
        if subgroups && !be.subgroup_norms() {
            eprintln!("skipped wgpu subgroup norm bench: the adapter has no subgroups");
            continue;
        }
        let reduction = if subgroups { "subgroup" } else { "shared" };
        let mut group = c.benchmark_group(format!("norm/wgpu/{reduction}"));
        group.sample_size(10);
        for (n, d, rms) in [(2048, 384, false), (2048, 1024, false), (2048, 4096, true)] {
            let mut x = random(&be, &[n, d], 9);
            let mut normed = be.zeros(&[n, d]).unwrap();
            let (gamma, beta) = (random(&be, &[d], 10), random(&be, &[d], 11));
            group.throughput(Throughput::Bytes((2 * n * d * 4) as u64));
            let op = if rms { "rms_norm" } else { "layer_norm" };
            let id = BenchmarkId::new(format!("{op}/{n}x{d}"), &be.adapter_info().name);
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    if rms {
                        be.rms_norm(&x, &gamma, 1e-5, &mut normed).unwrap();
                    } else {
                        be.layer_norm(&mut x, &gamma, &beta, 1e-12).unwrap();
                    }
                    be.synchronize().unwrap();
                })
            });
        }
        group.finish();
    }
}

/// Leave-one-out α̂ of 20 models × 10 000 scores (the candidate-grid W2, as in the kernel suite).
fn trim(c: &mut Criterion) {
    let (models, points) = (20, 10_000);
    let Some(be) = open(None, "trim_search") else {
        return;
    };
    let mut rng = mscope::random::SplitMix64::new(12);
    let scores: Vec<f32> = (0..models * points)
        .map(|_| rng.next_f64() as f32)
        .collect();
    let rows: Vec<&[f32]> = scores.chunks_exact(points).collect();
    let spec = TrimSpec {
        level: 0.05,
        w2_alpha: None,
        w2_grid: W2Grid::Candidate,
    };
    let mut group = c.benchmark_group("trim_search/wgpu");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((models * points * 20) as u64));
    let id = BenchmarkId::new(format!("{models}x{points}"), &be.adapter_info().name);
    group.bench_function(id, |bench| {
        bench.iter(|| {
            be.trim_search(&rows, TrimReference::LeaveOneOut, &spec)
                .unwrap()
        })
    });
    group.finish();
}

// Criterion's own plots need a system font this crate's plotters build does not load.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = gemm, ntk_contract, jl_project, scatter, attention, norms, trim
}
criterion_main!(benches);
