//! GEMM variants 11 and 14: `linear` with bf16 operands and f32 sums — what
//! `torch.set_float32_matmul_precision("medium")` allows torch's CPU matmuls (oneDNN's bf16
//! kernels). Opt-in (`--matmul-precision medium`): the CPU's contract is f32, and these products
//! carry the half-precision tolerance (relative error about 1e-3). Two units run the same packed
//! operands, blocking and epilogue:
//!
//! - **11, Intel's AMX tile unit** (Sapphire Rapids and later): eight registers `tmm0`–`tmm7`,
//!   each here 16 rows of 64 bytes, and `tdpbf16ps`, which adds to a 16 × 16 f32 tile `C` the
//!   products of a 16 × 32 bf16 tile `A` (16 output rows, 32 depths) and a `B` tile in the pair
//!   (VNNI) layout: row `r` holds, for each of 16 output columns, the depths `2r` and `2r + 1`
//!   side by side. One step of the inner loop loads two `A` tiles (32 rows of `x`) and two `B`
//!   tiles (32 weight rows), and runs four products into a 2 × 2 block of `C` tiles
//!   (`tmm0`–`tmm3`): a 32 × 32 output tile per 32 depths.
//! - **14, AVX512_BF16's `vdpbf16ps`** (AMD Zen 4, Intel Cooper Lake): one instruction adds to
//!   each of 16 f32 lanes the products of two bf16 pairs, twice the multiply-adds of an f32 FMA
//!   at the same rate. A `B` tile row is exactly one such operand (16 lanes' depth pairs), so the
//!   weights keep the AMX layout; each of `x`'s rows gives one depth pair (32 bits) broadcast to
//!   all lanes. The 32 × 32 output tile is run as four 8 × 32 register tiles (sixteen
//!   accumulators, as variant 8's f32 kernel), each over the step's 16 depth pairs: two loads of
//!   `B` and eight broadcasts of `x` for sixteen `vdpbf16ps`.
//!
//! Layout: `x` is rounded to bf16 (to nearest, ties to even) once a call, row-major with its
//! depth padded to a multiple of 32 and its rows to a multiple of 32, padding zero. The weights
//! are cut into panels of 32 rows, as [`super::gemm_packed`]'s are (the same lanes, gated ones too:
//! gates in the first 16, their ups in the last 16), each panel a run of 2 KiB steps, one per 32
//! depths, holding its two `B` tiles. f32 and f16 weights are rounded to bf16 as they are
//! packed; bf16 ones are copied as they are. Packed f32 weights are kept with their tensor
//! (the tensor's [`super::gemm_packed::PackedCache`], under the same process budget; both units
//! share one packing); half-precision ones, and f32 ones past the budget, are packed by each
//! task at every call, as variant 8 packs them: their tiles would be a second copy as large as
//! the mapped weights (a 7B bf16 checkpoint kept 4 GiB of them, and spent 8 s of system time
//! faulting them in, for a batch that read each once).
//!
//! Blocking follows [`super::gemm_packed`]'s: a task owns a block of weight panels that fits in
//! part of an L2 and runs its rows of `x` over it; depth is cut into blocks of [`KC`] (a 16 KiB `A`
//! block stays in L1 across the weight panels), the output tiles' sums kept in the task's tiles
//! between depth blocks. After the last depth block the 32 × 32 f32 tile is finished and stored
//! by the packed GEMM's own code ([`SharedOut::store`]): bias, activation, gating, residual.
//!
//! The tile unit needs the kernel's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once
//! per process by [`available`]) and a tile configuration loaded by each thread before its
//! first tile instruction: every task loads it and releases the tiles when it ends.
//! Rust's AMX intrinsics are unstable, so the instructions are written in `asm!`; the
//! AVX512_BF16 ones are stable intrinsics.

use std::cell::Cell;
use std::sync::OnceLock;

use half::{bf16, f16};
use rayon::prelude::*;

use super::common::Matrix;
use super::gemm_packed::{
    even_share, panel_columns, panel_row, Epilogue, PackedCache, SharedOut, PACKED_X_KEPT_BYTES,
};
use crate::backend::GemmVariant;
use crate::tensor::DType;

/// Rows of `x` one output tile covers: two `A` tiles, or four register tiles of variant 14.
const ROWS: usize = 32;
/// Rows of one register tile of variant 14.
const DOT_ROWS: usize = 8;
/// Weight rows one panel holds: two `B` tiles.
const LANES: usize = 32;
/// Depths one tile product covers (16 bf16 pairs a row).
const STEP: usize = 32;
/// bf16 values in one step of a weight panel: its two `B` tiles of 16 × 32.
const STEP_VALUES: usize = STEP * LANES;
/// Depths of one block: the `A` block (32 rows × 256 bf16, 16 KiB) stays in L1 beside the
/// weight tiles streaming from L2.
const KC: usize = 256;
/// Packed weights one task keeps in L2 while its rows of `x` pass over them, by unit: half of
/// Emerald Rapids' 2 MiB a core for the tile unit; half of Zen 4's 1 MiB for `vdpbf16ps`.
const fn l2_block_bytes(variant: GemmVariant) -> usize {
    match variant {
        GemmVariant::AmxBf16 => 1 << 20,
        _ => 512 << 10,
    }
}

/// A 32 × 32 output tile: the 2 × 2 block of `C` tiles, row-major (128 bytes a row).
type Tile = [[f32; LANES]; ROWS];
/// A unit's product of one output tile over a depth block: [`tile_product`] or [`dot_product`].
type Product = unsafe fn(usize, &[u16], usize, &[u16], &mut Tile, bool);

/// Whether this CPU runs `variant` (11 or 14): for 11, AMX with bf16 products and the kernel's
/// permission to use the tiles (asked once, at the first call); for 14, AVX-512F with
/// AVX512_BF16.
pub(crate) fn available(variant: GemmVariant) -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    match variant {
        GemmVariant::AmxBf16 => *AMX.get_or_init(detect_amx),
        GemmVariant::DotBf16 => vector_rounding(),
        _ => false,
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect_amx() -> bool {
    use std::arch::asm;
    use std::arch::x86_64::__cpuid_count;
    // CPUID is safe to call on every x86_64 CPU; `unsafe` only for toolchains that mark it so.
    #[allow(unused_unsafe)]
    let (max_leaf, leaf1, leaf7) = unsafe {
        (
            __cpuid_count(0, 0).eax,
            __cpuid_count(1, 0),
            __cpuid_count(7, 0),
        )
    };
    let osxsave = leaf1.ecx & (1 << 27) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    if max_leaf < 7 || !osxsave || !amx_tile || !amx_bf16 {
        return false;
    }
    let (xcr0_low, _high): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0, allowed in user mode when OSXSAVE is set.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") xcr0_low, out("edx") _high,
             options(nomem, nostack, preserves_flags))
    };
    // XCR0 bits 17 and 18: the OS saves the tile configuration and the tile data.
    if xcr0_low & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let status: isize;
    // SAFETY: the arch_prctl system call asks for the tile data permission; it touches no
    // memory of ours. The kernel clobbers rcx and r11.
    unsafe {
        asm!("syscall",
             inlateout("rax") SYS_ARCH_PRCTL as isize => status,
             in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
             out("rcx") _, out("r11") _, options(nostack))
    };
    status == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect_amx() -> bool {
    false
}

/// `out[n, m] = act(x[n, k]·w[m, k]ᵀ + bias) + residual` (or gated, `w: [2m, k]`, see
/// [`Epilogue`]) with bf16 operands and f32 sums on `variant`'s unit (11: the tile unit; 14:
/// `vdpbf16ps`); weights read from (or packed into) `cache` when given and the budget allows.
///
/// # Panics
/// When `variant` is not [`available`].
pub(super) fn linear(
    variant: GemmVariant,
    x: &[f32],
    (n, k, m): (usize, usize, usize),
    w: &Matrix<'_>,
    cache: Option<&PackedCache>,
    epilogue: &Epilogue<'_>,
    out: &mut [f32],
) {
    assert!(
        available(variant),
        "GEMM variant {variant} runs only where its unit is available"
    );
    if n == 0 || m == 0 {
        return;
    }
    // One step of zeros when k = 0, so the epilogue still runs on the zero product.
    let kp = k.div_ceil(STEP).max(1) * STEP;
    let gated = epilogue.gated;
    let columns = panel_columns::<LANES>(gated);
    let col_panels = m.div_ceil(columns);
    let panel_len = kp * LANES;
    // Half-precision weights are packed as they are read (see the module docs).
    let cache = cache.filter(|_| matches!(w, Matrix::F32(_)));
    let packed = cache.and_then(|cache| {
        cache.get_or_pack_bf16(LANES, k, m, gated, col_panels * panel_len, |values| {
            values
                .par_chunks_mut(panel_len)
                .enumerate()
                .for_each_init(Vec::new, |row, (panel, dst)| {
                    pack_panel(w, (k, m), gated, panel, dst, row)
                })
        })
    });
    let row_panels = n.div_ceil(ROWS);
    let mut a = PACKED_X.take();
    pack_x(x, (n, k, kp), row_panels, &mut a);
    let out = SharedOut::new(out);

    let threads = rayon::current_num_threads();
    let fit = (l2_block_bytes(variant) / (2 * panel_len)).max(1);
    let col_blocks = (col_panels.div_ceil(fit).div_ceil(threads) * threads).min(col_panels);
    let row_chunks = if col_blocks < 2 * threads {
        (2 * threads).div_ceil(col_blocks).min(row_panels)
    } else {
        1
    };
    let depth_blocks = kp.div_ceil(KC);
    let product: Product = match variant {
        GemmVariant::AmxBf16 => tile_product,
        _ => dot_product,
    };

    (0..col_blocks * row_chunks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(scratch, row, tiles), task| {
            let (block, chunk) = (task / row_chunks, task % row_chunks);
            let panels = even_share(col_panels, col_blocks, block);
            // This block's weight panels at full depth, panel `i` at `i · panel_len`.
            let w_block: &[u16] = match packed {
                Some(all) => &all[panels.start * panel_len..][..panels.len() * panel_len],
                None => {
                    scratch.resize(panels.len() * panel_len, 0);
                    for (i, panel) in panels.clone().enumerate() {
                        let dst = &mut scratch[i * panel_len..][..panel_len];
                        pack_panel(w, (k, m), gated, panel, dst, row);
                    }
                    scratch
                }
            };
            // One output tile a weight panel, summed over the depth blocks.
            tiles.resize(panels.len(), [[0.0f32; LANES]; ROWS]);
            let _tile_unit = (variant == GemmVariant::AmxBf16).then(TileUnit::load);
            for rp in even_share(row_panels, row_chunks, chunk) {
                let rows = rp * ROWS..((rp + 1) * ROWS).min(n);
                for d in 0..depth_blocks {
                    let depth = d * KC..((d + 1) * KC).min(kp);
                    let a_block = &a[rp * ROWS * kp + depth.start..];
                    for (i, jp) in panels.clone().enumerate() {
                        let b_block =
                            &w_block[i * panel_len + depth.start * LANES..][..depth.len() * LANES];
                        // SAFETY: the variant's unit is available (asserted above) and, for
                        // the tile unit, configured (`_tile_unit`); `a_block` starts 32 rows
                        // of `kp` values each holding `depth`, `b_block` holds its steps.
                        unsafe {
                            product(
                                depth.len() / STEP,
                                a_block,
                                kp,
                                b_block,
                                &mut tiles[i],
                                d > 0,
                            )
                        };
                        if d + 1 == depth_blocks {
                            let cols = jp * columns..((jp + 1) * columns).min(m);
                            // SAFETY: this task alone writes rows `rows` × columns of `panels`
                            // of `out`, which has `n · m` values; `rows` < n, `cols` < m.
                            unsafe {
                                out.store(
                                    &mut tiles[i],
                                    rows.clone(),
                                    cols,
                                    m,
                                    true,
                                    true,
                                    epilogue,
                                )
                            };
                        }
                    }
                }
            }
        },
    );
    if a.capacity() * 2 <= PACKED_X_KEPT_BYTES {
        PACKED_X.set(a);
    }
}

thread_local! {
    /// The calling thread's packed `x`, reused across calls as [`super::gemm_packed`]'s is (a fresh
    /// buffer is fresh pages, zeroed by the kernel at their first touch).
    static PACKED_X: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// `x` rounded to bf16 bits ([`round_row`]) into `a` (resized), row-major
/// `[row_panels · 32, kp]`, padding zero; every value written, as `a` is reused.
fn pack_x(x: &[f32], (n, k, kp): (usize, usize, usize), row_panels: usize, a: &mut Vec<u16>) {
    a.resize(row_panels * ROWS * kp, 0);
    a.par_chunks_mut(kp).enumerate().for_each(|(i, dst)| {
        let (values, padding) = dst.split_at_mut(k);
        padding.fill(0);
        match (i < n).then(|| &x[i * k..][..k]) {
            Some(row) => round_row(row, values),
            None => values.fill(0),
        }
    });
}

/// `src` rounded to bf16 bits into `dst`: by [`round_row_avx512`] where the CPU has
/// AVX512_BF16, else value by value.
fn round_row(src: &[f32], dst: &mut [u16]) {
    if vector_rounding() {
        // SAFETY: the CPU has AVX-512F and AVX512_BF16.
        unsafe { round_row_avx512(src, dst) }
    } else {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &v)| *d = bf16::from_f32(v).to_bits());
    }
}

/// Whether this CPU runs [`round_row_avx512`].
fn vector_rounding() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

/// `src` rounded to bf16 bits into `dst` by `vcvtne2ps2bf16`: to nearest, ties to even, as
/// [`bf16::from_f32`] — except that subnormal values become zeros of their sign, which both
/// units read them as anyway.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let round = |src: &[f32], dst: &mut [u16]| {
        // SAFETY: both hold 32 values (every caller below).
        unsafe {
            let low = _mm512_loadu_ps(src.as_ptr());
            let high = _mm512_loadu_ps(src.as_ptr().add(16));
            let bits: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
            _mm512_storeu_si512(dst.as_mut_ptr().cast(), bits);
        }
    };
    let mut src = src.chunks_exact(32);
    let mut dst = dst.chunks_exact_mut(32);
    for (s, d) in (&mut src).zip(&mut dst) {
        round(s, d);
    }
    let (s, d) = (src.remainder(), dst.into_remainder());
    if !s.is_empty() {
        let (mut tail, mut bits) = ([0.0f32; 32], [0u16; 32]);
        tail[..s.len()].copy_from_slice(s);
        round(&tail, &mut bits);
        d.copy_from_slice(&bits[..d.len()]);
    }
}

/// Weight row `j`'s `k` values as bf16 bits into `row`: f32 ones by [`round_row`], f16 ones
/// rounded value by value, bf16 ones as stored.
fn bf16_row(w: &Matrix<'_>, j: usize, k: usize, row: &mut Vec<u16>) {
    row.clear();
    match w {
        Matrix::F32(w) => {
            row.resize(k, 0);
            round_row(&w[j * k..][..k], row);
        }
        Matrix::Half(h) => {
            let pairs = h.row_bytes(j).chunks_exact(2);
            let bits = pairs.map(|b| u16::from_le_bytes([b[0], b[1]]));
            match h.dtype() {
                DType::BF16 => row.extend(bits),
                _ => row.extend(bits.map(|b| bf16::from_f32(f16::from_bits(b).to_f32()).to_bits())),
            }
        }
    }
}

/// Weight panel `panel` (its lanes the rows [`panel_row`] names for `m` output columns) in the
/// tile layout into `dst` (`kp · 32` values, every one written): step `s` at `s · 1024`, its
/// `B` tile for lanes `16h..16h + 16` at `+ 512h`, whose row `r` holds lane `16h + c`'s depths
/// `32s + 2r` and `32s + 2r + 1` at `32r + 2c`. `row` is scratch for one weight row.
fn pack_panel(
    w: &Matrix<'_>,
    (k, m): (usize, usize),
    gated: bool,
    panel: usize,
    dst: &mut [u16],
    row: &mut Vec<u16>,
) {
    for lane in 0..LANES {
        match panel_row::<LANES>(gated, m, panel, lane) {
            Some(j) => bf16_row(w, j, k, row),
            None => row.clear(),
        }
        // Zeros past `k`, to the panel's depth.
        row.resize(dst.len() / LANES, 0);
        let (half, c) = (lane / 16, lane % 16);
        for (step, depths) in dst
            .chunks_exact_mut(STEP_VALUES)
            .zip(row.chunks_exact(STEP))
        {
            let tile = &mut step[half * 512..][..512];
            for (r, pair) in depths.chunks_exact(2).enumerate() {
                tile[32 * r + 2 * c..][..2].copy_from_slice(pair);
            }
        }
    }
}

/// Tile registers `tmm0`–`tmm7` configured as 16 rows of 64 bytes on the calling thread for as
/// long as the guard lives; released when it drops.
struct TileUnit;

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileUnit {
    fn load() -> Self {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        config.bytes_per_row[..8].fill(64);
        config.rows[..8].fill(16);
        // SAFETY: the tile unit is available (`linear` asserted it; the permission was asked
        // for the process) and the configuration is valid for palette 1.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
        TileUnit
    }
}

impl Drop for TileUnit {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `load`; releasing them touches no memory.
        unsafe { std::arch::asm!("tilerelease", options(nomem, nostack)) };
    }
}

/// The 32 × 32 tile of `a·bᵀ` over `steps` steps of 32 depths, stored into `tile`, or added to
/// it when `accumulate`: `a` starts 32 rows of `a_row` bf16 values (the depths of this block
/// first), `b` holds the weight panel's `steps` steps.
///
/// # Safety
/// The calling thread holds a [`TileUnit`]; `a` holds 31 rows of `a_row` values plus
/// `32 · steps` more, `b` holds `steps` steps.
unsafe fn tile_product(
    steps: usize,
    a: &[u16],
    a_row: usize,
    b: &[u16],
    tile: &mut Tile,
    accumulate: bool,
) {
    use std::arch::asm;
    assert!(a.len() >= 31 * a_row + STEP * steps && b.len() >= steps * STEP_VALUES);
    let c = tile.as_mut_ptr().cast::<u8>();
    let c_stride = 4 * LANES;
    // SAFETY (every block below): the tiles are configured (the caller's contract); `tile` is
    // 32 rows of 128 bytes, and the loads stay inside `a` and `b` (asserted above).
    unsafe {
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c} + {s}*1 + 64]",
                "tileloadd tmm2, [{c} + {s}*1 + 2048]",
                "tileloadd tmm3, [{c} + {s}*1 + 2112]",
                c = in(reg) c, s = in(reg) c_stride, options(nostack, readonly)
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nomem, nostack)
            );
        }
        let a_stride = 2 * a_row;
        for step in 0..steps {
            let a0 = a.as_ptr().add(step * STEP);
            let a1 = a0.add(16 * a_row);
            let b0 = b.as_ptr().add(step * STEP_VALUES);
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b0} + {sb}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                sa = in(reg) a_stride, sb = in(reg) 64usize, options(nostack, readonly)
            );
        }
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "tilestored [{c} + {s}*1 + 2112], tmm3",
            c = in(reg) c, s = in(reg) c_stride, options(nostack)
        );
    }
}

/// [`tile_product`] with `vdpbf16ps` (variant 14): the same operands and result, the 32 × 32
/// tile run as four 8 × 32 register tiles, one depth pair of `x` broadcast a row.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `a` and `b` hold what [`tile_product`] asks.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_product(
    steps: usize,
    a: &[u16],
    a_row: usize,
    b: &[u16],
    tile: &mut Tile,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= 31 * a_row + STEP * steps && b.len() >= steps * STEP_VALUES);
    for (group, rows) in tile.chunks_exact_mut(DOT_ROWS).enumerate() {
        let mut acc = [[_mm512_setzero_ps(); 2]; DOT_ROWS];
        if accumulate {
            for (acc, row) in acc.iter_mut().zip(rows.iter()) {
                // SAFETY: each tile row holds 32 values.
                unsafe {
                    acc[0] = _mm512_loadu_ps(row.as_ptr());
                    acc[1] = _mm512_loadu_ps(row.as_ptr().add(16));
                }
            }
        }
        let a_rows = a[group * DOT_ROWS * a_row..].as_ptr();
        for step in 0..steps {
            let b_step = b[step * STEP_VALUES..].as_ptr();
            for pair in 0..STEP / 2 {
                // SAFETY: within the lengths asserted above: the pair's row of each `B` tile
                // (32 values at `32 · pair`, and 512 later), and each row's depth pair of `x`.
                // `vdpbf16ps` reads its operands as bf16 vectors, the same 512 bits.
                unsafe {
                    let b0: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(b_step.add(32 * pair).cast()));
                    let b1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(b_step.add(512 + 32 * pair).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let depths = a_rows.add(r * a_row + step * STEP + 2 * pair);
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                            depths.cast::<i32>().read_unaligned(),
                        ));
                        acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
                    }
                }
            }
        }
        for (row, acc) in rows.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds 32 values.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Activation;

    /// The vector rounding gives [`bf16::from_f32`]'s bits on ties, NaN, infinities, the
    /// largest finite values and pseudo-random bit patterns, at every row length around a
    /// vector's 32 values, and zeros of the right sign for subnormals. Skipped without
    /// AVX512_BF16.
    #[test]
    fn vector_rounding_matches_the_scalar_one() {
        if !available(GemmVariant::DotBf16) {
            eprintln!("skipped: vector_rounding_matches_the_scalar_one: no AVX512_BF16");
            return;
        }
        let mut bits = vec![
            0x3f80_8000, // 1 + 2⁻⁸: a tie, rounded to the even 1
            0x3f81_8000, // a tie rounded up to even
            0x3f80_8001,
            0x7f7f_ffff,
            0x7f80_0000,
            0x7fc0_0001,
            0xff80_0001,
            0x0080_0000, // the smallest normal
            0x8000_0000,
        ];
        let mut state = 0x9e37_79b9_u32;
        bits.extend((0..4000).map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        }));
        let values: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        for len in [1, 31, 32, 33, 64, 95, values.len()] {
            let src = &values[..len];
            let mut got = vec![0u16; len];
            // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked above).
            unsafe { round_row_avx512(src, &mut got) };
            for (&v, &g) in src.iter().zip(&got) {
                let want = if v.is_subnormal() {
                    if v.is_sign_negative() {
                        0x8000
                    } else {
                        0
                    }
                } else {
                    bf16::from_f32(v).to_bits()
                };
                assert_eq!(g, want, "{v:e} ({:#010x}), row of {len}", v.to_bits());
            }
        }
    }

    /// Weights packed by each task at every call (past the cache's budget) give the same bits as
    /// weights packed once into the cache, plain and gated, over several weight panels, depth
    /// blocks and row panels; and both equal an f64 product of the bf16-rounded operands within
    /// f32 summation error; on each unit this CPU has (skipped without either).
    #[test]
    fn packing_per_task_matches_the_cached_pack() {
        let units = [GemmVariant::AmxBf16, GemmVariant::DotBf16];
        let units: Vec<GemmVariant> = units.into_iter().filter(|&v| available(v)).collect();
        if units.is_empty() {
            eprintln!(
                "skipped: packing_per_task_matches_the_cached_pack: no AMX-BF16, no AVX512_BF16"
            );
            return;
        }
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
        for variant in units {
            for ((n, k, m), gated) in [((70, 600, 150), false), ((40, 300, 70), true)] {
                let rows = if gated { 2 * m } else { m };
                let x: Vec<f32> = (0..n * k).map(value).collect();
                let w: Vec<f32> = (0..rows * k).map(|i| value(i + 3)).collect();
                let residual: Vec<f32> = (0..n * m).map(|i| value(i + 5)).collect();
                let epilogue = Epilogue {
                    bias: None,
                    act: Activation::Identity,
                    residual: (!gated).then_some(&residual[..]),
                    gated,
                };
                let run = |cache: Option<&PackedCache>| {
                    let mut out = vec![f32::NAN; n * m];
                    let w = Matrix::F32(&w);
                    linear(variant, &x, (n, k, m), &w, cache, &epilogue, &mut out);
                    out
                };
                let cache = PackedCache::default();
                let cached = run(Some(&cache));
                assert_eq!(
                    cached,
                    run(Some(&cache)),
                    "{variant}: second call, from the cache"
                );
                assert_eq!(
                    cached,
                    run(None),
                    "{variant}: packed per task (gated {gated})"
                );

                let round = |v: f32| f64::from(bf16::from_f32(v).to_f32());
                let dot = |i: usize, j: usize| -> f64 {
                    (0..k)
                        .map(|p| round(x[i * k + p]) * round(w[j * k + p]))
                        .sum()
                };
                let (mut err, mut norm) = (0.0, 0.0);
                for (idx, &got) in cached.iter().enumerate() {
                    let (i, j) = (idx / m, idx % m);
                    let want = if gated {
                        dot(i, j) * dot(i, m + j)
                    } else {
                        dot(i, j) + f64::from(residual[idx])
                    };
                    err += (f64::from(got) - want).powi(2);
                    norm += want * want;
                }
                let rel = (err / norm).sqrt();
                assert!(
                    rel < 1e-5,
                    "{variant} {n}×{k}·{m} gated {gated}: relative error {rel:e}"
                );
            }
        }
    }
}
