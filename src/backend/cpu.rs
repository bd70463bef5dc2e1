//! The CPU backend: rayon for parallel loops, faer for GEMM. It is the reference every other
//! backend is tested against, and a fast path of its own (packed sequences, fused epilogues).

use faer::linalg::matmul::matmul;
use faer::traits::{math_utils::one, ComplexField};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{
    shapes, Activation, AttentionSpec, Backend, Eigen, GemmVariant, Matrix64, Moments, OpFamily,
    Pooling, RopeSpec, SeqLayout, Storage, Tensor,
};
use crate::error::Result;

mod activation;
mod attention;
mod ntk;
mod stats;
mod trim;

pub struct CpuBackend;

impl CpuBackend {
    /// The CPU's GEMM.
    pub const GEMM_VARIANTS: [GemmVariant; 1] = [GemmVariant::Faer];

    pub fn new() -> Self {
        CpuBackend
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

fn values(t: &Tensor) -> Result<&[f32]> {
    match &t.storage {
        Storage::Cpu(v) => Ok(v),
        _ => Err(t.foreign("cpu")),
    }
}

fn values_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    if !matches!(t.storage, Storage::Cpu(_)) {
        return Err(t.foreign("cpu"));
    }
    let Storage::Cpu(v) = &mut t.storage else {
        unreachable!("checked above")
    };
    Ok(v)
}

/// A row-major matrix operand of [`gemm`], read as stored or transposed.
#[derive(Clone, Copy)]
pub struct Operand<'a, T = f32> {
    values: &'a [T],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a, T> Operand<'a, T> {
    /// `values` as a row-major `[rows, cols]` matrix.
    pub fn plain(values: &'a [T], rows: usize, cols: usize) -> Self {
        Operand {
            values,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The transpose of the row-major `[rows, cols]` matrix `values` (so a `[cols, rows]` operand).
    pub fn transposed(values: &'a [T], rows: usize, cols: usize) -> Self {
        Operand {
            transposed: true,
            ..Self::plain(values, rows, cols)
        }
    }

    fn mat(&self) -> MatRef<'a, T> {
        let m = MatRef::from_row_major_slice(self.values, self.rows, self.cols);
        if self.transposed {
            m.transpose()
        } else {
            m
        }
    }
}

/// `dst (+)= lhs · rhs` on row-major f32 (or f64) slices with faer on every core; adds when
/// `accumulate`. The host-side GEMM of the CPU backend's ops and of host loops that run on it
/// (MLP backward, the kernel GLM's f64 fit).
pub fn gemm<T: ComplexField>(
    dst: &mut [T],
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    accumulate: bool,
) {
    let (lhs, rhs) = (lhs.mat(), rhs.mat());
    assert_eq!(lhs.ncols(), rhs.nrows(), "gemm: inner dimensions differ");
    let dst = MatMut::from_row_major_slice_mut(dst, lhs.nrows(), rhs.ncols());
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    matmul(dst, accum, lhs, rhs, one::<T>(), Par::rayon(0));
}

/// Splits `data` into the row blocks of each packed sequence, so sequences can be processed in
/// parallel with disjoint mutable borrows.
fn split_sequences<'a>(
    mut data: &'a mut [f32],
    layout: &SeqLayout,
    width: usize,
) -> Vec<&'a mut [f32]> {
    let mut blocks = Vec::with_capacity(layout.num_sequences());
    for s in 0..layout.num_sequences() {
        let (head, tail) = data.split_at_mut(layout.range(s).len() * width);
        blocks.push(head);
        data = tail;
    }
    blocks
}

/// `Σ f(v)` in eight independent lanes: a sum the compiler keeps in one AVX register (a single
/// running f32 sum must be added in order, one element at a time), and whose rounding error
/// grows with `len / 8` instead of `len`. The row statistics of the norm family.
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, &v)| *l += f(v));
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn supports(&self, _family: OpFamily) -> bool {
        true
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        shapes::upload(shape, data.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(data.to_vec()),
        })
    }

    fn download(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        Ok(values(tensor)?.to_vec())
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(vec![0.0; shape.iter().product()]),
        })
    }

    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
        residual: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, k, m) = shapes::linear(x, w, bias, residual, out)?;
        gemm(
            values_mut(out)?,
            Operand::plain(values(x)?, n, k),
            Operand::transposed(values(w)?, m, k),
            false,
        );

        if bias.is_none() && act == Activation::Identity && residual.is_none() {
            return Ok(());
        }
        let bias = bias.map(values).transpose()?;
        let residual = residual.map(values).transpose()?;
        values_mut(out)?
            .par_chunks_mut(m)
            .enumerate()
            .for_each(|(row, y)| {
                if let Some(b) = bias {
                    y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                }
                activation::apply(act, y);
                if let Some(r) = residual {
                    y.iter_mut()
                        .zip(&r[row * m..(row + 1) * m])
                        .for_each(|(y, r)| *y += r);
                }
            });
        Ok(())
    }

    fn gather_rows(
        &self,
        table: &Tensor,
        ids: &[u32],
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        let (_, d) = shapes::gather(table, ids, out)?;
        let table = values(table)?;
        values_mut(out)?
            .par_chunks_mut(d)
            .zip(ids.par_iter())
            .for_each(|(y, &id)| {
                let src = &table[id as usize * d..(id as usize + 1) * d];
                if accumulate {
                    y.iter_mut().zip(src).for_each(|(y, s)| *y += s);
                } else {
                    y.copy_from_slice(src);
                }
            });
        Ok(())
    }

    fn layer_norm(&self, x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
        let (_, d) = shapes::layer_norm(x, gamma, beta)?;
        let (g, b) = (values(gamma)?, values(beta)?);
        values_mut(x)?.par_chunks_mut(d).for_each(|row| {
            let mean = lane_sum(row, |v| v) / d as f32;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(g).zip(b) {
                *v = (*v - mean) * inv * g + b;
            }
        });
        Ok(())
    }

    fn rms_norm(&self, x: &mut Tensor, gamma: &Tensor, eps: f32) -> Result<()> {
        let (_, d) = shapes::rms_norm(x, gamma)?;
        let g = values(gamma)?;
        values_mut(x)?.par_chunks_mut(d).for_each(|row| {
            let mean_square = lane_sum(row, |v| v * v) / d as f32;
            let inv = 1.0 / (mean_square + eps).sqrt();
            for (v, g) in row.iter_mut().zip(g) {
                *v = *v * inv * g;
            }
        });
        Ok(())
    }

    fn rope(&self, qkv: &mut Tensor, layout: &SeqLayout, spec: &RopeSpec) -> Result<()> {
        let (_, width) = shapes::rope(qkv, layout, spec)?;
        let half = spec.head_dim / 2;
        let table = spec.table(layout.max_len());
        let rotated = spec.rotated_width();
        let blocks = split_sequences(values_mut(qkv)?, layout, width);
        blocks.into_par_iter().for_each(|block| {
            block
                .par_chunks_mut(width)
                .zip(table.par_chunks(2 * half))
                .for_each(|(row, angles)| {
                    for head in row[..rotated].chunks_exact_mut(2 * half) {
                        let (x1, x2) = head.split_at_mut(half);
                        for ((a, b), cs) in x1.iter_mut().zip(x2).zip(angles.chunks_exact(2)) {
                            let (cos, sin) = (cs[0], cs[1]);
                            (*a, *b) = (*a * cos - *b * sin, *b * cos + *a * sin);
                        }
                    }
                });
        });
        Ok(())
    }

    fn attention(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        shapes::attention(qkv, layout, spec, out)?;
        attention::attention(values(qkv)?, layout, spec, values_mut(out)?);
        Ok(())
    }

    fn pool(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        mode: Pooling,
        out: &mut Tensor,
    ) -> Result<()> {
        let d = shapes::pool(hidden, layout, out)?;
        let h = values(hidden)?;
        values_mut(out)?
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(s, y)| {
                let rows = layout.range(s);
                let row = |i: usize| &h[i * d..(i + 1) * d];
                if rows.is_empty() {
                    // sentence-transformers divides a zero sum by a clamped count: zeros.
                    y.fill(0.0);
                    return;
                }
                match mode {
                    Pooling::Cls => y.copy_from_slice(row(rows.start)),
                    Pooling::Last => y.copy_from_slice(row(rows.end - 1)),
                    Pooling::Max => {
                        y.copy_from_slice(row(rows.start));
                        for i in rows.clone().skip(1) {
                            y.iter_mut().zip(row(i)).for_each(|(y, v)| *y = y.max(*v));
                        }
                    }
                    Pooling::Mean | Pooling::MeanSqrtLen => {
                        y.fill(0.0);
                        for i in rows.clone() {
                            y.iter_mut().zip(row(i)).for_each(|(y, v)| *y += v);
                        }
                        let n = rows.len() as f32;
                        let div = if mode == Pooling::Mean { n } else { n.sqrt() };
                        y.iter_mut().for_each(|y| *y /= div);
                    }
                }
            });
        Ok(())
    }

    fn l2_normalize(&self, x: &mut Tensor) -> Result<()> {
        let (_, d) = shapes::l2_normalize(x)?;
        values_mut(x)?.par_chunks_mut(d).for_each(|row| {
            let norm = lane_sum(row, |v| v * v).sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        });
        Ok(())
    }

    // stats

    fn scatter(&self, x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>> {
        let (_, d) = x.dims2("scatter input")?;
        stats::scatter(values(x)?, d, groups)
    }

    fn symmetric_eigen(&self, matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
        stats::symmetric_eigen(matrices)
    }

    fn spd_solve(&self, systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>> {
        stats::spd_solve(systems)
    }

    // ntk

    fn ntk_contract(
        &self,
        delta_rows: &Tensor,
        delta_cols: &Tensor,
        acts: Option<(&Tensor, &Tensor)>,
        offset: f32,
        cols: std::ops::Range<usize>,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::ntk_contract(delta_rows, delta_cols, acts, offset, cols, out)
    }

    fn jl_project(
        &self,
        x: &Tensor,
        spec: &super::JlSpec,
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::jl_project(x, spec, accumulate, out)
    }

    // trim

    fn trim_search(
        &self,
        candidates: &[&[f32]],
        reference: super::TrimReference<'_>,
        spec: &super::TrimSpec,
    ) -> Result<Vec<super::TrimResult>> {
        trim::trim_search(candidates, reference, spec)
    }
}
