//! Device memory of wgpu tensors, and the memory ops (`upload*`, `download`, `zeros`). A tensor
//! is one buffer, except a table larger than one storage binding (XLM-R's 250k×1024 embedding is
//! 1 GiB; lavapipe and WebGPU cap a binding at 128 MiB), which is held in parts of whole rows.
//! `gather_rows` reads split tables, `linear` split weights (a 7B model's MLP matrices and
//! vocabulary tables in f32) and the NTK ops split operands, each dispatching per part; every
//! other op refuses them. Elements are f32, or f16 for GEMM weights and embedding
//! tables on adapters with `SHADER_F16`.

use bytemuck::Pod;
use half::{bf16, f16};
use wgpu::util::DeviceExt;

use super::device::device_error;
use super::WgpuBackend;
use crate::backend::{shapes, Storage, Tensor};
use crate::error::{Error, Result};
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
fn rows_and_width(shape: &[usize]) -> (usize, usize) {
    (
        shape.first().copied().unwrap_or(1),
        shape.iter().skip(1).product(),
    )
}

/// How `shape` (elements of `dtype`) is cut into parts of whole rows no larger than `max_bytes`
/// each: `(rows_per_part, parts)`, or `None` when a single row exceeds `max_bytes`.
fn plan_parts(shape: &[usize], dtype: DType, max_bytes: u64) -> Option<(usize, usize)> {
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

impl WgpuBackend {
    /// Rows of each buffer `t` is held in: one entry unless `t` is larger than one storage
    /// binding (tests check how a lowered [`max_binding_bytes`] split their tensors).
    ///
    /// [`max_binding_bytes`]: super::WgpuOptions::max_binding_bytes
    pub fn part_rows(&self, t: &Tensor) -> Result<Vec<usize>> {
        let storage = self.storage_any_dtype(t)?;
        let (rows, _) = rows_and_width(&t.shape);
        Ok((0..storage.parts.len())
            .map(|i| storage.part_rows(i, rows).len())
            .collect())
    }
}

pub(super) fn upload(backend: &WgpuBackend, shape: &[usize], data: &[f32]) -> Result<Tensor> {
    upload_elements(backend, shape, data, DType::F32)
}

/// Kept f16 where the adapter has SHADER_F16 (for `linear`'s weight and `gather_rows`' table);
/// widened to f32 elsewhere.
pub(super) fn upload_f16(backend: &WgpuBackend, shape: &[usize], data: &[f16]) -> Result<Tensor> {
    if backend.keeps_f16() {
        upload_elements(backend, shape, data, DType::F16)
    } else {
        let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        upload(backend, shape, &wide)
    }
}

/// Converted to f16 where f16 is kept and every finite value lies within f16's range: bf16's
/// 8-bit significand fits f16's 11 bits, so the conversion is exact from f16's smallest normal
/// 2⁻¹⁴ up and off by at most 2⁻²⁵ below it. Otherwise widened to f32 (exact).
pub(super) fn upload_bf16(backend: &WgpuBackend, shape: &[usize], data: &[bf16]) -> Result<Tensor> {
    let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
    let f16_max = f16::MAX.to_f32();
    if !backend.keeps_f16() || wide.iter().any(|v| v.is_finite() && v.abs() > f16_max) {
        return upload(backend, shape, &wide);
    }
    let narrow: Vec<f16> = wide.iter().map(|&v| f16::from_f32(v)).collect();
    upload_elements(backend, shape, &narrow, DType::F16)
}

/// Submits the recorded ops with copies of every part to mappable buffers, then reads them.
pub(super) fn download(backend: &WgpuBackend, tensor: &Tensor) -> Result<Vec<f32>> {
    let storage = backend.storage_any_dtype(tensor)?;
    let dtype = storage.dtype;
    let (rows, row_values) = rows_and_width(&tensor.shape);
    let staging: Vec<(wgpu::Buffer, usize)> = backend.submit_with(|encoder, _| {
        storage
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let values = storage.part_rows(i, rows).len() * row_values;
                let buffer = backend.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("download"),
                    size: buffer_bytes(values, dtype),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(part, 0, &buffer, 0, buffer_bytes(values, dtype));
                (buffer, values)
            })
            .collect()
    });
    backend.map_for_reading(staging.iter().map(|(buffer, _)| buffer), "download")?;
    let mut out = Vec::with_capacity(tensor.len());
    for (buffer, values) in &staging {
        let view = buffer
            .get_mapped_range(..)
            .map_err(|e| device_error(format!("download: {e}")))?;
        match dtype {
            DType::F16 => out.extend(
                bytemuck::cast_slice::<u8, f16>(&view)[..*values]
                    .iter()
                    .map(|v| v.to_f32()),
            ),
            _ => out.extend_from_slice(&bytemuck::cast_slice::<u8, f32>(&view)[..*values]),
        }
    }
    Ok(out)
}

pub(super) fn zeros(backend: &WgpuBackend, shape: &[usize]) -> Result<Tensor> {
    let (rows_per_part, parts) = plan(backend, shape, DType::F32)?;
    let (rows, row_values) = rows_and_width(shape);
    let buffers = (0..parts)
        .map(|i| {
            let part_rows = rows_per_part.min(rows - i * rows_per_part);
            // wgpu zero-initialises new buffers.
            backend.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: buffer_bytes(part_rows * row_values, DType::F32),
                usage: USAGE,
                mapped_at_creation: false,
            })
        })
        .collect();
    Ok(new_tensor(
        backend,
        shape,
        DType::F32,
        buffers,
        rows_per_part,
    ))
}

fn new_tensor(
    backend: &WgpuBackend,
    shape: &[usize],
    dtype: DType,
    parts: Vec<wgpu::Buffer>,
    rows_per_part: usize,
) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        storage: Storage::Wgpu(WgpuStorage {
            owner: backend.id,
            parts,
            rows_per_part,
            dtype,
        }),
        cpu_packed: Default::default(),
    }
}

/// [`plan_parts`] under the backend's binding limit.
fn plan(backend: &WgpuBackend, shape: &[usize], dtype: DType) -> Result<(usize, usize)> {
    plan_parts(shape, dtype, backend.max_part_bytes).ok_or_else(|| {
        Error::input(format!(
            "tensor of shape {shape:?}: one row exceeds the storage-binding limit of {} bytes",
            backend.max_part_bytes
        ))
    })
}

/// A tensor of `data`, elements of `dtype`, in parts of whole rows.
fn upload_elements<T: Pod>(
    backend: &WgpuBackend,
    shape: &[usize],
    data: &[T],
    dtype: DType,
) -> Result<Tensor> {
    shapes::upload(shape, data.len())?;
    let len = data.len();
    let (rows_per_part, parts) = plan(backend, shape, dtype)?;
    let (_, row_values) = rows_and_width(shape);
    let part_values = rows_per_part * row_values;
    let buffers = (0..parts)
        .map(|i| {
            let values = &data[(i * part_values).min(len)..((i + 1) * part_values).min(len)];
            // create_buffer_init pads to 4 bytes, but makes an empty buffer for no contents.
            let contents: &[u8] = if values.is_empty() {
                &[0; 4]
            } else {
                bytemuck::cast_slice(values)
            };
            backend
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents,
                    usage: USAGE,
                })
        })
        .collect();
    Ok(new_tensor(backend, shape, dtype, buffers, rows_per_part))
}
