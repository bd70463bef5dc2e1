//! Stats kernels of the CPU backend: per-group scatter as one f64 GEMM per group (on rows centred
//! first, so nothing cancels), and batched symmetric eigen / Cholesky solves through faer.
//!
//! A batch of several problems runs one problem per core (each solve sequential); a batch of one
//! gives that problem every core.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::linalg::evd;
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::common::values;
use crate::backend::{Eigen, Matrix64, Moments, Tensor};
use crate::error::{Error, Result};

/// Rows per task when summing rows in parallel.
const ROW_CHUNK: usize = 256;

pub(super) fn scatter(x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>> {
    let (_, d) = x.dims2("scatter input")?;
    let x = values(x)?;
    let n = x.len().checked_div(d).unwrap_or(0);
    for (g, rows) in groups.iter().enumerate() {
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(Error::input(format!(
                "scatter: group {g} names row {bad}, the matrix has {n} rows"
            )));
        }
    }
    Ok(groups.iter().map(|rows| moments(x, d, rows)).collect())
}

fn moments(x: &[f32], d: usize, rows: &[u32]) -> Moments {
    let n = rows.len();
    let mut scatter = Matrix64::zeros(d, d);
    if n == 0 {
        return Moments {
            count: 0,
            mean: vec![0.0; d],
            scatter,
        };
    }
    let row = |r: u32| &x[r as usize * d..(r as usize + 1) * d];
    let mut mean = rows
        .par_chunks(ROW_CHUNK)
        .map(|chunk| {
            let mut sum = vec![0.0f64; d];
            for &r in chunk {
                sum.iter_mut()
                    .zip(row(r))
                    .for_each(|(s, v)| *s += *v as f64);
            }
            sum
        })
        .reduce(
            || vec![0.0; d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    mean.iter_mut().for_each(|m| *m /= n as f64);

    let mut centred = vec![0.0f64; n * d];
    centred
        .par_chunks_mut(d)
        .zip(rows.par_iter())
        .for_each(|(c, &r)| {
            c.iter_mut()
                .zip(row(r))
                .zip(&mean)
                .for_each(|((c, v), m)| *c = *v as f64 - m);
        });
    // YᵀY is symmetric: compute the lower half (half the flops) and mirror it.
    let y = MatRef::from_row_major_slice(&centred, n, d);
    matmul(
        MatMut::from_row_major_slice_mut(&mut scatter.data, d, d),
        BlockStructure::TriangularLower,
        Accum::Replace,
        y.transpose(),
        BlockStructure::Rectangular,
        y,
        BlockStructure::Rectangular,
        1.0,
        Par::rayon(0),
    );
    mirror_lower(&mut scatter);
    Moments {
        count: n,
        mean,
        scatter,
    }
}

fn mirror_lower(a: &mut Matrix64) {
    for i in 0..a.rows {
        for j in 0..i {
            *a.at_mut(j, i) = a.at(i, j);
        }
    }
}

/// One solve per core for a batch, every core for a single problem.
fn inner_par(batch: usize) -> Par {
    if batch == 1 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

fn check_square(what: &str, index: usize, a: &Matrix64) -> Result<()> {
    if a.rows != a.cols || a.data.len() != a.rows * a.cols {
        return Err(Error::input(format!(
            "{what}: matrix {index} of the batch is {}×{}, expected square",
            a.rows, a.cols
        )));
    }
    if a.data.iter().any(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "{what}: matrix {index} of the batch has a non-finite entry"
        )));
    }
    Ok(())
}

pub(super) fn symmetric_eigen(matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
    let par = inner_par(matrices.len());
    matrices
        .par_iter()
        .enumerate()
        .map(|(i, a)| eigen(i, a, par))
        .collect()
}

fn eigen(index: usize, a: &Matrix64, par: Par) -> Result<Eigen> {
    check_square("symmetric_eigen", index, a)?;
    let d = a.rows;
    let mut s = Diag::<f64>::zeros(d);
    let mut u = Mat::<f64>::zeros(d, d);
    let mut buf = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
        d,
        evd::ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    evd::self_adjoint_evd(
        MatRef::from_row_major_slice(&a.data, d, d),
        s.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| {
        Error::input(format!(
            "symmetric_eigen: matrix {index} of the batch: {e:?}"
        ))
    })?;
    // faer returns ascending eigenvalues; callers want the largest first.
    let s = s.column_vector();
    let values = (0..d).rev().map(|j| s[j]).collect();
    let mut vectors = Matrix64::zeros(d, d);
    for i in 0..d {
        for j in 0..d {
            *vectors.at_mut(i, j) = u[(i, d - 1 - j)];
        }
    }
    Ok(Eigen { values, vectors })
}

pub(super) fn spd_solve(systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>> {
    let par = inner_par(systems.len());
    systems
        .par_iter()
        .enumerate()
        .map(|(i, (a, b))| cholesky_solve(i, a, b, par))
        .collect()
}

fn cholesky_solve(index: usize, a: &Matrix64, b: &Matrix64, par: Par) -> Result<Matrix64> {
    check_square("spd_solve", index, a)?;
    let d = a.rows;
    if b.rows != d || b.data.len() != b.rows * b.cols {
        return Err(Error::input(format!(
            "spd_solve: system {index} of the batch has a {d}×{d} matrix and a {}×{} right-hand side",
            b.rows, b.cols
        )));
    }
    let mut l = MatRef::from_row_major_slice(&a.data, d, d).to_owned();
    let mut buf = MemBuffer::new(llt::factor::cholesky_in_place_scratch::<f64>(
        d,
        par,
        Default::default(),
    ));
    llt::factor::cholesky_in_place(
        l.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|_| {
        Error::input(format!(
            "spd_solve: matrix {index} of the batch is not positive definite"
        ))
    })?;
    let mut x = MatRef::from_row_major_slice(&b.data, d, b.cols).to_owned();
    let mut buf = MemBuffer::new(llt::solve::solve_in_place_scratch::<f64>(d, b.cols, par));
    llt::solve::solve_in_place(l.as_ref(), x.as_mut(), par, MemStack::new(&mut buf));
    let mut out = Matrix64::zeros(d, b.cols);
    for i in 0..d {
        for j in 0..b.cols {
            *out.at_mut(i, j) = x[(i, j)];
        }
    }
    Ok(out)
}
