//! Exact tangent kernels (trNTK, trNTK0, pNTK) of transformer sequence classifiers, in the row
//! blocks and tiles of the MLP kernels ([`super::ntk::run_blocks`]: same checkpoints, same
//! symmetric mirroring, bits independent of the block size), and two of Engel et al.'s
//! baselines in the same tiles: the gradient cosine (one backward seed per sample, its own
//! cross-entropy gradient `softmax(f(x)) − e_y`, contracted like a pNTK and cosine-normalised)
//! and the embedding kernel (no backward pass: every token's hidden states of every layer side by
//! side, paired by position within the text through the embedding tables' id-matching form with
//! the position as the id, cosine-normalised).
//!
//! Per tile of `tile_rows` texts, the classifier's per-sample gradient factors
//! ([`crate::models::classifier_grad`]) are computed on the classifier's backend (recorded
//! forward, one backward pass per seed), downloaded and uploaded to the contraction backend; a
//! pair of tiles is contracted on the backend term by term:
//!
//! - each Linear layer by the token-level form (`ntk_contract_seq`, `Σ_{t,s}⟨δ_t,δ_s⟩⟨a_t,a_s⟩`)
//!   or, where [`SeqForm::choose`] says it is cheaper for the tiles' mean lengths, by the
//!   materialised per-sample gradients (`ntk_sample_gradients` then `ntk_contract`);
//! - each embedding table by the id-matching form (`Σ_{t,s: id_t = id_s}⟨δ_t,δ_s⟩`);
//! - the biases and LayerNorm parameters, materialised per sample, by `ntk_contract`.
//!
//! With a dense JL projection each tile's factors are replaced by the projected per-sample
//! gradients `[n, seeds·k]` (`TileFactors::projected`), contracted as one term.
//!
//! Every column tile's factors stay uploaded for the whole run; a row tile's are computed once
//! per tile (reused from the column tiles when the kernel is square, its diagonal tile being the
//! self contraction the cosine normalisation needs anyway). A train × train and a test × train
//! kernel can share the training texts' factors ([`SequenceKernelJob::column_tiles`]).

use std::ops::{ControlFlow, Range};

use super::layers::LayerSpec;
use super::ntk::{cosine_normalize, run_blocks, run_tiles, BlockDone, TileFn, Tiling, WorkerLoop};
use super::project::{layer_seed, KernelKind};
use super::transformer_project::{dense_features, CHUNK_VALUES};
use crate::backend::{Backend, JlSpec, SeqFactors, SeqForm, SeqLayout, Tensor, TokenPairing};
use crate::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use crate::io::kernel_file::KernelFile;
use crate::models::classifier::SequenceClassifier;
use crate::models::classifier_grad::{
    class_seeds, factors, hidden_states, loss_factors, summed_seed, FactorRows, SequenceFactors,
};
use crate::models::tokenize::TokenizedText;
use crate::models::TokenBatch;

/// A kernel between tokenised row texts and column texts (the same texts when `cols` is
/// `None`).
pub struct SequenceKernelJob<'a> {
    /// Computes the factors: loaded with f32 weights on any backend (`mscope ntk` loads it on
    /// the first contraction device).
    pub classifier: &'a SequenceClassifier,
    pub rows: &'a [TokenizedText],
    pub cols: Option<&'a [TokenizedText]>,
    /// Class indices of the rows and (when `cols` is given) the columns: the gradient cosine's
    /// loss needs them; the other kinds ignore them.
    pub row_labels: Option<&'a [usize]>,
    pub col_labels: Option<&'a [usize]>,
    pub kind: KernelKind,
    /// Rows per block (≥ 1): what a checkpoint saves at once.
    pub block_rows: usize,
    /// Texts per tile (≥ 1).
    pub tile_rows: usize,
    /// The parameters the kernel sums over.
    pub layers: LayerSpec,
    /// The dense JL map of the per-sample gradients (column offset 0), or `None` for the exact
    /// kernel.
    pub projection: Option<JlSpec>,
    /// With `projection`: each Linear weight by its own Kronecker pair of maps instead
    /// (`TileFactors::projected`).
    pub kronecker: bool,
}

/// The factors of a kernel's column tiles on one backend ([`SequenceKernelJob::column_tiles`]).
pub struct ColumnTiles {
    tiles: Vec<TileFactors>,
    kind: KernelKind,
    texts: usize,
    tile_rows: usize,
}

/// One tile's factors on the contraction backend.
struct TileFactors {
    n: usize,
    /// The tile's tokens, and one row per sample (the head's layers).
    tokens: SeqLayout,
    samples: SeqLayout,
    /// Per Linear: output gradients `[rows, p]`, inputs `[rows, d_in]`, which rows, `p`, `d_in`.
    linears: Vec<(Tensor, Tensor, FactorRows, usize, usize)>,
    embedding: Tensor,
    tables: Vec<Vec<u32>>,
    vectors: Vec<Tensor>,
    /// The tile contracted with itself, unnormalised: a square kernel's diagonal tile, and the
    /// diagonal the cosine normalisation divides by.
    own: Vec<f32>,
}

impl TileFactors {
    fn new(backend: &dyn Backend, f: SequenceFactors) -> Result<Self> {
        let n = f.num_samples();
        let tokens = f.layout.num_tokens();
        let rows_of = |rows: FactorRows| match rows {
            FactorRows::Tokens => tokens,
            FactorRows::Samples => n,
        };
        let linears = f
            .linears
            .iter()
            .map(|l| {
                let (count, p) = (rows_of(l.rows), f.seeds * l.d_out);
                Ok((
                    backend.upload(&[count, p], &l.deltas)?,
                    backend.upload(&[count, l.d_in], &l.acts)?,
                    l.rows,
                    p,
                    l.d_in,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let width = f.seeds * f.embeddings.width;
        let vectors = f
            .vectors
            .iter()
            .map(|v| backend.upload(&[n, f.seeds * v.len], &v.grads))
            .collect::<Result<Vec<_>>>()?;
        let tile = TileFactors {
            n,
            samples: SeqLayout::from_lengths(vec![1; n]),
            linears,
            embedding: backend.upload(&[tokens, width], &f.embeddings.deltas)?,
            tables: f.embeddings.tables.into_iter().map(|t| t.ids).collect(),
            vectors,
            own: Vec::new(),
            tokens: f.layout,
        };
        tile.with_self_kernel(backend)
    }

    /// A tile of the embedding kernel: every token's hidden states `[tokens, (L+1)·h]` as the one
    /// "table" gradient, its position within its text as the id, so the id-matching contraction
    /// gives `Σ_{t < min(T_x, T_z)} ⟨H_t(x), H_t(z)⟩`.
    fn hidden(
        backend: &dyn Backend,
        classifier: &SequenceClassifier,
        batch: &TokenBatch,
    ) -> Result<Self> {
        let states = hidden_states(classifier, batch)?;
        let tokens = batch.layout.num_tokens();
        let n = batch.layout.num_sequences();
        let positions = (0..n)
            .flat_map(|i| 0..batch.layout.range(i).len() as u32)
            .collect();
        let tile = TileFactors {
            n,
            samples: SeqLayout::from_lengths(vec![1; n]),
            linears: Vec::new(),
            embedding: backend.upload(&[tokens, states.len() / tokens.max(1)], &states)?,
            tables: vec![positions],
            vectors: Vec::new(),
            own: Vec::new(),
            tokens: batch.layout.clone(),
        };
        tile.with_self_kernel(backend)
    }

    /// A tile of dense JL features: each (sample, seed) gradient projected by one `k × P` map
    /// over the parameters in [`SequenceFactors::materialize`] order, as the MLPs' dense
    /// projection maps the whole parameter vector ([`dense_features`]: only the table rows
    /// the tile read, the rest tensor block by tensor block for the whole tile, never one
    /// whole gradient). One term, `[n, seeds·k]`.
    ///
    /// With `kronecker`, each Linear weight is left out of that map and projected by two maps
    /// of its own, `P_δ` on output gradients and `P_a` on inputs (seeds from
    /// [`layer_seed`], as for MLPs): `Σ_t (P_δ δ_t)(P_a a_t)ᵀ` per (sample, seed), `k²` values,
    /// one more term per Linear.
    fn projected(
        backend: &dyn Backend,
        mut f: SequenceFactors,
        jl: &JlSpec,
        kronecker: bool,
    ) -> Result<Self> {
        let linears = if kronecker {
            std::mem::take(&mut f.linears)
        } else {
            Vec::new()
        };
        let (n, r, k) = (f.num_samples(), f.seeds, jl.dim);
        let features = dense_features(backend, &f, jl, CHUNK_VALUES)?;
        let mut vectors = vec![backend.upload(&[n, r * k], &features)?];
        for (l, lin) in linears.iter().enumerate() {
            let count = match lin.rows {
                FactorRows::Tokens => f.layout.num_tokens(),
                FactorRows::Samples => n,
            };
            let project = |values: &[f32], rows: usize, width: usize, side: u64| {
                let spec = JlSpec {
                    seed: layer_seed(jl.seed, l, side),
                    column_offset: 0,
                    ..*jl
                };
                let x = backend.upload(&[rows, width], values)?;
                let mut out = backend.zeros(&[rows, k])?;
                backend.jl_project(&x, &spec, false, &mut out)?;
                backend.download(&out)
            };
            let acts = project(&lin.acts, count, lin.d_in, 0)?;
            // Rows of `deltas` are (token, seed) pairs.
            let deltas = project(&lin.deltas, count * r, lin.d_out, 1)?;
            let mut grads = vec![0.0f32; n * r * k * k];
            for (row, g) in grads.chunks_exact_mut(k * k).enumerate() {
                let (i, c) = (row / r, row % r);
                let tokens = f.sample_rows(lin.rows, i);
                for t in tokens {
                    let a = &acts[t * k..(t + 1) * k];
                    let d = &deltas[(t * r + c) * k..(t * r + c + 1) * k];
                    for (g, &dv) in g.chunks_exact_mut(k).zip(d) {
                        g.iter_mut().zip(a).for_each(|(g, &av)| *g += dv * av);
                    }
                }
            }
            vectors.push(backend.upload(&[n, r * k * k], &grads)?);
        }
        let tile = TileFactors {
            n,
            samples: SeqLayout::from_lengths(vec![1; n]),
            linears: Vec::new(),
            // No table reads it: the features hold every parameter.
            embedding: backend.zeros(&[1, 1])?,
            tables: Vec::new(),
            vectors,
            own: Vec::new(),
            tokens: f.layout,
        };
        tile.with_self_kernel(backend)
    }

    /// Contracts the tile with itself once, for [`Self::own`].
    fn with_self_kernel(mut self, backend: &dyn Backend) -> Result<Self> {
        self.own = contract(backend, &self, &self)?;
        Ok(self)
    }

    /// The tile's self products `K(x_i, x_i)`, what the cosine normalisation divides by.
    fn self_kernel(&self) -> Vec<f64> {
        (0..self.n)
            .map(|i| self.own[i * self.n + i] as f64)
            .collect()
    }

    fn layout(&self, rows: FactorRows) -> &SeqLayout {
        match rows {
            FactorRows::Tokens => &self.tokens,
            FactorRows::Samples => &self.samples,
        }
    }

    /// Mean rows per sample of a factor.
    fn mean_rows(&self, rows: FactorRows) -> f64 {
        self.layout(rows).num_tokens() as f64 / self.n.max(1) as f64
    }
}

/// One side of a Linear layer's sequence contraction.
fn side<'a>(tile: &'a TileFactors, delta: &'a Tensor, rows: FactorRows) -> SeqFactors<'a> {
    SeqFactors {
        delta,
        layout: tile.layout(rows),
    }
}

/// The unnormalised kernel `[r.n, c.n]` between two tiles, summed over every term (a tile
/// against itself materialises its per-sample gradients once).
fn contract(backend: &dyn Backend, r: &TileFactors, c: &TileFactors) -> Result<Vec<f32>> {
    let mut out = backend.zeros(&[r.n, c.n])?;
    for ((rd, ra, rows, p, q), (cd, ca, _, _, _)) in r.linears.iter().zip(&c.linears) {
        match SeqForm::choose(r.mean_rows(*rows), c.mean_rows(*rows), *p, *q) {
            SeqForm::Tokens => backend.ntk_contract_seq(
                side(r, rd, *rows),
                side(c, cd, *rows),
                TokenPairing::Linear {
                    rows: ra,
                    cols: ca,
                    offset: 0.0,
                },
                0..c.n,
                &mut out,
            )?,
            SeqForm::Materialised => {
                let gradients = |t: &TileFactors, d: &Tensor, a: &Tensor| -> Result<Tensor> {
                    let mut g = backend.zeros(&[t.n, p * (q + 1)])?;
                    backend.ntk_sample_gradients(side(t, d, *rows), a, 0.0, &mut g)?;
                    Ok(g)
                };
                let gr = gradients(r, rd, ra)?;
                if std::ptr::eq(r, c) {
                    backend.ntk_contract(&gr, &gr, None, 0.0, 0..c.n, &mut out)?;
                } else {
                    let gc = gradients(c, cd, ca)?;
                    backend.ntk_contract(&gr, &gc, None, 0.0, 0..c.n, &mut out)?;
                }
            }
        }
    }
    for (r_ids, c_ids) in r.tables.iter().zip(&c.tables) {
        backend.ntk_contract_seq(
            SeqFactors {
                delta: &r.embedding,
                layout: &r.tokens,
            },
            SeqFactors {
                delta: &c.embedding,
                layout: &c.tokens,
            },
            TokenPairing::Embedding {
                rows: r_ids,
                cols: c_ids,
            },
            0..c.n,
            &mut out,
        )?;
    }
    for (rv, cv) in r.vectors.iter().zip(&c.vectors) {
        backend.ntk_contract(rv, cv, None, 0.0, 0..c.n, &mut out)?;
    }
    backend.download(&out)
}

impl SequenceKernelJob<'_> {
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }

    pub fn n_cols(&self) -> usize {
        self.cols.unwrap_or(self.rows).len()
    }

    pub fn tiling(&self) -> Tiling {
        Tiling {
            n_rows: self.n_rows(),
            n_cols: self.n_cols(),
            square: self.cols.is_none(),
            block_rows: self.block_rows,
            tile_rows: self.tile_rows,
        }
    }

    /// The blocks' row ranges, in order.
    pub fn blocks(&self) -> Vec<Range<usize>> {
        self.tiling().blocks()
    }

    /// An error for inputs the job cannot run on: no texts, no rows per block or tile, a
    /// `layers` spec that keeps no parameter, a kernel too large for memory.
    pub fn check(&self) -> Result<()> {
        for (what, texts) in [("data", Some(self.rows)), ("--against data", self.cols)] {
            if texts.is_some_and(|t| t.is_empty()) {
                return Err(Error::input(format!("{what}: no texts")));
            }
        }
        if self.projection.is_some_and(|jl| jl.dim == 0) {
            return Err(Error::input(
                "--projection-dim must be at least 1 for a projected kernel",
            ));
        }
        if self.block_rows == 0 || self.tile_rows == 0 {
            return Err(Error::input("--block-rows must be at least 1"));
        }
        let cols = self.cols.map_or(self.row_labels, |_| self.col_labels);
        self.kind.check_labels(
            (self.row_labels.map(<[usize]>::len), self.n_rows()),
            (cols.map(<[usize]>::len), self.n_cols()),
            "text",
        )?;
        if self.kind == KernelKind::Embedding
            && (self.projection.is_some() || !self.layers.is_all())
        {
            return Err(Error::input(
                "--kind embedding: the kernel of hidden states takes neither --projection nor \
                 --layers (they select and project parameter gradients)",
            ));
        }
        if !self.layers.is_all() {
            // Refuse a spec that keeps nothing before any block is computed.
            let seed = summed_seed(self.classifier.num_labels());
            let one = factors(self.classifier, &TokenBatch::pack(&self.rows[..1]), &seed)?;
            self.layers.select(&one.parameter_names())?;
        }
        let what = format!("a {}x{} kernel", self.n_rows(), self.n_cols());
        crate::limits::check_memory(&what, self.n_rows() as f64 * self.n_cols() as f64 * 4.0)
    }

    /// Runs every block not yet in `checkpoint`, as [`super::ntk::KernelJob::run`] does.
    pub fn run(
        &self,
        backend: &dyn Backend,
        checkpoint: Option<&Checkpoint>,
        on_block: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<KernelFile>> {
        let columns = self.column_tiles(backend)?;
        self.run_on(backend, &columns, checkpoint, on_block)
    }

    /// Checks the job and computes its column tiles' factors on `backend`: what [`Self::run_on`]
    /// takes, so that one training set's factors serve its train × train kernel and, by a job
    /// of test rows `--against` the same texts, its test × train kernel.
    pub fn column_tiles(&self, backend: &dyn Backend) -> Result<ColumnTiles> {
        self.check()?;
        self.columns(backend)
    }

    /// [`Self::run`] with the column tiles given: those of [`Self::column_tiles`] of a job with
    /// the same kind, parameters, projection and column texts (an error if their count, tile
    /// rows or kind differ).
    pub fn run_on(
        &self,
        backend: &dyn Backend,
        columns: &ColumnTiles,
        checkpoint: Option<&Checkpoint>,
        on_block: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<KernelFile>> {
        if (columns.kind, columns.texts, columns.tile_rows)
            != (self.kind, self.n_cols(), self.tile_rows)
        {
            return Err(Error::input(format!(
                "column factors of a {} kernel of {} texts in tiles of {} for a {} kernel of {} \
                 texts in tiles of {}",
                columns.kind.name(),
                columns.texts,
                columns.tile_rows,
                self.kind.name(),
                self.n_cols(),
                self.tile_rows
            )));
        }
        let tiling = self.tiling();
        let kernel = self.with_columns(backend, columns, &mut |tile| {
            run_blocks(&tiling, checkpoint, on_block, tile)
        })?;
        let Some(kernel) = kernel else {
            return Ok(None);
        };
        Ok(Some(KernelFile {
            values: kernel,
            rows: self.n_rows(),
            cols: self.n_cols(),
            kind: self.kind.name().to_string(),
            normalized: self.kind.normalized(),
            projection_dim: self.projection.map_or(0, |jl| jl.dim),
        }))
    }

    /// Computes the row tiles `tiles` — a shard's share, or all of them — with one worker per
    /// backend, as [`super::ntk::run_tiles`] does.
    pub fn run_tiles(
        &self,
        backends: &[&dyn Backend],
        tiles: Range<usize>,
        checkpoint: Option<&Checkpoint>,
        on_tile: &mut dyn FnMut(&BlockDone) -> ControlFlow<()>,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        self.check()?;
        let worker = |backend: &dyn Backend, drive: &mut WorkerLoop| {
            self.with_columns(backend, &self.columns(backend)?, drive)
        };
        run_tiles(
            &self.tiling(),
            tiles,
            checkpoint,
            on_tile,
            backends,
            &worker,
        )
    }

    /// The factors of the texts `range` of `texts`, with their labels where given (checked to
    /// be all).
    fn tile_factors(
        &self,
        backend: &dyn Backend,
        texts: &[TokenizedText],
        labels: Option<&[usize]>,
        range: Range<usize>,
    ) -> Result<TileFactors> {
        let classes = self.classifier.num_labels();
        let seeds = match self.kind {
            KernelKind::Pntk => summed_seed(classes),
            KernelKind::Trntk | KernelKind::Trntk0 => class_seeds(classes),
            // Seeded per sample from its label, or no backward pass at all.
            KernelKind::Gradcos | KernelKind::Embedding => Vec::new(),
        };
        let batch = TokenBatch::pack(&texts[range.clone()]);
        let mut f = match self.kind {
            KernelKind::Embedding => return TileFactors::hidden(backend, self.classifier, &batch),
            KernelKind::Gradcos => {
                let labels = labels.map(|l| &l[range]).unwrap_or_default();
                loss_factors(self.classifier, &batch, labels)?
            }
            _ => factors(self.classifier, &batch, &seeds)?,
        };
        if !self.layers.is_all() {
            let keep = self.layers.select(&f.parameter_names())?;
            f.retain(&keep);
        }
        match &self.projection {
            None => TileFactors::new(backend, f),
            Some(jl) => TileFactors::projected(backend, f, jl, self.kronecker),
        }
    }

    /// Every column tile's factors.
    fn columns(&self, backend: &dyn Backend) -> Result<ColumnTiles> {
        let t = self.tile_rows;
        let (cols, col_labels) = match self.cols {
            Some(cols) => (cols, self.col_labels),
            None => (self.rows, self.row_labels),
        };
        let tiles = (0..cols.len())
            .step_by(t)
            .map(|start| {
                self.tile_factors(
                    backend,
                    cols,
                    col_labels,
                    start..(start + t).min(cols.len()),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ColumnTiles {
            tiles,
            kind: self.kind,
            texts: cols.len(),
            tile_rows: t,
        })
    }

    /// Calls `drive` with the function that gives a row tile against the column tiles
    /// `columns`, normalised.
    fn with_columns<T>(
        &self,
        backend: &dyn Backend,
        columns: &ColumnTiles,
        drive: &mut dyn FnMut(&mut TileFn) -> Result<T>,
    ) -> Result<T> {
        let t = self.tile_rows;
        let col_tiles = &columns.tiles;
        let tiling = self.tiling();
        let mut tile = |rows: Range<usize>, cols: Range<usize>| -> Result<Vec<f32>> {
            let own;
            let row_tile = if tiling.square {
                &col_tiles[rows.start / t]
            } else {
                own = self.tile_factors(backend, self.rows, self.row_labels, rows.clone())?;
                &own
            };
            let mut values = vec![0.0f32; rows.len() * cols.len()];
            let row_self = self.kind.normalized().then(|| row_tile.self_kernel());
            // `cols` starts on a tile boundary: at the row tile (square) or at 0.
            let first = cols.start / t;
            for (k, col_tile) in col_tiles[first..].iter().enumerate() {
                // A square kernel's diagonal tile is the tile's own contraction, done already.
                let mut v = match std::ptr::eq(row_tile, col_tile) {
                    true => row_tile.own.clone(),
                    false => contract(backend, row_tile, col_tile)?,
                };
                if let Some(row_self) = &row_self {
                    cosine_normalize(&mut v, row_self, &col_tile.self_kernel());
                }
                let at = (first + k) * t - cols.start;
                for (r, src) in v.chunks_exact(col_tile.n).enumerate() {
                    values[r * cols.len() + at..][..col_tile.n].copy_from_slice(src);
                }
            }
            Ok(values)
        };
        drive(&mut tile)
    }
}
