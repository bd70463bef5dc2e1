//! The norm family on the CPU: LayerNorm in place and RMSNorm into another tensor, a block of
//! [`rows_per_task`] rows a task. Each row is read from memory once: its statistics (LayerNorm's
//! mean, then the mean square of the deviations from it, each in f64: [`lane_sum_f64`]), then
//! the normalisation, while the row is still in L1 — the sweeps after the first cost L1 reads.

use rayon::prelude::*;

use super::common::{lane_sum, lane_sum_f64, rows_per_task, values, values_mut, with_wide_simd};
use crate::backend::{shapes, Tensor};
use crate::error::Result;

pub(super) fn layer_norm(x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
    let (_, d) = shapes::layer_norm(x, gamma, beta)?;
    let (g, b) = (values(gamma)?, values(beta)?);
    values_mut(x)?
        .par_chunks_mut(d * rows_per_task(d))
        .for_each(|rows| layer_norm_rows(rows, g, b, eps));
    Ok(())
}

pub(super) fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
    let (_, d) = shapes::rms_norm(x, gamma, out)?;
    let g = values(gamma)?;
    let block = d * rows_per_task(d);
    values_mut(out)?
        .par_chunks_mut(block)
        .zip(values(x)?.par_chunks(block))
        .for_each(|(normed, rows)| rms_norm_rows(rows, g, eps, normed));
    Ok(())
}

with_wide_simd! {
    /// LayerNorm of each row (the width of `gamma`) of `rows`, in place (AVX-512 where the CPU
    /// has it: the f64 statistics convert eight values an instruction there).
    avx512 fn layer_norm_rows => layer_norm_rows_portable(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32)
}

with_wide_simd! {
    /// RMSNorm of each row (the width of `gamma`) of `rows` into `out`.
    avx512 fn rms_norm_rows => rms_norm_rows_portable(rows: &[f32], gamma: &[f32], eps: f32, out: &mut [f32])
}

#[inline(always)]
fn layer_norm_rows_portable(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let d = gamma.len();
    for row in rows.chunks_exact_mut(d) {
        // Two sweeps, no cancellation: the variance from the deviations, not `Σv²/d − mean²`.
        let mean = lane_sum_f64(row, |v| v) / d as f64;
        let var = lane_sum_f64(row, |v| (v - mean) * (v - mean)) / d as f64;
        let (mean, inv) = (mean as f32, (1.0 / (var + f64::from(eps)).sqrt()) as f32);
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

#[inline(always)]
fn rms_norm_rows_portable(rows: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (row, normed) in rows.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean_square = lane_sum(row, |v| v * v) / d as f32;
        let inv = 1.0 / (mean_square + eps).sqrt();
        for ((o, v), g) in normed.iter_mut().zip(row).zip(gamma) {
            *o = v * inv * g;
        }
    }
}
