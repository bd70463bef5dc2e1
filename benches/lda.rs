//! The stats ops and the whole LDA on the CPU backend, at the anchor's size (10 000 rows × 1 024
//! dims, 4 labels; tools/anchors/lda_sklearn.py times scikit-learn on the same computation):
//!
//! - `stats/cpu/scatter`: covariance of every row (one f64 GEMM, n·d² flops with the symmetric
//!   half skipped), throughput in rows;
//! - `stats/cpu/symmetric_eigen`: one 1 024² problem (all cores) and a batch of eight 256² ones
//!   (one per core);
//! - `lda/cpu`: `evaluate` with Ledoit–Wolf shrinkage and the pairwise table over 5 splits.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mscope::backend::{self, BackendKind, Matrix64, OpFamily};
use mscope::instruments::lda::{evaluate, Classes, Shrinkage};
use mscope::instruments::splits;

const ROWS: usize = 10_000;
const DIM: usize = 1_024;
const LABELS: usize = 4;

/// Classes of uniform noise with per-dimension scales and shifted means, rows interleaved.
fn synthetic(rng: &mut common::Rng) -> (Vec<f32>, Vec<i64>) {
    let scales: Vec<f32> = (0..DIM)
        .map(|j| 0.1 + 3.0 * (j as f32 / DIM as f32))
        .collect();
    let means: Vec<Vec<f32>> = (0..LABELS).map(|_| rng.vec(DIM)).collect();
    let labels: Vec<i64> = (0..ROWS).map(|i| (i % LABELS) as i64).collect();
    let x = labels
        .iter()
        .flat_map(|&l| {
            let noise = rng.vec(DIM);
            (0..DIM)
                .map(|j| means[l as usize][j] + scales[j] * noise[j])
                .collect::<Vec<_>>()
        })
        .collect();
    (x, labels)
}

fn symmetric(rng: &mut common::Rng, d: usize) -> Matrix64 {
    let mut a = Matrix64::zeros(d, d);
    for i in 0..d {
        for j in 0..=i {
            let v = rng.uniform() as f64;
            (*a.at_mut(i, j), *a.at_mut(j, i)) = (v, v);
        }
    }
    a
}

fn stats(c: &mut Criterion) {
    let be = backend::open(BackendKind::Cpu, OpFamily::Stats).unwrap();
    let mut rng = common::Rng::new(1);
    let (x, labels) = synthetic(&mut rng);
    let t = be.upload(&[ROWS, DIM], &x).unwrap();
    let all: Vec<u32> = (0..ROWS as u32).collect();

    let mut group = c.benchmark_group("stats/cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function(format!("scatter/{ROWS}x{DIM}"), |b| {
        b.iter(|| be.scatter(&t, &[&all]).unwrap())
    });
    group.throughput(Throughput::Elements(1));
    let big = [symmetric(&mut rng, DIM)];
    group.bench_function(format!("symmetric_eigen/1x{DIM}"), |b| {
        b.iter(|| be.symmetric_eigen(&big).unwrap())
    });
    let batch: Vec<Matrix64> = (0..8).map(|_| symmetric(&mut rng, 256)).collect();
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("symmetric_eigen/8x256", |b| {
        b.iter(|| be.symmetric_eigen(&batch).unwrap())
    });
    group.finish();

    let names: Vec<String> = (0..LABELS).map(|k| format!("source{k}")).collect();
    let classes = Classes::from_labels(&labels, &names).unwrap();
    let splits = splits::stratified(&classes.rows, 5, 0.2, 0).unwrap();
    let mut group = c.benchmark_group("lda/cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(splits.len() as u64));
    group.bench_function(
        format!("{ROWS}x{DIM}x{LABELS}/auto/pairwise/5splits"),
        |b| {
            b.iter(|| {
                evaluate(
                    be.as_ref(),
                    &t,
                    &x,
                    &classes,
                    &splits,
                    Shrinkage::Auto,
                    true,
                )
                .unwrap()
            })
        },
    );
    group.finish();
}

// Criterion's own plots need a system font this crate's plotters build does not load.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = stats
}
criterion_main!(benches);
