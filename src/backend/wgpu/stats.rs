//! The stats ops on wgpu. `scatter` runs shaders/stats.wgsl in two passes — per-item column sums
//! (means), then the centred Gram of each item — over items of at most a few hundred rows of one
//! group each, so every f32 partial sums few terms; the host adds the partials in f64.
//!
//! `symmetric_eigen` and `spd_solve` take and return host `d×d` matrices, which would make a
//! round trip through device memory for every call: they run the CPU backend's faer solvers
//! (a batched WGSL Jacobi for many small problems is future work).

use bytemuck::{Pod, Zeroable};

use super::device::to_u32;
use super::kernels::Kernel;
use super::WgpuBackend;
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Eigen, Matrix64, Moments, Tensor};
use crate::error::{Error, Result};

/// Rows summed in f32 by one thread of `group_sums`.
const SUM_ROWS: usize = 256;
/// Rows of one item of `scatter_tiled`: its partial is a whole `d×d` matrix, so items are longer
/// than for the sums.
const SCATTER_ROWS: usize = 1024;
/// Result rows and columns per workgroup of `scatter_tiled` (stats.wgsl `TILE`).
const TILE: usize = 64;
/// Threads per workgroup of `group_sums` (stats.wgsl `@workgroup_size`).
const SUM_WORKGROUP: usize = 256;
/// Largest partial-result buffer of one dispatch (further capped by the storage-binding limit).
const PARTIAL_BYTES: u64 = 64 << 20;

/// stats.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct StatsParams {
    d: u32,
    items: u32,
    tiles: u32,
    _pad: u32,
}

/// Chunks of at most `chunk` rows of each group, as stats.wgsl's `Item`s `[start, count, group,
/// 0]` into the concatenation of `groups`, which is returned with them.
fn items(groups: &[Vec<u32>], chunk: usize) -> (Vec<u32>, Vec<[u32; 4]>) {
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        for piece in group.chunks(chunk) {
            items.push([rows.len() as u32, piece.len() as u32, g as u32, 0]);
            rows.extend_from_slice(piece);
        }
    }
    (rows, items)
}

/// One of the two passes of `scatter` over the rows held by one part `x` of the input.
struct Pass<'a> {
    kernel: Kernel,
    x: &'a wgpu::Buffer,
    d: usize,
    /// `[groups, d]` f32 centres (the placeholder for `group_sums`).
    means: &'a wgpu::Buffer,
    /// Partial values each item writes.
    per_item: usize,
}

pub(super) fn scatter(
    backend: &WgpuBackend,
    x: &Tensor,
    groups: &[&[u32]],
) -> Result<Vec<Moments>> {
    let (n, d) = x.dims2("scatter input")?;
    for (g, rows) in groups.iter().enumerate() {
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(Error::input(format!(
                "scatter: group {g} names row {bad}, the matrix has {n} rows"
            )));
        }
    }
    let storage = backend.storage(x)?;
    let square = d * d;
    let partial_values = (backend.max_part_bytes.min(PARTIAL_BYTES) / 4) as usize;
    if square > partial_values {
        return Err(Error::input(format!(
            "scatter: a {d}×{d} result exceeds the wgpu partial buffer of {partial_values} values"
        )));
    }
    // Each group's rows per part of x, as rows of that part.
    let per_part = storage.rows_per_part.max(1);
    let parts: Vec<Vec<Vec<u32>>> = (0..storage.parts.len())
        .map(|part| {
            let held = (part * per_part) as u32..((part + 1) * per_part).min(n) as u32;
            groups
                .iter()
                .map(|rows| {
                    rows.iter()
                        .filter(|r| held.contains(r))
                        .map(|r| r - held.start)
                        .collect()
                })
                .collect()
        })
        .collect();

    let mut sums = vec![vec![0.0f64; d]; groups.len()];
    for (part, local) in parts.iter().enumerate() {
        let (rows, work) = items(local, SUM_ROWS);
        let pass = Pass {
            kernel: Kernel::GroupSums,
            x: &storage.parts[part],
            d,
            means: &backend.placeholder,
            per_item: d,
        };
        run_items(
            backend,
            &pass,
            &rows,
            &work,
            partial_values / d.max(1),
            |item, values| {
                let sum = &mut sums[item[2] as usize];
                sum.iter_mut()
                    .zip(values)
                    .for_each(|(s, v)| *s += *v as f64);
            },
        )?;
    }
    let means: Vec<Vec<f64>> = sums
        .into_iter()
        .zip(groups)
        .map(|(sum, rows)| {
            let count = rows.len().max(1) as f64;
            sum.into_iter().map(|s| s / count).collect()
        })
        .collect();
    // The shader centres on the f32 means; the host corrects for their rounding below.
    let means32: Vec<f32> = means.iter().flatten().map(|&m| m as f32).collect();
    let means_buffer = backend.upload(&[groups.len(), d], &means32)?;

    let mut scatters = vec![Matrix64::zeros(d, d); groups.len()];
    for (part, local) in parts.iter().enumerate() {
        let (rows, work) = items(local, SCATTER_ROWS);
        let pass = Pass {
            kernel: Kernel::ScatterTiled,
            x: &storage.parts[part],
            d,
            means: backend.buffer(&means_buffer, "scatter means")?,
            per_item: square,
        };
        run_items(
            backend,
            &pass,
            &rows,
            &work,
            partial_values / square.max(1),
            |item, values| {
                let s = &mut scatters[item[2] as usize];
                // Only the upper triangle is computed.
                for i in 0..d {
                    for j in i..d {
                        *s.at_mut(i, j) += values[i * d + j] as f64;
                    }
                }
            },
        )?;
    }
    Ok(scatters
        .into_iter()
        .zip(means)
        .zip(groups)
        .map(|((mut scatter, mean), rows)| {
            // Σ (x − m)(x − m)ᵀ = S + n·δδᵀ for m = μ − δ: remove the f32 rounding δ of the
            // centre exactly.
            let count = rows.len() as f64;
            let delta: Vec<f64> = mean.iter().map(|&m| m - m as f32 as f64).collect();
            for i in 0..d {
                for j in i..d {
                    let v = scatter.at(i, j) - count * delta[i] * delta[j];
                    *scatter.at_mut(i, j) = v;
                    *scatter.at_mut(j, i) = v;
                }
            }
            Moments {
                count: rows.len(),
                mean,
                scatter,
            }
        })
        .collect())
}

/// Dispatches `pass` over `work` in batches of at most `batch` items and hands every item's
/// partial to `consume`.
fn run_items(
    backend: &WgpuBackend,
    pass: &Pass,
    rows: &[u32],
    work: &[[u32; 4]],
    batch: usize,
    mut consume: impl FnMut(&[u32; 4], &[f32]),
) -> Result<()> {
    let Pass {
        kernel,
        x,
        d,
        means,
        per_item,
    } = *pass;
    if work.is_empty() {
        return Ok(());
    }
    let tiles = d.div_ceil(TILE);
    let rows = backend.upload_u32("scatter rows", rows);
    for chunk in work.chunks(batch.max(1)) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let items = backend.upload_u32("scatter items", &flat);
        let partial = backend.zeros(&[chunk.len(), per_item])?;
        let params = StatsParams {
            d: to_u32(d, "scatter width")?,
            items: chunk.len() as u32,
            tiles: tiles as u32,
            _pad: 0,
        };
        let workgroups = match kernel {
            Kernel::GroupSums => (chunk.len() * d).div_ceil(SUM_WORKGROUP),
            _ => chunk.len() * tiles * tiles,
        };
        backend.dispatch(
            kernel,
            &params,
            &[
                x,
                &rows,
                &items,
                means,
                backend.buffer(&partial, "scatter partial")?,
            ],
            backend.grid(workgroups)?,
        );
        let values = backend.download(&partial)?;
        for (item, values) in chunk.iter().zip(values.chunks_exact(per_item.max(1))) {
            consume(item, values);
        }
    }
    Ok(())
}

/// Faer on the host: see the module comment.
pub(super) fn symmetric_eigen(matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
    CpuBackend::new().symmetric_eigen(matrices)
}

/// Faer on the host: see the module comment.
pub(super) fn spd_solve(systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>> {
    CpuBackend::new().spd_solve(systems)
}
