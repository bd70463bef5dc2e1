//! `mscope ntk`: the tangent kernel of an MLP classifier between data sets, exact or projected,
//! computed in row blocks that an interrupted run resumes from.
//!
//! With `--shard I/N` the run computes only shard `I`'s row tiles (the kernel's tiles balanced
//! by cost, see [`crate::io::shards`]) into `OUT.shard-I-of-N.safetensors`; `mscope merge OUT`
//! assembles the `N` shards into the kernel one process writes, byte for byte. SIGTERM stops
//! either kind of run between blocks (tiles for a shard) with exit status 75 once the finished
//! ones are checkpointed; the same command resumes.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::backend::Backend;
use crate::backend::{self, BackendKind, OpFamily};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::instruments::ntk::{self, KernelJob, DEFAULT_TILE_ROWS};
use crate::instruments::project::{FactorSpec, KernelKind, ProjectionKind};
use crate::io::checkpoint::{file_digest, Checkpoint};
use crate::io::kernel_file::KernelFile;
use crate::io::shards::{self, Manifest, Shard, ShardFile};
use crate::io::tensor_file::TensorOut;
use crate::io::{check_outputs, preemption};
use crate::models::mlp::Mlp;

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
    /// MLP classifier (safetensors `fc{i}.weight`/`fc{i}.bias`, metadata `activation`).
    #[arg(long)]
    model: PathBuf,
    /// Dataset of the kernel's rows (`x` F32 [N, d], `y` I64 [N]).
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
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Bytes of the `[block_rows, cols]` f32 buffers a block needs at most (kernel block and two
/// Gram matrices of one tile).
const BLOCK_BYTES: usize = 256 << 20;

pub fn run(args: NtkArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let out = match args.shard {
        Some(shard) => shard.path(&args.out),
        None => args.out.clone(),
    };
    check_outputs(
        &[
            ("--model", Some(&args.model)),
            ("--data", Some(&args.data)),
            ("--against", args.against.as_deref()),
        ],
        &[("--out", Some(&out))],
    )?;
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
                .div_ceil(args.tile_rows.max(1))
                * args.tile_rows.max(1)
        }
    };
    let job = KernelJob {
        mlp: &mlp,
        rows: &rows.x,
        cols: cols.as_ref().map(|c| c.x.as_slice()),
        spec,
        block_rows,
        tile_rows: args.tile_rows,
    };
    let backends = match args.devices.is_empty() {
        true => vec![backend::open(args.backend, OpFamily::Ntk)?],
        false => args
            .devices
            .iter()
            .map(|&i| backend::open_device(args.backend, i))
            .collect::<Result<Vec<_>>>()?,
    };
    let backend = backends[0].clone();
    preemption::watch()?;
    if args.shard.is_some() || !args.devices.is_empty() {
        let backends: Vec<&dyn Backend> = backends.iter().map(|b| b.as_ref()).collect();
        return run_tiled(&args, &job, args.shard, &backends, &out);
    }
    job.check()?;

    let checkpoint = if job.blocks().len() > 1 {
        let manifest = json!({
            "model": file_digest(&args.model)?,
            "data": file_digest(&args.data)?,
            "against": args.against.as_deref().map(file_digest).transpose()?,
            "kind": args.kind,
            "projection": args.projection,
            "projection_dim": args.projection_dim,
            "seed": args.seed,
            "block_rows": block_rows,
            "tile_rows": args.tile_rows,
            "backend": backend.name(),
            // faer splits GEMMs by thread count: the same count keeps resumed blocks bit-exact.
            "threads": rayon::current_num_threads(),
        });
        Some(Checkpoint::open(
            &Checkpoint::dir_for(&args.out),
            &manifest,
        )?)
    } else {
        None
    };

    let pairs = (job.n_rows() * n_cols) as u64;
    let bar = super::progress_bar(
        pairs,
        "{bar:40} {human_pos}/{human_len} pairs  {per_sec}  eta {eta}  {msg}",
    );
    let start = Instant::now();
    let mut resumed_rows = 0;
    let n_rows = job.n_rows();
    let mut done_rows = 0;
    let kernel = job.run(backend.as_ref(), checkpoint.as_ref(), &mut |block| {
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
            Checkpoint::dir_for(&args.out).display()
        )));
    };
    let seconds = start.elapsed().as_secs_f64();
    kernel.write(&args.out)?;
    if let Some(c) = checkpoint {
        c.remove()?;
    }
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

/// `Break` when SIGTERM asked the run to stop and work remains (`more`); the finished work is
/// saved by then.
fn stop_unless_last(more: bool) -> ControlFlow<()> {
    if more && preemption::requested() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// What identifies a kernel run across shards: everything that decides the kernel's bits.
fn job_manifest(
    args: &NtkArgs,
    job: &KernelJob,
    backend: &dyn Backend,
) -> Result<serde_json::Value> {
    Ok(json!({
        "command": "ntk",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": backend.name(),
        // faer splits a one-row or one-column GEMM by thread count.
        "threads": rayon::current_num_threads(),
        "inputs": {
            "model": file_digest(&args.model)?,
            "data": file_digest(&args.data)?,
            "against": args.against.as_deref().map(file_digest).transpose()?,
        },
        "kind": args.kind,
        "projection": args.projection,
        "projection_dim": args.projection_dim,
        "seed": args.seed,
        "tile_rows": job.tile_rows,
        "rows": job.n_rows(),
        "cols": job.n_cols(),
        "square": job.cols.is_none(),
        "file": {
            "kind": args.kind.name(),
            "normalized": args.kind.normalized(),
            "projection_dim": job.projection_dim(),
        },
    }))
}

/// The tensor of the rows `rows` in a shard file.
fn tile_name(rows: &std::ops::Range<usize>) -> String {
    format!("rows-{}-{}", rows.start, rows.end)
}

/// The tile path: `--shard I/N` (that shard's tiles into its shard file) or, without a shard,
/// `--devices` (every tile, one worker per device, assembled into the kernel); resumable from
/// the checkpoint beside `path`.
fn run_tiled(
    args: &NtkArgs,
    job: &KernelJob,
    shard: Option<Shard>,
    backends: &[&dyn Backend],
    path: &std::path::Path,
) -> Result<()> {
    let backend = backends[0];
    let whole = Shard { index: 0, count: 1 };
    let tiles = job.tiles();
    let mine = shard.unwrap_or(whole).units(&job.tile_costs());
    let manifest = Manifest {
        job: job_manifest(args, job, backend)?,
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
    let values = job.run_tiles(backends, mine.clone(), checkpoint.as_ref(), &mut |tile| {
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
                    TensorOut::f32(tile_name(t), vec![t.len(), job.tile_cols(t).len()], v)
                })
                .collect();
            shards::write(path, &manifest, tensors)?;
        }
        None => {
            let tiles = mine.iter().cloned().zip(values);
            let square = job.cols.is_none();
            let values = ntk::assemble(job.n_rows(), job.n_cols(), square, job.tile_rows, tiles)?;
            KernelFile {
                values,
                rows: job.n_rows(),
                cols: job.n_cols(),
                kind: args.kind.name().to_string(),
                normalized: args.kind.normalized(),
                projection_dim: job.projection_dim(),
            }
            .write(path)?;
        }
    }
    if let Some(c) = checkpoint {
        c.remove()?;
    }
    let rows = match (mine.first(), mine.last()) {
        (Some(first), Some(last)) => first.start..last.end,
        _ => 0..0,
    };
    println!(
        "{} {what}: rows {}..{} ({} tiles{}) on {} × {} in {:.2} s -> {}",
        args.kind.name(),
        rows.start,
        rows.end,
        mine.len(),
        if resumed > 0 {
            format!(", {resumed} resumed from the checkpoint")
        } else {
            String::new()
        },
        backends.len(),
        backend.name(),
        start.elapsed().as_secs_f64(),
        path.display()
    );
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
    let values = ntk::assemble(rows, cols, square, tile_rows.max(1), tiles).map_err(|e| {
        Error::input(format!(
            "{}: shards do not make one kernel: {e}",
            out.display()
        ))
    })?;
    let file = &job["file"];
    let kernel = KernelFile {
        values,
        rows,
        cols,
        kind: file["kind"].as_str().unwrap_or("unknown").to_string(),
        normalized: file["normalized"].as_bool() == Some(true),
        projection_dim: file["projection_dim"].as_u64().unwrap_or(0) as usize,
    };
    kernel.write(out)?;
    println!(
        "{} {rows}×{cols} merged from {} shards -> {}",
        kernel.kind,
        shards.len(),
        out.display()
    );
    Ok(())
}
