//! The fuzz targets' bodies: one function a reader of outside bytes, each handing the bytes to
//! the library's public entry points exactly as the CLI reaches them, and reading whatever the
//! reader accepted (tensors dequantised, images converted, texts tokenised) so that a lie in a
//! header surfaces here and not later.
//!
//! Readers that take a path get the bytes through a file in a scratch directory (on tmpfs where
//! there is one), so the code under test is the CLI's own path, memory map included. Errors are
//! the expected outcome and are ignored; a panic, an abort, a hang or an allocation past
//! libFuzzer's limits is a finding.
//!
//! `fuzz_targets/NAME.rs` calls `NAME` under libFuzzer; the stable test `tests/fuzz_corpus.rs`
//! includes this file and replays the committed corpora and reproducers through the same
//! functions, so CI checks them without a nightly toolchain.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use mscope::backend::Pooling;
use mscope::data::Dataset;
use mscope::io::embedding_inputs::EmbeddingInput;
use mscope::io::embeddings::EmbeddingsFile;
use mscope::io::images::collect_images;
use mscope::io::kernel_file::KernelFile;
use mscope::io::npy::{read_npz, NpyArray};
use mscope::io::samples;
use mscope::io::shards;
use mscope::io::tensor_file::{self, TensorFile, TensorOut};
use mscope::io::texts::{read_label_column, read_rows, FieldNames, InputSpec};
use mscope::models::bert::BertConfig;
use mscope::models::clip::ClipConfig;
use mscope::models::decoder::DecoderConfig;
use mscope::models::exif::{self, Container};
use mscope::models::image::{decode_image, Alpha, Preprocess};
use mscope::models::mlp::Mlp;
use mscope::models::sentence::SentenceConfig;
use mscope::models::tokenize::TextTokenizer;
use mscope::models::{decoder_gguf, exif::Orientation};
use mscope::tensor::DType;
use mscope::weights::{Gguf, Weights};

/// A target's body: the input bytes in, any failure but a panic ignored.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("gguf", gguf),
    ("model_config", model_config),
    ("tokenizer", tokenizer),
    ("texts", texts),
    ("npy", npy),
    ("npz", npz),
    ("image", image),
    ("torch_pickle", torch_pickle),
    ("shards", shards),
];

/// Texts every tokenizer the fuzzer builds is run on: ASCII, punctuation, multi-byte UTF-8 and
/// the empty text.
const PROBE_TEXTS: [&str; 3] = ["Hello, world! 123", "naïve café 🙂 日本語", ""];

thread_local! {
    /// One scratch directory a thread (the corpus replay runs on several), removed with it.
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// `relative` under this thread's scratch directory, its parent created.
fn scratch_path(relative: &str) -> PathBuf {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let dir = scratch.get_or_insert_with(|| {
            let shm = Path::new("/dev/shm");
            let base = if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            };
            tempfile::Builder::new()
                .prefix("mscope-fuzz-")
                .tempdir_in(base)
                .expect("a scratch directory for the fuzz inputs")
        });
        let path = dir.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("a file under the scratch directory"))
            .expect("a scratch sub-directory");
        path
    })
}

/// Writes `data` to `relative` in the scratch directory and returns the directory it went to.
fn scratch_dir_with(relative: &str, data: &[u8]) -> PathBuf {
    let path = scratch_file(relative, data);
    path.parent()
        .expect("a file under the scratch directory")
        .to_path_buf()
}

/// Writes `data` to `relative` in the scratch directory and returns its path.
fn scratch_file(relative: &str, data: &[u8]) -> PathBuf {
    let path = scratch_path(relative);
    std::fs::write(&path, data).expect("writing a fuzz input to the scratch directory");
    path
}

/// Reads every tensor of an opened checkpoint in each way the models do.
fn read_weights(weights: &Weights) {
    for name in weights.names() {
        let Ok(shape) = weights.shape(&name) else {
            continue;
        };
        let _ = weights.dtype(&name);
        let _ = weights.f32(&name, &shape);
        let _ = weights.host(&name, &shape);
        let _ = weights.half(&name, &shape);
    }
}

/// A `.safetensors` file, read as a model checkpoint and as each of mscope's own files
/// (embeddings, kernels, datasets, MLPs, sample arrays).
pub fn safetensors(data: &[u8]) {
    let path = scratch_file("input.safetensors", data);
    if let Ok(weights) = Weights::open(&path) {
        read_weights(&weights);
    }
    if let Ok(file) = TensorFile::read(&path) {
        for name in file.names() {
            let _ = file.f32(&name);
            let _ = file.f64(&name);
            let _ = file.i64(&name);
        }
    }
    let _ = EmbeddingsFile::read(&path);
    let _ = KernelFile::read(&path);
    let _ = Mlp::read(&path);
    let _ = Dataset::read(&path);
    let _ = samples::read_array(&path, "scores");
    let _ = samples::read_labels(&path);
}

/// A `model.safetensors.index.json` beside one valid shard, which the index may name or not.
pub fn safetensors_index(data: &[u8]) {
    let shard = scratch_path("index/model-00001-of-00001.safetensors");
    if !shard.is_file() {
        let values = [0.5f32, -1.0, 2.0, 0.0, 3.5, -0.25];
        let bytes = tensor_file::serialize(
            vec![
                TensorOut::f32("embeddings.weight", vec![2, 3], &values),
                TensorOut::f32("encoder.bias", vec![6], &values),
            ],
            &Default::default(),
        );
        std::fs::write(&shard, bytes).expect("writing the index target's shard");
    }
    let index = scratch_file("index/model.safetensors.index.json", data);
    if let Ok(weights) = Weights::open(&index) {
        read_weights(&weights);
    }
}

/// A `.gguf` file: header, metadata, the decoder configuration and tokenizer built from it,
/// and every tensor dequantised.
pub fn gguf(data: &[u8]) {
    let path = scratch_file("model.gguf", data);
    let Ok(gguf) = Gguf::open(&path) else {
        return;
    };
    for (key, value) in gguf.metadata() {
        let _ = (key.len(), format!("{value}"));
    }
    let _ = decoder_gguf::config(&gguf);
    if let Ok(tokenizer) = TextTokenizer::from_gguf(&gguf, 32) {
        let _ = tokenizer.encode(&PROBE_TEXTS);
    }
    for info in gguf.tensors() {
        let _ = gguf.tensor(info.name(), DType::F32);
        let _ = gguf.tensor(info.name(), DType::F16);
    }
}

/// The same bytes as each JSON configuration a model directory holds: `config.json` (BERT,
/// decoder and Hugging Face CLIP), `open_clip_config.json`, `preprocessor_config.json` and
/// sentence-transformers' `modules.json`, `sentence_bert_config.json` and pooling config. The
/// other names are symbolic links to the one file written, made once: one write an input.
pub fn model_config(data: &[u8]) {
    let config = scratch_file("hf/config.json", data);
    let links = [
        "hf/preprocessor_config.json",
        "open_clip/open_clip_config.json",
        "sentence/sentence_bert_config.json",
        "sentence/modules.json",
        "sentence/1_Pooling/config.json",
    ]
    .map(scratch_path);
    for link in &links {
        if !link.is_symlink() {
            std::os::unix::fs::symlink(&config, link).expect("a link to the scratch config");
        }
    }
    let [preprocessor, open_clip, sentence, ..] = &links;
    let parent = |path: &Path| path.parent().expect("a scratch folder").to_path_buf();
    let hf = parent(&config);
    let _ = BertConfig::read(&hf);
    let _ = DecoderConfig::read(&hf);
    let _ = ClipConfig::read(&hf);
    let _ = Preprocess::from_hf_file(preprocessor);
    let _ = ClipConfig::read(&parent(open_clip));
    let _ = SentenceConfig::read(&parent(sentence), Pooling::Mean);
}

/// A `tokenizer.json`, loaded and run on a few texts.
pub fn tokenizer(data: &[u8]) {
    let dir = scratch_dir_with("tokenizer/tokenizer.json", data);
    if let Ok(parsed) = TextTokenizer::parse(&dir) {
        let _ = parsed.stored_max_length();
    }
    if let Ok(tokenizer) = TextTokenizer::load(&dir, 16) {
        let _ = tokenizer.encode(&PROBE_TEXTS);
    }
}

/// A text input; the first byte picks the extension (`.txt`, `.jsonl`, `.csv`, `.tsv`), the rest
/// is the file. Read as texts to embed, as a labels file, as an image list, and as `.txt`
/// numbers for `alpha`/`compare`.
pub fn texts(data: &[u8]) {
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let ext = ["txt", "jsonl", "csv", "tsv"][usize::from(selector % 4)];
    let path = scratch_file(&format!("texts/input.{ext}"), content);
    let fields = FieldNames::default();
    let spec = InputSpec {
        path: path.clone(),
        label: None,
    };
    let _ = read_rows(&spec, &fields);
    let _ = read_label_column(&path, &fields.label);
    for skip_bad in [false, true] {
        let _ = collect_images(std::slice::from_ref(&path), &fields, skip_bad);
    }
    let _ = samples::read_array(&path, "scores");
    let _ = samples::read_labels(&path);
}

/// A `.npy` array: parsed, converted, and read as samples, embeddings and labels.
pub fn npy(data: &[u8]) {
    if let Ok(array) = NpyArray::parse(data.to_vec(), "input.npy") {
        let _ = (
            array.len(),
            array.to_f64(),
            array.to_f32(),
            array.to_strings(),
        );
    }
    let path = scratch_file("input.npy", data);
    let _ = samples::read_array(&path, "scores");
    let _ = samples::read_labels(&path);
    let input = EmbeddingInput {
        path: path.clone(),
        labels: Some(path),
        ..Default::default()
    };
    let _ = input.read();
}

/// A `.npz` archive, read as arrays and as embeddings with their labels.
pub fn npz(data: &[u8]) {
    let path = scratch_file("input.npz", data);
    if let Ok(arrays) = read_npz(&path) {
        for (_, array) in arrays {
            let _ = (array.to_f64(), array.to_strings());
        }
    }
    let input = EmbeddingInput {
        path,
        ..Default::default()
    };
    let _ = input.read();
}

/// Headers claiming more pixels than this are not decoded here. Garbage up to the real limit
/// (`MAX_PIXELS`, 178.9 Mpx) is legal and takes seconds to decode (a fuzzed 16 418 × 9 517 JPEG:
/// 4 s), which starves a fuzzing run; the refusal above the limit has tests of its own. A GIF
/// frame larger than its screen still reaches the decoder: only the header is looked at.
const FUZZ_MAX_HEADER_PIXELS: u64 = 1 << 22;

/// An image file (PNG, JPEG, WebP, GIF, TIFF by content), decoded, turned upright and converted
/// to RGB both ways; and its EXIF orientation looked up as each container.
pub fn image(data: &[u8]) {
    let header_pixels = image::io::Reader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .ok()
        .and_then(|reader| reader.into_dimensions().ok())
        .map(|(width, height)| u64::from(width) * u64::from(height));
    if header_pixels.is_some_and(|pixels| pixels > FUZZ_MAX_HEADER_PIXELS) {
        return;
    }
    let path = scratch_file("image", data);
    if let Ok(image) = decode_image(&path) {
        let _ = image.to_rgb(Alpha::Drop);
        let _ = image.to_rgb(Alpha::OverWhite);
    }
    for container in [
        Container::Jpeg,
        Container::Png,
        Container::Tiff,
        Container::WebpExif,
    ] {
        let orientation: Orientation = exif::orientation(data, container);
        let _ = orientation.value();
    }
}

/// A `torch.save` checkpoint opened as a model's weights. First byte 0: the rest is the file
/// (the zip container is fuzzed); otherwise the rest is `data.pkl` in an archive with a
/// little-endian byte order and storages `0` to `3` of 64 bytes each (the pickle is fuzzed).
pub fn torch_pickle(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let file = if selector == 0 {
        rest.to_vec()
    } else {
        torch_archive(rest)
    };
    let path = scratch_file("pytorch_model.bin", &file);
    if let Ok(weights) = Weights::open(&path) {
        read_weights(&weights);
    }
}

/// A zip archive laid out as `torch.save` writes one, around `pickle`.
fn torch_archive(pickle: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut member = |name: &str, bytes: &[u8]| {
        zip.start_file(name, stored).expect("a zip member");
        zip.write_all(bytes).expect("a zip member's bytes");
    };
    member("archive/data.pkl", pickle);
    member("archive/byteorder", b"little");
    let storage: Vec<u8> = (0..64u8).collect();
    for key in 0..4 {
        member(&format!("archive/data/{key}"), &storage);
    }
    zip.finish().expect("a finished zip archive").into_inner()
}

/// The one shard of a sharded output (`out.shard-0-of-1.safetensors`), read back for
/// `mscope merge`: its safetensors header and the manifest in its metadata.
pub fn shards(data: &[u8]) {
    let shard = scratch_file("shards/out.shard-0-of-1.safetensors", data);
    let _ = shards::read_all(&shard.with_file_name("out.safetensors"));
}

/// For the targets that build tokenizers (`tokenizer`, `gguf`): libFuzzer aborts on every panic,
/// even one caught, but mscope catches the `tokenizers` crate's panics on malformed files and
/// turns them into errors. A panic raised inside that crate is therefore let unwind to mscope's
/// catch; if mscope does not catch it, libfuzzer-sys's own catch around the target still aborts.
pub fn let_tokenizers_panics_unwind() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_tokenizers = info
            .location()
            .is_some_and(|at| at.file().contains("/tokenizers-"));
        if !in_tokenizers {
            abort(info);
        }
    }));
}
