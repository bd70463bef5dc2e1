//! `embed` throughput on the CPU backend: the bundled demo corpus through the real
//! all-MiniLM-L6-v2, batch size 32 (the same corpus and settings as
//! tools/anchors/embed_sentence_transformers.py, whose figure is the anchor in BENCHMARKS.md).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mscope::backend::{self, BackendKind};
use mscope::instruments::embed::{EncoderOptions, SentenceEncoder};
use mscope::io::texts::{read_corpus, FieldNames, InputSpec};

fn demo_corpus() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let specs: Vec<InputSpec> = ["news.txt", "reviews.jsonl", "multilingual.csv"]
        .iter()
        .map(|f| {
            root.join("tools/demo-corpus")
                .join(f)
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    read_corpus(&specs, &FieldNames::default()).unwrap().texts
}

fn embed_cpu(c: &mut Criterion) {
    let model = std::env::var_os("MSCOPE_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2")
        });
    let backend = backend::open(BackendKind::Cpu).unwrap();
    let encoder = SentenceEncoder::load(&model, backend, &EncoderOptions::default())
        .unwrap_or_else(|e| panic!("{e} (run tools/fetch-model.sh)"));
    let texts = demo_corpus();
    let mut group = c.benchmark_group("embed/cpu/all-MiniLM-L6-v2");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.sample_size(10);
    group.bench_function(format!("demo-corpus/{}texts/batch32", texts.len()), |b| {
        b.iter(|| encoder.embed(&texts, 32, &mut |_, _| {}).unwrap())
    });
    group.finish();
}

criterion_group!(benches, embed_cpu);
criterion_main!(benches);
