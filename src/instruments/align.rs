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
//! Everything runs in f64 on the host except the neighbour search, which screens the cosine
//! similarities in f32 or bf16 tiles over the upper triangle (never an `n×n` matrix) and re-ranks
//! the candidates in f64: exact neighbours (see [`crate::instruments::neighbours`]).

use faer::{Mat, MatRef, Side};
use serde::Serialize;

use crate::backend::cpu::{gemm, Operand};
use crate::error::{Error, Result};
use crate::instruments::neighbours::{cosine_neighbours, NeighbourScreen};
use crate::io::embeddings::EmbeddingsFile;

/// What `align` compares and how.
#[derive(Clone, Copy, Debug)]
pub struct AlignOptions {
    /// Neighbours per row for the mutual k-NN agreement.
    pub k: usize,
    /// Principal components per side for SVCCA.
    pub cca_dims: usize,
    /// How the neighbour search screens similarities before its exact re-rank (the neighbours
    /// are the same with every variant).
    pub screen: NeighbourScreen,
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
        c.neighbours = cosine_neighbours(&file.embeddings, file.dim, options.k, options.screen)?;
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
