//! The norm family on the CPU: LayerNorm in place and RMSNorm into another tensor, one row a
//! task, their row statistics summed in lanes ([`lane_sum`]).

use rayon::prelude::*;

use super::common::{lane_sum, values, values_mut};
use crate::backend::{shapes, Tensor};
use crate::error::Result;

pub(super) fn layer_norm(x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
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

pub(super) fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
    let (_, d) = shapes::rms_norm(x, gamma, out)?;
    let g = values(gamma)?;
    values_mut(out)?
        .par_chunks_mut(d)
        .zip(values(x)?.par_chunks(d))
        .for_each(|(normed, row)| {
            let mean_square = lane_sum(row, |v| v * v) / d as f32;
            let inv = 1.0 / (mean_square + eps).sqrt();
            for ((o, v), g) in normed.iter_mut().zip(row).zip(g) {
                *o = v * inv * g;
            }
        });
    Ok(())
}
