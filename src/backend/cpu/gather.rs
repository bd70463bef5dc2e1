//! The gather family on the CPU: embedding rows copied (or added) by id, one output row a task.
//! A half-precision table (a memory-mapped bf16 or f16 embedding) widens only the rows gathered.

use rayon::prelude::*;

use super::common::{matrix, values_mut, Matrix};
use crate::backend::{shapes, Tensor};
use crate::error::Result;

pub(super) fn gather_rows(
    table: &Tensor,
    ids: &[u32],
    accumulate: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (_, d) = shapes::gather(table, ids, out)?;
    let table = matrix(table)?;
    values_mut(out)?
        .par_chunks_mut(d)
        .zip(ids.par_iter())
        .for_each_init(Vec::new, |widened, (y, &id)| {
            let row = id as usize;
            let src = match table {
                Matrix::F32(t) => &t[row * d..(row + 1) * d],
                Matrix::Half(t) => {
                    widened.resize(d, 0.0);
                    t.widen_row(row, 0, widened);
                    &widened[..]
                }
            };
            if accumulate {
                y.iter_mut().zip(src).for_each(|(y, s)| *y += s);
            } else {
                y.copy_from_slice(src);
            }
        });
    Ok(())
}
