//! The gather family on the CPU: embedding rows copied (or added) by id, one output row a task.

use rayon::prelude::*;

use super::common::{values, values_mut};
use crate::backend::{shapes, Tensor};
use crate::error::Result;

pub(super) fn gather_rows(
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
