//! Tangent kernels of MLP classifiers in row blocks: the factors of every column sample are
//! computed once, each block of rows is contracted against them on the backend, normalised, and
//! (when a [`Checkpoint`] is given) saved, so memory stays bounded by the block and an
//! interrupted run resumes from its finished blocks.
//!
//! # Tiles, shards and the bits of the kernel
//!
//! The unit of computation is a *row tile*: `tile_rows` rows at a multiple of `tile_rows`,
//! contracted against every column (a square kernel's tile only against the columns from its
//! own first row on: the upper triangle; the entries left of it are mirrored). A tile is always
//! computed the same way — same factors, same GEMM shapes, same normalisation — so its bits do
//! not depend on how tiles are grouped: into checkpoint blocks ([`KernelJob::run`]) or into the
//! shards of several processes ([`KernelJob::run_tiles`], assembled by [`assemble`]). One
//! process and any set of shards therefore write the same kernel, byte for byte, given the same
//! backend and CPU thread count (faer may split a one-row or one-column product by threads).

use std::ops::{ControlFlow, Range};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use super::project::{factors, FactorSpec, Factors, KernelKind, ProjectionKind};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use crate::io::kernel_file::KernelFile;
use crate::models::mlp::Mlp;

/// A kernel between row samples and column samples (the same samples when `cols` is `None`).
pub struct KernelJob<'a> {
    pub mlp: &'a Mlp,
    /// `[n_rows, d]`.
    pub rows: &'a [f32],
    /// `[n_cols, d]`; `None` gives the square kernel of `rows` with itself.
    pub cols: Option<&'a [f32]>,
    /// The rows' and columns' classes, which `--kind gradcos` needs (the loss gradient is taken
    /// at them); `col_labels` is ignored for the square kernel.
    pub row_labels: Option<&'a [i64]>,
    pub col_labels: Option<&'a [i64]>,
    pub spec: FactorSpec,
    /// Rows per block (≥ 1): what a checkpoint saves at once.
    pub block_rows: usize,
    /// Rows per contraction (≥ 1). Tiles sit at multiples of `tile_rows` whatever the blocks
    /// are, and a tile is always computed with the same shapes, so GEMM summation orders — and
    /// hence the kernel's bits — do not depend on the block size, on resuming or on sharding.
    pub tile_rows: usize,
}

/// A tile size that keeps the GEMMs efficient (packing the column factors is amortised over
/// this many rows) while bounding the work a block not aligned to it repeats.
pub const DEFAULT_TILE_ROWS: usize = 128;

/// A finished block, as reported to the caller's progress callback.
pub struct BlockDone {
    pub rows: Range<usize>,
    /// Whether the block came from the checkpoint instead of being computed.
    pub resumed: bool,
}

impl KernelJob<'_> {
    /// An error for inputs the job cannot run on (sizes, block rows, projection dimension,
    /// memory for the whole kernel).
    pub fn check(&self) -> Result<()> {
        self.check_size()?;
        self.check_memory((self.n_rows() * self.n_cols()) as f64)
    }

    /// [`Self::check`] but for memory.
    fn check_size(&self) -> Result<()> {
        self.spec.check()?;
        let d = self.mlp.input_dim();
        for (what, x) in [("data", Some(self.rows)), ("--against data", self.cols)] {
            if let Some(x) = x {
                if !x.len().is_multiple_of(d) || x.is_empty() {
                    return Err(Error::input(format!(
                        "{what}: {} values are not rows of the model's input size {d}",
                        x.len()
                    )));
                }
            }
        }
        let cols = self.cols.map_or(self.row_labels, |_| self.col_labels);
        self.spec.kind.check_labels(
            (self.row_labels.map(<[i64]>::len), self.n_rows()),
            (cols.map(<[i64]>::len), self.n_cols()),
            "point",
        )?;
        if self.block_rows == 0 {
            return Err(Error::input("--block-rows must be at least 1"));
        }
        if self.tile_rows == 0 {
            return Err(Error::input("--tile-rows must be at least 1"));
        }
        Ok(())
    }

    /// An error naming the sizes when `kernel_values` f32 of the kernel and, for a projected
    /// kernel, the projected features of its rows and columns (`r·k` f32 per point and per
    /// layer for Kronecker, per point for the dense projections) do not fit in memory.
    fn check_memory(&self, kernel_values: f64) -> Result<()> {
        let (rows, cols) = (self.n_rows() as f64, self.n_cols() as f64);
        let kernel = kernel_values * 4.0;
        let per_point = self.spec.kind.rows_per_sample(self.mlp.num_classes()) as f64
            * self.spec.projection_dim as f64
            * 4.0;
        let features = match self.spec.projection {
            ProjectionKind::None => 0.0,
            ProjectionKind::Kronecker => (rows + cols) * per_point * self.mlp.layers.len() as f64,
            _ => (rows + cols) * per_point,
        };
        let what = format!(
            "a {}x{} kernel with --projection-dim {}",
            self.n_rows(),
            self.n_cols(),
            self.spec.projection_dim
        );
        crate::limits::check_memory(&what, kernel + features)
    }

    pub fn n_rows(&self) -> usize {
        self.rows.len() / self.mlp.input_dim()
    }

    pub fn n_cols(&self) -> usize {
        self.cols.unwrap_or(self.rows).len() / self.mlp.input_dim()
    }

    /// The kernel's tiles and blocks.
    pub fn tiling(&self) -> Tiling {
        Tiling {
            n_rows: self.n_rows(),
            n_cols: self.n_cols(),
            square: self.cols.is_none(),
            block_rows: self.block_rows,
            tile_rows: self.tile_rows,
        }
    }

    /// Runs every block not yet in `checkpoint`, calling `on_block` after each; `on_block`
    /// returning `Break` stops the run (finished blocks stay in the checkpoint) and gives
    /// `Ok(None)`. Otherwise returns the whole kernel.
    pub fn run(
        &self,
        backend: &dyn Backend,
        checkpoint: Option<&Checkpoint>,
        on_block: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<KernelFile>> {
        self.check()?;
        let (n_rows, n_cols) = (self.n_rows(), self.n_cols());
        let tiling = self.tiling();
        let kernel = self.with_tiles(backend, &mut |tile| {
            run_blocks(&tiling, checkpoint, on_block, tile)
        })?;
        let Some(kernel) = kernel else {
            return Ok(None);
        };
        Ok(Some(KernelFile {
            values: kernel,
            rows: n_rows,
            cols: n_cols,
            kind: self.spec.kind.name().to_string(),
            normalized: self.spec.kind.normalized(),
            projection_dim: self.projection_dim(),
        }))
    }

    /// The projection dimension a kernel file records: 0 for the exact kernel.
    pub fn projection_dim(&self) -> usize {
        match self.spec.projection {
            ProjectionKind::None => 0,
            _ => self.spec.projection_dim,
        }
    }

    /// Computes the row tiles `tiles` — a shard's share, or all of them — with one worker per
    /// backend, as [`run_tiles`] does.
    pub fn run_tiles(
        &self,
        backends: &[&dyn Backend],
        tiles: Range<usize>,
        checkpoint: Option<&Checkpoint>,
        on_tile: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        self.check_size()?;
        let tiling = self.tiling();
        let entries: usize = tiling.tiles()[tiles.clone()]
            .iter()
            .map(|t| t.len() * tiling.tile_cols(t).len())
            .sum();
        self.check_memory(entries as f64)?;
        let worker =
            |backend: &dyn Backend, drive: &mut WorkerLoop| self.with_tiles(backend, drive);
        run_tiles(&tiling, tiles, checkpoint, on_tile, backends, &worker)
    }

    /// Computes the column factors on `backend`, then calls `drive` with the function that
    /// gives a row tile against its columns.
    fn with_tiles<T>(
        &self,
        backend: &dyn Backend,
        drive: &mut dyn FnMut(&mut TileFn) -> Result<T>,
    ) -> Result<T> {
        let (col_factors, col_tensors) = self.column_factors(backend)?;
        let mut tile = |rows: Range<usize>, cols: Range<usize>| {
            self.tile(backend, &rows, cols, &col_factors, &col_tensors)
        };
        drive(&mut tile)
    }

    /// One row tile against its columns `cols` ([`Tiling::tile_cols`]), normalised: the one
    /// place tiles are computed, whether for a block or for a shard.
    fn tile(
        &self,
        backend: &dyn Backend,
        tile: &Range<usize>,
        cols: Range<usize>,
        col_factors: &Factors,
        col_tensors: &Uploaded,
    ) -> Result<Vec<f32>> {
        let row_factors = match self.cols {
            None => col_factors.rows(tile.clone()),
            Some(_) => {
                let d = self.mlp.input_dim();
                let x = &self.rows[tile.start * d..tile.end * d];
                let labels = self.row_labels.map(|l| &l[tile.clone()]);
                factors(backend, self.mlp, x, labels, &self.spec)?
            }
        };
        contract_block(backend, &row_factors, col_tensors, cols, self.spec.kind)
    }

    /// The column samples' factors, on the host and uploaded once for every tile.
    fn column_factors(&self, backend: &dyn Backend) -> Result<(Factors, Uploaded)> {
        let (x, labels) = match self.cols {
            Some(cols) => (cols, self.col_labels),
            None => (self.rows, self.row_labels),
        };
        let col_factors = factors(backend, self.mlp, x, labels, &self.spec)?;
        let col_tensors = Uploaded::new(backend, &col_factors)?;
        Ok((col_factors, col_tensors))
    }
}

/// The shape of a kernel computed in row tiles: what the drivers ([`run_blocks`],
/// [`run_tiles`], [`assemble`]) need to know, whatever the model.
pub struct Tiling {
    pub n_rows: usize,
    pub n_cols: usize,
    /// Rows and columns are the same samples: the kernel is symmetric.
    pub square: bool,
    pub block_rows: usize,
    pub tile_rows: usize,
}

impl Tiling {
    /// The row tiles, in order: `tile_rows` rows each, the last one shorter.
    pub fn tiles(&self) -> Vec<Range<usize>> {
        (0..self.n_rows)
            .step_by(self.tile_rows.max(1))
            .map(|s| s..(s + self.tile_rows).min(self.n_rows))
            .collect()
    }

    /// The columns a row tile computes: a square kernel's upper triangle (from the tile's first
    /// row on; the rest is mirrored), else every column.
    pub fn tile_cols(&self, tile: &Range<usize>) -> Range<usize> {
        if self.square {
            tile.start..self.n_cols
        } else {
            0..self.n_cols
        }
    }

    /// Each tile's cost in kernel entries computed: what shards are balanced by.
    pub fn tile_costs(&self) -> Vec<u64> {
        self.tiles()
            .iter()
            .map(|t| (t.len() * self.tile_cols(t).len()) as u64)
            .collect()
    }

    /// The blocks' row ranges, in order.
    pub fn blocks(&self) -> Vec<Range<usize>> {
        (0..self.n_rows)
            .step_by(self.block_rows.max(1))
            .map(|s| s..(s + self.block_rows).min(self.n_rows))
            .collect()
    }
}

/// A row tile `rows` against the columns `cols` (see [`Tiling::tile_cols`]), normalised, as
/// `[rows.len(), cols.len()]` values: what a model's kernel gives the drivers.
pub type TileFn<'a> = dyn FnMut(Range<usize>, Range<usize>) -> Result<Vec<f32>> + 'a;

/// A worker's loop over the tile queue, given the worker's [`TileFn`].
pub type WorkerLoop<'a> = dyn FnMut(&mut TileFn) -> Result<()> + 'a;

/// Sets up what a worker's tiles share on its backend (the column factors), then runs the
/// worker's loop with its [`TileFn`].
pub type Worker<'a> = dyn Fn(&dyn Backend, &mut WorkerLoop) -> Result<()> + Sync + 'a;

/// Computes the row tiles `tiles` (indices into [`Tiling::tiles`]) — a shard's share, or all
/// of them — each as `[tile.len(), tile_cols(tile).len()]` values, loading finished ones from
/// `checkpoint` and saving the others there as they finish. One thread per backend
/// (`--devices`: one per GPU), set up by `worker`, takes tiles from a shared queue; a tile's values do not depend on which worker
/// computed it, given backends of one kind on identical devices. `on_tile` is called (on this
/// thread) after each tile, in the order they finish; `Break` stops the run with `Ok(None)`
/// once the tiles in progress are saved.
pub fn run_tiles(
    tiling: &Tiling,
    tiles: Range<usize>,
    checkpoint: Option<&Checkpoint>,
    on_tile: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    backends: &[&dyn Backend],
    worker: &Worker,
) -> Result<Option<Vec<Vec<f32>>>> {
    if backends.is_empty() {
        return Err(Error::input("no device to run the kernel on"));
    }
    let all = tiling.tiles();
    let mine = &all[tiles];
    let mut done: Vec<Option<Vec<f32>>> = vec![None; mine.len()];
    for (slot, rows) in done.iter_mut().zip(mine) {
        let width = tiling.tile_cols(rows).len();
        *slot = checkpoint
            .map(|c| c.load(rows, width))
            .transpose()?
            .flatten();
        let resumed = BlockDone {
            rows: rows.clone(),
            resumed: true,
        };
        if slot.is_some() && on_tile(&resumed).is_break() {
            return Ok(None);
        }
    }
    let todo: Vec<usize> = (0..mine.len()).filter(|&t| done[t].is_none()).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut failure = None;
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let (sender, finished) = mpsc::channel::<Result<usize>>();
        let (results, todo, next, stop) = (&results, &todo, &next, &stop);
        for &backend in backends {
            let sender = sender.clone();
            scope.spawn(move || {
                let mut work = |tile: &mut TileFn| -> Result<()> {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(&t) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let rows = mine[t].clone();
                        let values = tile(rows.clone(), tiling.tile_cols(&rows))?;
                        if let Some(c) = checkpoint {
                            c.save(&rows, &values)?;
                        }
                        results.lock().expect("no worker panics").push((t, values));
                        if sender.send(Ok(t)).is_err() {
                            break;
                        }
                    }
                    Ok(())
                };
                let outcome = match todo.is_empty() {
                    true => Ok(()),
                    false => worker(backend, &mut work),
                };
                if let Err(e) = outcome {
                    stop.store(true, Ordering::Relaxed);
                    let _ = sender.send(Err(e));
                }
            });
        }
        drop(sender);
        // Ends when every worker has ended (dropped its sender).
        for message in finished {
            match message {
                Ok(t) => {
                    let report = BlockDone {
                        rows: mine[t].clone(),
                        resumed: false,
                    };
                    if !stop.load(Ordering::Relaxed) && on_tile(&report).is_break() {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        for (t, values) in results.lock().expect("no worker panics").drain(..) {
            done[t] = Some(values);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(done.into_iter().collect())
}

/// The whole `[n_rows, n_cols]` kernel from every row tile of `tile_rows` rows (in order, each
/// `[tile.len(), columns]` as [`run_tiles`] computes them); a square kernel's lower
/// part is mirrored from its upper triangle exactly as [`run_blocks`] mirrors it, so the
/// result is that run's kernel bit for bit. `tiles` yields `(rows, values)`; an error names a
/// tile that is missing, repeated or of the wrong size.
pub fn assemble(
    tiling: &Tiling,
    tiles: impl IntoIterator<Item = (Range<usize>, Vec<f32>)>,
) -> Result<Vec<f32>> {
    let (n_rows, n_cols, tile_rows) = (tiling.n_rows, tiling.n_cols, tiling.tile_rows.max(1));
    let mut kernel = vec![0.0f32; n_rows * n_cols];
    let mut next = 0;
    for (rows, values) in tiles {
        let expected = next..(next + tile_rows).min(n_rows);
        let cols = tiling.tile_cols(&rows);
        if rows != expected || values.len() != rows.len() * cols.len() {
            return Err(Error::input(format!(
                "kernel tile of rows {}..{} ({} values) where rows {}..{} were due",
                rows.start,
                rows.end,
                values.len(),
                expected.start,
                expected.end
            )));
        }
        for (row, src) in rows.clone().zip(values.chunks_exact(cols.len().max(1))) {
            kernel[row * n_cols..][cols.clone()].copy_from_slice(src);
        }
        next = rows.end;
    }
    if next != n_rows {
        return Err(Error::input(format!(
            "kernel tiles end at row {next} of {n_rows}"
        )));
    }
    if tiling.square {
        for row in 0..n_rows {
            for col in 0..row / tile_rows * tile_rows {
                kernel[row * n_cols + col] = kernel[col * n_cols + row];
            }
        }
    }
    Ok(kernel)
}

/// Runs every block not yet in `checkpoint`, calling `on_block` after each; `on_block`
/// returning `Break` stops the run (finished blocks stay in the checkpoint) and gives
/// `Ok(None)`. Otherwise returns the whole `[n_rows, n_cols]` kernel. `tile(rows, cols)` gives
/// the kernel between the row tile `rows` (always `tile_rows` aligned, so its shapes and hence
/// its bits do not depend on the blocks) and the columns `cols`, normalised.
pub fn run_blocks(
    tiling: &Tiling,
    checkpoint: Option<&Checkpoint>,
    on_block: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    tile: &mut TileFn,
) -> Result<Option<Vec<f32>>> {
    let n_cols = tiling.n_cols;
    let mut kernel = vec![0.0f32; tiling.n_rows * n_cols];
    for block in tiling.blocks() {
        let (above, rest) = kernel.split_at_mut(block.start * n_cols);
        let dst = &mut rest[..block.len() * n_cols];
        let resumed = match checkpoint.map(|c| c.load(&block, n_cols)).transpose()? {
            Some(Some(saved)) => {
                dst.copy_from_slice(&saved);
                true
            }
            _ => {
                let values = run_block(tiling, &block, above, tile)?;
                dst.copy_from_slice(&values);
                if let Some(c) = checkpoint {
                    c.save(&block, &values)?;
                }
                false
            }
        };
        if on_block(&BlockDone {
            rows: block,
            resumed,
        })
        .is_break()
        {
            return Ok(None);
        }
    }
    Ok(Some(kernel))
}

/// Rows `block` against every column, tile by tile. A square kernel is symmetric: a tile
/// computes only the columns from its own first row on, and the entries left of that are
/// mirrored from the rows above (`above`: the kernel's rows before the block), so each pair is
/// computed once and the kernel is exactly symmetric.
fn run_block(
    tiling: &Tiling,
    block: &Range<usize>,
    above: &[f32],
    tile: &mut TileFn,
) -> Result<Vec<f32>> {
    let (n_rows, n_cols, t) = (tiling.n_rows, tiling.n_cols, tiling.tile_rows);
    let mut values = vec![0.0f32; block.len() * n_cols];
    for tile_start in (block.start / t * t..block.end).step_by(t) {
        let rows = tile_start..(tile_start + t).min(n_rows);
        let cols = tiling.tile_cols(&rows);
        let tile_values = tile(rows.clone(), cols.clone())?;
        for row in rows.start.max(block.start)..rows.end.min(block.end) {
            let src = &tile_values[(row - rows.start) * cols.len()..][..cols.len()];
            values[(row - block.start) * n_cols..][cols.clone()].copy_from_slice(src);
        }
    }
    if tiling.square {
        for row in block.clone() {
            for col in 0..row / t * t {
                let mirrored = if col < block.start {
                    above[col * n_cols + row]
                } else {
                    values[(col - block.start) * n_cols + row]
                };
                values[(row - block.start) * n_cols + col] = mirrored;
            }
        }
    }
    Ok(values)
}

/// Column factors on the backend, uploaded once for every block.
struct Uploaded {
    terms: Vec<(crate::backend::Tensor, Option<crate::backend::Tensor>, f32)>,
    self_kernel: Vec<f64>,
}

impl Uploaded {
    fn new(backend: &dyn Backend, f: &Factors) -> Result<Self> {
        let terms = f
            .terms
            .iter()
            .map(|t| {
                let delta = backend.upload(&[f.n, t.width], &t.delta)?;
                let act = t
                    .act
                    .as_ref()
                    .map(|(a, w)| backend.upload(&[f.n, *w], a))
                    .transpose()?;
                Ok((delta, act, t.offset))
            })
            .collect::<Result<_>>()?;
        Ok(Uploaded {
            terms,
            self_kernel: f.self_kernel.clone(),
        })
    }
}

/// Rows against the columns `cols`: the terms' contractions summed on the backend, then the
/// trace NTK's cosine normalisation on the host.
fn contract_block(
    backend: &dyn Backend,
    rows: &Factors,
    col_tensors: &Uploaded,
    cols: Range<usize>,
    kind: KernelKind,
) -> Result<Vec<f32>> {
    let n_cols = cols.len();
    let mut out = backend.zeros(&[rows.n, n_cols])?;
    for (term, (col_delta, col_act, offset)) in rows.terms.iter().zip(&col_tensors.terms) {
        let delta = backend.upload(&[rows.n, term.width], &term.delta)?;
        let act = term
            .act
            .as_ref()
            .map(|(a, w)| backend.upload(&[rows.n, *w], a))
            .transpose()?;
        let acts = act.as_ref().zip(col_act.as_ref());
        backend.ntk_contract(&delta, col_delta, acts, *offset, cols.clone(), &mut out)?;
    }
    let mut values = backend.download(&out)?;
    if kind.normalized() {
        cosine_normalize(
            &mut values,
            &rows.self_kernel,
            &col_tensors.self_kernel[cols],
        );
    }
    Ok(values)
}

/// The trace NTK's cosine normalisation of a `[rows, cols]` tile in place, from each sample's
/// kernel value with itself (`‖g‖²`).
pub(crate) fn cosine_normalize(values: &mut [f32], row_self: &[f64], col_self: &[f64]) {
    // A sample whose gradient vanishes has no direction: its cosine row is 0, not NaN.
    let inv = |s: f64| if s > 0.0 { 1.0 / s.sqrt() } else { 0.0 };
    let col_inv: Vec<f64> = col_self.iter().map(|&s| inv(s)).collect();
    for (row, r_norm) in values.chunks_exact_mut(col_self.len().max(1)).zip(row_self) {
        let r_inv = inv(*r_norm);
        row.iter_mut()
            .zip(&col_inv)
            .for_each(|(v, c)| *v = (*v as f64 * r_inv * c) as f32);
    }
}
