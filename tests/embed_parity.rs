//! Sentence embeddings against sentence-transformers (references written by
//! tools/make_fixtures.py): the real all-MiniLM-L6-v2 and a tiny random-init XLM-RoBERTa, whose
//! positions start at padding_idx + 1 and whose pooling is CLS.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{
    assert_row_cosines, backend_tests, cosine, fixture_texts, minilm_dir, reference_tensor,
    rel_error, repo_path,
};
use mscope::backend::{self, Backend, BackendKind, OpFamily, Pooling};
use mscope::instruments::embed::{EncoderOptions, SentenceEncoder};
use mscope::weights::WeightsDtype;

backend_tests! {
    minilm_matches_sentence_transformers,
    minilm_pooling_and_normalize_flags,
    output_does_not_depend_on_batch_size,
    tiny_xlm_roberta_matches_sentence_transformers,
    minilm_with_f16_weights_stays_within_the_f16_tolerance,
    half_precision_checkpoints_run_in_their_dtype,
}

/// Embedding parity on f32 paths: every row's cosine to the reference at least 0.9999.
const MIN_COSINE: f64 = 0.9999;

fn embed(
    dir: &Path,
    be: Arc<dyn Backend>,
    options: &EncoderOptions,
    batch_size: usize,
) -> (Vec<f32>, usize) {
    let encoder = SentenceEncoder::load(dir, be, options).unwrap();
    let out = encoder
        .embed(&fixture_texts(), batch_size, &mut |_, _| {})
        .unwrap();
    (out.embeddings, out.dim)
}

fn assert_rows_match(what: &str, got: &[f32], reference: &str, tensor: &str) {
    let (shape, want) = reference_tensor(reference, tensor);
    assert_row_cosines(what, got, &want, shape[1], MIN_COSINE);
}

fn token_counts(dir: &Path, be: Arc<dyn Backend>, options: &EncoderOptions) -> Vec<f64> {
    let encoder = SentenceEncoder::load(dir, be, options).unwrap();
    encoder
        .tokenize(&fixture_texts())
        .unwrap()
        .iter()
        .map(|t| t.ids.len() as f64)
        .collect()
}

fn minilm_matches_sentence_transformers(be: &Arc<dyn Backend>) {
    let dir = minilm_dir();
    let options = EncoderOptions::default();
    // Truncation follows max_seq_length (256), not the 128 stored in tokenizer.json.
    let (_, want_counts) = reference_tensor(
        "tests/fixtures/minilm_reference.safetensors",
        "token_counts",
    );
    assert_eq!(
        token_counts(&dir, be.clone(), &options),
        want_counts,
        "token counts differ from sentence-transformers"
    );
    assert!(
        want_counts.iter().any(|&c| c > 128.0),
        "fixtures must include texts longer than 128 tokens"
    );

    let (got, _) = embed(&dir, be.clone(), &options, 8);
    assert_rows_match(
        &format!("MiniLM on {}", be.name()),
        &got,
        "tests/fixtures/minilm_reference.safetensors",
        "embeddings",
    );
}

fn minilm_pooling_and_normalize_flags(be: &Arc<dyn Backend>) {
    let dir = minilm_dir();
    let options = EncoderOptions {
        pooling: Some(Pooling::Mean),
        normalize: Some(false),
        ..Default::default()
    };
    let (got, _) = embed(&dir, be.clone(), &options, 5);
    assert_rows_match(
        &format!("MiniLM unnormalised mean on {}", be.name()),
        &got,
        "tests/fixtures/minilm_reference.safetensors",
        "embeddings_mean_unnormalized",
    );
    let norms: Vec<f32> = got
        .chunks(384)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    assert!(
        norms.iter().any(|n| (n - 1.0).abs() > 0.01),
        "unnormalised embeddings all have unit norm"
    );
}

fn output_does_not_depend_on_batch_size(be: &Arc<dyn Backend>) {
    let dir = minilm_dir();
    let options = EncoderOptions::default();
    let (reference, dim) = embed(&dir, be.clone(), &options, 1);
    for batch_size in [3, 64] {
        let (got, _) = embed(&dir, be.clone(), &options, batch_size);
        for (row, (g, r)) in got.chunks(dim).zip(reference.chunks(dim)).enumerate() {
            let err = common::rel_error(g, r);
            assert!(
                err < 1e-5,
                "{}: batch size {batch_size} row {row} differs from batch size 1 by {err:e}",
                be.name()
            );
        }
    }
}

fn tiny_xlm_roberta_matches_sentence_transformers(be: &Arc<dyn Backend>) {
    let dir = repo_path("tests/fixtures/tiny-xlmr");
    let options = EncoderOptions::default();
    let (_, want_counts) = reference_tensor(
        "tests/fixtures/tiny_xlmr_reference.safetensors",
        "token_counts",
    );
    assert_eq!(
        token_counts(&dir, be.clone(), &options),
        want_counts,
        "token counts differ from sentence-transformers"
    );
    let (got, _) = embed(&dir, be.clone(), &options, 4);
    assert_rows_match(
        &format!("tiny XLM-R on {}", be.name()),
        &got,
        "tests/fixtures/tiny_xlmr_reference.safetensors",
        "embeddings",
    );

    let options = EncoderOptions {
        pooling: Some(Pooling::Mean),
        normalize: Some(false),
        ..Default::default()
    };
    let (got, _) = embed(&dir, be.clone(), &options, 4);
    assert_rows_match(
        &format!("tiny XLM-R unnormalised mean on {}", be.name()),
        &got,
        "tests/fixtures/tiny_xlmr_reference.safetensors",
        "embeddings_mean_unnormalized",
    );
}

/// MiniLM with its GEMM weights and embedding tables rounded to f16 (kept f16 on wgpu adapters
/// with SHADER_F16) against the CPU's f32 forward pass. The f16 paths' tolerance,
/// ‖out − ref‖/‖ref‖ < 1e-2, is on
/// unit rows a cosine of at least 1 − (1e-2)²/2. The CPU run on the same rounded weights (widened
/// exactly) isolates the device: it must match that at the f32 paths' parity.
fn minilm_with_f16_weights_stays_within_the_f16_tolerance(be: &Arc<dyn Backend>) {
    const F16_TOL: f64 = 1e-2;
    let min_cosine = 1.0 - F16_TOL * F16_TOL / 2.0;
    let dir = minilm_dir();
    let cpu = backend::open(BackendKind::Cpu, OpFamily::Encoder).unwrap();
    let options = |weights_dtype| EncoderOptions {
        weights_dtype,
        ..Default::default()
    };
    let (reference, dim) = embed(&dir, cpu.clone(), &options(WeightsDtype::F32), 8);
    let (cpu_f16, _) = embed(&dir, cpu, &options(WeightsDtype::F16), 8);
    let (got, _) = embed(&dir, be.clone(), &options(WeightsDtype::F16), 8);
    let rows = got
        .chunks(dim)
        .zip(reference.chunks(dim))
        .zip(cpu_f16.chunks(dim));
    let (mut worst_cosine, mut worst_error, mut worst_device): (f64, f64, f64) = (1.0, 0.0, 1.0);
    for (row, ((g, r), c)) in rows.enumerate() {
        let (cos, err, device) = (cosine(g, r), rel_error(g, r), cosine(g, c));
        assert!(
            cos >= min_cosine && err < F16_TOL,
            "{}: row {row} cosine {cos}, relative error {err:e} from the f32 weights",
            be.name()
        );
        assert!(
            device >= MIN_COSINE,
            "{}: row {row} cosine {device} from the CPU on the same f16 weights",
            be.name()
        );
        worst_cosine = worst_cosine.min(cos);
        worst_error = worst_error.max(err);
        worst_device = worst_device.min(device);
    }
    eprintln!(
        "{}: f16 weights, worst row: cosine {worst_cosine} (relative error {worst_error:e}) \
         from f32 weights, cosine {worst_device} from the CPU on the same f16 weights",
        be.name()
    );
}

/// A copy of model directory `src` whose F32 tensors are stored as `dtype` (F16 or BF16),
/// rounded to nearest.
fn half_checkpoint(src: &Path, dtype: safetensors::Dtype) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(src, dir.path());
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let converted: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            if t.dtype() != safetensors::Dtype::F32 {
                return (name, t.dtype(), t.shape().to_vec(), t.data().to_vec());
            }
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            let data: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => values
                    .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => values
                    .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            (name, dtype, t.shape().to_vec(), data)
        })
        .collect();
    let views = converted.iter().map(|(name, dtype, shape, data)| {
        (
            name.as_str(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), out).unwrap();
    dir
}

fn copy_dir(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `--weights-dtype auto` runs a half-precision checkpoint in its dtype: an F16 checkpoint gives
/// exactly what `f16` gives on the f32 original (the same rounded values reach the same kernels;
/// the biases and norm parameters, 0 and 1 at random init, are exact in f16), and a BF16 one matches its exact f32 widening at the f32 paths' parity (wgpu converts bf16 to
/// f16 exactly in f16's normal range) — exactly on the CPU, which widens.
fn half_precision_checkpoints_run_in_their_dtype(be: &Arc<dyn Backend>) {
    let dir = repo_path("tests/fixtures/tiny-xlmr");
    let f16_dir = half_checkpoint(&dir, safetensors::Dtype::F16);
    let bf16_dir = half_checkpoint(&dir, safetensors::Dtype::BF16);
    let options = |weights_dtype| EncoderOptions {
        weights_dtype,
        ..Default::default()
    };
    let (rounded, _) = embed(&dir, be.clone(), &options(WeightsDtype::F16), 4);
    let (auto_f16, _) = embed(f16_dir.path(), be.clone(), &options(WeightsDtype::Auto), 4);
    assert_eq!(
        auto_f16,
        rounded,
        "{}: F16 checkpoint under auto",
        be.name()
    );

    let (widened, dim) = embed(bf16_dir.path(), be.clone(), &options(WeightsDtype::F32), 4);
    let (auto_bf16, _) = embed(bf16_dir.path(), be.clone(), &options(WeightsDtype::Auto), 4);
    if be.name() == "cpu" {
        assert_eq!(auto_bf16, widened, "cpu: BF16 checkpoint under auto");
    }
    for (row, (a, w)) in auto_bf16.chunks(dim).zip(widened.chunks(dim)).enumerate() {
        let cos = cosine(a, w);
        assert!(
            cos >= MIN_COSINE,
            "{}: BF16 checkpoint row {row}: cosine {cos} from its f32 widening",
            be.name()
        );
    }
}
