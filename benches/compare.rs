//! `compare`'s trimmed search on the CPU backend: every model of a synthetic binary ensemble
//! (`data::scores::synthetic_ensemble`) against the pooled others (leave-one-out), plus the
//! classifier metrics; and one large candidate against one reference. Throughput counts scored
//! points (models × points). tools/anchors/compare_numpy.py times numpy on the same sizes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mscope::backend::{self, BackendKind, OpFamily, TrimReference, TrimSpec, W2Grid};
use mscope::data::scores::synthetic_ensemble;
use mscope::instruments::metrics::model_metrics;

const SPEC: TrimSpec = TrimSpec {
    level: 0.05,
    w2_alpha: None,
    w2_grid: W2Grid::Auto,
};

fn compare_cpu(c: &mut Criterion) {
    let backend = backend::open(BackendKind::Cpu, OpFamily::Trim).unwrap();
    let mut group = c.benchmark_group("compare/cpu");
    group.sample_size(10);
    for (models, points) in [(100, 10_000), (1000, 100_000)] {
        let (scores, labels) = synthetic_ensemble(models, points, 0);
        let rows: Vec<&[f32]> = scores.values.chunks_exact(points).collect();
        group.throughput(Throughput::Elements((models * points) as u64));
        group.bench_function(format!("leave-one-out/{models}x{points}"), |b| {
            b.iter(|| {
                let trims = backend
                    .trim_search(&rows, TrimReference::LeaveOneOut, &SPEC)
                    .unwrap();
                (trims, model_metrics(&scores, Some(&labels)))
            })
        });
    }
    let (scores, _) = synthetic_ensemble(2, 1_000_000, 1);
    let (candidate, reference) = scores.values.split_at(1_000_000);
    group.throughput(Throughput::Elements(2_000_000));
    group.bench_function("sample/1000000-vs-1000000", |b| {
        b.iter(|| {
            backend
                .trim_search(&[candidate], TrimReference::Sample(reference), &SPEC)
                .unwrap()
        })
    });
    group.finish();
}

// Criterion's own plots need a system font this crate's plotters build does not load.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = compare_cpu
}
criterion_main!(benches);
