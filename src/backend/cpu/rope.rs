//! The rope family on the CPU: rotary position embedding of the query and key heads in place,
//! sequences and their rows in parallel, angles from the model's `(cos, sin)` table.

use rayon::prelude::*;

use super::common::{split_sequences, values, values_mut};
use crate::backend::{shapes, RopeSpec, SeqLayout, Tensor};
use crate::error::Result;

pub(super) fn rope(
    qkv: &mut Tensor,
    layout: &SeqLayout,
    spec: &RopeSpec,
    table: &Tensor,
) -> Result<()> {
    let (_, width) = shapes::rope(qkv, layout, spec, table)?;
    let half = spec.head_dim / 2;
    let table = values(table)?;
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
