//! The discriminant directions of a fit on every labelled row, for plots.

use rayon::prelude::*;

use super::fit::{class_term, matmul, matmul_tn, pool, rank_scale, whiten, SVD_TOL};
use super::{Classes, Shrinkage};
use crate::backend::{Backend, Matrix64, Tensor};
use crate::error::{Error, Result};

/// The discriminant directions of a fit on every labelled row, for plots: the generalised
/// eigenproblem `S_b v = λ Σ v` solved by whitening `Σ` (as the svd rule does, so a singular `Σ`
/// works too) and an eigen of the whitened between-class scatter.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// Share of the between-class variance per direction (scikit-learn's
    /// `explained_variance_ratio_`).
    pub explained_variance_ratio: Vec<f64>,
    /// `[d, m]`, `m = min(K − 1, rank)` directions.
    pub directions: Matrix64,
    /// The weighted mean of the class means, the origin of the coordinates.
    pub centre: Vec<f64>,
}

impl Projection {
    pub fn fit(
        backend: &dyn Backend,
        x: &Tensor,
        rows: &[f32],
        classes: &Classes,
        shrinkage: Shrinkage,
    ) -> Result<Projection> {
        let (_, d) = x.dims2("lda input")?;
        let groups: Vec<&[u32]> = classes.rows.iter().map(Vec::as_slice).collect();
        let moments = backend.scatter(x, &groups)?;
        let terms: Vec<Matrix64> = moments
            .iter()
            .zip(&classes.rows)
            .map(|(m, r)| class_term(m, r, rows, d, shrinkage))
            .collect();
        let all: Vec<usize> = (0..classes.len()).collect();
        let sigma = pool(&moments, &terms, &all, shrinkage);
        let w = whiten(backend, vec![sigma], &[rank_scale(&moments, &all)])?.remove(0);
        let n: f64 = moments.iter().map(|m| m.count as f64).sum();
        let centre: Vec<f64> = (0..d)
            .map(|i| {
                moments
                    .iter()
                    .map(|m| m.count as f64 * m.mean[i])
                    .sum::<f64>()
                    / n
            })
            .collect();
        // Z = [K, r]: whitened class-mean offsets weighted by √n_k; S_b (whitened) = ZᵀZ. Its
        // eigenvectors come from the small K×K problem Z Zᵀ u = λ u, v = Zᵀu/√λ.
        let mut offsets = Matrix64::zeros(d, classes.len());
        for (k, m) in moments.iter().enumerate() {
            let weight = (m.count as f64).sqrt();
            for (i, (mean, c)) in m.mean.iter().zip(&centre).enumerate() {
                *offsets.at_mut(i, k) = weight * (mean - c);
            }
        }
        let z = matmul_tn(&offsets, &w); // [K, r]
        let mut gram = Matrix64::zeros(z.rows, z.rows);
        for a in 0..z.rows {
            for b in 0..z.rows {
                *gram.at_mut(a, b) = (0..z.cols).map(|j| z.at(a, j) * z.at(b, j)).sum();
            }
        }
        let eigen = backend.symmetric_eigen(&[gram])?.remove(0);
        let total: f64 = eigen.values.iter().filter(|&&l| l > 0.0).sum();
        let m = eigen
            .values
            .iter()
            .take(classes.len() - 1)
            .take_while(|&&l| l > SVD_TOL * eigen.values[0])
            .count();
        if m == 0 {
            // Identical rows, or class means that coincide: nothing to project onto.
            return Err(Error::input(
                "no discriminant direction: the class means do not differ beyond the \
                 within-class scatter (are the rows identical?)",
            ));
        }
        let mut y = Matrix64::zeros(z.cols, m); // whitened directions, [r, m]
        for j in 0..m {
            let inv = 1.0 / eigen.values[j].sqrt();
            for i in 0..z.cols {
                *y.at_mut(i, j) = inv
                    * (0..z.rows)
                        .map(|a| z.at(a, i) * eigen.vectors.at(a, j))
                        .sum::<f64>();
            }
        }
        Ok(Projection {
            explained_variance_ratio: eigen.values[..m].iter().map(|l| l / total).collect(),
            directions: matmul(&w, &y),
            centre,
        })
    }

    /// `[rows, m]` coordinates of `x` rows (row-major, `d` wide) along the directions.
    pub fn transform(&self, x: &[f32]) -> Vec<f64> {
        let (d, m) = (self.directions.rows, self.directions.cols);
        let mut out = vec![0.0; x.len() / d * m];
        out.par_chunks_mut(m.max(1))
            .zip(x.par_chunks(d))
            .for_each(|(o, x)| {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = (0..d)
                        .map(|i| (x[i] as f64 - self.centre[i]) * self.directions.at(i, j))
                        .sum();
                }
            });
        out
    }
}
