//! The tangent-kernel ops on the CPU: a layer's Gram contraction as two faer GEMMs and one fused
//! Hadamard pass, and the counter-based JL projection generated tile by tile into a GEMM operand.

use std::ops::Range;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::common::{values, values_mut};
use super::gemm::{gemm, Operand};
use crate::backend::{shapes, JlSpec, Tensor};
use crate::error::Result;

pub(super) fn ntk_contract(
    delta_rows: &Tensor,
    delta_cols: &Tensor,
    acts: Option<(&Tensor, &Tensor)>,
    offset: f32,
    cols: Range<usize>,
    out: &mut Tensor,
) -> Result<()> {
    let n_r = shapes::ntk_contract(delta_rows, delta_cols, acts, &cols, out)?;
    let n_c = cols.len();
    let columns = |t| column_operand(t, &cols);
    let p = delta_rows.shape()[1];
    let row_grads = Operand::plain(values(delta_rows)?, n_r, p);
    let Some((a_r, a_c)) = acts else {
        gemm(values_mut(out)?, row_grads, columns(delta_cols)?, true);
        return Ok(());
    };
    let mut grad_gram = vec![0.0f32; n_r * n_c];
    gemm(&mut grad_gram, row_grads, columns(delta_cols)?, false);
    let mut act_gram = vec![0.0f32; n_r * n_c];
    let q = a_r.shape()[1];
    gemm(
        &mut act_gram,
        Operand::plain(values(a_r)?, n_r, q),
        columns(a_c)?,
        false,
    );
    let row = n_c.max(1);
    values_mut(out)?
        .par_chunks_mut(row)
        .zip(grad_gram.par_chunks(row))
        .zip(act_gram.par_chunks(row))
        .for_each(|((o, g), a)| {
            for ((o, g), a) in o.iter_mut().zip(g).zip(a) {
                *o += g * (a + offset);
            }
        });
    Ok(())
}

/// Rows `cols` of a row-major `[_, width]` factor as a transposed GEMM operand.
fn column_operand<'a>(t: &'a Tensor, cols: &Range<usize>) -> Result<Operand<'a>> {
    let width = t.shape()[1];
    Ok(Operand::transposed(
        &values(t)?[cols.start * width..cols.end * width],
        cols.len(),
        width,
    ))
}

/// Columns of the projection generated per GEMM: a `[TILE, dim]` slab of `P`ᵀ stays in cache
/// for moderate `dim` and the generation cost is shared by every row of `x`.
const TILE: usize = 1024;

pub(super) fn jl_project(
    x: &Tensor,
    spec: &JlSpec,
    accumulate: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (n, d) = shapes::jl_project(x, spec.dim, out)?;
    let k = spec.dim;
    let x = MatRef::from_row_major_slice(values(x)?, n, d);
    let mut out = MatMut::from_row_major_slice_mut(values_mut(out)?, n, k);
    if !accumulate {
        out.fill(0.0);
    }
    let mut slab = vec![0.0f32; TILE.min(d) * k];
    for start in (0..d).step_by(TILE) {
        let width = TILE.min(d - start);
        // Row c of the slab is column `start + c` of P: entries (j, start + c) for every j.
        slab[..width * k]
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(c, row)| {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = spec.entry(j, start + c));
            });
        let p_t = MatRef::from_row_major_slice(&slab[..width * k], width, k);
        matmul(
            out.as_mut(),
            Accum::Add,
            x.subcols(start, width),
            p_t,
            1.0f32,
            Par::rayon(0),
        );
    }
    Ok(())
}
