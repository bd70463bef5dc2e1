//! The trim op on wgpu: shaders/trim.wgsl sorts every sample (bitonic, in workgroup tiles and
//! long global strides) and counts, for every point, the reference points below and at it (the
//! merged ECDFs, by binary search in the sorted reference). The host then reads the sorted rows
//! and their counts back and runs the α̂ solve and the trimmed-W2 selection in f64 with the
//! definitions of [`crate::backend::trim`] ([`trim::result_of_ranks`]), which WGSL (no f64)
//! cannot match. Results equal the CPU backend's: the counts are integers and the sorted values
//! are the same.
//!
//! Leave-one-out sorts the whole pool once; a model's reference counts are the pooled counts
//! minus its own, as on the CPU.

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::device::to_u32;
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::trim;
use crate::backend::{Backend, Tensor, TrimReference, TrimResult, TrimSpec};
use crate::error::{Error, Result};

/// Keys per workgroup tile of `bitonic_local` (shaders/trim.wgsl `TILE`).
const TILE: usize = 2048;
/// Threads per workgroup of every trim kernel (trim.wgsl `@workgroup_size`).
const WORKGROUP: usize = 256;
/// Pads rows to a power of two; above the key of every finite value, so it sorts last.
const PAD: u32 = u32::MAX;

/// trim.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct TrimParams {
    rows: u32,
    width: u32,
    block: u32,
    stride: u32,
    reference_len: u32,
    _pad: [u32; 3],
}

pub(super) fn trim_search(
    backend: &WgpuBackend,
    candidates: &[&[f32]],
    reference: TrimReference<'_>,
    spec: &TrimSpec,
) -> Result<Vec<TrimResult>> {
    trim::check_search(candidates, reference, spec)?;
    let leave_one_out = reference.leave_one_out();
    let reference_values = reference.pool(candidates).concat();
    let total_reference = reference_values.len();
    let reference_keys = sorted_keys(
        backend,
        "trim reference",
        &[&reference_values],
        total_reference.next_power_of_two(),
    )?;
    let sorted_reference: Vec<f32> = download_words(backend, &reference_keys)?[..total_reference]
        .iter()
        .map(|&k| trim::from_order_bits(k))
        .collect();
    let w2_exact = !leave_one_out || spec.w2_grid.is_exact(candidates.len(), total_reference);

    // Rows of one batch share a width; a batch's (lt, le) counts must fit one binding.
    let width = candidates
        .iter()
        .map(|c| c.len().next_power_of_two())
        .max()
        .unwrap_or(1);
    let row_bytes = 8 * width as u64;
    if row_bytes > backend.max_part_bytes {
        return Err(Error::input(format!(
            "trim_search: a sample of {width} points (padded) needs {row_bytes} bytes of \
                 counts, more than one storage binding of {} bytes",
            backend.max_part_bytes
        )));
    }
    let batch = (backend.max_part_bytes / row_bytes) as usize;
    let compared = &candidates[reference.compared(candidates.len())];
    let mut results = Vec::with_capacity(compared.len());
    // (Every row is sorted and counted on its own: its result does not depend on its batch.)
    for rows in compared.chunks(batch) {
        let keys = sorted_keys(backend, "trim candidates", rows, width)?;
        let counts = backend.zeros(&[rows.len(), 2 * width])?;
        let params = TrimParams {
            rows: to_u32(rows.len(), "trim rows")?,
            width: to_u32(width, "trim width")?,
            reference_len: to_u32(total_reference, "trim reference points")?,
            ..TrimParams::default()
        };
        backend.dispatch(
            Kernel::EcdfCounts,
            &params,
            &[
                backend.buffer(&keys, "trim candidates")?,
                backend.buffer(&reference_keys, "trim reference")?,
                backend.buffer(&counts, "trim counts")?,
            ],
            backend.grid((rows.len() * width).div_ceil(WORKGROUP))?,
        );
        let keys = download_words(backend, &keys)?;
        let counts = download_words(backend, &counts)?;
        backend.host_work.mark();
        results.par_extend(rows.par_iter().enumerate().map(|(r, c)| {
            let n = c.len();
            let values: Vec<f32> = keys[r * width..r * width + n]
                .iter()
                .map(|&k| trim::from_order_bits(k))
                .collect();
            let ranks = &counts[2 * r * width..2 * (r * width + n)];
            trim::result_of_ranks(
                &values,
                ranks,
                &sorted_reference,
                leave_one_out,
                spec,
                w2_exact,
            )
        }));
    }
    Ok(results)
}

/// `samples` as keys on the device, one row each padded to `width` (a power of two no shorter
/// than any sample), every row sorted ascending.
fn sorted_keys(
    backend: &WgpuBackend,
    what: &str,
    samples: &[&[f32]],
    width: usize,
) -> Result<Tensor> {
    let bytes = 4 * (samples.len() * width) as u64;
    if bytes > backend.max_part_bytes {
        return Err(Error::input(format!(
            "trim_search: {what} of {} points (padded) exceed one storage binding of {} bytes",
            samples.len() * width,
            backend.max_part_bytes
        )));
    }
    let mut keys = vec![PAD; samples.len() * width];
    for (row, s) in keys.chunks_exact_mut(width).zip(samples) {
        row.iter_mut()
            .zip(s.iter())
            .for_each(|(k, &v)| *k = trim::order_bits(v));
    }
    // Keys travel as raw 32-bit words through the f32 tensor type.
    let tensor = backend.upload(&[samples.len(), width], bytemuck::cast_slice(&keys))?;
    bitonic_sort(
        backend,
        backend.buffer(&tensor, what)?,
        samples.len(),
        width,
    )?;
    Ok(tensor)
}

/// Sorts each of `rows` rows of `width` keys (a power of two) of `keys` in place: the whole sort
/// of every tile first, then for each longer run length its global strides and the tile-sized
/// tail of its strides.
fn bitonic_sort(
    backend: &WgpuBackend,
    keys: &wgpu::Buffer,
    rows: usize,
    width: usize,
) -> Result<()> {
    if width < 2 {
        return Ok(());
    }
    let tile = width.min(TILE);
    let stage = |kernel, block: usize, stride: usize, workgroups: usize| -> Result<()> {
        let params = TrimParams {
            rows: to_u32(rows, "trim rows")?,
            width: to_u32(width, "trim width")?,
            block: block as u32,
            stride: stride as u32,
            ..TrimParams::default()
        };
        backend.dispatch(kernel, &params, &[keys], backend.grid(workgroups)?);
        Ok(())
    };
    let tiles = rows * width / tile;
    let pair_groups = (rows * width / 2).div_ceil(WORKGROUP);
    stage(Kernel::BitonicLocal, 0, 0, tiles)?;
    let mut block = 2 * tile;
    while block <= width {
        let mut stride = block / 2;
        while stride >= tile {
            stage(Kernel::BitonicGlobal, block, stride, pair_groups)?;
            stride /= 2;
        }
        stage(Kernel::BitonicLocal, block, tile / 2, tiles)?;
        block *= 2;
    }
    Ok(())
}

/// A tensor of raw 32-bit words (keys, counts) as the host reads them.
fn download_words(backend: &WgpuBackend, tensor: &Tensor) -> Result<Vec<u32>> {
    Ok(bytemuck::allocation::cast_vec(backend.download(tensor)?))
}
