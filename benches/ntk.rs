//! The tangent-kernel work on the CPU backend: one layer's Gram contraction, the JL projection,
//! and whole exact / projected trNTKs of the 784-100-100-100-10 MLP of the target (random
//! init, N(0,1) inputs). Throughput: FLOPs counted from the shapes for the ops, kernel entries
//! (pairs) for the pipelines. `tools/anchors/ntk_torch_func.py` times torch.func on the same
//! model.

use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::{Activation, Backend, JlDistribution, JlSpec};
use mscope::instruments::ntk::{KernelJob, DEFAULT_TILE_ROWS};
use mscope::instruments::project::{FactorSpec, KernelKind, ProjectionKind};
use mscope::models::mlp::Mlp;
use mscope::random::SplitMix64;

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn ops(c: &mut Criterion) {
    let be = CpuBackend::new();
    let mut group = c.benchmark_group("ntk-ops/cpu");
    group.sample_size(10);
    // First layer of the MLP for one tile: 10 classes × 100 outputs, 784 inputs.
    let (rows, cols, p, q) = (DEFAULT_TILE_ROWS, 4096, 1000, 784);
    let up = |n, w, seed| be.upload(&[n, w], &normal(n * w, seed)).unwrap();
    let (dr, dc, ar, ac) = (
        up(rows, p, 1),
        up(cols, p, 2),
        up(rows, q, 3),
        up(cols, q, 4),
    );
    let mut out = be.zeros(&[rows, cols]).unwrap();
    group.throughput(Throughput::Elements((2 * rows * cols * (p + q)) as u64));
    group.bench_function(format!("contract/{rows}x{cols}x(p{p},q{q})/flop"), |b| {
        b.iter(|| {
            be.ntk_contract(&dr, &dc, Some((&ar, &ac)), 1.0, 0..cols, &mut out)
                .unwrap()
        })
    });
    // Dense projection of one tile of materialised first-layer gradients.
    let (n, d, k) = (320, 8192, 1024);
    let x = up(n, d, 5);
    let mut projected = be.zeros(&[n, k]).unwrap();
    group.throughput(Throughput::Elements((2 * n * d * k) as u64));
    for distribution in [JlDistribution::Rademacher, JlDistribution::Gaussian] {
        let spec = JlSpec {
            seed: 0,
            dim: k,
            distribution,
            column_offset: 0,
        };
        group.bench_function(
            format!("jl-project/{distribution:?}/{n}x{d}->{k}/flop"),
            |b| b.iter(|| be.jl_project(&x, &spec, false, &mut projected).unwrap()),
        );
    }
    group.finish();
}

fn kernels(c: &mut Criterion) {
    let be = CpuBackend::new();
    let mlp = Mlp::init(&[784, 100, 100, 100, 10], Activation::Relu, 0).unwrap();
    let n = 1000;
    let x = normal(n * 784, 1);
    let mut group = c.benchmark_group("ntk/cpu/784-100-100-100-10");
    group.sample_size(10);
    group.throughput(Throughput::Elements((n * n) as u64));
    for (projection, k) in [
        (ProjectionKind::None, 0),
        (ProjectionKind::Kronecker, 128),
        (ProjectionKind::Rademacher, 1024),
    ] {
        let job = KernelJob {
            mlp: &mlp,
            rows: &x,
            cols: None,
            row_labels: None,
            col_labels: None,
            spec: FactorSpec {
                kind: KernelKind::Trntk,
                projection,
                projection_dim: k,
                seed: 0,
            },
            block_rows: n,
            tile_rows: DEFAULT_TILE_ROWS,
        };
        group.bench_function(format!("trntk/{projection:?}-k{k}/n{n}/pairs"), |b| {
            b.iter(|| {
                job.run(&be, None, &mut |_| ControlFlow::Continue(()))
                    .unwrap()
                    .unwrap()
            })
        });
    }
    group.finish();
}

// Criterion's own plots need a system font this crate's plotters build does not load.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = ops, kernels
}
criterion_main!(benches);
