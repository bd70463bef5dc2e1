//! `mscope ntk`: the tangent kernel of a classifier between data sets, computed in row blocks
//! that an interrupted run resumes from: an MLP (a safetensors file) on datasets, exact or
//! projected, or a transformer sequence classifier (a Hugging Face directory) on texts, exact.
//!
//! With `--shard I/N` the run computes only shard `I`'s row tiles (the kernel's tiles balanced
//! by cost, see [`crate::io::shards`]) into `OUT.shard-I-of-N.safetensors`; `mscope merge OUT`
//! assembles the `N` shards into the kernel one process writes, byte for byte. SIGTERM stops
//! either kind of run between blocks (tiles for a shard) with exit status 75 once the finished
//! ones are checkpointed; the same command resumes.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::backend::{self, Backend, BackendKind, JlDistribution, JlSpec, OpFamily};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::instruments::layers::LayerSpec;
use crate::instruments::ntk::{self, BlockDone, KernelJob, Tiling, DEFAULT_TILE_ROWS};
use crate::instruments::project::{FactorSpec, KernelKind, ProjectionKind};
use crate::instruments::transformer_ntk::{ColumnTiles, SequenceKernelJob};
use crate::io::checkpoint::{file_digest, Checkpoint};
use crate::io::kernel_file::KernelFile;
use crate::io::shards::{self, Manifest, Shard, ShardFile};
use crate::io::tensor_file::TensorOut;
use crate::io::texts::{read_rows, text_label_indices, FieldNames, InputSpec};
use crate::io::{check_outputs, preemption};
use crate::models::classifier::SequenceClassifier;
use crate::models::mlp::Mlp;
use crate::models::tokenize::{TextTokenizer, TokenizedText};
use crate::weights::WeightsDtype;

#[derive(Args)]
#[command(after_help = "\
Shards and preemption:
  --shard I/N computes shard I (0-based) of N: a contiguous range of the kernel's row tiles,
  balanced by cost (a square kernel computes only its upper triangle), written to
  OUT.shard-I-of-N.safetensors with a manifest (inputs' digests, arguments, mscope version,
  backend, threads, its tiles). Run the N shards in any order, anywhere, then
  `mscope merge OUT` writes OUT: the same bytes as this command without --shard, provided every
  shard ran with the same backend and CPU thread count (the merge refuses otherwise; on a
  cluster give --threads explicitly, since the default follows each node's cores).

  SIGTERM (Slurm's preemption and time-limit signal) stops a run between blocks (tiles for a
  shard) once the finished ones are saved in OUT.blocks/ (OUT.shard-I-of-N.safetensors.blocks/);
  it then exits with status 75 (EX_TEMPFAIL: stopped cleanly, rerun to finish). Rerunning the
  same command, also after SIGKILL, resumes from the saved tiles.

  --devices 0,1,… (with --backend cuda or wgpu) runs one worker per device over a shared queue
  of tiles, with or without --shard; the kernel's bytes are those of one device of the kind.")]
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
    /// The kernel: trntk, trntk0, pntk, gradcos (the cosine of per-sample loss gradients, every
    /// point labelled) or embedding (the cosine of the hidden states).
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
    #[arg(long, conflicts_with = "shard")]
    block_rows: Option<usize>,
    /// Rows per tile, the unit of computation, sharding and (for shards) checkpoints; it
    /// decides the GEMM shapes, so kernels with other tile rows may differ in the last bits.
    #[arg(long, default_value_t = DEFAULT_TILE_ROWS)]
    tile_rows: usize,
    /// Compute only shard I (0-based) of N into OUT.shard-I-of-N.safetensors; `mscope merge
    /// OUT` assembles the kernel (see below).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Devices to run on together, one worker each over a shared queue of tiles: CUDA
    /// ordinals, or wgpu adapters as `mscope devices` numbers them (with --backend cuda or
    /// wgpu). The bytes out are those of one device of the kind; an index may repeat.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "I,J,…",
        conflicts_with = "block_rows"
    )]
    devices: Vec<usize>,
    /// Output kernel (safetensors `kernel` F32 [rows, cols]); finished blocks wait in
    /// `<out>.blocks/` until the kernel is complete.
    #[arg(long)]
    out: PathBuf,
    /// Texts of a second kernel's rows, against the --data texts (a test set for a test ×
    /// train kernel), computed in the same run from the same --data factors (transformer
    /// classifiers, without --against, --shard or --devices).
    #[arg(long, requires = "test_out")]
    test_data: Option<PathBuf>,
    /// Output of the --test-data × --data kernel: the bytes `--data TEST --against DATA
    /// --out TEST_OUT` writes.
    #[arg(long, requires = "test_data")]
    test_out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Parameters the kernel sums over (transformer classifiers): comma-separated `all`,
    /// `head`, `last:K` (the last K encoder layers and the head), `embeddings`, or
    /// parameter-name prefixes with `*` for any characters (e.g. `bert.encoder.layer.1.`).
    #[arg(long, default_value = "all", value_name = "SPEC")]
    layers: LayerSpec,
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

/// Rows per block that keep a block's buffers near [`BLOCK_BYTES`] for `n_cols` columns: whole
/// tiles, so no tile is computed twice. (An empty data set is refused by the job's check.)
fn default_block_rows(n_cols: usize, tile_rows: usize) -> usize {
    (BLOCK_BYTES / (12 * n_cols.max(1)))
        .max(1)
        .div_ceil(tile_rows.max(1))
        * tile_rows.max(1)
}

pub fn run(args: NtkArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    if args.projection == ProjectionKind::None && args.projection_dim != 0 {
        // Otherwise the exact kernel would be computed and the dimension silently ignored.
        return Err(Error::input(format!(
            "--projection-dim {} applies to a random projection (--projection rademacher, \
             gaussian or kronecker); without --projection the kernel is exact",
            args.projection_dim
        )));
    }
    let out = match args.shard {
        Some(shard) => shard.path(&args.out),
        None => args.out.clone(),
    };
    check_outputs(
        &[
            ("--model", Some(&args.model)),
            ("--data", Some(&args.data)),
            ("--against", args.against.as_deref()),
            ("--test-data", args.test_data.as_deref()),
        ],
        &[
            ("--out", Some(&out)),
            ("--test-out", args.test_out.as_deref()),
        ],
    )?;
    if args.test_data.is_some() {
        let refused = [
            (
                !args.model.is_dir(),
                "an MLP (its test kernel is a second run with --against)",
            ),
            (
                args.against.is_some(),
                "--against (the test kernel's columns are --data)",
            ),
            (
                args.shard.is_some(),
                "--shard (shard each kernel as its own run)",
            ),
            (!args.devices.is_empty(), "--devices"),
        ];
        if let Some((_, what)) = refused.iter().find(|(refused, _)| *refused) {
            return Err(Error::input(format!(
                "--test-data computes a transformer classifier's test × train kernel beside its \
                 train × train kernel in one process; it does not take {what}"
            )));
        }
    }
    if args.model.is_dir() {
        return run_classifier(args, &out);
    }
    if !args.layers.is_all() {
        return Err(Error::input(format!(
            "--layers {}: only transformer classifiers (a model directory) take --layers; an \
             MLP's kernel covers all its layers",
            args.layers
        )));
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
    let block_rows = args
        .block_rows
        .unwrap_or_else(|| default_block_rows(n_cols, args.tile_rows));
    let job = KernelJob {
        mlp: &mlp,
        rows: &rows.x,
        cols: cols.as_ref().map(|c| c.x.as_slice()),
        row_labels: Some(&rows.y),
        col_labels: cols.as_ref().map(|c| c.y.as_slice()),
        spec,
        block_rows,
        tile_rows: args.tile_rows,
    };
    let backends = open_backends(&args)?;
    let backend = backends[0].clone();
    preemption::watch()?;
    let manifest = job_manifest(
        json!({
            "model": file_digest(&args.model)?,
            "data": file_digest(&args.data)?,
            "against": args.against.as_deref().map(file_digest).transpose()?,
        }),
        json!({
            "kind": args.kind,
            "projection": args.projection,
            "projection_dim": args.projection_dim,
            "seed": args.seed,
        }),
        &job.tiling(),
        backend.as_ref(),
        (args.kind, job.projection_dim()),
    );
    if args.shard.is_some() || !args.devices.is_empty() {
        let backends: Vec<&dyn Backend> = backends.iter().map(|b| b.as_ref()).collect();
        return run_tiled(
            args.shard,
            &out,
            &job.tiling(),
            manifest,
            &backends,
            &mut |tiles, checkpoint, on_tile| job.run_tiles(&backends, tiles, checkpoint, on_tile),
        );
    }
    job.check()?;
    let (kernel, resumed_rows, seconds) = drive(
        &args.out,
        &job.tiling(),
        manifest,
        &mut |checkpoint, on_block| job.run(backend.as_ref(), checkpoint, on_block),
    )?;
    let computed = (job.n_rows() - resumed_rows) * n_cols;
    let projection = match args.projection {
        ProjectionKind::None => "exact".to_string(),
        p => format!("{p:?} k={}", args.projection_dim).to_lowercase(),
    };
    outln!(
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
    )?;
    Ok(())
}

/// `Break` when SIGTERM asked the run to stop and work remains (`more`); the finished work is
/// saved by then.
fn stop_unless_last(more: bool) -> ControlFlow<()> {
    if more && preemption::requested() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// What identifies a kernel run across shards and resumed blocks: everything that decides the
/// kernel's bits — the inputs' digests, the kernel's `settings` (merged in at the top level),
/// the tiling, backend and thread count — and what the kernel file records (`kind`, projection
/// dimension).
fn job_manifest(
    inputs: serde_json::Value,
    settings: serde_json::Value,
    tiling: &Tiling,
    backend: &dyn Backend,
    (kind, projection_dim): (KernelKind, usize),
) -> serde_json::Value {
    let mut job = json!({
        "command": "ntk",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": backend.name(),
        // faer splits a one-row or one-column GEMM by thread count.
        "threads": rayon::current_num_threads(),
        "inputs": inputs,
        "tile_rows": tiling.tile_rows,
        "rows": tiling.n_rows,
        "cols": tiling.n_cols,
        "square": tiling.square,
        "file": {
            "kind": kind.name(),
            "normalized": kind.normalized(),
            "projection_dim": projection_dim,
        },
    });
    if let (Some(job), serde_json::Value::Object(settings)) = (job.as_object_mut(), settings) {
        job.extend(settings);
    }
    job
}

/// The tensor of the rows `rows` in a shard file.
fn tile_name(rows: &std::ops::Range<usize>) -> String {
    format!("rows-{}-{}", rows.start, rows.end)
}

/// The row tiles `tiles` of a kernel, resumable from `checkpoint` and reporting each finished
/// tile; `Ok(None)` when the report asked to stop.
type TileRun<'a> = dyn FnMut(
        std::ops::Range<usize>,
        Option<&Checkpoint>,
        &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<Vec<Vec<f32>>>>
    + 'a;

/// A kernel computed block by block, resumable from the checkpoint and reporting each
/// finished block; `Ok(None)` when the report asked to stop.
type BlockRun<'a> = dyn FnMut(
        Option<&Checkpoint>,
        &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<KernelFile>>
    + 'a;

/// The backends of `--devices` (one per device), or the one `--backend` opens.
fn open_backends(args: &NtkArgs) -> Result<Vec<Arc<dyn Backend>>> {
    match args.devices.is_empty() {
        true => Ok(vec![backend::open(args.backend, OpFamily::Ntk)?]),
        false => args
            .devices
            .iter()
            .map(|&i| backend::open_device(args.backend, i))
            .collect(),
    }
}

/// The tile path: `--shard I/N` (that shard's tiles of the kernel `tiling`, identified by `job`
/// — see [`job_manifest`] — into its shard file `path`) or, without a shard, `--devices` (every
/// tile, one worker per device, assembled into the kernel `path`); resumable from the
/// checkpoint beside `path`.
fn run_tiled(
    shard: Option<Shard>,
    path: &Path,
    tiling: &Tiling,
    job: serde_json::Value,
    backends: &[&dyn Backend],
    run_tiles: &mut TileRun,
) -> Result<()> {
    let whole = Shard { index: 0, count: 1 };
    let tiles = tiling.tiles();
    let mine = shard.unwrap_or(whole).units(&tiling.tile_costs());
    let manifest = Manifest {
        job,
        index: shard.unwrap_or(whole).index,
        count: shard.unwrap_or(whole).count,
        units: tiles[mine.clone()]
            .iter()
            .map(|t| [t.start, t.end])
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
    let start = Instant::now();
    let (mut resumed, mut done) = (0, 0);
    let values = run_tiles(mine.clone(), checkpoint.as_ref(), &mut |tile| {
        resumed += usize::from(tile.resumed);
        done += 1;
        stop_unless_last(done < mine.len())
    })?;
    let what = match shard {
        Some(shard) => format!("shard {shard}"),
        None => "kernel".to_string(),
    };
    let Some(values) = values else {
        return Err(Error::Preempted(format!(
            "SIGTERM: {what}: {done} of {} tiles saved in {}; rerun the same command to resume",
            mine.len(),
            dir.display()
        )));
    };
    let mine = &tiles[mine];
    match shard {
        Some(_) => {
            let tensors = mine
                .iter()
                .zip(&values)
                .map(|(t, v)| {
                    TensorOut::f32(tile_name(t), vec![t.len(), tiling.tile_cols(t).len()], v)
                })
                .collect();
            shards::write(path, &manifest, tensors)?;
        }
        None => {
            let values = ntk::assemble(tiling, mine.iter().cloned().zip(values))?;
            kernel_file(&manifest.job, values, tiling).write(path)?;
        }
    }
    if let Some(c) = checkpoint {
        c.remove()?;
    }
    let rows = match (mine.first(), mine.last()) {
        (Some(first), Some(last)) => first.start..last.end,
        _ => 0..0,
    };
    outln!(
        "{} {what}: rows {}..{} ({} tiles{}) on {} × {} in {:.2} s -> {}",
        manifest.job["file"]["kind"].as_str().unwrap_or("kernel"),
        rows.start,
        rows.end,
        mine.len(),
        if resumed > 0 {
            format!(", {resumed} resumed from the checkpoint")
        } else {
            String::new()
        },
        backends.len(),
        backends[0].name(),
        start.elapsed().as_secs_f64(),
        path.display()
    )?;
    Ok(())
}

/// The kernel file of `values`, as the job manifest `job` describes it (its `file` entry).
fn kernel_file(job: &serde_json::Value, values: Vec<f32>, tiling: &Tiling) -> KernelFile {
    let file = &job["file"];
    KernelFile {
        values,
        rows: tiling.n_rows,
        cols: tiling.n_cols,
        kind: file["kind"].as_str().unwrap_or("unknown").to_string(),
        normalized: file["normalized"].as_bool() == Some(true),
        projection_dim: file["projection_dim"].as_u64().unwrap_or(0) as usize,
    }
}

/// Runs a kernel job block by block — with a checkpoint beside `out` (identified by `job` and
/// the block rows) when there is more than one block, and a progress bar over its pairs — and
/// writes the kernel. Returns it with the rows resumed from the checkpoint and the seconds
/// taken; SIGTERM stops it between blocks with [`Error::Preempted`].
fn drive(
    out: &Path,
    tiling: &Tiling,
    mut job: serde_json::Value,
    run: &mut BlockRun,
) -> Result<(KernelFile, usize, f64)> {
    let (n_rows, n_cols) = (tiling.n_rows, tiling.n_cols);
    job["block_rows"] = tiling.block_rows.into();
    let checkpoint = if tiling.blocks().len() > 1 {
        Some(Checkpoint::open(&Checkpoint::dir_for(out), &job)?)
    } else {
        None
    };
    let bar = super::progress_bar(
        (n_rows * n_cols) as u64,
        "{bar:40} {human_pos}/{human_len} pairs  {per_sec}  eta {eta}  {msg}",
    );
    let start = Instant::now();
    let (mut resumed_rows, mut done_rows) = (0, 0);
    let kernel = run(checkpoint.as_ref(), &mut |block| {
        if block.resumed {
            resumed_rows += block.rows.len();
            bar.set_message(format!("{resumed_rows} rows resumed"));
        }
        bar.inc((block.rows.len() * n_cols) as u64);
        done_rows = block.rows.end;
        stop_unless_last(block.rows.end < n_rows)
    })?;
    bar.finish_and_clear();
    let Some(kernel) = kernel else {
        return Err(Error::Preempted(format!(
            "SIGTERM: rows 0..{done_rows} of {n_rows} saved in {}; rerun the same command to \
             resume",
            Checkpoint::dir_for(out).display()
        )));
    };
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
fn run_classifier(args: NtkArgs, out: &Path) -> Result<()> {
    let distribution = match args.projection {
        ProjectionKind::None => None,
        ProjectionKind::Gaussian => Some(JlDistribution::Gaussian),
        // Kronecker maps are ±1, as for MLPs; so is the dense map of the other parameters.
        ProjectionKind::Rademacher | ProjectionKind::Kronecker => Some(JlDistribution::Rademacher),
    };
    let projection = distribution.map(|distribution| JlSpec {
        seed: args.seed,
        dim: args.projection_dim,
        distribution,
        column_offset: 0,
    });
    let backends = open_backends(&args)?;
    let backend = backends[0].clone();
    // The factors (recorded forward, backward passes) are computed on the first device, from f32
    // weights; every device contracts them.
    let classifier = SequenceClassifier::load(&args.model, backend.clone(), WeightsDtype::F32)?;
    let max_tokens = classifier.encoder().config().max_tokens();
    let tokenizer = TextTokenizer::load(&args.model, max_tokens)?;
    let fields = FieldNames {
        text: args.text_field.clone(),
        label: args.label_field.clone(),
    };
    // Texts and, where every row has one, their class indices (the gradient cosine needs them).
    let read = |path: &PathBuf| -> Result<(Vec<TokenizedText>, Option<Vec<usize>>)> {
        let spec = InputSpec {
            path: path.clone(),
            label: None,
        };
        let rows = read_rows(&spec, &fields)?;
        if rows.is_empty() {
            return Err(Error::input(format!("{}: no texts", path.display())));
        }
        let labels = text_label_indices(path, &rows, classifier.labels())?;
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
        let labels = labels.into_iter().collect::<Option<Vec<usize>>>();
        if args.kind == KernelKind::Gradcos && labels.is_none() {
            return Err(Error::input(format!(
                "{}: --kind gradcos needs a label (field `{}`) on every text: the loss gradient \
                 is taken at it",
                path.display(),
                args.label_field
            )));
        }
        Ok((tokenized, labels))
    };
    let (rows, row_labels) = read(&args.data)?;
    let (cols, col_labels) = match args.against.as_ref().map(read).transpose()? {
        Some((cols, labels)) => (Some(cols), labels),
        None => (None, None),
    };
    let test = args.test_data.as_ref().map(read).transpose()?;
    let n_cols = cols.as_ref().unwrap_or(&rows).len();
    let block_rows = args
        .block_rows
        .unwrap_or_else(|| default_block_rows(n_cols, args.tile_rows));
    let job = SequenceKernelJob {
        classifier: &classifier,
        rows: &rows,
        cols: cols.as_deref(),
        row_labels: row_labels.as_deref(),
        col_labels: col_labels.as_deref(),
        kind: args.kind,
        block_rows,
        tile_rows: args.tile_rows,
        layers: args.layers.clone(),
        projection,
        kronecker: args.projection == ProjectionKind::Kronecker,
    };
    // The --test-data kernel: the job `--data TEST --against DATA` would run.
    let test_job = test.as_ref().map(|(texts, labels)| SequenceKernelJob {
        rows: texts,
        cols: Some(&rows),
        row_labels: labels.as_deref(),
        col_labels: row_labels.as_deref(),
        layers: job.layers.clone(),
        ..job
    });
    job.check()?;
    if let Some(test_job) = &test_job {
        test_job.check()?;
    }
    preemption::watch()?;
    let model_digest = directory_digest(&args.model)?;
    let settings = json!({
        "kind": args.kind,
        "layers": args.layers.to_string(),
        "projection": args.projection,
        "projection_dim": args.projection_dim,
        "seed": args.seed,
        "text_field": args.text_field,
        "label_field": args.label_field,
    });
    let file = (args.kind, projection.map_or(0, |jl| jl.dim));
    let manifest = job_manifest(
        json!({
            "model": model_digest,
            "data": file_digest(&args.data)?,
            "against": args.against.as_deref().map(file_digest).transpose()?,
        }),
        settings.clone(),
        &job.tiling(),
        backend.as_ref(),
        file,
    );
    if args.shard.is_some() || !args.devices.is_empty() {
        let backends: Vec<&dyn Backend> = backends.iter().map(|b| b.as_ref()).collect();
        return run_tiled(
            args.shard,
            out,
            &job.tiling(),
            manifest,
            &backends,
            &mut |tiles, checkpoint, on_tile| job.run_tiles(&backends, tiles, checkpoint, on_tile),
        );
    }
    // The --data texts' factors, computed by the first kernel that needs them.
    let mut columns: Option<ColumnTiles> = None;
    let mut run_job = |job: &SequenceKernelJob,
                       checkpoint: Option<&Checkpoint>,
                       on_block: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>|
     -> Result<Option<KernelFile>> {
        let tiles = match columns.take() {
            Some(tiles) => tiles,
            None => job.column_tiles(backend.as_ref())?,
        };
        let kernel = job.run_on(backend.as_ref(), &tiles, checkpoint, on_block);
        columns = Some(tiles);
        kernel
    };
    let (kernel, resumed_rows, seconds) = drive(
        &args.out,
        &job.tiling(),
        manifest,
        &mut |checkpoint, on_block| run_job(&job, checkpoint, on_block),
    )?;
    let what = format!(
        "({}) of a {} classifier ({} labels) on {}",
        match projection {
            None => "exact".to_string(),
            Some(jl) => format!("{:?} k={}", args.projection, jl.dim).to_lowercase(),
        },
        classifier.encoder().config().model_type,
        classifier.num_labels(),
        backend.name(),
    );
    let report = |kernel: &KernelFile, resumed_rows: usize, seconds: f64, out: &Path| {
        let computed = (kernel.rows - resumed_rows) * kernel.cols;
        outln!(
            "{} {}×{} {what} in {seconds:.2} s: {:.3e} pairs/s{} -> {}",
            args.kind.name(),
            kernel.rows,
            kernel.cols,
            computed as f64 / seconds,
            if resumed_rows > 0 {
                format!(" ({resumed_rows} rows resumed from the checkpoint)")
            } else {
                String::new()
            },
            out.display()
        )
    };
    report(&kernel, resumed_rows, seconds, &args.out)?;
    let (Some(test_job), Some(test_data), Some(test_out)) =
        (&test_job, &args.test_data, &args.test_out)
    else {
        return Ok(());
    };
    let manifest = job_manifest(
        json!({
            "model": model_digest,
            "data": file_digest(test_data)?,
            "against": file_digest(&args.data)?,
        }),
        settings,
        &test_job.tiling(),
        backend.as_ref(),
        file,
    );
    let (kernel, resumed_rows, seconds) = drive(
        test_out,
        &test_job.tiling(),
        manifest,
        &mut |checkpoint, on_block| run_job(test_job, checkpoint, on_block),
    )?;
    report(&kernel, resumed_rows, seconds, test_out)?;
    Ok(())
}

/// `mscope merge` of `ntk` shards (already checked to be complete and of one run): the row
/// tiles in order, mirrored as one process mirrors them, written as that process writes.
pub(super) fn merge(out: &std::path::Path, shards: &[ShardFile]) -> Result<()> {
    let job = &shards[0].manifest.job;
    let field = |key: &str| -> Result<usize> {
        job[key].as_u64().map(|v| v as usize).ok_or_else(|| {
            Error::input(format!(
                "{}: shard manifest lacks `{key}`",
                shards[0].file.path().display()
            ))
        })
    };
    let (rows, cols, tile_rows) = (field("rows")?, field("cols")?, field("tile_rows")?);
    let square = job["square"].as_bool() == Some(true);
    let mut tiles = Vec::new();
    for shard in shards {
        for &[start, end] in &shard.manifest.units {
            let (shape, values) = shard.file.f32(&tile_name(&(start..end)))?;
            if shape.first() != Some(&(end - start)) {
                return Err(shard
                    .file
                    .error(format!("tile of rows {start}..{end} has shape {shape:?}")));
            }
            tiles.push((start..end, values));
        }
    }
    let tiling = Tiling {
        n_rows: rows,
        n_cols: cols,
        square,
        block_rows: rows,
        tile_rows,
    };
    let values = ntk::assemble(&tiling, tiles).map_err(|e| {
        Error::input(format!(
            "{}: shards do not make one kernel: {e}",
            out.display()
        ))
    })?;
    let kernel = kernel_file(job, values, &tiling);
    kernel.write(out)?;
    outln!(
        "{} {rows}×{cols} merged from {} shards -> {}",
        kernel.kind,
        shards.len(),
        out.display()
    )?;
    Ok(())
}
