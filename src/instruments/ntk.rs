//! Tangent kernels of MLP classifiers in row blocks: the factors of every column sample are
//! computed once, each block of rows is contracted against them on the backend, normalised, and
//! (when a checkpoint directory is given) saved, so memory stays bounded by the block and an
//! interrupted run resumes from its finished blocks.

use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};

use super::project::{factors, FactorSpec, Factors, KernelKind};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::kernel_file::KernelFile;
use crate::models::mlp::Mlp;

/// A kernel between row samples and column samples (the same samples when `cols` is `None`).
pub struct KernelJob<'a> {
    pub mlp: &'a Mlp,
    /// `[n_rows, d]`.
    pub rows: &'a [f32],
    /// `[n_cols, d]`; `None` gives the square kernel of `rows` with itself.
    pub cols: Option<&'a [f32]>,
    pub spec: FactorSpec,
    /// Rows per block (≥ 1): what a checkpoint saves at once.
    pub block_rows: usize,
    /// Rows per contraction (≥ 1). Tiles sit at multiples of `tile_rows` whatever the blocks
    /// are, and a tile is always computed with the same shapes, so GEMM summation orders — and
    /// hence the kernel's bits — do not depend on the block size or on resuming.
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
    /// An error for inputs the job cannot run on (sizes, block rows, projection dimension).
    pub fn check(&self) -> Result<()> {
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
        if self.block_rows == 0 || self.tile_rows == 0 {
            return Err(Error::input("--block-rows must be at least 1"));
        }
        Ok(())
    }

    pub fn n_rows(&self) -> usize {
        self.rows.len() / self.mlp.input_dim()
    }

    pub fn n_cols(&self) -> usize {
        self.cols.unwrap_or(self.rows).len() / self.mlp.input_dim()
    }

    /// The blocks' row ranges, in order.
    pub fn blocks(&self) -> Vec<Range<usize>> {
        let n = self.n_rows();
        (0..n)
            .step_by(self.block_rows.max(1))
            .map(|s| s..(s + self.block_rows).min(n))
            .collect()
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
        let col_factors = factors(
            backend,
            self.mlp,
            self.cols.unwrap_or(self.rows),
            &self.spec,
        )?;
        let col_tensors = Uploaded::new(backend, &col_factors)?;
        let mut kernel = vec![0.0f32; n_rows * n_cols];
        for block in self.blocks() {
            let (above, rest) = kernel.split_at_mut(block.start * n_cols);
            let dst = &mut rest[..block.len() * n_cols];
            let resumed = match checkpoint.map(|c| c.load(&block, n_cols)).transpose()? {
                Some(Some(saved)) => {
                    dst.copy_from_slice(&saved);
                    true
                }
                _ => {
                    let values = self.block(backend, &block, &col_factors, &col_tensors, above)?;
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
        Ok(Some(KernelFile {
            values: kernel,
            rows: n_rows,
            cols: n_cols,
            kind: self.spec.kind.name().to_string(),
            normalized: self.spec.kind.normalized(),
            projection_dim: match self.spec.projection {
                super::project::ProjectionKind::None => 0,
                _ => self.spec.projection_dim,
            },
        }))
    }
}

impl KernelJob<'_> {
    /// Rows `block` against every column, tile by tile. A square kernel is symmetric: a tile
    /// computes only the columns from its own first row on, and the entries left of that are
    /// mirrored from the rows above (`above`: the kernel's rows before the block), so each pair
    /// is computed once and the kernel is exactly symmetric.
    fn block(
        &self,
        backend: &dyn Backend,
        block: &Range<usize>,
        col_factors: &Factors,
        col_tensors: &Uploaded,
        above: &[f32],
    ) -> Result<Vec<f32>> {
        let (n_rows, n_cols, d) = (self.n_rows(), self.n_cols(), self.mlp.input_dim());
        let t = self.tile_rows;
        let square = self.cols.is_none();
        let mut values = vec![0.0f32; block.len() * n_cols];
        for tile_start in (block.start / t * t..block.end).step_by(t) {
            let tile = tile_start..(tile_start + t).min(n_rows);
            let (row_factors, cols) = if square {
                (col_factors.rows(tile.clone()), tile.start..n_cols)
            } else {
                let x = &self.rows[tile.start * d..tile.end * d];
                (factors(backend, self.mlp, x, &self.spec)?, 0..n_cols)
            };
            let tile_values = contract_block(
                backend,
                &row_factors,
                col_tensors,
                cols.clone(),
                self.spec.kind,
            )?;
            for row in tile.start.max(block.start)..tile.end.min(block.end) {
                let src = &tile_values[(row - tile.start) * cols.len()..][..cols.len()];
                values[(row - block.start) * n_cols..][cols.clone()].copy_from_slice(src);
            }
        }
        if square {
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
        // A sample whose gradient vanishes has no direction: its cosine row is 0, not NaN.
        let inv = |s: f64| if s > 0.0 { 1.0 / s.sqrt() } else { 0.0 };
        let col_inv: Vec<f64> = col_tensors.self_kernel[cols]
            .iter()
            .map(|&s| inv(s))
            .collect();
        for (row, r_norm) in values
            .chunks_exact_mut(n_cols.max(1))
            .zip(&rows.self_kernel)
        {
            let r_inv = inv(*r_norm);
            row.iter_mut()
                .zip(&col_inv)
                .for_each(|(v, c)| *v = (*v as f64 * r_inv * c) as f32);
        }
    }
    Ok(values)
}

/// Finished blocks of one kernel run on disk: `<dir>/rows-<start>-<end>.f32` (little-endian
/// values) beside a `manifest.json` that pins what the blocks belong to — inputs' contents,
/// kernel settings and block size — so a resumed run never mixes blocks of different kernels.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// The checkpoint directory beside an output file: `<out>.blocks`.
    pub fn dir_for(out: &Path) -> PathBuf {
        let mut name = out.as_os_str().to_owned();
        name.push(".blocks");
        PathBuf::from(name)
    }

    /// Opens `dir`, creating it with `manifest` when absent; an existing directory whose
    /// manifest differs is an error naming it.
    pub fn open(dir: &Path, manifest: &serde_json::Value) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(manifest).expect("JSON values serialise");
        match std::fs::read_to_string(&path) {
            Ok(existing) => {
                let existing: serde_json::Value = serde_json::from_str(&existing)
                    .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
                if &existing != manifest {
                    return Err(Error::input(format!(
                        "{}: holds blocks of a different kernel run (other inputs or settings); \
                         remove the directory to start afresh",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                crate::io::write_atomic(&path, text.as_bytes())?;
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
        })
    }

    fn block_path(&self, rows: &Range<usize>) -> PathBuf {
        self.dir
            .join(format!("rows-{}-{}.f32", rows.start, rows.end))
    }

    /// The saved block, or `None` when it was not finished.
    fn load(&self, rows: &Range<usize>, n_cols: usize) -> Result<Option<Vec<f32>>> {
        let path = self.block_path(rows);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        if bytes.len() != rows.len() * n_cols * 4 {
            return Err(Error::input(format!(
                "{}: {} bytes, expected {} (a damaged block: remove it to recompute)",
                path.display(),
                bytes.len(),
                rows.len() * n_cols * 4
            )));
        }
        Ok(Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        ))
    }

    fn save(&self, rows: &Range<usize>, values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        crate::io::write_atomic(&self.block_path(rows), &bytes)
    }

    /// Removes the directory once the whole kernel is written.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// A 64-bit FNV-1a digest of a file's bytes, hex: identifies the inputs in a manifest.
pub fn file_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{hash:016x}"))
}
