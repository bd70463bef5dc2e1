//! How alike are two embedders' views of the same rows? For every pair of embeddings of one set of
//! rows (the Platonic-representation question: do different models converge?):
//!
//! - **linear CKA** of the centred embeddings, `‖AᵀB‖²_F / (‖AᵀA‖_F ‖BᵀB‖_F)` — the centred
//!   kernel alignment of their linear kernels, computed in feature space (no `n×n` matrix);
//! - **orthogonal Procrustes**: after centring and scaling each to unit Frobenius norm (the
//!   narrower one zero-padded to the wider), the rotation `R` minimising `‖ÂR − B̂‖_F` and that
//!   residual, `√(2 − 2·Σσ(ÂᵀB̂))`;
//! - **SVCCA** correlations: the canonical correlations between each side's top principal
//!   components (whitened PCA scores, so they are the singular values of `QₐᵀQ_b`), largest first;
//! - **mutual k-nearest-neighbour agreement**: for each row, the share of its `k` cosine nearest
//!   neighbours (itself excluded) that both embeddings agree on, averaged over the rows.
//!
//! Everything runs in f64 on the host except the neighbour search (f32 cosine similarities in
//! tiles over the upper triangle, never an `n×n` matrix).

use std::sync::{Mutex, PoisonError};

use faer::{Mat, MatRef, Side};
use rayon::prelude::*;
use serde::Serialize;

use crate::backend::cpu::{gemm, gemm_in_task, Operand};
use crate::error::{Error, Result};
use crate::io::embeddings::EmbeddingsFile;

/// What `align` compares and how.
#[derive(Clone, Copy, Debug)]
pub struct AlignOptions {
    /// Neighbours per row for the mutual k-NN agreement.
    pub k: usize,
    /// Principal components per side for SVCCA.
    pub cca_dims: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct AlignInput {
    pub path: String,
    pub model: String,
    pub dim: usize,
}

/// One pair of inputs (indices into [`AlignReport::inputs`]).
#[derive(Clone, Debug, Serialize)]
pub struct AlignPair {
    pub a: usize,
    pub b: usize,
    pub cka: f64,
    pub procrustes_residual: f64,
    pub cca: Vec<f64>,
    pub mutual_knn: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AlignReport {
    pub inputs: Vec<AlignInput>,
    pub rows: usize,
    pub k: usize,
    pub cca_dims: usize,
    pub pairs: Vec<AlignPair>,
}

/// One input's embeddings, centred, in f64, with what the pairs reuse.
struct Centred {
    values: Vec<f64>,
    dim: usize,
    /// Column means (to place aligned rows in another input's coordinates).
    mean: Vec<f64>,
    /// `‖X‖_F` of the centred values.
    norm: f64,
    /// The `cca_dims` whitened principal-component scores, `[rows, cca_dims]`.
    whitened: Vec<f64>,
    /// `‖XᵀX‖_F`.
    gram_norm: f64,
    /// Each row's `k` cosine nearest neighbours, sorted.
    neighbours: Vec<Vec<u32>>,
}

/// Compares every pair of `files` (the same rows, in the same order, from different models).
pub fn report(files: &[(String, EmbeddingsFile)], options: &AlignOptions) -> Result<AlignReport> {
    if files.len() < 2 {
        return Err(Error::input("align needs at least two embeddings files"));
    }
    let rows = files[0].1.rows();
    for (path, file) in files {
        if file.rows() != rows {
            return Err(Error::input(format!(
                "{path}: {} rows, but {} has {rows}: align compares embeddings of the same rows",
                file.rows(),
                files[0].0
            )));
        }
    }
    let min_dim = files.iter().map(|(_, f)| f.dim).min().unwrap_or(0);
    if rows < 3 || min_dim == 0 {
        return Err(Error::input(format!(
            "align needs at least 3 rows and 1 dimension (got {rows} rows, {min_dim} dims)"
        )));
    }
    if options.k == 0 || options.k >= rows {
        return Err(Error::input(format!(
            "--k {} must be between 1 and rows − 1 = {}",
            options.k,
            rows - 1
        )));
    }
    if options.cca_dims == 0 || options.cca_dims > min_dim.min(rows - 1) {
        return Err(Error::input(format!(
            "--cca-dims {} must be between 1 and min(dims, rows − 1) = {}",
            options.cca_dims,
            min_dim.min(rows - 1)
        )));
    }
    let centred = files
        .iter()
        .map(|(_, f)| Centred::of(f, options))
        .collect::<Result<Vec<_>>>()?;
    let mut pairs = Vec::new();
    for a in 0..files.len() {
        for b in a + 1..files.len() {
            pairs.push(compare([a, b], [&centred[a], &centred[b]], rows, options)?);
        }
    }
    Ok(AlignReport {
        inputs: files
            .iter()
            .map(|(path, f)| AlignInput {
                path: path.clone(),
                model: f.model.clone(),
                dim: f.dim,
            })
            .collect(),
        rows,
        k: options.k,
        cca_dims: options.cca_dims,
        pairs,
    })
}

/// `a`'s rows rotated onto `b` by the Procrustes rotation and placed in `b`'s coordinates
/// (`b`'s scale and mean; `b`'s width), row-major `[rows, b.dim]`.
pub fn aligned(a: &EmbeddingsFile, b: &EmbeddingsFile) -> Result<Vec<f32>> {
    let (ca, cb) = (Centred::of_values(a)?, Centred::of_values(b)?);
    let rows = a.rows();
    let rotation = procrustes(&ca, &cb, &cross(&ca, &cb, rows))?.1;
    // Â R with Â zero-padded to the wider width: only R's first `a.dim` rows and `b.dim`
    // columns meet nonzero entries and land in B's columns.
    let block: Vec<f64> = (0..ca.dim)
        .flat_map(|i| (0..b.dim).map(move |j| (i, j)))
        .map(|at| rotation[at])
        .collect();
    let mut rotated = vec![0.0f64; rows * b.dim];
    gemm(
        &mut rotated,
        Operand::plain(&ca.values, rows, ca.dim),
        Operand::plain(&block, ca.dim, b.dim),
        false,
    );
    let out = rotated
        .iter()
        .enumerate()
        .map(|(at, v)| (v / ca.norm * cb.norm + cb.mean[at % b.dim]) as f32)
        .collect();
    Ok(out)
}

impl Centred {
    /// Centred values, mean and norm only.
    fn of_values(file: &EmbeddingsFile) -> Result<Self> {
        let (rows, dim) = (file.rows(), file.dim);
        let mut mean = vec![0.0f64; dim];
        for row in file.embeddings.chunks_exact(dim) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m += f64::from(v));
        }
        mean.iter_mut().for_each(|m| *m /= rows as f64);
        let values: Vec<f64> = file
            .embeddings
            .chunks_exact(dim)
            .flat_map(|row| row.iter().zip(&mean).map(|(&v, m)| f64::from(v) - m))
            .collect();
        let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(Error::input(format!(
                "the {} embeddings are all the same row: nothing to align",
                file.model
            )));
        }
        Ok(Centred {
            values,
            dim,
            mean,
            norm,
            whitened: Vec::new(),
            gram_norm: 0.0,
            neighbours: Vec::new(),
        })
    }

    fn of(file: &EmbeddingsFile, options: &AlignOptions) -> Result<Self> {
        let mut c = Self::of_values(file)?;
        let rows = file.rows();
        let gram = cross(&c, &c, rows);
        c.gram_norm = gram.norm_l2();
        c.whitened = whitened_scores(&c, &gram, rows, options.cca_dims)?;
        c.neighbours = nearest_neighbours(&file.embeddings, file.dim, options.k);
        Ok(c)
    }
}

/// `XₐᵀX_b` of two centred inputs.
fn cross(a: &Centred, b: &Centred, rows: usize) -> Mat<f64> {
    let mut out = vec![0.0f64; a.dim * b.dim];
    gemm(
        &mut out,
        Operand::transposed(&a.values, rows, a.dim),
        Operand::plain(&b.values, rows, b.dim),
        false,
    );
    Mat::from_fn(a.dim, b.dim, |i, j| out[i * b.dim + j])
}

/// The top `k` principal-component scores of `c`, each scaled to unit norm, `[rows, k]`.
fn whitened_scores(c: &Centred, gram: &Mat<f64>, rows: usize, k: usize) -> Result<Vec<f64>> {
    let eigen = gram
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::input(format!("PCA for SVCCA did not converge: {e:?}")))?;
    let (values, vectors) = (eigen.S(), eigen.U());
    let d = c.dim;
    // faer sorts eigenvalues ascending: the top k are the last columns.
    let top: Vec<usize> = (d - k..d).rev().collect();
    if let Some(&j) = top.iter().find(|&&j| values[j] <= 1e-12 * values[d - 1]) {
        return Err(Error::input(format!(
            "--cca-dims {k} exceeds the rank of an input (component {} has no variance)",
            d - j
        )));
    }
    let basis: Vec<f64> = (0..d)
        .flat_map(|i| top.iter().map(move |&j| (i, j)))
        .map(|(i, j)| vectors[(i, j)])
        .collect();
    let mut scores = vec![0.0f64; rows * k];
    gemm(
        &mut scores,
        Operand::plain(&c.values, rows, d),
        Operand::plain(&basis, d, k),
        false,
    );
    for (col, &j) in top.iter().enumerate() {
        let scale = 1.0 / values[j].sqrt();
        scores
            .iter_mut()
            .skip(col)
            .step_by(k)
            .for_each(|s| *s *= scale);
    }
    Ok(scores)
}

/// The Procrustes residual and rotation (`[d, d]`, `d` the wider width) of `a` onto `b`, from
/// their cross product `c = XₐᵀX_b`.
fn procrustes(a: &Centred, b: &Centred, c: &Mat<f64>) -> Result<(f64, Mat<f64>)> {
    let d = a.dim.max(b.dim);
    let scale = 1.0 / (a.norm * b.norm);
    let padded = Mat::from_fn(d, d, |i, j| {
        if i < a.dim && j < b.dim {
            c[(i, j)] * scale
        } else {
            0.0
        }
    });
    let svd = padded
        .svd()
        .map_err(|e| Error::input(format!("Procrustes SVD did not converge: {e:?}")))?;
    let nuclear: f64 = (0..d).map(|i| svd.S()[i]).sum();
    let rotation = svd.U() * svd.V().transpose();
    Ok(((2.0 - 2.0 * nuclear).max(0.0).sqrt(), rotation))
}

fn compare(
    [index_a, index_b]: [usize; 2],
    [a, b]: [&Centred; 2],
    rows: usize,
    options: &AlignOptions,
) -> Result<AlignPair> {
    let c = cross(a, b, rows);
    let cka = c.squared_norm_l2() / (a.gram_norm * b.gram_norm);
    let (procrustes_residual, _) = procrustes(a, b, &c)?;
    let k = options.cca_dims;
    let mut qq = vec![0.0f64; k * k];
    gemm(
        &mut qq,
        Operand::transposed(&a.whitened, rows, k),
        Operand::plain(&b.whitened, rows, k),
        false,
    );
    let mut cca = MatRef::from_row_major_slice(&qq, k, k)
        .singular_values()
        .map_err(|e| Error::input(format!("SVCCA did not converge: {e:?}")))?;
    cca.sort_by(|x, y| y.total_cmp(x));
    let agreed: usize = a
        .neighbours
        .iter()
        .zip(&b.neighbours)
        .map(|(x, y)| x.iter().filter(|j| y.binary_search(j).is_ok()).count())
        .sum();
    Ok(AlignPair {
        a: index_a,
        b: index_b,
        cka,
        procrustes_residual,
        cca,
        mutual_knn: agreed as f64 / (rows * options.k) as f64,
    })
}

/// Rows per side of a similarity tile: a tile's GEMM (`2·T²·dim` FLOPs) outweighs packing its
/// two `T × dim` operands, and its `T × T` similarities stay in the core's cache for the scans.
const NEIGHBOUR_TILE: usize = 512;

/// Each row's `k` nearest neighbours by cosine similarity, itself excluded, as sorted indices;
/// ties go to the lower index. Zero rows are at similarity 0 to everything.
///
/// Exact, and no `n×n` matrix: the similarities come in `T × T` tiles, one single-threaded GEMM
/// per rayon task, over the tiles on and above the diagonal only (the matrix is symmetric, so a
/// tile `(I, J)` serves the rows of `I` along its rows and the rows of `J` along its columns:
/// half the FLOPs of the full product). Each tile is scanned straight into the rows' running
/// top-`k` lists (a compare against the row's current `k`-th best, rarely an insertion).
fn nearest_neighbours(values: &[f32], dim: usize, k: usize) -> Vec<Vec<u32>> {
    let unit: Vec<f32> = values
        .par_chunks(dim)
        .flat_map_iter(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            row.iter().map(move |v| v * inv)
        })
        .collect();
    let rows = values.len() / dim;
    let tiles = rows.div_ceil(NEIGHBOUR_TILE);
    let span = |t: usize| t * NEIGHBOUR_TILE..((t + 1) * NEIGHBOUR_TILE).min(rows);
    // One lock per tile of rows: a task updates its two tiles' lists one after the other.
    let best: Vec<Mutex<TopK>> = (0..tiles)
        .map(|t| Mutex::new(TopK::new(span(t).len(), k)))
        .collect();
    let pairs: Vec<(usize, usize)> = (0..tiles)
        .flat_map(|i| (i..tiles).map(move |j| (i, j)))
        .collect();
    pairs.into_par_iter().for_each_init(
        || vec![0.0f32; NEIGHBOUR_TILE * NEIGHBOUR_TILE],
        |sims, (i, j)| {
            let (a, b) = (span(i), span(j));
            let sims = &mut sims[..a.len() * b.len()];
            gemm_in_task(
                sims,
                Operand::plain(&unit[a.start * dim..a.end * dim], a.len(), dim),
                Operand::transposed(&unit[b.start * dim..b.end * dim], b.len(), dim),
                false,
            );
            let lock = |t: usize| best[t].lock().unwrap_or_else(PoisonError::into_inner);
            lock(i).offer_rows(sims, a.start, b.start, b.len());
            if i != j {
                lock(j).offer_columns(sims, a.start, b.len());
            }
        },
    );
    best.into_iter()
        .flat_map(|t| {
            t.into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .into_sorted_indices()
        })
        .collect()
}

/// The running `k` best `(similarity, index)` candidates of a tile's rows, each row's list
/// best first: higher similarity, then lower index.
struct TopK {
    k: usize,
    entries: Vec<(f32, u32)>,
}

impl TopK {
    fn new(rows: usize, k: usize) -> Self {
        // The sentinel loses to every real candidate (similarities are at least −1).
        TopK {
            k,
            entries: vec![(f32::NEG_INFINITY, u32::MAX); rows * k],
        }
    }

    /// Offers `(sim, index)` to local row `row`.
    fn offer(&mut self, row: usize, sim: f32, index: u32) {
        let list = &mut self.entries[row * self.k..(row + 1) * self.k];
        let beats = |e: &(f32, u32)| sim > e.0 || (sim == e.0 && index < e.1);
        if !beats(&list[self.k - 1]) {
            return;
        }
        let at = list.iter().position(beats).expect("beats the last entry");
        list.copy_within(at..self.k - 1, at + 1);
        list[at] = (sim, index);
    }

    /// The `k`-th best similarity of local row `row` (a candidate below it cannot enter).
    fn floor(&self, row: usize) -> f32 {
        self.entries[(row + 1) * self.k - 1].0
    }

    /// Rows of `sims` (`[rows, cols]`, rows from global row `row_start`, columns from
    /// `col_start`) offered to this tile's rows, which are those rows; the row itself skipped.
    fn offer_rows(&mut self, sims: &[f32], row_start: usize, col_start: usize, cols: usize) {
        for (r, line) in sims.chunks_exact(cols).enumerate() {
            let me = row_start + r;
            let mut floor = self.floor(r);
            for (c, &s) in line.iter().enumerate() {
                if s >= floor && col_start + c != me {
                    self.offer(r, s, (col_start + c) as u32);
                    floor = self.floor(r);
                }
            }
        }
    }

    /// Columns of `sims` (`[rows, cols]`, rows from global row `row_start`) offered to this
    /// tile's rows, which are the columns (another tile than the rows').
    fn offer_columns(&mut self, sims: &[f32], row_start: usize, cols: usize) {
        let mut floors: Vec<f32> = (0..cols).map(|c| self.floor(c)).collect();
        for (r, line) in sims.chunks_exact(cols).enumerate() {
            for (c, (&s, floor)) in line.iter().zip(&mut floors).enumerate() {
                if s >= *floor {
                    self.offer(c, s, (row_start + r) as u32);
                    *floor = self.floor(c);
                }
            }
        }
    }

    fn into_sorted_indices(self) -> Vec<Vec<u32>> {
        self.entries
            .chunks_exact(self.k)
            .map(|list| {
                let mut indices: Vec<u32> = list.iter().map(|e| e.1).collect();
                indices.sort_unstable();
                indices
            })
            .collect()
    }
}
