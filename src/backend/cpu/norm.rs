//! The norm family on the CPU: LayerNorm in place and RMSNorm into another tensor, a block of
//! [`rows_per_task`] rows a task. Each row is read from memory once: its statistics (LayerNorm's
//! mean, then the mean square of the deviations from it, each in f64: [`lane_sum_f64`]), then
//! the normalisation, while the row is still in L1 — the sweeps after the first cost L1 reads.
//! RMSNorm takes one sweep a row: the sum of squares of the next row rides along the scaling of
//! this one, so the block's reads from memory and its stores stream together (a tenth faster
//! than a statistics sweep then a scaling sweep, single-threaded on 64 MiB).

use rayon::prelude::*;

use super::common::{
    lane_sum, lane_sum_f64, rows_per_task, values, values_mut, with_wide_simd, LaneSums, SUM_LANES,
};
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
    pub(super) avx512 fn layer_norm_rows => layer_norm_rows_portable(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32)
}

with_wide_simd! {
    /// RMSNorm of each row (the width of `gamma`) of `rows` into `out`.
    pub(super) avx512 fn rms_norm_rows => rms_norm_rows_portable(rows: &[f32], gamma: &[f32], eps: f32, out: &mut [f32])
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
    let square = |v: f32| v * v;
    let scale = |normed: &mut [f32], row: &[f32], gamma: &[f32], inv: f32| {
        for ((o, v), g) in normed.iter_mut().zip(row).zip(gamma) {
            *o = v * inv * g;
        }
    };
    // The whole chunks of a row, and the tail past them.
    let whole = d - d % SUM_LANES;
    let mut sum_of_squares = lane_sum(&rows[..d.min(rows.len())], square);
    let mut rows_ahead = rows.chunks_exact(d).skip(1);
    for (row, normed) in rows.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let inv = 1.0 / (sum_of_squares / d as f32 + eps).sqrt();
        let Some(next) = rows_ahead.next() else {
            scale(normed, row, gamma, inv);
            break;
        };
        // The next row's statistics in the sweep that scales this one: its loads from memory
        // go out beside this row's stores rather than in a sweep of their own.
        let mut lanes = LaneSums::default();
        let chunks = (normed[..whole].chunks_exact_mut(SUM_LANES))
            .zip(row.chunks_exact(SUM_LANES))
            .zip(gamma.chunks_exact(SUM_LANES))
            .zip(next.chunks_exact(SUM_LANES));
        for (((normed, row), gamma), ahead) in chunks {
            scale(normed, row, gamma, inv);
            lanes.add(ahead, square);
        }
        scale(&mut normed[whole..], &row[whole..], &gamma[whole..], inv);
        sum_of_squares = lanes.total(&next[whole..], square);
    }
}
