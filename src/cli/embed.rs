//! `mscope embed`: texts (or, with a CLIP model, images) → `embeddings.safetensors`, or a
//! NumPy `.npy` or a Parquet table (`--format`, else from the extension of `--out`).
//!
//! With `--shard I/N` a run embeds only shard `I`'s batches — the batches one process runs
//! (texts sorted longest first, `--batch-size` per batch), balanced by token count — into
//! `OUT.shard-I-of-N.safetensors`; `mscope merge OUT` writes the embeddings and the texts
//! sidecar one process writes, byte for byte (it reads the inputs again, checked against the
//! digests the shards recorded). A shard saves each finished batch in
//! `OUT.shard-I-of-N.safetensors.blocks/`, resumes from them when rerun, and on SIGTERM stops
//! between batches with exit status 75.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::backend::{self, Backend, BackendKind, MatmulPrecision, OpFamily, Pooling};
use crate::error::{Error, Result};
use crate::instruments::embed::{EncoderOptions, ImageEmbedder, SentenceEncoder};
use crate::io::checkpoint::{file_digest, model_digest, Checkpoint};
use crate::io::embeddings::{texts_sidecar_path, write_texts_beside, EmbeddingsFile};
use crate::io::images::collect_images;
use crate::io::shards::{self, Manifest, Shard, ShardFile};
use crate::io::tensor_file::TensorOut;
use crate::io::texts::{read_corpus, FieldNames, InputSpec};
use crate::io::{check_outputs, npy, parquet_file, preemption};
use crate::phases;
use crate::weights::WeightsDtype;

#[derive(Args)]
#[command(after_help = "\
Shards: --shard I/N embeds shard I (0-based) of N — a contiguous range of the batches one \
process runs, balanced by token count — into OUT.shard-I-of-N.safetensors; after all N, \
`mscope merge OUT` writes OUT and its texts sidecar, the same bytes as one process, provided \
every shard ran with the same backend and --threads (give it explicitly on a cluster). A shard \
resumes from the batches saved in OUT.shard-I-of-N.safetensors.blocks/, and SIGTERM stops it \
between batches with exit status 75 (EX_TEMPFAIL: rerun the same command to finish).")]
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
    /// Output file: safetensors (with the texts sidecar OUT.texts.jsonl), .npy (float32
    /// [rows, dim], labels in the texts sidecar) or .parquet (columns embedding, label, and text
    /// or path).
    #[arg(long)]
    out: PathBuf,
    /// Output format [default: from the extension of --out: .npy, .parquet, else safetensors].
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Precision of the matmuls' operands, as torch's `set_float32_matmul_precision`:
    /// `highest` multiplies in f32; `medium` rounds activations and weights to bf16 and sums in
    /// f32, on the CPU's AMX tiles (Sapphire Rapids and later) or AVX512_BF16 (Zen 4, Cooper
    /// Lake), or CUDA's tensor cores (sm_80+); relative error about 1e-3. A hint: on a CPU with
    /// neither, on wgpu or on an older GPU, the f32 path runs (one line on stderr).
    #[arg(long, value_enum, default_value_t = MatmulPrecision::Highest)]
    matmul_precision: MatmulPrecision,
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
    /// checkpoint's (F16/BF16 stay half precision where the kernels read them: CPU, CUDA, and
    /// wgpu with SHADER_F16), `f16` rounds f32 checkpoints to f16 there too, `bf16` rounds them to bf16
    /// (kept bf16 on the CPU and CUDA, f16 on wgpu with SHADER_F16), `f32` widens
    /// everything. GGUF files dequantise to f32, or to f16 / bf16 when asked.
    #[arg(long, value_enum, default_value_t = WeightsDtype::Auto)]
    weights_dtype: WeightsDtype,
    /// Embed only shard I (0-based) of N into OUT.shard-I-of-N.safetensors; `mscope merge OUT`
    /// assembles them (texts only).
    #[arg(long, value_name = "I/N", conflicts_with = "images")]
    shard: Option<Shard>,
    /// With `--images`: skip files that are not images or cannot be decoded (corrupt,
    /// truncated, refused such as CMYK), listing each on stderr, and embed the rest. Without
    /// it the first such file is an error naming it.
    #[arg(long, requires = "images")]
    skip_bad: bool,
}

/// What `mscope embed` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Safetensors,
    Npy,
    Parquet,
}

impl OutputFormat {
    /// The format of `out`: `flag` when given, else from the extension (safetensors for any
    /// other). The analysis commands tell formats by extension, so a flag that contradicts the
    /// extension, or names npy or parquet for another extension, is an error.
    pub fn resolve(out: &Path, flag: Option<Self>) -> Result<Self> {
        let ext = out
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let by_extension = match ext.as_str() {
            "npy" => Some(OutputFormat::Npy),
            "parquet" => Some(OutputFormat::Parquet),
            "safetensors" => Some(OutputFormat::Safetensors),
            _ => None,
        };
        match (flag, by_extension) {
            (None, found) => Ok(found.unwrap_or(OutputFormat::Safetensors)),
            (Some(flag), Some(found)) if flag != found => Err(Error::input(format!(
                "--out {}: the extension says {}, but --format is {}; make them agree",
                out.display(),
                found.name(),
                flag.name()
            ))),
            (Some(flag), None) if flag != OutputFormat::Safetensors => Err(Error::input(format!(
                "--out {}: --format {} needs the extension .{} (the analysis commands tell \
                     formats by extension)",
                out.display(),
                flag.name(),
                flag.name()
            ))),
            (Some(flag), _) => Ok(flag),
        }
    }

    fn name(self) -> &'static str {
        match self {
            OutputFormat::Safetensors => "safetensors",
            OutputFormat::Npy => "npy",
            OutputFormat::Parquet => "parquet",
        }
    }

    /// Whether the texts (and, for .npy, the labels) go to the sidecar OUT.texts.jsonl; a
    /// Parquet table holds them in its columns.
    fn has_sidecar(self) -> bool {
        self != OutputFormat::Parquet
    }
}

pub fn run(args: EmbedArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let format = OutputFormat::resolve(&args.out, args.format)?;
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
    let shard_path = args.shard.map(|s| s.path(&args.out));
    match &shard_path {
        Some(path) => check_outputs(&inputs, &[("--out", Some(path))])?,
        None => check_outputs(
            &inputs,
            &[
                ("--out", Some(&args.out)),
                (
                    "the texts sidecar",
                    format.has_sidecar().then_some(sidecar.as_path()),
                ),
            ],
        )?,
    }
    if !args.images.is_empty() {
        return run_images(args, format);
    }
    let fields = FieldNames {
        text: args.text_field.clone(),
        label: args.label_field.clone(),
    };
    let corpus = read_corpus(&args.inputs, &fields)?;
    phases::mark("read inputs");
    let backend =
        backend::open_with_precision(args.backend, OpFamily::Encoder, args.matmul_precision)?;
    phases::mark("open backend");
    let options = EncoderOptions {
        max_length: args.max_length,
        pooling: args.pooling,
        normalize: args.normalize,
        prefix: args.prefix.clone(),
        weights_dtype: args.weights_dtype,
    };
    let encoder = SentenceEncoder::load(&args.model, backend.clone(), &options)?;
    if let (Some(shard), Some(path)) = (args.shard, &shard_path) {
        return run_shard(
            &args,
            &corpus.texts,
            &encoder,
            backend.as_ref(),
            shard,
            path,
        );
    }

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
    write_with_texts(&args.out, format, &file, &corpus.texts, false)?;
    phases::mark("write output");
    let rows = file.rows();
    outln!(
        "embedded {rows} texts ({} tokens, {} labels) with {} on {} in {seconds:.2} s: {:.1} texts/s, {:.0} tokens/s -> {}{}",
        embedded.tokens,
        file.label_names.len(),
        file.model,
        backend.name(),
        rows as f64 / seconds,
        embedded.tokens as f64 / seconds,
        args.out.display(),
        texts_note(format, &sidecar)
    )?;
    // The process ends next and its memory goes with it: freeing the tokenizer's vocabulary one
    // string at a time and the model's buffers would only delay the exit (4 ms of a 0.2 s run).
    std::mem::forget(encoder);
    Ok(())
}

/// `--images`: files and folders through a CLIP model's image tower.
fn run_images(args: EmbedArgs, format: OutputFormat) -> Result<()> {
    let fields = FieldNames {
        text: args.image_field.clone(),
        label: args.label_field.clone(),
    };
    let corpus = collect_images(&args.images, &fields, args.skip_bad)?;
    let backend =
        backend::open_with_precision(args.backend, OpFamily::Encoder, args.matmul_precision)?;
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
    let embedded = embedder.embed(&corpus.paths, args.batch_size, args.skip_bad, &mut |rows| {
        bar.inc(rows as u64)
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let files = corpus.paths.len() + corpus.skipped.len();
    let undecodable: Vec<usize> = embedded.skipped.iter().map(|&(row, _)| row).collect();
    let mut corpus = corpus.without(&undecodable);
    corpus
        .skipped
        .extend(embedded.skipped.into_iter().map(|(_, why)| why));
    if !corpus.skipped.is_empty() {
        eprintln!(
            "skipped {} of {files} files (--skip-bad):",
            corpus.skipped.len()
        );
        for why in &corpus.skipped {
            eprintln!("  {why}");
        }
    }
    if corpus.paths.is_empty() {
        return Err(Error::input(format!(
            "every one of the {files} files was skipped (--skip-bad): nothing to embed"
        )));
    }

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
    // Each row keeps its image path (sidecar or `path` column), so analyses can point at it.
    let paths: Vec<String> = corpus
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    write_with_texts(&args.out, format, &file, &paths, true)?;
    let rows = file.rows();
    outln!(
        "embedded {rows} images ({} labels) with {} on {} in {seconds:.2} s: {:.1} images/s -> {}{}",
        file.label_names.len(),
        file.model,
        backend.name(),
        rows as f64 / seconds,
        args.out.display(),
        texts_note(format, &texts_sidecar_path(&args.out))
    )?;
    Ok(())
}

/// Writes the embeddings in `format` with each row's text (image path when `paths`): in the
/// table of a Parquet file; otherwise the embeddings file first, then its texts sidecar, which
/// records the file's row count and digest (readers refuse a sidecar that does not match). A
/// sidecar that cannot be written takes the embeddings file with it, so a failed run leaves
/// neither behind.
fn write_with_texts(
    out: &Path,
    format: OutputFormat,
    file: &EmbeddingsFile,
    texts: &[String],
    paths: bool,
) -> Result<()> {
    match format {
        OutputFormat::Parquet => return parquet_file::write(out, file, texts, paths),
        OutputFormat::Npy => npy::write_f32(out, &[file.rows(), file.dim], &file.embeddings)?,
        OutputFormat::Safetensors => file.write(out)?,
    }
    if let Err(e) = write_texts_beside(out, texts, &file.labels, &file.label_names) {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(())
}

/// Where the run summary says the texts went.
fn texts_note(format: OutputFormat, sidecar: &Path) -> String {
    match format {
        OutputFormat::Parquet => String::new(),
        _ => format!(" (texts in {})", sidecar.display()),
    }
}

/// What identifies an embedding run across shards: the inputs (paths, to read them again at
/// the merge, and digests), the model's files, every option that changes the bits, backend and
/// threads; and what the merged file records.
fn job_manifest(
    args: &EmbedArgs,
    encoder: &SentenceEncoder,
    backend: &dyn Backend,
    rows: usize,
) -> Result<serde_json::Value> {
    let inputs = args
        .inputs
        .iter()
        .map(|i| {
            let path = i.path.canonicalize().map_err(|e| Error::io(&i.path, e))?;
            Ok(json!({
                "path": path.display().to_string(),
                "label": i.label,
                "digest": file_digest(&i.path)?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "command": "embed",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": backend.name(),
        "threads": rayon::current_num_threads(),
        "model": model_digest(&args.model)?,
        "inputs": inputs,
        "text_field": args.text_field,
        "label_field": args.label_field,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "pooling": args.pooling.map(|p| format!("{p:?}")),
        "normalize": args.normalize,
        "prefix": args.prefix,
        "weights_dtype": format!("{:?}", args.weights_dtype),
        "rows": rows,
        "file": {
            "model": encoder.name(),
            "pooling": encoder.pooling_name(),
            "normalized": encoder.normalize(),
            "max_length": encoder.max_length(),
            "dim": encoder.dim(),
        },
    }))
}

/// `--shard I/N`: this shard's batches into `path`, resumable from the checkpoint beside it.
fn run_shard(
    args: &EmbedArgs,
    texts: &[String],
    encoder: &SentenceEncoder,
    backend: &dyn Backend,
    shard: Shard,
    path: &Path,
) -> Result<()> {
    preemption::watch()?;
    let plan = encoder.plan(texts, args.batch_size)?;
    let costs: Vec<u64> = (0..plan.batches())
        .map(|b| plan.batch_tokens(b) as u64)
        .collect();
    let mine = shard.units(&costs);
    let manifest = Manifest {
        job: job_manifest(args, encoder, backend, texts.len())?,
        index: shard.index,
        count: shard.count,
        units: mine
            .clone()
            .map(|b| [plan.positions(b).start, plan.positions(b).end])
            .collect(),
    };
    let dir = Checkpoint::dir_for(path);
    let checkpoint = match mine.is_empty() {
        true => None,
        false => Some(Checkpoint::open(
            &dir,
            &serde_json::to_value(&manifest).expect("manifests serialise"),
        )?),
    };
    let dim = encoder.dim();
    let start = Instant::now();
    let (mut rows, mut embeddings, mut resumed) = (Vec::new(), Vec::new(), 0);
    for b in mine.clone() {
        let saved = match &checkpoint {
            Some(c) => c.load(&plan.positions(b), dim)?,
            None => None,
        };
        resumed += usize::from(saved.is_some());
        let values = match saved {
            Some(values) => values,
            None => {
                let values = encoder.embed_batch(&plan, b)?;
                if let Some(c) = &checkpoint {
                    c.save(&plan.positions(b), &values)?;
                }
                values
            }
        };
        rows.extend(plan.batch(b).iter().map(|&i| i as i64));
        embeddings.extend_from_slice(&values);
        if b + 1 < mine.end && preemption::requested() {
            return Err(Error::Preempted(format!(
                "SIGTERM: shard {shard}: {} of {} batches saved in {}; rerun the same command \
                 to resume",
                b + 1 - mine.start,
                mine.len(),
                dir.display()
            )));
        }
    }
    shards::write(
        path,
        &manifest,
        vec![
            TensorOut::i64("rows", vec![rows.len()], &rows),
            TensorOut::f32("embeddings", vec![rows.len(), dim], &embeddings),
        ],
    )?;
    if let Some(c) = checkpoint {
        c.remove()?;
    }
    outln!(
        "embed shard {shard}: {} texts in {} batches{} with {} on {} in {:.2} s -> {}",
        rows.len(),
        mine.len(),
        if resumed > 0 {
            format!(" ({resumed} resumed from the checkpoint)")
        } else {
            String::new()
        },
        encoder.name(),
        backend.name(),
        start.elapsed().as_secs_f64(),
        path.display()
    )?;
    Ok(())
}

/// `mscope merge` of `embed` shards (already checked to be complete and of one run): the
/// inputs are read again (and must still have the digests the shards recorded) for the labels
/// and the texts sidecar; each shard's rows go to their places.
pub(super) fn merge(out: &Path, shards: &[ShardFile]) -> Result<()> {
    let job = &shards[0].manifest.job;
    let bad = |what: &str| {
        Error::input(format!(
            "{}: shard manifest lacks {what}",
            shards[0].file.path().display()
        ))
    };
    let specs = job["inputs"]
        .as_array()
        .ok_or_else(|| bad("`inputs`"))?
        .iter()
        .map(|i| {
            let path = PathBuf::from(i["path"].as_str().ok_or_else(|| bad("an input path"))?);
            if file_digest(&path)? != i["digest"].as_str().unwrap_or("") {
                return Err(Error::input(format!(
                    "{}: changed since the shards embedded it (its digest differs); rerun them",
                    path.display()
                )));
            }
            Ok(InputSpec {
                path,
                label: i["label"].as_str().map(str::to_string),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut inputs: Vec<(&str, Option<&Path>)> = specs
        .iter()
        .map(|s| ("an input", Some(s.path.as_path())))
        .collect();
    inputs.extend(shards.iter().map(|s| ("a shard", Some(s.file.path()))));
    let format = OutputFormat::resolve(out, None)?;
    let sidecar = texts_sidecar_path(out);
    check_outputs(
        &inputs,
        &[
            ("OUT", Some(out)),
            (
                "the texts sidecar",
                format.has_sidecar().then_some(sidecar.as_path()),
            ),
        ],
    )?;
    let fields = FieldNames {
        text: job["text_field"].as_str().unwrap_or("text").to_string(),
        label: job["label_field"].as_str().unwrap_or("label").to_string(),
    };
    let corpus = read_corpus(&specs, &fields)?;
    let info = &job["file"];
    let dim = info["dim"].as_u64().ok_or_else(|| bad("`file.dim`"))? as usize;
    let n = corpus.texts.len();
    let mut embeddings = vec![0.0f32; n * dim];
    let mut filled = vec![false; n];
    for shard in shards {
        let (_, rows) = shard.file.i64("rows")?;
        let (shape, values) = shard.file.f32("embeddings")?;
        if shape != [rows.len(), dim] {
            return Err(shard.file.error(format!(
                "`embeddings` has shape {shape:?} for {} rows of dimension {dim}",
                rows.len()
            )));
        }
        for (&row, value) in rows.iter().zip(values.chunks_exact(dim.max(1))) {
            let i = usize::try_from(row).ok().filter(|&i| i < n && !filled[i]);
            let Some(i) = i else {
                return Err(shard.file.error(format!(
                    "row {row} is outside the {n} inputs or embedded twice"
                )));
            };
            filled[i] = true;
            embeddings[i * dim..(i + 1) * dim].copy_from_slice(value);
        }
    }
    if let Some(row) = filled.iter().position(|f| !f) {
        return Err(Error::input(format!(
            "{}: no shard embedded row {row} of {n}",
            out.display()
        )));
    }
    let file = EmbeddingsFile {
        embeddings,
        dim,
        labels: corpus.labels,
        label_names: corpus.label_names,
        model: info["model"].as_str().unwrap_or("").to_string(),
        pooling: info["pooling"].as_str().unwrap_or("").to_string(),
        normalized: info["normalized"].as_bool() == Some(true),
        max_length: info["max_length"].as_u64().unwrap_or(0) as usize,
    };
    write_with_texts(out, format, &file, &corpus.texts, false)?;
    outln!(
        "embeddings of {n} texts merged from {} shards -> {}{}",
        shards.len(),
        out.display(),
        texts_note(format, &sidecar)
    )?;
    Ok(())
}
