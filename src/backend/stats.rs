//! The stats family's host-side results: f64 matrices, per-group moments and eigendecompositions.

/// A small dense f64 matrix on the host, row-major: the `d×d` results of the stats ops, kept in
/// f64 because they are sums over many rows and feed eigen solves and inverses.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix64 {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix64 {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix64 {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }
}

/// Count, mean and centred scatter `Σ (x − μ)(x − μ)ᵀ` of one group of rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub count: usize,
    pub mean: Vec<f64>,
    pub scatter: Matrix64,
}

/// Eigendecomposition of a symmetric matrix: `values` in descending order, column `j` of
/// `vectors` belongs to `values[j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Eigen {
    pub values: Vec<f64>,
    pub vectors: Matrix64,
}
