//! Comparing two kernels over the same points: centred kernel alignment, the distance between
//! their normalised spectra, effective ranks and the relative Frobenius difference. All in f64.

use std::path::Path;

use faer::{MatRef, Side};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::kernel_file::KernelFile;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelComparison {
    pub n: usize,
    /// `⟨HK₁H, HK₂H⟩_F / (‖HK₁H‖_F ‖HK₂H‖_F)`, `H = I − 11ᵀ/n`.
    pub cka: f64,
    /// L1 and L2 distance between the normalised spectra.
    pub spectrum_l1: f64,
    pub spectrum_l2: f64,
    /// `exp` of the spectral entropy of each kernel.
    pub effective_rank: [f64; 2],
    /// `‖K₁ − K₂‖_F / ‖K₂‖_F`.
    pub relative_frobenius: f64,
    /// Each kernel's eigenvalues, descending, divided by their sum (the trace): plotted and
    /// written by `--export-spectrum`, not in the JSON.
    #[serde(skip)]
    pub spectra: [Vec<f64>; 2],
}

/// What `mscope ntk-compare` reports: the two kernels and their comparison, whose serialised
/// fields are the JSON report's keys.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCompareReport {
    pub kernels: [KernelSummary; 2],
    #[serde(flatten)]
    pub comparison: KernelComparison,
}

/// Which kernel a file holds.
#[derive(Clone, Debug, Serialize)]
pub struct KernelSummary {
    pub path: String,
    pub kind: String,
    pub normalized: bool,
    pub projection_dim: usize,
}

/// Compares two square kernels over the same points, read from `paths`.
pub fn report(paths: [&Path; 2], kernels: &[KernelFile; 2]) -> Result<KernelCompareReport> {
    let comparison = compare(&kernels[0].values, &kernels[1].values, kernels[0].rows)?;
    let summary = |path: &Path, k: &KernelFile| KernelSummary {
        path: path.display().to_string(),
        kind: k.kind.clone(),
        normalized: k.normalized,
        projection_dim: k.projection_dim,
    };
    Ok(KernelCompareReport {
        kernels: [
            summary(paths[0], &kernels[0]),
            summary(paths[1], &kernels[1]),
        ],
        comparison,
    })
}

/// Compares two square kernels `[n, n]` (row-major) over the same `n` points.
pub fn compare(a: &[f32], b: &[f32], n: usize) -> Result<KernelComparison> {
    for (name, k) in [("first", a), ("second", b)] {
        if k.len() != n * n {
            return Err(Error::input(format!(
                "the {name} kernel has {} entries, not the {n}×{n} of a square kernel",
                k.len()
            )));
        }
    }
    let (a, b) = (widen(a), widen(b));
    let spectra = [normalised_spectrum(&a, n)?, normalised_spectrum(&b, n)?];
    let (l1, l2_squared) = spectra[0]
        .iter()
        .zip(&spectra[1])
        .fold((0.0, 0.0), |(l1, l2), (p, q)| {
            (l1 + (p - q).abs(), l2 + (p - q).powi(2))
        });
    let difference: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm_b: f64 = b.iter().map(|y| y * y).sum();
    Ok(KernelComparison {
        n,
        cka: cka(&a, &b, n),
        spectrum_l1: l1,
        spectrum_l2: l2_squared.sqrt(),
        effective_rank: [effective_rank(&spectra[0]), effective_rank(&spectra[1])],
        relative_frobenius: (difference / norm_b).sqrt(),
        spectra,
    })
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// Centred kernel alignment of two `[n, n]` kernels. `HKH` is `K` with its row means and column
/// means removed and the grand mean added back, so it is centred entry by entry, never forming
/// `H` or an `n×n` product.
pub fn cka(a: &[f64], b: &[f64], n: usize) -> f64 {
    let (centre_a, centre_b) = (Centring::of(a, n), Centring::of(b, n));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        for j in 0..n {
            let x = centre_a.entry(a, i, j);
            let y = centre_b.entry(b, i, j);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
    }
    ab / (aa * bb).sqrt()
}

/// Row, column and grand means of a square matrix.
struct Centring {
    n: usize,
    row_means: Vec<f64>,
    col_means: Vec<f64>,
    grand_mean: f64,
}

impl Centring {
    fn of(k: &[f64], n: usize) -> Self {
        let row_means: Vec<f64> = k
            .chunks_exact(n)
            .map(|r| r.iter().sum::<f64>() / n as f64)
            .collect();
        let mut col_means = vec![0.0; n];
        for r in k.chunks_exact(n) {
            col_means.iter_mut().zip(r).for_each(|(c, v)| *c += v);
        }
        col_means.iter_mut().for_each(|c| *c /= n as f64);
        let grand_mean = row_means.iter().sum::<f64>() / n as f64;
        Centring {
            n,
            row_means,
            col_means,
            grand_mean,
        }
    }

    /// `(HKH)_ij`.
    fn entry(&self, k: &[f64], i: usize, j: usize) -> f64 {
        k[i * self.n + j] - self.row_means[i] - self.col_means[j] + self.grand_mean
    }
}

/// Eigenvalues of the symmetric part `(K + Kᵀ)/2` (a projected or f32 kernel is symmetric only
/// up to rounding), descending, divided by their sum. Eigenvalues only: faer skips the
/// eigenvector accumulation the backend's `symmetric_eigen` does, several times cheaper at large n.
fn normalised_spectrum(k: &[f64], n: usize) -> Result<Vec<f64>> {
    let symmetric: Vec<f64> = (0..n * n)
        .map(|at| 0.5 * (k[at] + k[(at % n) * n + at / n]))
        .collect();
    let mut values = MatRef::from_row_major_slice(&symmetric, n, n)
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::input(format!("kernel eigenvalues did not converge: {e:?}")))?;
    values.reverse();
    let trace: f64 = values.iter().sum();
    if trace <= 0.0 {
        return Err(Error::input(format!(
            "the kernel's trace is {trace}: its spectrum cannot be normalised (not a kernel?)"
        )));
    }
    values.iter_mut().for_each(|v| *v /= trace);
    Ok(values)
}

/// `exp(−Σ p ln p)` over the positive entries of a normalised spectrum (rounding can leave
/// tiny negative eigenvalues; they carry no mass).
pub fn effective_rank(spectrum: &[f64]) -> f64 {
    let entropy: f64 = spectrum
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    entropy.exp()
}
