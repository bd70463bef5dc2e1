//! `mscope ntk`: the tangent kernel of a classifier between data sets, computed in row blocks
//! that an interrupted run resumes from: an MLP (a safetensors file) on datasets, exact or
//! projected, or a transformer sequence classifier (a Hugging Face directory) on texts, exact.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::backend::cpu::CpuBackend;
use crate::backend::{self, Backend, BackendKind, OpFamily};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::instruments::ntk::{BlockDone, KernelJob, DEFAULT_TILE_ROWS};
use crate::instruments::project::{FactorSpec, KernelKind, ProjectionKind};
use crate::instruments::transformer_ntk::SequenceKernelJob;
use crate::io::check_outputs;
use crate::io::checkpoint::{file_digest, Checkpoint};
use crate::io::kernel_file::KernelFile;
use crate::io::texts::{read_rows, FieldNames, InputSpec, TextRow};
use crate::models::classifier::SequenceClassifier;
use crate::models::mlp::Mlp;
use crate::models::tokenize::{TextTokenizer, TokenizedText};
use crate::weights::WeightsDtype;

#[derive(Args)]
pub struct NtkArgs {
    /// MLP classifier (safetensors `fc{i}.weight`/`fc{i}.bias`, metadata `activation`), or a
    /// `BertForSequenceClassification` / `XLMRobertaForSequenceClassification` directory.
    #[arg(long)]
    model: PathBuf,
    /// The kernel's rows: a dataset (`x` F32 [N, d], `y` I64 [N]) for an MLP; texts (.jsonl,
    /// .csv, .tsv, .txt; labels optional) for a transformer classifier.
    #[arg(long)]
    data: PathBuf,
    /// Dataset of the kernel's columns (e.g. the training set for a test × train kernel)
    /// [default: the rows' own data].
    #[arg(long)]
    against: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = KernelKind::Trntk)]
    kind: KernelKind,
    #[arg(long, value_enum, default_value_t = ProjectionKind::None)]
    projection: ProjectionKind,
    /// Dimension k of the random projection (per factor for kronecker).
    #[arg(long, default_value_t = 0)]
    projection_dim: usize,
    /// Seed of the projection matrices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per block [default: what keeps a block's buffers near 256 MiB].
    #[arg(long)]
    block_rows: Option<usize>,
    /// Output kernel (safetensors `kernel` F32 [rows, cols]); finished blocks wait in
    /// `<out>.blocks/` until the kernel is complete.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Text field of .jsonl / column of .csv and .tsv data (transformer classifiers).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Label field of .jsonl / column of .csv and .tsv data (transformer classifiers; labels
    /// are optional, and checked against the model's `id2label` where given).
    #[arg(long, default_value = "label")]
    label_field: String,
}

/// Bytes of the `[block_rows, cols]` f32 buffers a block needs at most (kernel block and two
/// Gram matrices of one tile).
const BLOCK_BYTES: usize = 256 << 20;

pub fn run(args: NtkArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    check_outputs(
        &[
            ("--model", Some(&args.model)),
            ("--data", Some(&args.data)),
            ("--against", args.against.as_deref()),
        ],
        &[("--out", Some(&args.out))],
    )?;
    if args.model.is_dir() {
        return run_classifier(args);
    }
    let mlp = Mlp::read(&args.model)?;
    let read = |path: &PathBuf| -> Result<Dataset> {
        let data = Dataset::read(path)?;
        if data.dim != mlp.input_dim() {
            return Err(Error::input(format!(
                "{}: rows have {} features, but the model {} takes {}",
                path.display(),
                data.dim,
                args.model.display(),
                mlp.input_dim()
            )));
        }
        data.check_labels(mlp.num_classes(), path)?;
        Ok(data)
    };
    let rows = read(&args.data)?;
    let cols = args.against.as_ref().map(read).transpose()?;
    let spec = FactorSpec {
        kind: args.kind,
        projection: args.projection,
        projection_dim: args.projection_dim,
        seed: args.seed,
    };
    let n_cols = cols.as_ref().unwrap_or(&rows).len();
    let block_rows = match args.block_rows {
        Some(rows) => rows,
        // Whole tiles, so no tile is computed twice.
        None => {
            // (An empty data set is refused by `job.check()` below.)
            (BLOCK_BYTES / (12 * n_cols.max(1)))
                .max(1)
                .div_ceil(DEFAULT_TILE_ROWS)
                * DEFAULT_TILE_ROWS
        }
    };
    let job = KernelJob {
        mlp: &mlp,
        rows: &rows.x,
        cols: cols.as_ref().map(|c| c.x.as_slice()),
        spec,
        block_rows,
        tile_rows: DEFAULT_TILE_ROWS,
    };
    job.check()?;
    let backend = backend::open(args.backend, OpFamily::Ntk)?;

    let manifest = json!({
        "model": file_digest(&args.model)?,
        "data": file_digest(&args.data)?,
        "against": args.against.as_deref().map(file_digest).transpose()?,
        "kind": args.kind,
        "projection": args.projection,
        "projection_dim": args.projection_dim,
        "seed": args.seed,
        "block_rows": block_rows,
        // faer splits GEMMs by thread count: the same count keeps resumed blocks bit-exact.
        "threads": rayon::current_num_threads(),
    });
    let (kernel, resumed_rows, seconds) = drive(
        &args.out,
        job.blocks().len(),
        (job.n_rows(), n_cols),
        &manifest,
        &mut |checkpoint, on_block| job.run(backend.as_ref(), checkpoint, on_block),
    )?;
    let computed = (job.n_rows() - resumed_rows) * n_cols;
    let projection = match args.projection {
        ProjectionKind::None => "exact".to_string(),
        p => format!("{p:?} k={}", args.projection_dim).to_lowercase(),
    };
    println!(
        "{} {}×{} ({projection}) of a {} MLP on {} in {seconds:.2} s: {:.3e} pairs/s{} -> {}",
        args.kind.name(),
        kernel.rows,
        kernel.cols,
        mlp.dims()
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        backend.name(),
        computed as f64 / seconds,
        if resumed_rows > 0 {
            format!(" ({resumed_rows} rows resumed from the checkpoint)")
        } else {
            String::new()
        },
        args.out.display()
    );
    Ok(())
}

/// A kernel job's `run`: its checkpoint, a callback after each block, the kernel unless stopped.
type BlockRun<'a> = dyn FnMut(
        Option<&Checkpoint>,
        &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<KernelFile>>
    + 'a;

/// Runs a kernel job block by block — with a checkpoint beside `out` when there is more than
/// one block, and a progress bar over its `n_rows × n_cols` pairs — and writes the kernel. Returns
/// it with the rows resumed from the checkpoint and the seconds taken.
fn drive(
    out: &Path,
    blocks: usize,
    (n_rows, n_cols): (usize, usize),
    manifest: &serde_json::Value,
    run: &mut BlockRun<'_>,
) -> Result<(KernelFile, usize, f64)> {
    let checkpoint = if blocks > 1 {
        Some(Checkpoint::open(&Checkpoint::dir_for(out), manifest)?)
    } else {
        None
    };
    let bar = super::progress_bar(
        (n_rows * n_cols) as u64,
        "{bar:40} {human_pos}/{human_len} pairs  {per_sec}  eta {eta}  {msg}",
    );
    let start = Instant::now();
    let mut resumed_rows = 0;
    let kernel = run(checkpoint.as_ref(), &mut |block| {
        if block.resumed {
            resumed_rows += block.rows.len();
            bar.set_message(format!("{resumed_rows} rows resumed"));
        }
        bar.inc((block.rows.len() * n_cols) as u64);
        ControlFlow::Continue(())
    })?
    .expect("the callback never stops the run");
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    kernel.write(out)?;
    if let Some(c) = checkpoint {
        c.remove()?;
    }
    Ok((kernel, resumed_rows, seconds))
}

/// The digest of a model directory's config and weights, for the checkpoint manifest.
fn directory_digest(dir: &Path) -> Result<serde_json::Value> {
    let mut digests = serde_json::Map::new();
    for name in [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ] {
        let path = dir.join(name);
        if path.is_file() {
            digests.insert(name.into(), file_digest(&path)?.into());
        }
    }
    Ok(digests.into())
}

/// `mscope ntk` of a transformer sequence classifier on texts: exact kernels only.
fn run_classifier(args: NtkArgs) -> Result<()> {
    if args.projection != ProjectionKind::None {
        return Err(Error::input(
            format!(
                "--projection {:?}: projected kernels of transformer classifiers are not \
             implemented; use --projection none for the exact kernel",
                args.projection
            )
            .to_lowercase(),
        ));
    }
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    // The factors' backward pass runs on the host from f32 weights.
    let classifier = SequenceClassifier::load(&args.model, cpu, WeightsDtype::F32)?;
    let max_tokens = classifier.encoder().config().max_tokens();
    let tokenizer = TextTokenizer::load(&args.model, max_tokens)?;
    let fields = FieldNames {
        text: args.text_field.clone(),
        label: args.label_field.clone(),
    };
    let read = |path: &PathBuf| -> Result<Vec<TokenizedText>> {
        let spec = InputSpec {
            path: path.clone(),
            label: None,
        };
        let rows = read_rows(&spec, &fields)?;
        if rows.is_empty() {
            return Err(Error::input(format!("{}: no texts", path.display())));
        }
        check_text_labels(path, &rows, classifier.labels())?;
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let tokenized = tokenizer.encode(&texts)?;
        let truncated: Vec<usize> = (0..tokenized.len())
            .filter(|&i| tokenized[i].truncated)
            .collect();
        if let Some(first) = truncated.first() {
            eprintln!(
                "note: {}: {} of {} texts (the first: row {}) are longer than the model's \
                 {max_tokens} positions and were truncated to {max_tokens} tokens",
                path.display(),
                truncated.len(),
                texts.len(),
                first + 1
            );
        }
        Ok(tokenized)
    };
    let rows = read(&args.data)?;
    let cols = args.against.as_ref().map(read).transpose()?;
    let n_cols = cols.as_ref().unwrap_or(&rows).len();
    let block_rows = args.block_rows.unwrap_or_else(|| {
        (BLOCK_BYTES / (12 * n_cols.max(1)))
            .max(1)
            .div_ceil(DEFAULT_TILE_ROWS)
            * DEFAULT_TILE_ROWS
    });
    let job = SequenceKernelJob {
        classifier: &classifier,
        rows: &rows,
        cols: cols.as_deref(),
        kind: args.kind,
        block_rows,
        tile_rows: DEFAULT_TILE_ROWS,
    };
    job.check()?;
    let backend = backend::open(args.backend, OpFamily::Ntk)?;
    let manifest = json!({
        "model": directory_digest(&args.model)?,
        "data": file_digest(&args.data)?,
        "against": args.against.as_deref().map(file_digest).transpose()?,
        "text_field": args.text_field,
        "kind": args.kind,
        "block_rows": block_rows,
        "threads": rayon::current_num_threads(),
    });
    let (kernel, resumed_rows, seconds) = drive(
        &args.out,
        job.blocks().len(),
        (job.n_rows(), n_cols),
        &manifest,
        &mut |checkpoint, on_block| job.run(backend.as_ref(), checkpoint, on_block),
    )?;
    let computed = (job.n_rows() - resumed_rows) * n_cols;
    println!(
        "{} {}×{} (exact) of a {} classifier ({} labels) on {} in {seconds:.2} s: {:.3e} \
         pairs/s{} -> {}",
        args.kind.name(),
        kernel.rows,
        kernel.cols,
        classifier.encoder().config().model_type,
        classifier.num_labels(),
        backend.name(),
        computed as f64 / seconds,
        if resumed_rows > 0 {
            format!(" ({resumed_rows} rows resumed from the checkpoint)")
        } else {
            String::new()
        },
        args.out.display()
    );
    Ok(())
}

/// An error naming the file and row of a label that is not one of the model's: a label name
/// of `id2label`, or a class index below `num_labels`. Rows without a label pass.
fn check_text_labels(path: &Path, rows: &[TextRow], labels: &[String]) -> Result<()> {
    for (i, row) in rows.iter().enumerate() {
        let Some(label) = &row.label else { continue };
        let known =
            labels.contains(label) || label.parse::<usize>().is_ok_and(|c| c < labels.len());
        if !known {
            return Err(Error::input(format!(
                "{}: row {}: label {label:?} is not one of the model's {} labels ({}) nor a \
                 class index below {}",
                path.display(),
                i + 1,
                labels.len(),
                labels.join(", "),
                labels.len()
            )));
        }
    }
    Ok(())
}
