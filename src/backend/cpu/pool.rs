//! The pool family on the CPU: one embedding per sequence (CLS, last, max, mean, mean·√len), one
//! sequence a task, and the in-place L2 normalisation of rows, a block of rows a task.

use rayon::prelude::*;

use super::common::{lane_sum, rows_per_task, values, values_mut, with_wide_simd};
use crate::backend::{shapes, Pooling, SeqLayout, Tensor};
use crate::error::Result;

pub(super) fn pool(
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

pub(super) fn l2_normalize(x: &mut Tensor) -> Result<()> {
    let (_, d) = shapes::l2_normalize(x)?;
    values_mut(x)?
        .par_chunks_mut(d * rows_per_task(d))
        .for_each(|rows| l2_normalize_rows(rows, d));
    Ok(())
}

with_wide_simd! {
    /// Each row of width `d` of `rows` divided by its L2 norm (at least 1e-12), in place.
    pub(super) avx512 fn l2_normalize_rows => l2_normalize_rows_portable(rows: &mut [f32], d: usize)
}

#[inline(always)]
fn l2_normalize_rows_portable(rows: &mut [f32], d: usize) {
    for row in rows.chunks_exact_mut(d) {
        let norm = lane_sum(row, |v| v * v).sqrt().max(1e-12);
        // Division, not a product with 1/norm: the result stays the correctly rounded quotient.
        row.iter_mut().for_each(|v| *v /= norm);
    }
}
