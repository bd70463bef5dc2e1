//! `mscope ntk`: the tangent kernel of an MLP classifier between data sets, exact or projected,
//! computed in row blocks that an interrupted run resumes from.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::backend::{self, BackendKind, OpFamily};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::instruments::ntk::{KernelJob, DEFAULT_TILE_ROWS};
use crate::instruments::project::{FactorSpec, KernelKind, ProjectionKind};
use crate::io::check_outputs;
use crate::io::checkpoint::{file_digest, Checkpoint};
use crate::models::mlp::Mlp;

#[derive(Args)]
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
    let kernel = job
        .run(backend.as_ref(), checkpoint.as_ref(), &mut |block| {
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
