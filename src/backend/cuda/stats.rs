//! The stats family on CUDA.
//!
//! - `scatter`: per group, a mean and a SYRK-shaped scatter (lower-triangle tiles, f64
//!   accumulation of rows centred in f64), each with the group's rows cut into splits across
//!   blocks where its grid alone would leave SMs idle ([`row_splits`]), the splits added in a
//!   fixed order by a second kernel; the host mirrors the upper half.
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

use super::device::{config, device_error, tile_grid, to_i32, MAX_GRID_YZ};
use super::CudaBackend;
use crate::backend::{shapes, Backend, Eigen, Matrix64, Moments, Tensor};
use crate::error::{Error, Result};

/// Largest matrix the Jacobi kernel holds (JACOBI_MAX in kernels/stats.cu).
pub(super) const JACOBI_MAX: usize = 64;

/// The family's kernels in kernels/stats.cu.
const GROUP_SUM: &str = "group_sum_v2";
const GROUP_MEAN: &str = "group_mean_v2";
const GROUP_SCATTER: &str = "group_scatter_v2";
const SUM_LOWER_SPLITS: &str = "sum_lower_splits_v2";
const JACOBI_EIGEN: &str = "jacobi_eigen_v1";

/// Must match SCATTER_TILE and SCATTER_ROWS in kernels/stats.cu.
const SCATTER_TILE: usize = 32;
const SCATTER_ROWS: usize = 32;

/// Threads per block of the column kernels (`group_sum_v2`, `group_mean_v2`, the split sums).
const COLUMN_BLOCK: usize = 256;

/// Blocks per multiprocessor a split launch aims at: a few waves of 256-thread blocks.
const BLOCKS_PER_SM: usize = 4;

/// Fewest rows a split takes: below that its block spends more on starting than on rows.
const MIN_SPLIT_ROWS: usize = 4 * SCATTER_ROWS;

/// Most bytes of split scatter partials (`splits · d²` f64): splits only pay where the matrix is
/// small, so the cap binds only far from where they help.
const MAX_PARTIAL_BYTES: usize = 256 << 20;

/// How a group's `count` rows are cut into splits for a launch of `blocks` blocks a split (the
/// grid's other dimensions), aiming at `target` blocks in all and at most `most` splits: the
/// number of splits and the rows of each (a multiple of [`SCATTER_ROWS`]; every split has rows).
fn row_splits(count: usize, blocks: usize, target: usize, most: usize) -> (usize, usize) {
    let wanted = target.div_ceil(blocks.max(1));
    let splits = wanted
        .min(count.div_ceil(MIN_SPLIT_ROWS))
        .min(most)
        .clamp(1, MAX_GRID_YZ);
    let rows = count.div_ceil(splits).next_multiple_of(SCATTER_ROWS).max(1);
    (count.div_ceil(rows).max(1), rows)
}

/// One group's launches: the mean's and the scatter's splits.
struct GroupPlan {
    count: i32,
    mean_splits: usize,
    mean_rows: i32,
    splits: usize,
    rows: i32,
}

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
    let grid = tile_grid(d, d, SCATTER_TILE, "scatter")?;
    let column_blocks = d.div_ceil(COLUMN_BLOCK);
    let lower_tiles = {
        let t = d.div_ceil(SCATTER_TILE);
        t * (t + 1) / 2
    };
    let target = BLOCKS_PER_SM * be.device.multiprocessors;
    let most = (MAX_PARTIAL_BYTES / (8 * d * d).max(1)).max(1);
    let plans = groups
        .iter()
        .map(|rows| {
            let (mean_splits, mean_rows) =
                row_splits(rows.len(), column_blocks, target, MAX_GRID_YZ);
            let (splits, split_rows) = row_splits(rows.len(), lower_tiles, target, most);
            Ok(GroupPlan {
                count: to_i32(rows.len(), "scatter group size")?,
                mean_splits,
                mean_rows: to_i32(mean_rows, "scatter split")?,
                splits,
                rows: to_i32(split_rows, "scatter split")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let data = be.slice(x)?;
    let stream = be.stream();
    let sum_f = be.function("stats", GROUP_SUM)?;
    let mean_f = be.function("stats", GROUP_MEAN)?;
    let scatter_f = be.function("stats", GROUP_SCATTER)?;
    let splits_f = be.function("stats", SUM_LOWER_SPLITS)?;
    let alloc = |len: usize| stream.alloc_zeros::<f64>(len.max(1)).map_err(device_error);
    let most_mean_splits = plans.iter().map(|p| p.mean_splits).max().unwrap_or(1);
    let most_splits = plans.iter().map(|p| p.splits).max().unwrap_or(1);
    let mut sums = alloc(most_mean_splits * d)?;
    let mut mean = alloc(d)?;
    let mut scatter = alloc(d * d)?;
    // Split partials only where some group has more than one split (one writes `scatter` itself).
    let mut partials = alloc(if most_splits > 1 {
        most_splits * d * d
    } else {
        0
    })?;
    let columns = (column_blocks as u32, 1, 1);
    let column_threads = (COLUMN_BLOCK as u32, 1, 1);
    let mut out = Vec::with_capacity(groups.len());
    for (rows, plan) in groups.iter().zip(&plans) {
        if rows.is_empty() || d == 0 {
            out.push(Moments {
                count: rows.len(),
                mean: vec![0.0; d],
                scatter: Matrix64::zeros(d, d),
            });
            continue;
        }
        let ids: CudaSlice<u32> = be.upload_small(rows)?;
        let mut args = stream.launch_builder(&sum_f);
        args.arg(data)
            .arg(&ids)
            .arg(&mut sums)
            .arg(&plan.count)
            .arg(&di)
            .arg(&plan.mean_rows);
        let split_columns = (columns.0, plan.mean_splits as u32, 1);
        be.launch(GROUP_SUM, &mut args, config(split_columns, column_threads))?;
        drop(args);
        let mean_splits = plan.mean_splits as i32;
        let mut args = stream.launch_builder(&mean_f);
        args.arg(&sums)
            .arg(&mut mean)
            .arg(&mean_splits)
            .arg(&plan.count)
            .arg(&di);
        be.launch(GROUP_MEAN, &mut args, config(columns, column_threads))?;
        drop(args);
        let split_target = if plan.splits > 1 {
            &mut partials
        } else {
            &mut scatter
        };
        let mut args = stream.launch_builder(&scatter_f);
        args.arg(data)
            .arg(&ids)
            .arg(&mean)
            .arg(split_target)
            .arg(&plan.count)
            .arg(&di)
            .arg(&plan.rows);
        let split_grid = (grid.0, grid.1, plan.splits as u32);
        be.launch(GROUP_SCATTER, &mut args, config(split_grid, (256, 1, 1)))?;
        drop(args);
        if plan.splits > 1 {
            let splits = plan.splits as i32;
            let mut args = stream.launch_builder(&splits_f);
            args.arg(&partials).arg(&mut scatter).arg(&splits).arg(&di);
            let blocks = u32::try_from((d * d).div_ceil(COLUMN_BLOCK))
                .map_err(|_| Error::input(format!("scatter: {d}² outputs exceed the CUDA grid")))?;
            be.launch(
                SUM_LOWER_SPLITS,
                &mut args,
                config((blocks, 1, 1), column_threads),
            )?;
            drop(args);
        }
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
    let f = be.function("stats", JACOBI_EIGEN)?;
    let di = d as i32;
    // Off-diagonal mass below d·ε of the whole: rotations cannot push it further (each leaves a
    // rounding residue of about ε·‖A‖ in the entry it zeroes).
    let tolerance = f64::EPSILON * d as f64;
    let blocks = u32::try_from(which.len())
        .map_err(|_| Error::input("symmetric_eigen: batch exceeds u32"))?;
    let mut args = stream.launch_builder(&f);
    args.arg(&mut a).arg(&mut v).arg(&di).arg(&tolerance);
    be.launch(JACOBI_EIGEN, &mut args, config((blocks, 1, 1), (256, 1, 1)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row in exactly one split, none empty, each a whole number of staged row blocks, no
    /// more splits than allowed; wide matrices (many tiles) are not split, narrow ones are.
    #[test]
    fn row_splits_cover_the_rows_once() {
        for count in [1, 31, 32, 33, 127, 128, 129, 1_000, 4_097, 100_000] {
            for blocks in [1, 2, 78, 528, 8_256] {
                for most in [1, 3, MAX_GRID_YZ] {
                    let (splits, rows) = row_splits(count, blocks, 528, most);
                    let case = format!("{count} rows, {blocks} blocks, at most {most}");
                    assert!((1..=most).contains(&splits), "{case}: {splits} splits");
                    assert_eq!(rows % SCATTER_ROWS, 0, "{case}: {rows} rows a split");
                    assert!(splits * rows >= count, "{case}: rows left over");
                    assert!((splits - 1) * rows < count, "{case}: an empty split");
                }
            }
        }
        // H200 (132 SMs): a 384-wide scatter (78 lower tiles) of 100 000 rows is cut, a
        // 4 096-wide one (8 256 tiles) is not.
        assert_eq!(row_splits(100_000, 78, 4 * 132, MAX_GRID_YZ).0, 7);
        assert_eq!(row_splits(100_000, 8_256, 4 * 132, MAX_GRID_YZ).0, 1);
        // Few rows: splits of at least MIN_SPLIT_ROWS.
        assert_eq!(row_splits(300, 1, 4 * 132, MAX_GRID_YZ).0, 3);
    }

    /// The kernels this family launches are the ones kernels/stats.cu defines.
    #[test]
    fn launched_kernels_exist() {
        let source = crate::backend::cuda::nvrtc::KERNEL_SOURCES
            .iter()
            .find(|(family, _)| *family == "stats")
            .map(|&(_, source)| source)
            .expect("the stats family is embedded");
        let launched = [
            GROUP_SUM,
            GROUP_MEAN,
            GROUP_SCATTER,
            SUM_LOWER_SPLITS,
            JACOBI_EIGEN,
        ];
        for name in launched {
            assert!(source.contains(&format!("{name}(")), "{name}");
        }
    }
}
