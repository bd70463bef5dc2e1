//! The WGSL GEMM (`linear` with bias + GELU, shaders/gemm.wgsl) on MiniLM's shapes, both variants,
//! on the adapter `MSCOPE_WGPU_ADAPTER` picks (else the most hardware-like one, lavapipe
//! included). Throughput is counted FLOPs (2·n·k·m per call, reported as elements/s); each
//! iteration waits for the device, and inputs stay on the device between iterations.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mscope::backend::wgpu::{GemmVariant, WgpuBackend, WgpuOptions};
use mscope::backend::{Activation, Backend};

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

// Criterion's own plots need a system font this crate's plotters build does not load.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = gemm
}
criterion_main!(benches);
