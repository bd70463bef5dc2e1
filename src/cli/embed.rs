//! `mscope embed`: texts (or, with a CLIP model, images) → `embeddings.safetensors`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::backend::{self, BackendKind, OpFamily, Pooling};
use crate::error::{Error, Result};
use crate::instruments::embed::{EncoderOptions, ImageEmbedder, SentenceEncoder};
use crate::io::check_outputs;
use crate::io::embeddings::{texts_sidecar_path, write_texts_sidecar, EmbeddingsFile};
use crate::io::images::collect_images;
use crate::io::texts::{read_corpus, FieldNames, InputSpec};
use crate::weights::WeightsDtype;

#[derive(Args)]
pub struct EmbedArgs {
    /// Model directory (Hugging Face / sentence-transformers layout, or open_clip's), or a
    /// llama/qwen2 .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Input file (.txt, .jsonl, .csv, .tsv); `PATH=LABEL` labels every row of it. Repeatable.
    #[arg(
        long = "input",
        required_unless_present = "images",
        value_name = "PATH[=LABEL]"
    )]
    inputs: Vec<InputSpec>,
    /// Image files (.png, .jpg, .webp, .gif, .tif) or folders of them, embedded by a CLIP
    /// model's image tower (EXIF orientation applied).
    /// A folder's images are taken in sorted relative-path order, each labelled by its
    /// sub-folder (`DIR/cat/x.png` is a `cat`), as torchvision's ImageFolder does; any other
    /// file in a folder is an error. A .csv/.tsv/.jsonl lists images in its `--image-field`
    /// column (paths relative to the list's folder), labelled by `--label-field`.
    #[arg(long, num_args = 1.., value_name = "PATH", conflicts_with = "inputs")]
    images: Vec<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Texts (or images) per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Token limit per text, special tokens included [default: the model's max_seq_length].
    #[arg(long)]
    max_length: Option<usize>,
    /// Pooling [default: from the model's 1_Pooling/config.json].
    #[arg(long, value_enum)]
    pooling: Option<Pooling>,
    /// L2-normalise embeddings (`--normalize false` to switch off) [default: from modules.json].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    normalize: Option<bool>,
    /// Text prepended to every input (e.g. "query: " for e5 models).
    #[arg(long, default_value = "")]
    prefix: String,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Text field of .jsonl / column of .csv and .tsv inputs.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Image path field of .jsonl / column of .csv and .tsv image lists (`--images`).
    #[arg(long, default_value = "image")]
    image_field: String,
    /// Label field of .jsonl / column of .csv and .tsv inputs.
    #[arg(long, default_value = "label")]
    label_field: String,
    /// Element type of the GEMM weights and embedding tables on the device: `auto` keeps the
    /// checkpoint's (F16/BF16 stay half precision where the kernels read f16: wgpu with
    /// SHADER_F16), `f16` rounds f32 checkpoints to f16 there too, `f32` widens everything.
    #[arg(long, value_enum, default_value_t = WeightsDtype::Auto)]
    weights_dtype: WeightsDtype,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let out_dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !out_dir.is_dir() {
        return Err(Error::input(format!(
            "{}: output directory does not exist",
            out_dir.display()
        )));
    }
    let sidecar = texts_sidecar_path(&args.out);
    let mut inputs = vec![("--model", Some(args.model.as_path()))];
    inputs.extend(
        args.inputs
            .iter()
            .map(|i| ("--input", Some(i.path.as_path()))),
    );
    inputs.extend(args.images.iter().map(|p| ("--images", Some(p.as_path()))));
    check_outputs(
        &inputs,
        &[
            ("--out", Some(&args.out)),
            ("the texts sidecar", Some(&sidecar)),
        ],
    )?;
    if !args.images.is_empty() {
        return run_images(args);
    }
    let fields = FieldNames {
        text: args.text_field,
        label: args.label_field,
    };
    let corpus = read_corpus(&args.inputs, &fields)?;
    let backend = backend::open(args.backend, OpFamily::Encoder)?;
    let options = EncoderOptions {
        max_length: args.max_length,
        pooling: args.pooling,
        normalize: args.normalize,
        prefix: args.prefix,
        weights_dtype: args.weights_dtype,
    };
    let encoder = SentenceEncoder::load(&args.model, backend.clone(), &options)?;

    let bar = super::progress_bar(
        corpus.texts.len() as u64,
        "{bar:40} {pos}/{len} texts  {per_sec}  eta {eta}  {msg}",
    );
    let start = Instant::now();
    let mut tokens_done = 0;
    let embedded = encoder.embed(&corpus.texts, args.batch_size, &mut |rows, tokens| {
        tokens_done += tokens;
        bar.inc(rows as u64);
        bar.set_message(format!("{tokens_done} tokens"));
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let file = EmbeddingsFile {
        embeddings: embedded.embeddings,
        dim: embedded.dim,
        labels: corpus.labels,
        label_names: corpus.label_names,
        model: encoder.name().to_string(),
        pooling: encoder.pooling_name().to_string(),
        normalized: encoder.normalize(),
        max_length: encoder.max_length(),
    };
    // The sidecar goes first and is removed if the embeddings fail, so a failed run leaves
    // neither behind.
    write_texts_sidecar(&sidecar, &corpus.texts, &file.labels, &file.label_names)?;
    if let Err(e) = file.write(&args.out) {
        let _ = std::fs::remove_file(&sidecar);
        return Err(e);
    }
    let rows = file.rows();
    println!(
        "embedded {rows} texts ({} tokens, {} labels) with {} on {} in {seconds:.2} s: {:.1} texts/s, {:.0} tokens/s -> {} (texts in {})",
        embedded.tokens,
        file.label_names.len(),
        file.model,
        backend.name(),
        rows as f64 / seconds,
        embedded.tokens as f64 / seconds,
        args.out.display(),
        sidecar.display()
    );
    Ok(())
}

/// `--images`: files and folders through a CLIP model's image tower.
fn run_images(args: EmbedArgs) -> Result<()> {
    let fields = FieldNames {
        text: args.image_field.clone(),
        label: args.label_field.clone(),
    };
    let corpus = collect_images(&args.images, &fields)?;
    let backend = backend::open(args.backend, OpFamily::Encoder)?;
    let options = EncoderOptions {
        normalize: args.normalize,
        weights_dtype: args.weights_dtype,
        ..EncoderOptions::default()
    };
    let embedder = ImageEmbedder::load(&args.model, backend.clone(), &options)?;
    let bar = super::progress_bar(
        corpus.paths.len() as u64,
        "{bar:40} {pos}/{len} images  {per_sec}  eta {eta}",
    );
    let start = Instant::now();
    let embedded = embedder.embed(&corpus.paths, args.batch_size, &mut |rows| {
        bar.inc(rows as u64)
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let file = EmbeddingsFile {
        embeddings: embedded.embeddings,
        dim: embedded.dim,
        labels: corpus.labels,
        label_names: corpus.label_names,
        model: embedder.name().to_string(),
        pooling: "cls".to_string(),
        normalized: embedder.normalize(),
        max_length: 0,
    };
    // The sidecar lists each row's image path, so analyses can point at the images.
    let paths: Vec<String> = corpus
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let sidecar = texts_sidecar_path(&args.out);
    write_texts_sidecar(&sidecar, &paths, &file.labels, &file.label_names)?;
    if let Err(e) = file.write(&args.out) {
        let _ = std::fs::remove_file(&sidecar);
        return Err(e);
    }
    let rows = file.rows();
    println!(
        "embedded {rows} images ({} labels) with {} on {} in {seconds:.2} s: {:.1} images/s -> {} (paths in {})",
        file.label_names.len(),
        file.model,
        backend.name(),
        rows as f64 / seconds,
        args.out.display(),
        sidecar.display()
    );
    Ok(())
}
