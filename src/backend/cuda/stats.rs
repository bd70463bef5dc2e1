//! The stats family on CUDA.
//!
//! - `scatter`: per group, a mean kernel and a SYRK-shaped scatter kernel (lower-triangle tiles,
//!   f64 accumulation of rows centred in f64); the host mirrors the upper half.
//! - `symmetric_eigen`: matrices up to [`JACOBI_MAX`] go to the batched cyclic Jacobi kernel, one
//!   block per matrix (LDA's and PCA's many small problems). A larger one is solved on the host
//!   by faer (the CPU backend): a single dense eigenproblem is a chain of dependent steps that
//!   one block of a GPU runs slower than a tridiagonal QR on the host, the matrix is a host
//!   [`Matrix64`] already, and the Jacobi kernel keeps its matrix in shared memory (64×64 f64 is
//!   32 KiB of the 48 KiB a block has without opt-in).
//! - `spd_solve`: on the host (faer Cholesky through the CPU backend). Its callers solve a few
//!   `d×d` systems per LDA split from host matrices, O(d³/3) flops in sequential panels: the
//!   transfers and a one-block device Cholesky would cost more than they save.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::device::{config, device_error, tile_grid, to_i32};
use super::CudaBackend;
use crate::backend::{shapes, Backend, Eigen, Matrix64, Moments, Tensor};
use crate::error::{Error, Result};

/// Largest matrix the Jacobi kernel holds (JACOBI_MAX in kernels/stats.cu).
pub(super) const JACOBI_MAX: usize = 64;

/// Must match SCATTER_TILE in kernels/stats.cu.
const SCATTER_TILE: usize = 32;

pub(super) fn scatter(be: &CudaBackend, x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>> {
    let (n, d) = x.dims2("scatter input")?;
    for (g, rows) in groups.iter().enumerate() {
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(Error::input(format!(
                "scatter: group {g} names row {bad}, the matrix has {n} rows"
            )));
        }
    }
    let di = to_i32(d, "scatter width")?;
    let data = be.slice(x)?;
    let stream = be.stream();
    let mean_f = be.function("stats", "group_mean_v1")?;
    let scatter_f = be.function("stats", "group_scatter_v1")?;
    let mut mean = stream.alloc_zeros::<f64>(d.max(1)).map_err(device_error)?;
    let mut scatter = stream
        .alloc_zeros::<f64>((d * d).max(1))
        .map_err(device_error)?;
    let mut out = Vec::with_capacity(groups.len());
    for rows in groups {
        if rows.is_empty() || d == 0 {
            out.push(Moments {
                count: rows.len(),
                mean: vec![0.0; d],
                scatter: Matrix64::zeros(d, d),
            });
            continue;
        }
        let count = to_i32(rows.len(), "scatter group size")?;
        let ids: CudaSlice<u32> = be.upload_small(rows)?;
        let mut args = stream.launch_builder(&mean_f);
        args.arg(data).arg(&ids).arg(&mut mean).arg(&count).arg(&di);
        let blocks = d.div_ceil(256) as u32;
        be.launch(
            "group_mean_v1",
            &mut args,
            config((blocks, 1, 1), (256, 1, 1)),
        )?;
        drop(args);
        let mut args = stream.launch_builder(&scatter_f);
        args.arg(data)
            .arg(&ids)
            .arg(&mean)
            .arg(&mut scatter)
            .arg(&count)
            .arg(&di);
        let grid = tile_grid(d, d, SCATTER_TILE, "scatter")?;
        be.launch("group_scatter_v1", &mut args, config(grid, (256, 1, 1)))?;
        drop(args);
        be.synchronize()?;
        let mean_host = stream.clone_dtoh(&mean.slice(..d)).map_err(device_error)?;
        let mut lower = Matrix64 {
            rows: d,
            cols: d,
            data: stream
                .clone_dtoh(&scatter.slice(..d * d))
                .map_err(device_error)?,
        };
        be.synchronize()?;
        for i in 0..d {
            for j in 0..i {
                *lower.at_mut(j, i) = lower.at(i, j);
            }
        }
        out.push(Moments {
            count: rows.len(),
            mean: mean_host,
            scatter: lower,
        });
    }
    Ok(out)
}

pub(super) fn symmetric_eigen(be: &CudaBackend, matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
    for (i, a) in matrices.iter().enumerate() {
        shapes::square_finite("symmetric_eigen", i, a)?;
    }
    let mut out: Vec<Option<Eigen>> = vec![None; matrices.len()];
    // Large problems on the host, in one batch so faer shares the cores among them.
    let large: Vec<usize> = (0..matrices.len())
        .filter(|&i| matrices[i].rows > JACOBI_MAX)
        .collect();
    if !large.is_empty() {
        let batch: Vec<Matrix64> = large.iter().map(|&i| matrices[i].clone()).collect();
        for (i, e) in large.iter().zip(be.host().symmetric_eigen(&batch)?) {
            out[*i] = Some(e);
        }
    }
    // Small problems on the device, one launch per size.
    for d in 0..=JACOBI_MAX {
        let same: Vec<usize> = (0..matrices.len())
            .filter(|&i| matrices[i].rows == d)
            .collect();
        if same.is_empty() {
            continue;
        }
        if d == 0 {
            for &i in &same {
                out[i] = Some(Eigen {
                    values: Vec::new(),
                    vectors: Matrix64::zeros(0, 0),
                });
            }
            continue;
        }
        for (&i, e) in same.iter().zip(jacobi(be, matrices, &same, d)?) {
            out[i] = Some(e);
        }
    }
    Ok(out
        .into_iter()
        .map(|e| e.expect("every matrix is solved"))
        .collect())
}

/// The matrices `which` of `matrices`, all `d×d`, through one launch of the Jacobi kernel.
fn jacobi(
    be: &CudaBackend,
    matrices: &[Matrix64],
    which: &[usize],
    d: usize,
) -> Result<Vec<Eigen>> {
    let stream = be.stream();
    let host: Vec<f64> = which
        .iter()
        .flat_map(|&i| matrices[i].data.iter().copied())
        .collect();
    let mut a = stream.clone_htod(&host).map_err(device_error)?;
    let mut v = stream
        .alloc_zeros::<f64>(host.len())
        .map_err(device_error)?;
    let f = be.function("stats", "jacobi_eigen_v1")?;
    let di = d as i32;
    // Off-diagonal mass below d·ε of the whole: rotations cannot push it further (each leaves a
    // rounding residue of about ε·‖A‖ in the entry it zeroes).
    let tolerance = f64::EPSILON * d as f64;
    let blocks = u32::try_from(which.len())
        .map_err(|_| Error::input("symmetric_eigen: batch exceeds u32"))?;
    let mut args = stream.launch_builder(&f);
    args.arg(&mut a).arg(&mut v).arg(&di).arg(&tolerance);
    be.launch(
        "jacobi_eigen_v1",
        &mut args,
        config((blocks, 1, 1), (256, 1, 1)),
    )?;
    drop(args);
    be.synchronize()?;
    let diagonalised = stream.clone_dtoh(&a).map_err(device_error)?;
    let vectors = stream.clone_dtoh(&v).map_err(device_error)?;
    be.synchronize()?;
    Ok((0..which.len())
        .map(|b| {
            let a = &diagonalised[b * d * d..(b + 1) * d * d];
            let v = &vectors[b * d * d..(b + 1) * d * d];
            // Largest first, as the trait promises.
            let mut order: Vec<usize> = (0..d).collect();
            order.sort_by(|&x, &y| a[y * d + y].total_cmp(&a[x * d + x]));
            let mut sorted = Matrix64::zeros(d, d);
            for r in 0..d {
                for (j, &src) in order.iter().enumerate() {
                    *sorted.at_mut(r, j) = v[r * d + src];
                }
            }
            Eigen {
                values: order.iter().map(|&j| a[j * d + j]).collect(),
                vectors: sorted,
            }
        })
        .collect())
}

pub(super) fn spd_solve(
    be: &CudaBackend,
    systems: &[(Matrix64, Matrix64)],
) -> Result<Vec<Matrix64>> {
    be.host().spd_solve(systems)
}
