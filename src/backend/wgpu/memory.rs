//! Device memory of wgpu tensors. A tensor is one buffer, except a table larger than one storage
//! binding (XLM-R's 250k×1024 embedding is 1 GiB; lavapipe and WebGPU cap a binding at 128 MiB),
//! which is held in parts of whole rows. Only `gather_rows` reads split tables. Elements are f32,
//! or f16 for GEMM weights on adapters with `SHADER_F16`.

use crate::tensor::DType;

/// The buffers behind a wgpu [`Tensor`](crate::backend::Tensor).
#[derive(Debug)]
pub struct WgpuStorage {
    /// Id of the backend whose device holds the buffers, so a tensor of another device is refused
    /// cleanly (wgpu handles of separate instances may compare equal).
    pub(super) owner: u64,
    pub(super) parts: Vec<wgpu::Buffer>,
    /// Rows in every part but possibly the last.
    pub(super) rows_per_part: usize,
    /// Element type of the buffers: F32, or F16.
    pub(super) dtype: DType,
}

pub(super) const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Bytes of a buffer holding `values` elements of `dtype`, rounded up to the 4 bytes wgpu copies
/// and binds in; wgpu cannot bind an empty buffer.
pub(super) fn buffer_bytes(values: usize, dtype: DType) -> u64 {
    (values.max(1) * dtype.size_in_bytes()).next_multiple_of(4) as u64
}

/// `(rows, values per row)` of a row-major shape; a scalar is one row of one value.
pub(super) fn rows_and_width(shape: &[usize]) -> (usize, usize) {
    (
        shape.first().copied().unwrap_or(1),
        shape.iter().skip(1).product(),
    )
}

/// How `shape` (elements of `dtype`) is cut into parts of whole rows no larger than `max_bytes`
/// each: `(rows_per_part, parts)`, or `None` when a single row exceeds `max_bytes`.
pub(super) fn plan_parts(shape: &[usize], dtype: DType, max_bytes: u64) -> Option<(usize, usize)> {
    let (rows, row_values) = rows_and_width(shape);
    if buffer_bytes(rows * row_values, dtype) <= max_bytes {
        return Some((rows, 1));
    }
    // Whole rows within the largest multiple of 4 bytes, so a part of f16 rows padded to 4
    // bytes still fits.
    let row_bytes = (row_values * dtype.size_in_bytes()).max(1) as u64;
    let rows_per_part = (max_bytes / 4 * 4 / row_bytes) as usize;
    (rows_per_part > 0).then(|| (rows_per_part, rows.div_ceil(rows_per_part)))
}

impl WgpuStorage {
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Row range held by part `i` of a tensor with `rows` rows.
    pub(super) fn part_rows(&self, i: usize, rows: usize) -> std::ops::Range<usize> {
        let start = i * self.rows_per_part;
        start..rows.min(start + self.rows_per_part)
    }
}
