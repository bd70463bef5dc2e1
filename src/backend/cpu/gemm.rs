//! The GEMM family on the CPU: faer's matmul on every core behind [`gemm`] (also the host GEMM
//! of `models/` and `instruments/`), and `linear` in one of four variants: 7, that GEMM plus one
//! epilogue pass (bias, activation, residual) over its rows; 8, our packed GEMM with the
//! epilogue applied to each register tile ([`super::gemm_packed`]), which also runs every
//! `linear` on half-precision weights (faer would need a whole f32 copy of them); 11 and 14,
//! opt-in (`--matmul-precision medium`), bf16 operands on AMX tiles or with AVX512_BF16 with
//! variant 8's epilogue, on every weight dtype and size (`super::gemm_bf16`, x86-64 only). The default
//! backend picks between them by weight size ([`super::PACKED_MIN_WEIGHTS`]). `linear_gated`
//! (SwiGLU) is fused only into ours, which the default backend runs it on at every size; with
//! faer (the backend opened with variant 7) it is `linear` then `gated_activation`.

use faer::linalg::matmul::matmul;
use faer::traits::{math_utils::one, ComplexField};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::common::{matrix, values, values_mut, Matrix};
use super::{activation, gemm_packed};
use crate::backend::{shapes, Activation, GemmVariant, Tensor};
use crate::error::Result;

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
    gemm_on(dst, lhs, rhs, accumulate, Par::rayon(0));
}

/// [`gemm`] on the calling thread only: for tiles that already run one per rayon task (a tiled
/// loop keeps every core busy with its own tile instead of splitting each small GEMM).
pub fn gemm_in_task<T: ComplexField>(
    dst: &mut [T],
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    accumulate: bool,
) {
    gemm_on(dst, lhs, rhs, accumulate, Par::Seq);
}

fn gemm_on<T: ComplexField>(
    dst: &mut [T],
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    accumulate: bool,
    par: Par,
) {
    let (lhs, rhs) = (lhs.mat(), rhs.mat());
    assert_eq!(lhs.ncols(), rhs.nrows(), "gemm: inner dimensions differ");
    let dst = MatMut::from_row_major_slice_mut(dst, lhs.nrows(), rhs.ncols());
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    matmul(dst, accum, lhs, rhs, one::<T>(), par);
}

pub(super) fn gated_activation(gate_up: &Tensor, act: Activation, out: &mut Tensor) -> Result<()> {
    let (_, m) = shapes::gated_activation(gate_up, out)?;
    let gate_up = values(gate_up)?;
    values_mut(out)?
        .par_chunks_mut(m.max(1))
        .zip(gate_up.par_chunks(2 * m.max(1)))
        .for_each(|(y, row)| {
            let (gate, up) = row.split_at(m);
            activation::gated(act, gate, up, y);
        });
    Ok(())
}

/// `linear_gated` fused into our packed GEMM (variant 8), or a bf16 one (11, 14): the gate and up
/// rows share each output tile, which is finished as `act(gate) ⊙ up` and stored at half its
/// width.
pub(super) fn linear_gated(
    variant: GemmVariant,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    out: &mut Tensor,
) -> Result<()> {
    let (n, k, m) = shapes::linear_gated(x, w, bias, out)?;
    let epilogue = gemm_packed::Epilogue {
        bias: bias.map(values).transpose()?,
        act,
        residual: None,
        gated: true,
    };
    packed_linear(variant, x, (n, k, m), w, &epilogue, out)
}

/// `linear` on our packed GEMM (variant 8 or 9), or on a bf16 one where `variant` is 11 or 14.
fn packed_linear(
    variant: GemmVariant,
    x: &Tensor,
    shape: (usize, usize, usize),
    w: &Tensor,
    epilogue: &gemm_packed::Epilogue<'_>,
    out: &mut Tensor,
) -> Result<()> {
    let (x, weights, cache) = (values(x)?, matrix(w)?, Some(&w.cpu_packed));
    #[cfg(target_arch = "x86_64")]
    if variant.bf16_operands() {
        super::gemm_bf16::linear(
            variant,
            x,
            shape,
            &weights,
            cache,
            epilogue,
            values_mut(out)?,
        );
        return Ok(());
    }
    gemm_packed::linear(x, shape, &weights, cache, epilogue, values_mut(out)?);
    Ok(())
}

/// `linear` on `variant` (7, 8, 11 or 14) for f32 weights; half-precision weights run variant 8,
/// or 11 or 14 when asked.
pub(super) fn linear(
    variant: GemmVariant,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    let (n, k, m) = shapes::linear(x, w, bias, residual, out)?;
    let weights = matrix(w)?;
    if matches!(weights, Matrix::Half(_)) || variant != GemmVariant::Faer {
        let epilogue = gemm_packed::Epilogue {
            bias: bias.map(values).transpose()?,
            act,
            residual: residual.map(values).transpose()?,
            gated: false,
        };
        return packed_linear(variant, x, (n, k, m), w, &epilogue, out);
    }
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
