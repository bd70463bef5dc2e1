//! What several CPU op families share: the host values behind a tensor (f32, or the half-precision
//! weights `linear` and `gather_rows` read), the split of packed sequences into disjoint row
//! blocks, and the lane-wise row sum (the counterpart of `kernels/common.cuh`).

use crate::backend::{SeqLayout, Storage, Tensor};
use crate::error::{Error, Result};
use crate::tensor::HalfMatrix;

/// The f32 values of a CPU tensor, or the error naming the backend that holds it (or saying that
/// it holds half-precision weights, which only `linear` and `gather_rows` read).
pub(super) fn values(t: &Tensor) -> Result<&[f32]> {
    match &t.storage {
        Storage::Cpu(v) => Ok(v),
        Storage::CpuHalf(m) => Err(Error::input(format!(
            "tensor of shape {:?} holds {:?} weights, which only linear (as weights) and \
             gather_rows (as the table) read on the cpu backend",
            t.shape,
            m.dtype()
        ))),
        _ => Err(t.foreign("cpu")),
    }
}

/// A matrix operand that may be half precision: `linear`'s weights, `gather_rows`' table.
pub(super) enum Matrix<'a> {
    F32(&'a [f32]),
    Half(&'a HalfMatrix),
}

/// The values behind a weight or table tensor, f32 or half precision.
pub(super) fn matrix(t: &Tensor) -> Result<Matrix<'_>> {
    match &t.storage {
        Storage::CpuHalf(m) => Ok(Matrix::Half(m)),
        _ => values(t).map(Matrix::F32),
    }
}

/// [`values`] for writing.
pub(super) fn values_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    if !matches!(t.storage, Storage::Cpu(_)) {
        return Err(t.foreign("cpu"));
    }
    let Storage::Cpu(v) = &mut t.storage else {
        unreachable!("checked above")
    };
    Ok(v)
}

/// Splits `data` into the row blocks of each packed sequence, so sequences can be processed in
/// parallel with disjoint mutable borrows.
pub(super) fn split_sequences<'a>(
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
/// grows with `len / 8` instead of `len`. The row statistics of the norm family, the L2 norm of
/// the pool family and the softmax denominator.
#[inline(always)]
pub(super) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, &v)| *l += f(v));
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}
