//! `embed` throughput on the CPU backend through the real all-MiniLM-L6-v2, batch size 32, on two
//! corpora: the bundled demo corpus (short texts) and the test fixtures (texts up to 256 tokens).
//! tools/anchors/compare-embed.sh times sentence-transformers on the same corpora and settings.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mscope::backend::{self, BackendKind, OpFamily};
use mscope::instruments::embed::{EncoderOptions, SentenceEncoder};
use mscope::io::texts::{read_corpus, FieldNames, InputSpec};

fn corpus(files: &[&str]) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let specs: Vec<InputSpec> = files
        .iter()
        .map(|f| root.join(f).to_str().unwrap().parse().unwrap())
        .collect();
    read_corpus(&specs, &FieldNames::default()).unwrap().texts
}

fn embed_cpu(c: &mut Criterion) {
    let model = std::env::var_os("MSCOPE_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2")
        });
    let backend = backend::open(BackendKind::Cpu, OpFamily::Encoder).unwrap();
    let encoder = SentenceEncoder::load(&model, backend, &EncoderOptions::default())
        .unwrap_or_else(|e| panic!("{e} (run tools/fetch-model.sh)"));
    let corpora = [
        (
            "demo-corpus",
            corpus(&[
                "tools/demo-corpus/news.txt",
                "tools/demo-corpus/reviews.jsonl",
                "tools/demo-corpus/multilingual.csv",
            ]),
        ),
        ("fixtures", corpus(&["tests/fixtures/texts.jsonl"])),
    ];
    let mut group = c.benchmark_group("embed/cpu/all-MiniLM-L6-v2");
    group.sample_size(10);
    for (name, texts) in &corpora {
        group.throughput(Throughput::Elements(texts.len() as u64));
        group.bench_function(format!("{name}/{}texts/batch32", texts.len()), |b| {
            b.iter(|| encoder.embed(texts, 32, &mut |_, _| {}).unwrap())
        });
    }
    group.finish();
}

// Criterion's own plots need a system font this crate's plotters build does not load.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = embed_cpu
}
criterion_main!(benches);
