//! GEMM variant 8 (and 9 on f16 weights): `out = act(x·wᵀ + bias) + residual` written for the
//! model shapes, with weights in f32, f16 or bf16 — the CPU's default `linear` where it beats
//! faer (see [`super::PACKED_MIN_WEIGHTS`]), and the GEMM of half-precision checkpoints, whose
//! weights stay in their memory map and are never widened as a whole.
//!
//! Layout (Goto and van de Geijn's): the weights are cut into panels of `NR` rows (the output's
//! columns), each stored depth-major — column `p` of the panel is its `NR` values at `p · NR` —
//! so the microkernel reads a panel front to back; `x` is cut the same way into panels of `MR`
//! rows, once a call. An `MR × NR` tile of the output stays in registers over a depth block
//! (up to [`KC_MAX`]: one block on BERT-base's 768, two of 512 on e5-large's 1024).
//!
//! Blocking for the caches of the two machines it ran on (48 KiB L1d a core; 1 MiB L2 on the
//! EPYC, 2 MiB on the Emerald Rapids Xeon, whose extra L2 a 1 MiB block did not measurably use,
//! nor a 12 × 32 tile its spare registers — BENCHMARKS.md, h27k): one rayon task owns a block of
//! weight panels, at full depth, that fits in half the EPYC's L2 ([`L2_BLOCK_BYTES`]) and runs
//! every row panel of `x` over it: for each row panel, depth block
//! by depth block, the `x` panel's block (`MR × kc`, at most 24 KiB) reused from L1 across the
//! block's weight panels and the row panel's tiles kept in L1 across the depth blocks; all of
//! packed `x` stays in L3. The block count is a multiple of
//! the thread count, its panels shared out evenly, so every core gets the same work (MiniLM's 48
//! panels of 32 outputs are six blocks of eight on two cores, not five of ten; SmolLM2's 18 are
//! four of 4 or 5, not 5 + 5 + 5 + 3); where blocks are fewer than twice the threads they are
//! also cut into row chunks.
//!
//! f32 weights are packed once and kept with their tensor ([`PackedCache`]: filled by the first
//! `linear` that reads them, dropped when the tensor is written or freed), up to
//! [`CACHE_BUDGET_BYTES`] for the whole process (the bf16 GEMMs' tiles of f32 weights,
//! [`super::gemm_bf16`], are kept in the same cache under the same budget). Beyond that budget,
//! and always for f16/bf16 weights (an f32 copy would be twice their size), each task packs its
//! block as it goes, widening half values to f32 in the packing: the only f32 copy is then one
//! block per task.
//!
//! The microkernel is chosen at run time: 8 × 32 in sixteen AVX-512 registers, 6 × 16 in twelve
//! AVX2 registers with FMA, or a portable loop of the AVX2 shape. Where `k` takes several depth
//! blocks, tiles add into the output block by block; after the last block the tile is finished
//! in place before its one store, while it is in L1: the earlier blocks' sums and the bias
//! added, the activation applied to the whole tile in one loop (sixteen lanes on AVX-512: the
//! tile's finishing is compiled for the microkernel's vector width), the residual added as it
//! is stored.
//!
//! Gated columns (SwiGLU, GeGLU: `act(gate) ⊙ up`, [`Epilogue::gated`]): the weights stack the
//! `m` gate rows over the `m` up rows, and each panel pairs `NR / 2` gate rows with their up
//! rows (gate row `c` in lane `c mod NR/2`, up row `m + c` half a panel later), so one register
//! tile holds both halves of `NR / 2` output columns. The microkernel is the same; the finishing
//! multiplies the activated gate half by the up half and stores only that half — the `[n, 2m]`
//! product never exists. Its depth blocks' sums wait in the task's own buffer of the row panel's
//! tiles (the output has room for half of them).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::activation;
use super::common::Matrix;
use crate::backend::Activation;

/// Deepest block the microkernel covers in one pass: an `x` panel's block (`MR × kc`, at most
/// 24 KiB on AVX-512) stays in L1, half of the 48 KiB L1d, beside the weights streaming
/// through. Deeper products are cut into equal blocks (e5-large's 1024 into two of 512), whose
/// tiles add into the output while the row panel's tiles are still in L1.
const KC_MAX: usize = 768;
/// Packed weights (at full depth) one task keeps in its core's L2 while every row panel of `x`
/// passes over them: half of the EPYC's 1 MiB, leaving the rest to `x`'s panels and the output
/// tiles (a quarter of the Xeon's 2 MiB, where half measured no faster).
const L2_BLOCK_BYTES: usize = 512 * 1024;
/// The most bytes of packed weights the process keeps (f32 panels here, bf16 tiles for the AMX
/// GEMM): MiniLM's 90 MB and e5-large's 1.3 GB fit; past it, weights are packed at every call as
/// half-precision ones are here.
const CACHE_BUDGET_BYTES: usize = 4 << 30;

/// Bytes held by every [`PackedWeights`] alive, against [`CACHE_BUDGET_BYTES`].
static CACHED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// What `linear` adds after the product: `act(acc + bias) + residual`, or with `gated`
/// `act(gate + bias) ⊙ (up + bias) + residual`.
pub(super) struct Epilogue<'a> {
    /// `[m]`, or `[2m]` (gates' then ups') when `gated`.
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
    pub residual: Option<&'a [f32]>,
    /// The weights are `[2m, k]`, gate rows over up rows, for `m` output columns.
    pub gated: bool,
}

/// Output columns one panel of `NR` lanes finishes: `NR`, or `NR / 2` when gated (half its
/// lanes gates, half ups).
pub(super) const fn panel_columns<const NR: usize>(gated: bool) -> usize {
    if gated {
        NR / 2
    } else {
        NR
    }
}

/// The weight row in lane `lane` of panel `panel`, for `m` output columns (`None`: a padding
/// lane): row `panel · NR + lane`, or gated, the gate of column `c` in lane `c mod NR/2` and its
/// up (row `m + c`) `NR / 2` lanes later.
pub(super) fn panel_row<const NR: usize>(
    gated: bool,
    m: usize,
    panel: usize,
    lane: usize,
) -> Option<usize> {
    let columns = panel_columns::<NR>(gated);
    let column = panel * columns + lane % columns;
    let up = if gated && lane >= columns { m } else { 0 };
    (column < m).then_some(up + column)
}

/// What a packed copy of weights was made for: the panel width `nr`, depth `k` and `m` output
/// columns (plain or gated).
#[derive(Clone, Copy, PartialEq, Eq)]
struct PackKey {
    nr: usize,
    k: usize,
    m: usize,
    gated: bool,
}

/// Weights packed for one [`PackKey`]: f32 for this module's microkernels, bf16 bits for the
/// bf16 GEMMs' tiles ([`super::gemm_bf16`]).
struct PackedWeights<T> {
    key: PackKey,
    values: Vec<T>,
}

impl<T> Drop for PackedWeights<T> {
    fn drop(&mut self) {
        let bytes = std::mem::size_of_val(&self.values[..]);
        CACHED_BYTES.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One packed form of a tensor's weights: empty until the first call reads them, `None` inside
/// when the process's budget was spent then.
type PackedSlot<T> = OnceLock<Option<PackedWeights<T>>>;

/// A tensor's weights packed for `linear`: in f32 for this module's microkernels and in bf16 for
/// the bf16 GEMMs' tiles (f32 weights only, both), each filled by the first call of its GEMM.
/// A tensor holds one, emptied whenever its values are borrowed for writing, so it never
/// outlives the values it copies.
#[derive(Default)]
pub(crate) struct PackedCache {
    f32: PackedSlot<f32>,
    bf16: PackedSlot<u16>,
}

impl std::fmt::Debug for PackedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn state<T>(slot: &PackedSlot<T>) -> &'static str {
            match slot.get() {
                None => "empty",
                Some(None) => "over budget",
                Some(Some(_)) => "packed",
            }
        }
        let (f32, bf16) = (state(&self.f32), state(&self.bf16));
        write!(f, "PackedCache(f32 {f32}, bf16 {bf16})")
    }
}

/// The values in `slot` when they were packed for `key`; on the slot's first call, `len` values
/// packed now by `fill` (given zeros) if the budget allows.
fn get_or_pack_with<T: Clone + Default>(
    slot: &PackedSlot<T>,
    key: PackKey,
    len: usize,
    fill: impl FnOnce(&mut [T]),
) -> Option<&[T]> {
    let packed = slot.get_or_init(|| {
        let bytes = len * std::mem::size_of::<T>();
        CACHED_BYTES
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= CACHE_BUDGET_BYTES).then_some(used + bytes)
            })
            .ok()?;
        let mut values = vec![T::default(); len];
        fill(&mut values);
        Some(PackedWeights { key, values })
    });
    let packed = packed.as_ref()?;
    (packed.key == key).then_some(&packed.values[..])
}

impl PackedCache {
    /// The packed form of `w` (`[m, k]`, or `[2m, k]` when `gated`) for microkernel width `NR`,
    /// packing it now if this is the first call; `None` when it is not kept (over budget, or
    /// packed for another shape).
    fn get_or_pack<const NR: usize>(
        &self,
        w: &[f32],
        k: usize,
        m: usize,
        gated: bool,
    ) -> Option<&[f32]> {
        let key = PackKey {
            nr: NR,
            k,
            m,
            gated,
        };
        let len = m.div_ceil(panel_columns::<NR>(gated)) * NR * k;
        get_or_pack_with(&self.f32, key, len, |values| {
            if k > 0 {
                values.par_chunks_mut(k * NR).enumerate().for_each_init(
                    Vec::new,
                    |row, (panel, dst)| {
                        pack_panel::<NR>(&Matrix::F32(w), (k, m), gated, panel, dst, row)
                    },
                );
            }
        })
    }

    /// The weights' bf16 tile layout for panels of `nr` rows, depth `k` and `m` output columns:
    /// `len` values `fill` packs on the first call; `None` when they are not kept (over budget,
    /// or packed for another shape).
    pub(super) fn get_or_pack_bf16(
        &self,
        nr: usize,
        k: usize,
        m: usize,
        gated: bool,
        len: usize,
        fill: impl FnOnce(&mut [u16]),
    ) -> Option<&[u16]> {
        get_or_pack_with(&self.bf16, PackKey { nr, k, m, gated }, len, fill)
    }
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

/// `out[n, m] = act(x[n, k]·w[m, k]ᵀ + bias) + residual` (or gated, `w: [2m, k]`, see
/// [`Epilogue`]), every slice row-major, on the widest microkernel this CPU runs; f32 weights
/// are read from (or packed into) `cache` when given.
pub(super) fn linear(
    x: &[f32],
    shape: (usize, usize, usize),
    w: &Matrix<'_>,
    cache: Option<&PackedCache>,
    epilogue: &Epilogue<'_>,
    out: &mut [f32],
) {
    struct Linear<'a> {
        x: &'a [f32],
        shape: (usize, usize, usize),
        w: &'a Matrix<'a>,
        cache: Option<&'a PackedCache>,
        epilogue: &'a Epilogue<'a>,
        out: &'a mut [f32],
    }
    impl TileProgram for Linear<'_> {
        fn run<const MR: usize, const NR: usize>(self, kernel: Microkernel<MR, NR>) {
            let packed = match (self.w, self.cache) {
                (Matrix::F32(w), Some(cache)) => {
                    let (_, k, m) = self.shape;
                    cache.get_or_pack::<NR>(w, k, m, self.epilogue.gated)
                }
                _ => None,
            };
            blocked::<MR, NR>(
                kernel,
                self.x,
                self.shape,
                self.w,
                packed,
                self.epilogue,
                self.out,
            )
        }
    }
    with_microkernel(Linear {
        x,
        shape,
        w,
        cache,
        epilogue,
        out,
    })
}

/// The blocked GEMM around `kernel`; `packed` is all of `w` packed (else each task packs its
/// block of it).
fn blocked<const MR: usize, const NR: usize>(
    kernel: Microkernel<MR, NR>,
    x: &[f32],
    (n, k, m): (usize, usize, usize),
    w: &Matrix<'_>,
    packed: Option<&[f32]>,
    epilogue: &Epilogue<'_>,
    out: &mut [f32],
) {
    if n == 0 || m == 0 {
        return;
    }
    // With k = 0 one empty block still runs, so the epilogue is applied to the zero product.
    let blocks = k.div_ceil(KC_MAX).max(1);
    let kc = k.div_ceil(blocks);
    let row_panels = n.div_ceil(MR);
    let mut packed_x = PACKED_X.take();
    pack_x::<MR>(x, n, k, row_panels, &mut packed_x);
    let out = SharedOut::new(out);

    let threads = rayon::current_num_threads();
    let gated = epilogue.gated;
    let columns = panel_columns::<NR>(gated);
    let col_panels = m.div_ceil(columns);
    let fit = (L2_BLOCK_BYTES / (4 * NR * k.max(1))).max(1);
    let col_blocks = (col_panels.div_ceil(fit).div_ceil(threads) * threads).min(col_panels);
    let row_chunks = if col_blocks < 2 * threads {
        (2 * threads).div_ceil(col_blocks).min(row_panels)
    } else {
        1
    };

    (0..col_blocks * row_chunks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(scratch, row, partials), task| {
            let (block, chunk) = (task / row_chunks, task % row_chunks);
            let panels = even_share(col_panels, col_blocks, block);
            let chunk_panels = even_share(row_panels, row_chunks, chunk);
            // This block's weight panels at full depth, panel `i` at `i · k · NR`: from the
            // packed weights, or packed now into `scratch`.
            let w_block: &[f32] = match packed {
                Some(all) => &all[panels.start * k * NR..][..panels.len() * k * NR],
                None => {
                    scratch.resize(panels.len() * k * NR, 0.0);
                    for (i, panel) in panels.clone().enumerate() {
                        let dst = &mut scratch[i * k * NR..][..k * NR];
                        pack_panel::<NR>(w, (k, m), gated, panel, dst, row);
                    }
                    scratch
                }
            };
            // Gated tiles' sums over the earlier depth blocks, one a weight panel.
            if gated && blocks > 1 {
                partials.resize(panels.len(), [[0.0f32; NR]; MR]);
            }
            for panel in chunk_panels {
                let rows = panel * MR..((panel + 1) * MR).min(n);
                // Depth blocks inside the row panel: the `x` panel's block stays in L1 across
                // the weight panels, and the row panel's output tiles in L1 across the blocks.
                for b in 0..blocks {
                    let depth = (b * kc).min(k)..((b + 1) * kc).min(k);
                    let kd = depth.len();
                    let a = &packed_x[panel * k * MR + depth.start * MR..][..kd * MR];
                    for (i, jp) in panels.clone().enumerate() {
                        let bw = &w_block[i * k * NR + depth.start * NR..][..kd * NR];
                        let mut tile = [[0.0f32; NR]; MR];
                        // SAFETY: the kernel was chosen for this CPU's features, and `a`, `b`
                        // hold `kd` columns of MR and NR values.
                        unsafe { kernel(kd, a, bw, &mut tile) };
                        let cols = jp * columns..((jp + 1) * columns).min(m);
                        let (mut first, last) = (b == 0, b + 1 == blocks);
                        if gated {
                            if !first {
                                let sums = partials[i].as_flattened();
                                let acc = tile.as_flattened_mut().iter_mut();
                                acc.zip(sums).for_each(|(a, s)| *a += s);
                            }
                            if !last {
                                partials[i] = tile;
                                continue;
                            }
                            // The whole sum is in the tile now: the output is written once.
                            first = true;
                        }
                        // SAFETY: this task alone writes rows `chunk_panels` × columns of
                        // `panels` of `out`, which has `n · m` values; `rows` < n, `cols` < m.
                        unsafe {
                            out.store(&mut tile, rows.clone(), cols, m, first, last, epilogue)
                        };
                    }
                }
            }
        },
    );
    keep_packed_x(packed_x);
}

/// Part `i` of `total` items cut into `parts` consecutive parts whose sizes differ by at most
/// one: blocks of equal cost, where whole-panel blocks of the rounded-up size left the last one
/// short (SmolLM2's 18 output panels as 5 + 5 + 5 + 3 kept one core idle a ninth of the time).
pub(super) fn even_share(total: usize, parts: usize, i: usize) -> Range<usize> {
    i * total / parts..(i + 1) * total / parts
}

/// Packed `x` of the most values a thread keeps between calls (MiniLM's FFN-down input of 2 048
/// tokens is 12.6 MB); a larger one is freed after its call. The bf16 GEMMs keep theirs the same.
pub(super) const PACKED_X_KEPT_BYTES: usize = 32 << 20;

thread_local! {
    /// The calling thread's packed `x`, reused across calls: a fresh one was fresh pages, zeroed
    /// by the kernel at their first touch on every call (MiniLM's FFN-down, 12.6 MB of packed
    /// `x`, runs 1.18× faster reusing it: BENCHMARKS.md, 2026-12-06, LOADED machine).
    static PACKED_X: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Returns `packed` (from [`pack_x`]) to the calling thread for its next call, unless it is
/// larger than [`PACKED_X_KEPT_BYTES`].
fn keep_packed_x(packed: Vec<f32>) {
    if packed.capacity() * 4 <= PACKED_X_KEPT_BYTES {
        PACKED_X.set(packed);
    }
}

/// `x`'s row panels at full depth into `packed` (resized): panel `p` at `p · k · MR`, its
/// column `c` at `c · MR`, rows past `n` zero.
///
/// Written column by column, each column's `MR` values read from `MR` row streams: filling the
/// panel one row at a time instead wrote every cache line of it `MR` times, a value at a time,
/// and took 14% of MiniLM's FFN-down (perf, BENCHMARKS.md h28f).
fn pack_x<const MR: usize>(x: &[f32], n: usize, k: usize, panels: usize, packed: &mut Vec<f32>) {
    packed.resize(panels * k * MR, 0.0);
    if k == 0 {
        return;
    }
    // The buffer is reused: padding rows read these zeros, not an earlier call's values.
    let zeros = if !n.is_multiple_of(MR) {
        vec![0.0; k]
    } else {
        Vec::new()
    };
    packed
        .par_chunks_mut(k * MR)
        .enumerate()
        .for_each(|(panel, dst)| {
            let rows: [&[f32]; MR] = std::array::from_fn(|r| {
                let row = panel * MR + r;
                if row < n {
                    &x[row * k..][..k]
                } else {
                    &zeros[..]
                }
            });
            for (c, column) in dst.chunks_exact_mut(MR).enumerate() {
                for (v, row) in column.iter_mut().zip(&rows) {
                    *v = row[c];
                }
            }
        });
}

/// Weight panel `panel` at full depth, its lanes the rows [`panel_row`] names for `m` output
/// columns, widened to f32 into `dst`: column `c` at `c · NR`, padding lanes zero. `row` is
/// scratch for a widened half-precision row.
fn pack_panel<const NR: usize>(
    w: &Matrix<'_>,
    (k, m): (usize, usize),
    gated: bool,
    panel: usize,
    dst: &mut [f32],
    row: &mut Vec<f32>,
) {
    for jj in 0..NR {
        let src: &[f32] = match (panel_row::<NR>(gated, m, panel, jj), w) {
            (None, _) => {
                row.clear();
                row.resize(k, 0.0);
                row
            }
            (Some(j), Matrix::F32(w)) => &w[j * k..][..k],
            (Some(j), Matrix::Half(w)) => {
                row.resize(k, 0.0);
                w.widen_row(j, 0, row);
                row
            }
        };
        for (c, &v) in src.iter().enumerate() {
            dst[c * NR + jj] = v;
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
    /// epilogue over the whole tile — one vectorised activation loop a tile while the tile is in
    /// L1 (its padding lanes hold the zeros of the padded panels, harmless to every activation,
    /// and are never stored). A gated tile comes whole (`first` and `last`): its gate half is
    /// activated and multiplied by its up half, which is then stored as a plain tile's is.
    ///
    /// Compiled for the widest vectors the CPU has, like the microkernel that wrote the tile:
    /// built for the baseline target, these loops re-read the tile four floats at a time just
    /// after the microkernel's 64-byte stores and the activation then read it sixteen at a time
    /// just after those narrow stores — loads that cannot be forwarded from the pending stores
    /// and wait for them to retire, which made the GELU epilogue a third of MiniLM's FFN time.
    ///
    /// # Safety
    /// `rows × cols` lies inside the output, and no other thread touches it meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn store<const MR: usize, const NR: usize>(
        self,
        tile: &mut [[f32; NR]; MR],
        rows: Range<usize>,
        cols: Range<usize>,
        m: usize,
        first: bool,
        last: bool,
        epilogue: &Epilogue<'_>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512<const MR: usize, const NR: usize>(
                out: SharedOut,
                tile: &mut [[f32; NR]; MR],
                rows: Range<usize>,
                cols: Range<usize>,
                m: usize,
                first: bool,
                last: bool,
                epilogue: &Epilogue<'_>,
            ) {
                // SAFETY: the CPU has AVX-512F (this function's feature).
                let activate =
                    |act: Activation, y: &mut [f32]| unsafe { activation::apply_avx512(act, y) };
                // SAFETY: the caller's contract.
                unsafe { out.store_portable(tile, rows, cols, m, first, last, epilogue, activate) }
            }
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2<const MR: usize, const NR: usize>(
                out: SharedOut,
                tile: &mut [[f32; NR]; MR],
                rows: Range<usize>,
                cols: Range<usize>,
                m: usize,
                first: bool,
                last: bool,
                epilogue: &Epilogue<'_>,
            ) {
                // SAFETY: the CPU has AVX2 and FMA (this function's features).
                let activate =
                    |act: Activation, y: &mut [f32]| unsafe { activation::apply_avx2(act, y) };
                // SAFETY: the caller's contract.
                unsafe { out.store_portable(tile, rows, cols, m, first, last, epilogue, activate) }
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F; the rest is the caller's contract.
                return unsafe { avx512(self, tile, rows, cols, m, first, last, epilogue) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA; the rest is the caller's contract.
                return unsafe { avx2(self, tile, rows, cols, m, first, last, epilogue) };
            }
        }
        let activate = activation::apply_portable;
        // SAFETY: the caller's contract.
        unsafe { self.store_portable(tile, rows, cols, m, first, last, epilogue, activate) }
    }

    /// [`Self::store`] as written, inlined into each target-feature copy, with that copy's
    /// `activate` (the activation over a slice).
    ///
    /// # Safety
    /// As [`Self::store`].
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn store_portable<const MR: usize, const NR: usize>(
        self,
        tile: &mut [[f32; NR]; MR],
        rows: Range<usize>,
        cols: Range<usize>,
        m: usize,
        first: bool,
        last: bool,
        epilogue: &Epilogue<'_>,
        activate: impl Fn(Activation, &mut [f32]),
    ) {
        let width = cols.len();
        debug_assert!(!epilogue.gated || (first && last), "gated tiles come whole");
        // SAFETY: the caller's contract.
        let out_row = |row: usize| unsafe {
            std::slice::from_raw_parts_mut(self.0.add(row * m + cols.start), width)
        };
        if !last {
            for (row, acc) in rows.zip(tile.iter()) {
                let y = out_row(row);
                if first {
                    copy_row(y, acc);
                } else {
                    y.iter_mut().zip(acc).for_each(|(y, a)| *y += a);
                }
            }
            return;
        }
        let add = |acc: &mut [f32], values: &[f32]| {
            acc.iter_mut().zip(values).for_each(|(a, v)| *a += v);
        };
        // Gated tiles: the up half's lanes start here.
        let ups = panel_columns::<NR>(true);
        for (row, acc) in rows.clone().zip(tile.iter_mut()) {
            if !first {
                add(&mut acc[..width], out_row(row));
            }
            if let Some(bias) = epilogue.bias {
                add(&mut acc[..width], &bias[cols.clone()]);
                if epilogue.gated {
                    add(&mut acc[ups..][..width], &bias[m + cols.start..][..width]);
                }
            }
        }
        if epilogue.gated {
            for acc in tile.iter_mut() {
                let (gate, up) = acc.split_at_mut(ups);
                activate(epilogue.act, gate);
                gate.iter_mut().zip(&*up).for_each(|(g, u)| *g *= u);
            }
        } else {
            activate(epilogue.act, tile.as_flattened_mut());
        }
        for (row, acc) in rows.zip(tile.iter()) {
            let y = out_row(row);
            copy_row(y, acc);
            if let Some(residual) = epilogue.residual {
                let r = &residual[row * m + cols.start..][..width];
                y.iter_mut().zip(r).for_each(|(y, r)| *y += r);
            }
        }
    }
}

/// `y ← row[..y.len()]`: a whole tile row as one fixed-size copy (vector moves inlined), a part
/// of one (the last column panel's) by `copy_from_slice`, a call to memcpy: on whole rows those
/// calls took 7% as long as the microkernel on MiniLM's QKV (perf, loaded machine).
#[inline(always)]
fn copy_row<const NR: usize>(y: &mut [f32], row: &[f32; NR]) {
    match <&mut [f32; NR]>::try_from(&mut *y) {
        Ok(whole) => *whole = *row,
        Err(_) => y.copy_from_slice(&row[..y.len()]),
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

/// Columns of the block ahead of the current one whose `b` values the AVX-512 microkernel asks
/// for (1 KiB of weights): Intel's cores bring the streamed weight panel from L2 into L1 late
/// without it — the loads of `b` stalled; eight columns ahead cut the microkernel's cycles on an
/// Emerald Rapids Xeon by 8–25% (four or sixteen ahead gained less). On Zen 4 the two extra
/// loads a column sit beside ten in the 16 cycles its double-pumped FMAs take.
const PREFETCH_COLUMNS: usize = 8;

/// The microkernel on AVX-512: the tile in sixteen registers, two loads of `b` and eight
/// broadcasts of `a` per column of the block (sixteen FMAs: enough independent sums to cover the
/// FMA latency on both units), and `b`'s two lines [`PREFETCH_COLUMNS`] columns ahead asked for.
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
            // Past the panel's end these name lines the next call reads, or none: a prefetch
            // never faults.
            let ahead = b.wrapping_add((p + PREFETCH_COLUMNS) * NR);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16).cast());
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

    /// [`blocked`] on `kernel`, with `w` packed once beforehand (as a weight tensor's cache
    /// holds it) when `cached`, else packed block by block in the tasks.
    fn run<const MR: usize, const NR: usize>(
        kernel: Microkernel<MR, NR>,
        x: &[f32],
        shape: (usize, usize, usize),
        w: &Matrix<'_>,
        cached: bool,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
    ) {
        let cache = PackedCache::default();
        let packed = match (w, cached) {
            (Matrix::F32(values), true) => {
                let packed = cache.get_or_pack::<NR>(values, shape.1, shape.2, epilogue.gated);
                assert!(packed.is_some(), "test weights fit the budget");
                packed
            }
            _ => None,
        };
        blocked::<MR, NR>(kernel, x, shape, w, packed, epilogue, out)
    }

    /// Every microkernel this CPU runs (the integration tests reach only the widest) on shapes
    /// that fill no tile, block or panel exactly — one depth block and, past [`KC_MAX`], two and
    /// three — against an f64 loop, plain and gated (SwiGLU, whose depth blocks add in the task's
    /// own tiles): f32 weights packed once or in the tasks, and bf16 ones (the reference reads
    /// the same rounded values).
    #[test]
    fn every_microkernel_matches_f64() {
        let shapes = [
            (17, 300, 150),
            (9, KC_MAX + 52, 37),
            (5, 2 * KC_MAX + 10, 21),
        ];
        for ((n, k, m), gated) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let rows = if gated { 2 * m } else { m };
            let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5;
            let x: Vec<f32> = (0..n * k).map(value).collect();
            let w: Vec<f32> = (0..rows * k)
                .map(|i| bf16::from_f32(value(i + 3)).to_f32())
                .collect();
            let bias: Vec<f32> = (0..rows).map(|i| value(i + 11)).collect();
            let residual: Vec<f32> = (0..n * m).map(|i| value(i + 5)).collect();
            let silu = |z: f64| z / (1.0 + (-z).exp());
            let want: Vec<f64> = (0..n * m)
                .map(|idx| {
                    let (i, j) = (idx / m, idx % m);
                    let z = |j: usize| -> f64 {
                        let dot: f64 = (0..k)
                            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum();
                        dot + bias[j] as f64
                    };
                    let y = if gated {
                        silu(z(j)) * z(m + j)
                    } else {
                        silu(z(j))
                    };
                    y + residual[idx] as f64
                })
                .collect();
            let halves: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let half = HalfMatrix::from_bf16(&[rows, k], &halves).unwrap();
            let epilogue = Epilogue {
                bias: Some(&bias),
                act: Activation::Silu,
                residual: Some(&residual),
                gated,
            };
            let check = |name: &str, run: &dyn Fn(&Matrix<'_>, bool, &mut [f32])| {
                for (weights, cached) in [
                    (Matrix::F32(&w), false),
                    (Matrix::F32(&w), true),
                    (Matrix::Half(&half), false),
                ] {
                    let mut out = vec![f32::NAN; n * m];
                    run(&weights, cached, &mut out);
                    let err: f64 = out
                        .iter()
                        .zip(&want)
                        .map(|(&o, &r)| (o as f64 - r).powi(2))
                        .sum();
                    let norm: f64 = want.iter().map(|r| r * r).sum();
                    let rel = (err / norm).sqrt();
                    assert!(
                        rel < 1e-5,
                        "{name} at {n}×{k}·{m} (gated {gated}, cached {cached}): relative \
                         error {rel:e}"
                    );
                }
            };
            let shape = (n, k, m);
            check("portable", &|w, cached, out| {
                let kernel = microkernel_portable::<6, 16>;
                run::<6, 16>(kernel, &x, shape, w, cached, &epilogue, out)
            });
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    check("avx2", &|w, cached, out| {
                        run::<6, 16>(microkernel_avx2, &x, shape, w, cached, &epilogue, out)
                    });
                }
                if std::is_x86_feature_detected!("avx512f") {
                    check("avx512", &|w, cached, out| {
                        run::<8, 32>(microkernel_avx512, &x, shape, w, cached, &epilogue, out)
                    });
                }
            }
        }
    }

    /// A cache filled for one tile width, shape or pairing of rows is not read for another (it
    /// is refilled only when the tensor is written, which empties it).
    #[test]
    fn packed_cache_answers_only_its_own_shape() {
        let w: Vec<f32> = (0..6 * 5).map(|i| i as f32).collect();
        let cache = PackedCache::default();
        let packed = cache.get_or_pack::<4>(&w, 5, 6, false).unwrap().to_vec();
        // Panel 0 holds rows 0–3 column by column; panel 1 rows 4, 5 and two zero rows.
        assert_eq!(&packed[..8], &[0.0, 5.0, 10.0, 15.0, 1.0, 6.0, 11.0, 16.0]);
        assert_eq!(&packed[20..24], &[20.0, 25.0, 0.0, 0.0]);
        assert!(cache.get_or_pack::<8>(&w, 5, 6, false).is_none());
        assert!(cache.get_or_pack::<4>(&w, 6, 5, false).is_none());
        assert!(cache.get_or_pack::<4>(&w, 5, 3, true).is_none());
        assert_eq!(
            cache.get_or_pack::<4>(&w, 5, 6, false).unwrap(),
            &packed[..]
        );

        // The same rows as 3 gated columns: panel 0 holds gates 0, 1 and ups 0, 1 (rows 3, 4);
        // panel 1 gate 2, a zero lane, up 2 (row 5), a zero lane.
        let gated = PackedCache::default();
        let packed = gated.get_or_pack::<4>(&w, 5, 3, true).unwrap();
        assert_eq!(&packed[..4], &[0.0, 5.0, 15.0, 20.0]);
        assert_eq!(&packed[20..24], &[10.0, 0.0, 25.0, 0.0]);
        assert!(gated.get_or_pack::<4>(&w, 5, 3, false).is_none());
    }
}
