//! The trim family on CUDA (kernels/trim.cu): the reference (or the leave-one-out pool) and the
//! compared samples go to the device as order-preserving keys ([`trim::order_bits`]), each is
//! sorted by a segmented LSD radix sort (one segment per sample), and the merged ECDF counts of
//! every sorted point in the sorted reference are found by binary search. The host reads the
//! sorted keys and counts back and finishes each sample with [`trim::result_of_ranks`], the f64
//! code the wgpu backend shares: the sort is exact and the counts are integers, so the results
//! are the CPU backend's bit for bit.
//!
//! Leave-one-out sorts the whole pool once; a model's reference counts are the pooled counts
//! minus its own, as on the CPU. Sizes are refused with their numbers before anything is
//! allocated: 2³² keys or more (the kernels index in 32 bits), or more device memory than is
//! free.

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use rayon::prelude::*;

use super::device::{config, device_error};
use super::CudaBackend;
use crate::backend::trim;
use crate::backend::{Backend, TrimReference, TrimResult, TrimSpec};
use crate::error::{Error, Result};

/// Keys per sort tile (SORT_TILE in kernels/trim.cu).
const SORT_TILE: usize = 2048;
/// Bits of a radix digit (RADIX_BITS).
const RADIX_BITS: usize = 8;
/// Digits of a pass; also the threads of a sort block (RADIX, SORT_THREADS).
const RADIX: usize = 1 << RADIX_BITS;
/// Counts per block of the scan kernels (SCAN_TILE).
const SCAN_TILE: usize = 2048;
/// Threads per block of the scan and ECDF kernels.
const THREADS: u32 = 256;

/// The entry points of kernels/trim.cu.
const HISTOGRAM: &str = "radix_histogram_v1";
const TILE_SUMS: &str = "scan_tile_sums_v1";
const SCAN_SUMS: &str = "scan_sums_v1";
const SCAN_APPLY: &str = "scan_apply_v1";
const SCATTER: &str = "radix_scatter_v1";
const ECDF_COUNTS: &str = "ecdf_counts_v1";

/// Must match `SortTile` in kernels/trim.cu: keys `start..end` (at most [`SORT_TILE`]) of one
/// segment, whose count of digit `d` is at `count_base + d·count_stride` of the digit counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SortTile {
    start: u32,
    end: u32,
    count_base: u32,
    count_stride: u32,
}

// SAFETY: a plain repr(C) struct of 4-byte scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for SortTile {}

pub(super) fn trim_search(
    be: &CudaBackend,
    candidates: &[&[f32]],
    reference: TrimReference<'_>,
    spec: &TrimSpec,
) -> Result<Vec<TrimResult>> {
    trim::check_search(candidates, reference, spec)?;
    let leave_one_out = reference.leave_one_out();
    let part = reference.compared(candidates.len());
    let compared = &candidates[part.clone()];
    if compared.is_empty() {
        return Ok(Vec::new());
    }
    let pool = reference.pool(candidates);
    let m: usize = pool.iter().map(|s| s.len()).sum();
    let rows: Vec<usize> = compared.iter().map(|c| c.len()).collect();
    let n: usize = rows.iter().sum();
    let reference_tiles = sort_tiles(&[m], "the reference")?;
    let row_tiles = sort_tiles(&rows, "the compared samples")?;
    check_memory(be, m, n, reference_tiles.len() + row_tiles.len())?;

    let stream = be.stream();
    let mut reference_keys = stream.clone_htod(&keys_of(&pool)).map_err(device_error)?;
    let mut keys = if leave_one_out {
        // The compared samples lie in the pool: copied on the device before the pool is sorted.
        let start: usize = candidates[..part.start].iter().map(|c| c.len()).sum();
        // SAFETY: every element is written by the copy below before any read.
        let mut keys = unsafe { stream.alloc::<u32>(n) }.map_err(device_error)?;
        stream
            .memcpy_dtod(&reference_keys.slice(start..start + n), &mut keys)
            .map_err(device_error)?;
        keys
    } else {
        stream
            .clone_htod(&keys_of(compared))
            .map_err(device_error)?
    };
    sort_segments(be, &mut reference_keys, &reference_tiles)?;
    sort_segments(be, &mut keys, &row_tiles)?;
    // SAFETY: ecdf_counts_v1 writes both counts of every one of the n keys.
    let mut counts = unsafe { stream.alloc::<u32>(2 * n) }.map_err(device_error)?;
    let f = be.function("trim", ECDF_COUNTS)?;
    let (n32, m32) = (n as u32, m as u32);
    let mut args = stream.launch_builder(&f);
    args.arg(&keys)
        .arg(&n32)
        .arg(&reference_keys)
        .arg(&m32)
        .arg(&mut counts);
    let blocks = n.div_ceil(THREADS as usize) as u32;
    be.launch(
        ECDF_COUNTS,
        &mut args,
        config((blocks, 1, 1), (THREADS, 1, 1)),
    )?;
    drop(args);
    // A failed kernel is this call's error, not the copy's.
    be.synchronize()?;
    let keys = stream.clone_dtoh(&keys).map_err(device_error)?;
    let ranks = stream.clone_dtoh(&counts).map_err(device_error)?;
    let reference_keys = stream.clone_dtoh(&reference_keys).map_err(device_error)?;
    be.synchronize()?;

    let values = values_of(&keys);
    let sorted_reference = values_of(&reference_keys);
    let w2_exact = !leave_one_out || spec.w2_grid.is_exact(candidates.len(), m);
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(rows.iter().scan(0, |end, &len| {
            *end += len;
            Some(*end)
        }))
        .collect();
    be.host_work.mark();
    Ok(offsets
        .par_windows(2)
        .map(|w| {
            trim::result_of_ranks(
                &values[w[0]..w[1]],
                &ranks[2 * w[0]..2 * w[1]],
                &sorted_reference,
                leave_one_out,
                spec,
                w2_exact,
            )
        })
        .collect())
}

/// The samples' keys, one after the other.
fn keys_of(samples: &[&[f32]]) -> Vec<u32> {
    samples
        .par_iter()
        .flat_map_iter(|s| s.iter().map(|&v| trim::order_bits(v)))
        .collect()
}

fn values_of(keys: &[u32]) -> Vec<f32> {
    keys.par_iter().map(|&k| trim::from_order_bits(k)).collect()
}

/// The sort tiles of consecutive segments of the given lengths: each segment cut into tiles of
/// [`SORT_TILE`] keys (the last one shorter), and the digit counts laid out segment by segment,
/// digit-major inside a segment, so that one exclusive scan of all the counts in order gives
/// each tile's first position for each digit inside its segment. `what` names the keys in the
/// error for sizes the kernels' 32-bit positions cannot hold.
fn sort_tiles(segments: &[usize], what: &str) -> Result<Vec<SortTile>> {
    let total: usize = segments.iter().sum();
    let tiles: usize = segments.iter().map(|len| len.div_ceil(SORT_TILE)).sum();
    if total > u32::MAX as usize || RADIX * tiles > u32::MAX as usize {
        return Err(Error::input(format!(
            "trim_search: {what} hold {total} points in {} samples; the CUDA sort indexes keys \
             and its {RADIX} digit counts per {SORT_TILE}-key tile in 32 bits",
            segments.len()
        )));
    }
    let mut out = Vec::with_capacity(tiles);
    let mut start = 0;
    for &len in segments {
        let count = len.div_ceil(SORT_TILE);
        let base = RADIX * out.len();
        for t in 0..count {
            let at = start + t * SORT_TILE;
            out.push(SortTile {
                start: at as u32,
                end: (at + SORT_TILE).min(start + len) as u32,
                count_base: (base + t) as u32,
                count_stride: count as u32,
            });
        }
        start += len;
    }
    Ok(out)
}

/// Refuses a search whose device buffers exceed the device's free memory. A bound on the peak:
/// the reference's keys twice (they sort through a buffer as long), the compared keys three
/// times (their sort buffer, then their two ECDF counts each), the tiles' digit counts and table.
fn check_memory(be: &CudaBackend, m: usize, n: usize, tiles: usize) -> Result<()> {
    let needed = 4 * (2 * m + 3 * n) + 4 * RADIX * tiles + 16 * tiles;
    let (free, total) = be.stream().context().mem_get_info().map_err(device_error)?;
    if needed > free {
        let mib = |b: usize| b >> 20;
        return Err(Error::input(format!(
            "trim_search: {m} reference and {n} compared points need about {} MiB of device \
             memory; {} MiB of the device's {} MiB are free",
            mib(needed),
            mib(free),
            mib(total)
        )));
    }
    Ok(())
}

/// Sorts each tile table's segments of `keys` ascending in place: 4 passes of 8-bit digits, from
/// the lowest, each a stable counting sort into a buffer of the same length and back.
fn sort_segments(be: &CudaBackend, keys: &mut CudaSlice<u32>, tiles: &[SortTile]) -> Result<()> {
    if tiles.is_empty() {
        return Ok(());
    }
    let stream = be.stream();
    let counts_len = RADIX * tiles.len();
    let scan_blocks = counts_len.div_ceil(SCAN_TILE);
    let table = be.upload_small(tiles)?;
    // SAFETY: the first pass's scatter writes every key of `scratch` before the second pass
    // reads it.
    let mut scratch = unsafe { stream.alloc::<u32>(keys.len()) }.map_err(device_error)?;
    // SAFETY: each pass's histogram writes every digit count before the scans read them.
    let mut counts = unsafe { stream.alloc::<u32>(counts_len) }.map_err(device_error)?;
    // SAFETY: each pass's scan_tile_sums_v1 writes every sum before it is read.
    let mut sums = unsafe { stream.alloc::<u32>(scan_blocks) }.map_err(device_error)?;
    let histogram = be.function("trim", HISTOGRAM)?;
    let tile_sums = be.function("trim", TILE_SUMS)?;
    let scan_sums = be.function("trim", SCAN_SUMS)?;
    let scan_apply = be.function("trim", SCAN_APPLY)?;
    let scatter = be.function("trim", SCATTER)?;
    // Both within u32 (sort_tiles), so the grids too.
    let (tile_grid, scan_grid) = ((tiles.len() as u32, 1, 1), (scan_blocks as u32, 1, 1));
    let (counts_len, scan_blocks) = (counts_len as u32, scan_blocks as u32);
    let block = (RADIX as u32, 1, 1);
    for pass in 0..u32::BITS as usize / RADIX_BITS {
        let shift = (pass * RADIX_BITS) as i32;
        // An even number of passes: the last one writes back into `keys`.
        let (from, to) = if pass % 2 == 0 {
            (&*keys, &mut scratch)
        } else {
            (&scratch, &mut *keys)
        };
        let mut args = stream.launch_builder(&histogram);
        args.arg(from).arg(&table).arg(&mut counts).arg(&shift);
        be.launch(HISTOGRAM, &mut args, config(tile_grid, block))?;
        drop(args);
        let mut args = stream.launch_builder(&tile_sums);
        args.arg(&counts).arg(&counts_len).arg(&mut sums);
        be.launch(TILE_SUMS, &mut args, config(scan_grid, (THREADS, 1, 1)))?;
        drop(args);
        let mut args = stream.launch_builder(&scan_sums);
        args.arg(&mut sums).arg(&scan_blocks);
        be.launch(SCAN_SUMS, &mut args, config((1, 1, 1), (THREADS, 1, 1)))?;
        drop(args);
        let mut args = stream.launch_builder(&scan_apply);
        args.arg(&mut counts).arg(&counts_len).arg(&sums);
        be.launch(SCAN_APPLY, &mut args, config(scan_grid, (THREADS, 1, 1)))?;
        drop(args);
        let mut args = stream.launch_builder(&scatter);
        args.arg(from).arg(to).arg(&table).arg(&counts).arg(&shift);
        be.launch(SCATTER, &mut args, config(tile_grid, block))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tile table's promise, by running its passes on the host: every (tile, digit) count
    /// has one slot, slots run segment by segment, digit by digit, tile by tile, so scattering
    /// each tile's keys in order from the exclusive scan of the counts is a stable sort of each
    /// segment by the digit, and four passes sort each segment.
    #[test]
    fn sort_tiles_lay_out_a_segmented_radix_sort() {
        let segments = [1, 2047, 2048, 2049, 5000, 3, 4096];
        let tiles = sort_tiles(&segments, "test").unwrap();
        let total: usize = segments.iter().sum();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let original: Vec<u32> = (0..total)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Few distinct low bytes: ties inside digits.
                (state >> 32) as u32 & 0xFF0F_F0F3
            })
            .collect();
        let mut keys = original.clone();
        let mut slots: Vec<u32> = tiles
            .iter()
            .flat_map(|t| (0..RADIX as u32).map(move |d| t.count_base + d * t.count_stride))
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..(RADIX * tiles.len()) as u32).collect::<Vec<_>>());

        for pass in 0..4 {
            let shift = 8 * pass;
            let digit = |k: u32| (k >> shift) as usize & (RADIX - 1);
            let mut counts = vec![0u32; RADIX * tiles.len()];
            for t in &tiles {
                for &k in &keys[t.start as usize..t.end as usize] {
                    counts[(t.count_base + digit(k) as u32 * t.count_stride) as usize] += 1;
                }
            }
            let mut at = 0;
            for c in counts.iter_mut() {
                (*c, at) = (at, at + *c);
            }
            let mut out = vec![0u32; total];
            for t in &tiles {
                for &k in &keys[t.start as usize..t.end as usize] {
                    let slot =
                        &mut counts[(t.count_base + digit(k) as u32 * t.count_stride) as usize];
                    out[*slot as usize] = k;
                    *slot += 1;
                }
            }
            keys = out;
        }
        let mut start = 0;
        for len in segments {
            let mut want = original[start..start + len].to_vec();
            want.sort_unstable();
            assert!(
                keys[start..start + len] == want,
                "segment of {len} at {start}"
            );
            start += len;
        }
    }

    /// Sizes the 32-bit positions cannot hold are refused with their numbers.
    #[test]
    fn sort_tiles_refuse_2_to_the_32_keys() {
        let err = sort_tiles(&[1 << 31, 1 << 31], "the pool").unwrap_err();
        assert!(
            err.to_string().contains("4294967296 points in 2 samples"),
            "{err}"
        );
        assert!(sort_tiles(&[u32::MAX as usize], "the pool").is_ok());
    }

    /// Every entry point the host launches is in the cubin NVRTC makes of kernels/trim.cu.
    #[test]
    fn the_entry_points_are_in_the_cubin() {
        if !super::super::nvrtc::nvrtc_available() {
            assert!(
                std::env::var_os("MSCOPE_REQUIRE_NVRTC").is_none(),
                "MSCOPE_REQUIRE_NVRTC is set but NVRTC cannot be loaded"
            );
            return;
        }
        let source = super::super::nvrtc::KERNEL_SOURCES
            .iter()
            .find(|(family, _)| *family == "trim")
            .map(|&(_, source)| source)
            .expect("kernels/trim.cu is embedded");
        let cubin = super::super::nvrtc::compile_cubin("trim", source, "sm_90").unwrap();
        for entry in [
            HISTOGRAM,
            TILE_SUMS,
            SCAN_SUMS,
            SCAN_APPLY,
            SCATTER,
            ECDF_COUNTS,
        ] {
            assert!(
                cubin.windows(entry.len()).any(|w| w == entry.as_bytes()),
                "{entry}"
            );
        }
    }
}
