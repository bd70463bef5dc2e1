//! GEMM variant 8 (and 9 on f16 weights): `out = act(x·wᵀ + bias) + residual` written for the
//! model shapes, with weights in f32, f16 or bf16 — the CPU GEMM of half-precision checkpoints,
//! whose weights stay in their memory map and are never widened as a whole.
//!
//! The classic blocked layout (Goto and van de Geijn): `x` is packed once into panels of `MR`
//! rows, `KC` columns at a time, each stored column by column so the microkernel reads it in
//! order; the weight rows (the output's columns) are split into blocks of [`NC`], one rayon task
//! a block (and a chunk of rows where blocks are few), and each task packs its block `KC`
//! columns at a time into panels of `NR` rows — widening f16/bf16 to f32 as it packs, so the
//! only f32 copy of the weights is one `NC × KC` panel per task (128 KiB, in L2). The
//! microkernel keeps an `MR × NR` tile of the output in registers over the `KC` block, chosen at
//! run time: 8 × 32 in sixteen AVX-512 registers, 6 × 16 in twelve AVX2 registers with FMA, or a
//! portable loop of the AVX2 shape. Tiles add into the output block by block; after the last
//! block the tile is finished in place before its one store, while it is in L1: the earlier
//! blocks' sums and the bias added, the activation applied to the whole tile in one call
//! ([`activation::apply`], sixteen lanes on AVX-512: 256 values a call, not one call per
//! 32-value row segment), the residual added as it is stored.
//!
//! Not yet done (issue 21 item 2): packing each weight once and keeping it across calls (an
//! f32 copy the size of the weights, so only for models that fit twice in memory), and the
//! blocking that would make this GEMM match faer on the large FFN-ups (BENCHMARKS.md, "Session
//! h21g"); until it does, faer stays the CPU's GEMM on f32 weights.

use rayon::prelude::*;

use super::activation;
use super::common::Matrix;
use crate::backend::Activation;

/// Depth of a packed block: an `MR × KC` panel of `x` (at most 8 KiB) and an `NR × KC` panel of
/// the weights (at most 32 KiB) stay in L1 while the microkernel runs over them.
const KC: usize = 256;
/// Output columns of one task: its packed weights (`NC × KC`, 128 KiB) stay in L2 while every
/// row panel of `x` passes over them.
const NC: usize = 128;

/// What `linear` adds after the product: `act(acc + bias) + residual`.
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
    pub residual: Option<&'a [f32]>,
}

/// An `MR × NR` tile of `a·b` over one packed block: `a` holds `kc` columns of `MR` values,
/// `b` `kc` rows of `NR` values.
pub(super) type Microkernel<const MR: usize, const NR: usize> =
    unsafe fn(kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]);

/// Code written for any tile shape, which [`with_microkernel`] runs on the widest microkernel
/// of this CPU: `linear` here, attention's two products per head.
pub(super) trait TileProgram {
    fn run<const MR: usize, const NR: usize>(self, kernel: Microkernel<MR, NR>);
}

/// Runs `program` on the AVX-512 microkernel (8 × 32), else the AVX2 one with FMA (6 × 16), else
/// the portable loop (6 × 16), as the CPU allows (detected at run time).
pub(super) fn with_microkernel(program: impl TileProgram) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return program.run::<8, 32>(microkernel_avx512);
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return program.run::<6, 16>(microkernel_avx2);
        }
    }
    program.run::<6, 16>(microkernel_portable::<6, 16>)
}

/// `out[n, m] = act(x[n, k]·w[m, k]ᵀ + bias) + residual`, every slice row-major, on the widest
/// microkernel this CPU runs.
pub(super) fn linear(
    x: &[f32],
    shape: (usize, usize, usize),
    w: &Matrix<'_>,
    epilogue: &Epilogue<'_>,
    out: &mut [f32],
) {
    struct Linear<'a> {
        x: &'a [f32],
        shape: (usize, usize, usize),
        w: &'a Matrix<'a>,
        epilogue: &'a Epilogue<'a>,
        out: &'a mut [f32],
    }
    impl TileProgram for Linear<'_> {
        fn run<const MR: usize, const NR: usize>(self, kernel: Microkernel<MR, NR>) {
            blocked::<MR, NR>(kernel, self.x, self.shape, self.w, self.epilogue, self.out)
        }
    }
    with_microkernel(Linear {
        x,
        shape,
        w,
        epilogue,
        out,
    })
}

/// The blocked GEMM around `kernel`.
fn blocked<const MR: usize, const NR: usize>(
    kernel: Microkernel<MR, NR>,
    x: &[f32],
    (n, k, m): (usize, usize, usize),
    w: &Matrix<'_>,
    epilogue: &Epilogue<'_>,
    out: &mut [f32],
) {
    if n == 0 || m == 0 {
        return;
    }
    // With k = 0 one empty block still runs, so the epilogue is applied to the zero product.
    let blocks = k.div_ceil(KC).max(1);
    let row_panels = n.div_ceil(MR);
    let packed_x = pack_x::<MR>(x, n, k, blocks, row_panels);
    let out = SharedOut::new(out);
    // Tasks are column blocks; where those are too few to keep every thread busy (MiniLM's
    // 384 outputs are 3 blocks), each is also cut into row chunks, which pack its weights again.
    let column_blocks = m.div_ceil(NC);
    let wanted = 4 * rayon::current_num_threads();
    let row_chunks = wanted
        .div_ceil(column_blocks)
        .min(row_panels.div_ceil(4))
        .max(1);
    let panels_per_chunk = row_panels.div_ceil(row_chunks);
    (0..column_blocks * row_chunks)
        .into_par_iter()
        .for_each_init(
            || vec![0.0f32; NC * KC],
            |packed_w, task| {
                let (block, chunk) = (task / row_chunks, task % row_chunks);
                let columns = block * NC..((block + 1) * NC).min(m);
                let panels =
                    chunk * panels_per_chunk..((chunk + 1) * panels_per_chunk).min(row_panels);
                for b in 0..blocks {
                    let depth = b * KC..((b + 1) * KC).min(k);
                    pack_w::<NR>(w, k, columns.clone(), depth.clone(), packed_w);
                    let last = b + 1 == blocks;
                    for panel in panels.clone() {
                        let a = &packed_x[(b * row_panels + panel) * KC * MR..][..depth.len() * MR];
                        let rows = panel * MR..((panel + 1) * MR).min(n);
                        for (jr, j0) in columns.clone().step_by(NR).enumerate() {
                            let bw = &packed_w[jr * KC * NR..][..depth.len() * NR];
                            let mut tile = [[0.0f32; NR]; MR];
                            // SAFETY: the kernel was chosen for this CPU's features, and `a`, `b`
                            // hold `depth.len()` columns of MR and NR values.
                            unsafe { kernel(depth.len(), a, bw, &mut tile) };
                            let cols = j0..(j0 + NR).min(columns.end);
                            // SAFETY: this task alone writes rows `panels` × columns `columns` of
                            // `out`, which has `n · m` values; `rows` < n and `cols` ⊂ `columns`.
                            unsafe {
                                out.store(&mut tile, rows.clone(), cols, m, b == 0, last, epilogue)
                            };
                        }
                    }
                }
            },
        );
}

/// `x`'s row panels for every depth block: block `b`, panel `p` at `(b · panels + p) · KC · MR`,
/// column `c` of the block at `c · MR`, rows past `n` zero.
fn pack_x<const MR: usize>(
    x: &[f32],
    n: usize,
    k: usize,
    blocks: usize,
    panels: usize,
) -> Vec<f32> {
    let mut packed = vec![0.0f32; blocks * panels * KC * MR];
    packed
        .par_chunks_mut(KC * MR)
        .enumerate()
        .for_each(|(i, dst)| {
            let (b, panel) = (i / panels, i % panels);
            let depth = b * KC..((b + 1) * KC).min(k);
            for r in 0..MR {
                let row = panel * MR + r;
                if row >= n {
                    break;
                }
                for (c, &v) in x[row * k..][depth.clone()].iter().enumerate() {
                    dst[c * MR + r] = v;
                }
            }
        });
    packed
}

/// Weight rows `columns` over `depth`, widened to f32 into panels of `NR` rows: panel `jr` at
/// `jr · KC · NR`, its column `c` at `c · NR`, rows past the block zero. Each panel's rows are
/// widened side by side first (contiguous runs the compiler vectorises), then transposed in L1.
fn pack_w<const NR: usize>(
    w: &Matrix<'_>,
    k: usize,
    columns: std::ops::Range<usize>,
    depth: std::ops::Range<usize>,
    packed: &mut [f32],
) {
    let kc = depth.len();
    let mut rows = vec![0.0f32; NR * kc];
    for (jr, j0) in columns.clone().step_by(NR).enumerate() {
        for (jj, row) in rows.chunks_exact_mut(kc.max(1)).enumerate().take(NR) {
            let j = j0 + jj;
            if j >= columns.end {
                row.fill(0.0);
                continue;
            }
            match w {
                Matrix::F32(w) => row.copy_from_slice(&w[j * k..][depth.clone()]),
                Matrix::Half(w) => w.widen_row(j, depth.start, row),
            }
        }
        let panel = &mut packed[jr * KC * NR..][..kc * NR];
        for (c, dst) in panel.chunks_exact_mut(NR).enumerate() {
            for (jj, d) in dst.iter_mut().enumerate() {
                *d = rows[jj * kc + c];
            }
        }
    }
}

/// An output written by several tasks at once, each in its own tiles (here and in attention's
/// query panels).
#[derive(Clone, Copy)]
pub(super) struct SharedOut(*mut f32);

// SAFETY: tasks write disjoint parts (see `store` and `slice`), so no value is shared.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(super) fn new(out: &mut [f32]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// The `len` values from `start`.
    ///
    /// # Safety
    /// They lie inside the output, and no other thread touches them while the slice lives.
    pub(super) unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }

    /// Stores (`first`) or adds the valid part of `tile` at `rows × cols` of the `[_, m]` output;
    /// when `last`, finishes the tile in place first: the earlier blocks' sums added, then the
    /// epilogue over the whole tile — one vectorised activation call a tile, sixteen lanes on
    /// AVX-512, while the tile is in L1 (its padding lanes hold the zeros of the padded panels,
    /// harmless to every activation, and are never stored).
    ///
    /// # Safety
    /// `rows × cols` lies inside the output, and no other thread touches it meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn store<const MR: usize, const NR: usize>(
        self,
        tile: &mut [[f32; NR]; MR],
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        m: usize,
        first: bool,
        last: bool,
        epilogue: &Epilogue<'_>,
    ) {
        let width = cols.len();
        // SAFETY: the caller's contract.
        let out_row = |row: usize| unsafe {
            std::slice::from_raw_parts_mut(self.0.add(row * m + cols.start), width)
        };
        if !last {
            for (row, acc) in rows.zip(tile.iter()) {
                let y = out_row(row);
                if first {
                    y.copy_from_slice(&acc[..width]);
                } else {
                    y.iter_mut().zip(acc).for_each(|(y, a)| *y += a);
                }
            }
            return;
        }
        for (row, acc) in rows.clone().zip(tile.iter_mut()) {
            let acc = &mut acc[..width];
            if !first {
                acc.iter_mut()
                    .zip(out_row(row).iter())
                    .for_each(|(a, y)| *a += y);
            }
            if let Some(bias) = epilogue.bias {
                acc.iter_mut()
                    .zip(&bias[cols.clone()])
                    .for_each(|(a, b)| *a += b);
            }
        }
        activation::apply(epilogue.act, tile.as_flattened_mut());
        for (row, acc) in rows.zip(tile.iter()) {
            let y = out_row(row);
            y.copy_from_slice(&acc[..width]);
            if let Some(residual) = epilogue.residual {
                let r = &residual[row * m + cols.start..][..width];
                y.iter_mut().zip(r).for_each(|(y, r)| *y += r);
            }
        }
    }
}

/// The microkernel in plain Rust (the compiler vectorises the `NR` loop for the build target).
///
/// # Safety
/// None beyond the slices' lengths (checked); `unsafe` only to share [`Microkernel`]'s type.
pub(super) unsafe fn microkernel_portable<const MR: usize, const NR: usize>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    tile: &mut [[f32; NR]; MR],
) {
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (acc, &a) in tile.iter_mut().zip(a) {
            acc.iter_mut().zip(b).for_each(|(c, &b)| *c += a * b);
        }
    }
}

/// The microkernel on AVX2 with FMA: the tile in twelve registers, two loads of `b` and six
/// broadcasts of `a` per column of the block.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn microkernel_avx2(kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; 16]; 6]) {
    use std::arch::x86_64::*;
    const NR: usize = 16;
    assert!(a.len() >= kc * 6 && b.len() >= kc * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    for p in 0..kc {
        // SAFETY: p < kc, within the lengths asserted above.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(p * 6 + i));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
        }
    }
    for (dst, acc) in tile.iter_mut().zip(&acc) {
        // SAFETY: each tile row holds NR = 16 values.
        unsafe {
            _mm256_storeu_ps(dst.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(dst.as_mut_ptr().add(8), acc[1]);
        }
    }
}

/// The microkernel on AVX-512: the tile in sixteen registers, two loads of `b` and eight
/// broadcasts of `a` per column of the block (sixteen FMAs: enough independent sums to cover the
/// FMA latency on both units).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn microkernel_avx512(
    kc: usize,
    a: &[f32],
    b: &[f32],
    tile: &mut [[f32; 32]; 8],
) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    assert!(a.len() >= kc * 8 && b.len() >= kc * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    for p in 0..kc {
        // SAFETY: p < kc, within the lengths asserted above.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(p * 8 + i));
                acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
            }
        }
    }
    for (dst, acc) in tile.iter_mut().zip(&acc) {
        // SAFETY: each tile row holds NR = 32 values.
        unsafe {
            _mm512_storeu_ps(dst.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(dst.as_mut_ptr().add(16), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::HalfMatrix;
    use half::bf16;

    /// Every microkernel this CPU runs (the integration tests reach only the widest) on a shape
    /// that fills no tile, block or panel exactly, against an f64 loop: f32 weights and bf16 ones
    /// (the reference reads the same rounded values).
    #[test]
    fn every_microkernel_matches_f64() {
        let (n, k, m) = (17, 300, 150);
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        let x: Vec<f32> = (0..n * k).map(value).collect();
        let w: Vec<f32> = (0..m * k)
            .map(|i| bf16::from_f32(value(i + 3)).to_f32())
            .collect();
        let bias: Vec<f32> = (0..m).map(|i| value(i + 11)).collect();
        let residual: Vec<f32> = (0..n * m).map(|i| value(i + 5)).collect();
        let want: Vec<f64> = (0..n * m)
            .map(|idx| {
                let (i, j) = (idx / m, idx % m);
                let dot: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                let z = dot + bias[j] as f64;
                z / (1.0 + (-z).exp()) + residual[idx] as f64
            })
            .collect();
        let halves: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let half = HalfMatrix::from_bf16(&[m, k], &halves).unwrap();
        let epilogue = Epilogue {
            bias: Some(&bias),
            act: Activation::Silu,
            residual: Some(&residual),
        };
        let check = |name: &str, run: &dyn Fn(&Matrix<'_>, &mut [f32])| {
            for weights in [Matrix::F32(&w), Matrix::Half(&half)] {
                let mut out = vec![f32::NAN; n * m];
                run(&weights, &mut out);
                let err: f64 = out
                    .iter()
                    .zip(&want)
                    .map(|(&o, &r)| (o as f64 - r).powi(2))
                    .sum();
                let norm: f64 = want.iter().map(|r| r * r).sum();
                let rel = (err / norm).sqrt();
                assert!(rel < 1e-5, "{name}: relative error {rel:e}");
            }
        };
        let shape = (n, k, m);
        check("portable", &|w, out| {
            blocked::<6, 16>(microkernel_portable::<6, 16>, &x, shape, w, &epilogue, out)
        });
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                check("avx2", &|w, out| {
                    blocked::<6, 16>(microkernel_avx2, &x, shape, w, &epilogue, out)
                });
            }
            if std::is_x86_feature_detected!("avx512f") {
                check("avx512", &|w, out| {
                    blocked::<8, 32>(microkernel_avx512, &x, shape, w, &epilogue, out)
                });
            }
        }
    }
}
