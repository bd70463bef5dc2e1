//! Activation epilogues over whole rows, written without branches or library calls so the
//! compiler vectorises them. libm's scalar `erff`/`expf` cost tens of nanoseconds an element,
//! more than the GEMM they follow: MiniLM's GELU FFN spent about twice its matmul time in erf.
//!
//! Accuracy (checked against f64 in the unit tests below): `exp` within 2 ulp; `gelu` within a
//! few parts in 10⁶ of each value, what rounding x to f32 already costs `e^{−x²/2}` (erfc by a
//! Chebyshev fit of relative error below 1.2e-7, Press et al., *Numerical Recipes* §6.2); the
//! logistic forms within a few ulp — all far inside the f32 parity tolerance. `tanh` keeps the
//! library call: its small outputs need relative accuracy the `exp` identities lose.
//!
//! The default x86-64 target vectorises these loops over SSE2's 4 lanes; where the CPU has AVX2
//! they run a copy compiled for its 8, and `apply` one for AVX-512's 16 where present (the same
//! operations, so the same results), except GELU, in intrinsics with FMAs on both
//! ([`gelu_avx512`], [`gelu_avx2`]), within a few ulp of the portable form. The packed
//! GEMM applies the activation once per register tile, in the copy of its microkernel's width.
//! GELU multiplies `x·t` before the tail's small `exp` factor, so no intermediate falls below
//! f32's normal range: on Intel cores each instruction with a subnormal result costs a
//! microcode assist, which made the GELU epilogue four times slower there on FFN outputs whose
//! left tail passes −13.
//!
//! The backward pass's slopes ([`backward`]) are written the same way, from the same `exp`, in
//! copies compiled for AVX-512 and AVX2: the op is one pass over three arrays, which libm's
//! `erff` per element held at 2% of the memory roofline. GELU's slope `Φ(z) + z·φ(z)` is in
//! intrinsics on both ([`gelu_slope_avx512`], [`gelu_slope_avx2`]) and takes one `exp`,
//! `e^{−z²/2}`, which `φ` and the tail of `Φ` share: the tail by a fit of `erfc(a)·e^{a²}`
//! ([`HALF_SCALED_ERFC_FIT`]) rather than of its logarithm.
//!
//! Keep each activation's loop body small: LLVM's loop vectoriser judges the body as a whole,
//! and a GELU that also evaluated a separate small-argument erf polynomial (for erf accurate to
//! 1.5e-7 near 0, where `1 − erfc` is only good to 4e-7) was left scalar — 10 ns an element
//! instead of under 1 on AVX-512.

use super::common::{with_wide_simd, LaneSums, SUM_LANES};
use crate::backend::Activation;

/// Applies `act` to every value of `y` in place: [`apply_avx512`] where the CPU has AVX-512,
/// [`apply_avx2`] where it has AVX2 and FMA, else [`apply_portable`] as built.
pub(super) fn apply(act: Activation, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { apply_avx512(act, y) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { apply_avx2(act, y) };
        }
    }
    apply_portable(act, y)
}

/// Gate values [`gated`]'s general path activates at a time: 4 KiB, so that the copy, the
/// activation and the product sweep L1 rather than a whole row (56 KiB for Mistral's FFN) each.
const GATED_BLOCK: usize = 1024;

/// `y = act(gate) ⊙ up`, element by element. SiLU (the decoders' SwiGLU) on AVX-512 in one
/// fused sweep ([`gated_silu_avx512`]): done as a copy, then the activation, then the product,
/// each sweep over the whole row, it ran at a third of the memory roofline. Other activations
/// block by block through [`apply`].
pub(super) fn gated(act: Activation, gate: &[f32], up: &[f32], y: &mut [f32]) {
    assert!(
        gate.len() == y.len() && up.len() == y.len(),
        "gated activation: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if act == Activation::Silu && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { gated_silu_avx512(gate, up, y) };
    }
    let blocks = y.chunks_mut(GATED_BLOCK).zip(gate.chunks(GATED_BLOCK));
    for ((y, gate), up) in blocks.zip(up.chunks(GATED_BLOCK)) {
        y.copy_from_slice(gate);
        apply(act, y);
        y.iter_mut().zip(up).for_each(|(y, u)| *y *= u);
    }
}

/// `y[i] = f(x[i])·w[i]` on AVX-512, where `$f::<L>` maps `L` vectors of sixteen lanes: four
/// vectors a step, then masked chunks of the tail, each value loaded and stored once. A macro so
/// that `$f` inlines into the caller's AVX-512 code; it expands to unsafe intrinsics, for an
/// `unsafe` block in a function compiled with AVX-512F.
#[cfg(target_arch = "x86_64")]
macro_rules! map_times_avx512 {
    ($f:ident, $x:expr, $w:expr, $y:expr) => {{
        use std::arch::x86_64::*;
        let (x, w, y): (&[f32], &[f32], &mut [f32]) = ($x, $w, $y);
        let full = y.len() - y.len() % 64;
        let (x_blocks, x_tail) = x.split_at(full);
        let (w_blocks, w_tail) = w.split_at(full);
        let (y_blocks, y_tail) = y.split_at_mut(full);
        let blocks = x_blocks.chunks_exact(64).zip(w_blocks.chunks_exact(64));
        for ((x, w), y) in blocks.zip(y_blocks.chunks_exact_mut(64)) {
            // Each block holds 4 × 16 values.
            let fx = $f::<4>(std::array::from_fn(|i| {
                _mm512_loadu_ps(x.as_ptr().add(16 * i))
            }));
            for (i, fx) in fx.into_iter().enumerate() {
                let w = _mm512_loadu_ps(w.as_ptr().add(16 * i));
                _mm512_storeu_ps(y.as_mut_ptr().add(16 * i), _mm512_mul_ps(fx, w));
            }
        }
        let tails = x_tail.chunks(16).zip(w_tail.chunks(16));
        for ((x, w), y) in tails.zip(y_tail.chunks_mut(16)) {
            // The mask covers the chunk's 1 to 16 values only.
            let mask: __mmask16 = (u32::MAX >> (32 - x.len())) as u16;
            let [fx] = $f::<1>([_mm512_maskz_loadu_ps(mask, x.as_ptr())]);
            let w = _mm512_maskz_loadu_ps(mask, w.as_ptr());
            _mm512_mask_storeu_ps(y.as_mut_ptr(), mask, _mm512_mul_ps(fx, w));
        }
    }};
}

/// [`gated`] for SiLU: `silu(gate)·up` four vectors at a time ([`silu_avx512`]), each value
/// loaded and stored once.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gated_silu_avx512(gate: &[f32], up: &[f32], y: &mut [f32]) {
    // SAFETY: the CPU has AVX-512F (the caller's contract).
    unsafe { map_times_avx512!(silu_avx512, gate, up, y) }
}

/// `x·σ(x)` on `L` vectors of sixteen lanes, from `e = e^{−|x|}` ([`exp_nonpositive_avx512`]):
/// `x/(1 + e)` for `x ≥ 0`, `x·e/(1 + e)` below, so neither tail loses relative accuracy, and
/// `|x·e| ≥ e^{−87}` where `|x| ≥ 1`: no subnormal products.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn silu_avx512<const L: usize>(
    x: [std::arch::x86_64::__m512; L],
) -> [std::arch::x86_64::__m512; L] {
    use std::arch::x86_64::*;
    use std::array::from_fn;
    let zero = _mm512_setzero_ps();
    let e = exp_nonpositive_avx512::<L>(from_fn(|i| _mm512_sub_ps(zero, _mm512_abs_ps(x[i]))));
    from_fn(|i| {
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x[i], zero);
        let numerator = _mm512_mask_mul_ps(x[i], negative, x[i], e[i]);
        _mm512_div_ps(numerator, _mm512_add_ps(_mm512_set1_ps(1.0), e[i]))
    })
}

/// [`apply_portable`] compiled for AVX-512's sixteen lanes, with GELU in intrinsics
/// ([`gelu_avx512`]): the erf GELU is the costliest epilogue, and a GELU FFN's output is as
/// large as its product's.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn apply_avx512(act: Activation, y: &mut [f32]) {
    use std::arch::x86_64::*;
    if act != Activation::Gelu {
        return apply_portable(act, y);
    }
    // Four vectors at a time: GELU is one dependency chain about thirty operations deep, and
    // the core overlaps four side by side better than one after another (0.58 against 0.73 ns
    // an element, measured on a loaded machine).
    let mut blocks = y.chunks_exact_mut(64);
    for block in &mut blocks {
        let at = block.as_mut_ptr();
        // SAFETY: the block holds 4 × 16 values; the CPU has AVX-512F (the caller's contract).
        unsafe {
            let x = std::array::from_fn(|i| _mm512_loadu_ps(at.add(16 * i)));
            for (i, v) in gelu_avx512::<4>(x).into_iter().enumerate() {
                _mm512_storeu_ps(at.add(16 * i), v);
            }
        }
    }
    for chunk in blocks.into_remainder().chunks_mut(16) {
        let mask: __mmask16 = (u32::MAX >> (32 - chunk.len())) as u16;
        // SAFETY: the mask covers the chunk's 1 to 16 values only.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
            let [v] = gelu_avx512::<1>([x]);
            _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, v);
        }
    }
}

/// [`apply_portable`] compiled for AVX2's eight lanes, with GELU in intrinsics ([`gelu_avx2`]).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn apply_avx2(act: Activation, y: &mut [f32]) {
    use std::arch::x86_64::*;
    if act != Activation::Gelu {
        return apply_portable(act, y);
    }
    let mut chunks = y.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds 8 values; the CPU has AVX2 and FMA (the caller's contract).
        unsafe {
            let v = _mm256_loadu_ps(chunk.as_ptr());
            _mm256_storeu_ps(chunk.as_mut_ptr(), gelu_avx2(v));
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        // Lanes below the tail's length: all bits set, the sign bit the mask reads.
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail.len() as i32), lanes);
        // SAFETY: the mask covers the tail's values only.
        unsafe {
            let v = _mm256_maskload_ps(tail.as_ptr(), mask);
            _mm256_maskstore_ps(tail.as_mut_ptr(), mask, gelu_avx2(v));
        }
    }
}

/// `dz = dy ⊙ act'(z)`, the backward pass of an epilogue activation from its pre-activation:
/// [`backward_avx512`] where the CPU has AVX-512, [`backward_avx2`] where it has AVX2 and FMA,
/// else [`backward_portable`] as built.
pub(super) fn backward(act: Activation, z: &[f32], dy: &[f32], dz: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { backward_avx512(act, z, dy, dz) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { backward_avx2(act, z, dy, dz) };
        }
    }
    backward_portable(act, z, dy, dz)
}

/// [`backward_portable`] compiled for AVX-512's sixteen lanes, with GELU's slope in intrinsics
/// ([`gelu_slope_avx512`]), four vectors at a time as the forward GELU.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn backward_avx512(act: Activation, z: &[f32], dy: &[f32], dz: &mut [f32]) {
    if act != Activation::Gelu {
        return backward_portable(act, z, dy, dz);
    }
    assert!(
        z.len() == dz.len() && dy.len() == dz.len(),
        "activation backward: lengths differ"
    );
    // SAFETY: the CPU has AVX-512F (the caller's contract).
    unsafe { map_times_avx512!(gelu_slope_avx512, z, dy, dz) }
}

/// [`backward_portable`] compiled for AVX2's eight lanes, with GELU's slope in intrinsics
/// ([`gelu_slope_avx2`]).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(act: Activation, z: &[f32], dy: &[f32], dz: &mut [f32]) {
    use std::arch::x86_64::*;
    if act != Activation::Gelu {
        return backward_portable(act, z, dy, dz);
    }
    assert!(
        z.len() == dz.len() && dy.len() == dz.len(),
        "activation backward: lengths differ"
    );
    let full = dz.len() - dz.len() % 8;
    let (z_chunks, z_tail) = z.split_at(full);
    let (dy_chunks, dy_tail) = dy.split_at(full);
    let (dz_chunks, dz_tail) = dz.split_at_mut(full);
    let chunks = z_chunks.chunks_exact(8).zip(dy_chunks.chunks_exact(8));
    for ((z, dy), dz) in chunks.zip(dz_chunks.chunks_exact_mut(8)) {
        // SAFETY: each chunk holds 8 values; the CPU has AVX2 and FMA (the caller's contract).
        unsafe {
            let slope = gelu_slope_avx2(_mm256_loadu_ps(z.as_ptr()));
            let g = _mm256_loadu_ps(dy.as_ptr());
            _mm256_storeu_ps(dz.as_mut_ptr(), _mm256_mul_ps(g, slope));
        }
    }
    if !z_tail.is_empty() {
        // Lanes below the tail's length: all bits set, the sign bit the mask reads.
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(z_tail.len() as i32), lanes);
        // SAFETY: the mask covers the tail's values only.
        unsafe {
            let slope = gelu_slope_avx2(_mm256_maskload_ps(z_tail.as_ptr(), mask));
            let g = _mm256_maskload_ps(dy_tail.as_ptr(), mask);
            _mm256_maskstore_ps(dz_tail.as_mut_ptr(), mask, _mm256_mul_ps(g, slope));
        }
    }
}

/// [`backward`] as written: one branch-free loop per activation, each slope from [`exp`] (and
/// GELU's from [`gelu`]'s erfc fit), so that the compiler vectorises every one of them.
#[inline(always)]
fn backward_portable(act: Activation, z: &[f32], dy: &[f32], dz: &mut [f32]) {
    assert!(
        z.len() == dz.len() && dy.len() == dz.len(),
        "activation backward: lengths differ"
    );
    // Generic, not a function pointer, so that each slope is inlined into its own loop.
    #[inline(always)]
    fn scale(z: &[f32], dy: &[f32], dz: &mut [f32], slope: impl Fn(f32) -> f32) {
        for ((out, &z), &dy) in dz.iter_mut().zip(z).zip(dy) {
            *out = dy * slope(z);
        }
    }
    match act {
        Activation::Identity => dz.copy_from_slice(dy),
        Activation::Gelu => scale(z, dy, dz, gelu_slope),
        Activation::GeluTanh => scale(z, dy, dz, gelu_tanh_slope),
        Activation::QuickGelu => scale(z, dy, dz, |z| gated_logistic_slope(1.702, z)),
        Activation::Silu => scale(z, dy, dz, |z| gated_logistic_slope(1.0, z)),
        Activation::Sigmoid => scale(z, dy, dz, |z| {
            // σ'(z) = e/(1 + e)² with e = e^{−|z|}: the same on both sides, and never 1 − σ.
            let e = exp(-z.abs());
            e / ((1.0 + e) * (1.0 + e))
        }),
        Activation::Relu => scale(z, dy, dz, |z| if z > 0.0 { 1.0 } else { 0.0 }),
        // 1 − tanh² z = 4e/(1 + e)² with e = e^{−2|z|}: no cancellation as tanh z nears ±1.
        Activation::Tanh => scale(z, dy, dz, |z| {
            let e = exp(-2.0 * z.abs());
            4.0 * e / ((1.0 + e) * (1.0 + e))
        }),
    }
}

/// `d/dz z·Φ(z) = Φ(z) + z·φ(z)` from one exponential, `e = e^{−z²/2}`: `φ(z) = e/√(2π)`
/// and the lower tail `Φ(−|z|) = ½·erfc(|z|/√2) = t·Q(t)·e` by [`HALF_SCALED_ERFC_FIT`].
#[inline(always)]
fn gelu_slope(z: f32) -> f32 {
    let t = 1.0 / (1.0 + SCALED_ERFC_T * z.abs());
    let fit = HALF_SCALED_ERFC_FIT
        .iter()
        .rev()
        .fold(0.0, |acc, &c| acc * t + c);
    let e = exp(-0.5 * z * z);
    // Both terms over e: the lower tail and z·φ(z).
    let (tail, density) = (t * fit, z * INV_SQRT_2PI);
    if z >= 0.0 {
        1.0 + e * (density - tail)
    } else {
        e * (density + tail)
    }
}

/// `1/√(2π)`, the standard normal density at 0.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `t = 1/(1 + a/2)` for `a = |z|/√2`: `t = 1/(1 + SCALED_ERFC_T·|z|)`.
const SCALED_ERFC_T: f32 = 0.5 * std::f32::consts::FRAC_1_SQRT_2;

/// `Q(t) = ½·erfc(a)·e^{a²}/t` with `t = 1/(1 + a/2)`, `a ≥ 0`, as `Q[0] + Q[1]·t + … + Q[10]·t¹⁰`:
/// [`gelu_slope`]'s lower tail without a second `exp` (the forward's [`ERFC_FIT`] fits
/// `ln(erfc(a)·e^{a²}/t)` instead, which needs one). Fitted by `tools/fit_gelu_slope.py`: least
/// squares in relative error at 4 000 Chebyshev nodes of `t ∈ (0, 1]` against SciPy's `erfcx`;
/// within 1.2e-8 of it in f64, 1.2e-7 with these f32 coefficients evaluated in f32.
const HALF_SCALED_ERFC_FIT: [f32; 11] = [
    0.141_047_4,
    0.141_046_88,
    0.123_442_285,
    0.087_657_99,
    0.046_731_22,
    -0.029_605_68,
    0.066_088_52,
    -0.227_487,
    0.246_847_47,
    -0.117_366_8,
    0.021_597_717,
];

/// [`gelu_slope`] on `L` vectors of sixteen lanes, each step taken across all of them: every
/// `a·b + c` one FMA, the one `exp` by [`exp_nonpositive_avx512`].
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gelu_slope_avx512<const L: usize>(
    z: [std::arch::x86_64::__m512; L],
) -> [std::arch::x86_64::__m512; L] {
    use std::arch::x86_64::*;
    use std::array::from_fn;
    let splat = _mm512_set1_ps;
    let one = splat(1.0);
    let t: [_; L] = from_fn(|i| {
        _mm512_div_ps(
            one,
            _mm512_fmadd_ps(_mm512_abs_ps(z[i]), splat(SCALED_ERFC_T), one),
        )
    });
    let mut fit = [splat(HALF_SCALED_ERFC_FIT[10]); L];
    for &coefficient in HALF_SCALED_ERFC_FIT[..10].iter().rev() {
        fit = from_fn(|i| _mm512_fmadd_ps(fit[i], t[i], splat(coefficient)));
    }
    let e = exp_nonpositive_avx512::<L>(from_fn(|i| {
        _mm512_mul_ps(_mm512_mul_ps(z[i], splat(-0.5)), z[i])
    }));
    from_fn(|i| {
        let (tail, density) = (
            _mm512_mul_ps(t[i], fit[i]),
            _mm512_mul_ps(z[i], splat(INV_SQRT_2PI)),
        );
        // z ≥ 0: 1 + e·(density − tail); z < 0: e·(density + tail).
        let positive = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(z[i], _mm512_setzero_ps());
        let sum = _mm512_mask_sub_ps(_mm512_add_ps(density, tail), positive, density, tail);
        _mm512_fmadd_ps(e[i], sum, _mm512_maskz_mov_ps(positive, one))
    })
}

/// [`gelu_slope_avx512`] on one vector of eight AVX2 lanes.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn gelu_slope_avx2(z: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let splat = _mm256_set1_ps;
    let one = splat(1.0);
    let abs = _mm256_andnot_ps(splat(-0.0), z);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(abs, splat(SCALED_ERFC_T), one));
    let mut fit = splat(HALF_SCALED_ERFC_FIT[10]);
    for &coefficient in HALF_SCALED_ERFC_FIT[..10].iter().rev() {
        fit = _mm256_fmadd_ps(fit, t, splat(coefficient));
    }
    let e = exp_nonpositive_avx2(_mm256_mul_ps(_mm256_mul_ps(z, splat(-0.5)), z));
    let (tail, density) = (_mm256_mul_ps(t, fit), _mm256_mul_ps(z, splat(INV_SQRT_2PI)));
    let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(z, _mm256_setzero_ps());
    let sum = _mm256_blendv_ps(
        _mm256_add_ps(density, tail),
        _mm256_sub_ps(density, tail),
        positive,
    );
    _mm256_fmadd_ps(e, sum, _mm256_and_ps(positive, one))
}

/// `d/dz ½z(1 + tanh u)` with `u = √(2/π)(z + 0.044715z³)`: as `z·σ(2u)` (see [`apply_portable`]),
/// `σ(2u) + 2z·σ(2u)(1 − σ(2u))·u'`, with `1 − σ = e·σ`, `e = e^{−2u}`.
#[inline(always)]
fn gelu_tanh_slope(z: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const CUBIC: f32 = 0.044_715;
    let e = exp(-2.0 * SQRT_2_OVER_PI * (z + CUBIC * z * z * z));
    let s = 1.0 / (1.0 + e);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * z * z);
    s + 2.0 * z * (e * s) * s * du
}

/// `d/dz z·σ(kz) = σ(kz)·(1 + kz·(1 − σ(kz)))`, with `1 − σ = e·σ`, `e = e^{−kz}`: relative
/// accuracy where `σ` nears 1 (QuickGELU: k = 1.702; SiLU: k = 1).
#[inline(always)]
fn gated_logistic_slope(k: f32, z: f32) -> f32 {
    let e = exp(-k * z);
    let s = 1.0 / (1.0 + e);
    s * (1.0 + k * z * (e * s))
}

with_wide_simd! {
    /// `row ← softmax(row)`: the maximum subtracted, then `exp` and a lane-wise sum in one sweep
    /// (an empty row stays empty).
    pub(super) fn softmax => softmax_portable(row: &mut [f32])
}

#[inline(always)]
fn softmax_portable(row: &mut [f32]) {
    let inv = 1.0 / exp_row(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `row[i] ← exp(row[i] − max(row))`, returning `Σ row[i]` in one sweep: each chunk summed as
/// its exponentials are written, while they are in registers, in [`lane_sum`]'s order.
///
/// [`lane_sum`]: super::common::lane_sum
#[inline(always)]
pub(super) fn exp_row(row: &mut [f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = LaneSums::default();
    let mut chunks = row.chunks_exact_mut(SUM_LANES);
    for chunk in &mut chunks {
        chunk.iter_mut().for_each(|v| *v = exp(*v - max));
        sums.add(chunk, |v| v);
    }
    let tail = chunks.into_remainder();
    tail.iter_mut().for_each(|v| *v = exp(*v - max));
    sums.total(tail, |v| v)
}

/// [`exp_row`] compiled for AVX2, its results to the bit (no FMA contraction in Rust): for the
/// attention task's AVX2 copy, which a bare `fn` item's call shim would run as baseline SSE code.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn exp_row_avx2(row: &mut [f32]) -> f32 {
    exp_row(row)
}

/// [`apply`] as written, also for callers that inline it into their own target-feature copies
/// (the packed GEMM's tile epilogue), where the vector width must match the code around it.
#[inline(always)]
pub(super) fn apply_portable(act: Activation, y: &mut [f32]) {
    match act {
        Activation::Identity => {}
        Activation::Gelu => y.iter_mut().for_each(|v| *v = gelu(*v)),
        // ½x(1 + tanh z) = x·σ(2z): no cancellation where tanh z is near −1.
        Activation::GeluTanh => y.iter_mut().for_each(|v| {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            let z = SQRT_2_OVER_PI * (*v + 0.044_715 * *v * *v * *v);
            *v *= sigmoid(2.0 * z);
        }),
        Activation::QuickGelu => y.iter_mut().for_each(|v| *v *= sigmoid(1.702 * *v)),
        Activation::Silu => y.iter_mut().for_each(|v| *v *= sigmoid(*v)),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `c(t) = ERFC_FIT[0] + ERFC_FIT[1]·t + … + ERFC_FIT[9]·t⁹` in [`gelu`]'s
/// `erfc(a) = t·exp(−a² + c(t))`.
const ERFC_FIT: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_204,
    1.488_515_9,
    -0.822_152_23,
    0.170_872_77,
];

/// `x·Φ(x) = ½x·erfc(−x/√2)`, with `erfc(a)`, `a = |x|/√2`, as `t·exp(−a² + c(t))`,
/// `t = 1/(1 + a/2)`, and the reflection `erfc(−a) = 2 − erfc(a)`: for negative x the small
/// erfc is used directly, never `1 + erf`, so the tail keeps its relative accuracy.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * a);
    let c = ERFC_FIT.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    // ½x·t before the exp's factor, so no product is subnormal (see `gelu_avx512`).
    let half_x_erfc_a = 0.5 * x * t * exp(c - a * a);
    if x >= 0.0 {
        x - half_x_erfc_a
    } else {
        half_x_erfc_a
    }
}

/// [`gelu`] on `L` vectors of sixteen lanes, each step taken across all of them (independent
/// chains side by side), in fewer instructions than the compiled loop: every `a·b + c` one FMA,
/// the ½ of `½·erfc` folded into the fit's constant (`exp(c − ln 2 − a²)`), and the `exp` by
/// [`exp_nonpositive_avx512`].
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gelu_avx512<const L: usize>(
    x: [std::arch::x86_64::__m512; L],
) -> [std::arch::x86_64::__m512; L] {
    use std::arch::x86_64::*;
    use std::array::from_fn;
    let splat = _mm512_set1_ps;
    let one = splat(1.0);
    let a: [_; L] =
        from_fn(|i| _mm512_mul_ps(_mm512_abs_ps(x[i]), splat(std::f32::consts::FRAC_1_SQRT_2)));
    let t: [_; L] = from_fn(|i| _mm512_div_ps(one, _mm512_fmadd_ps(a[i], splat(0.5), one)));
    let mut c = [splat(ERFC_FIT[9]); L];
    for &coefficient in ERFC_FIT[1..9].iter().rev() {
        c = from_fn(|i| _mm512_fmadd_ps(c[i], t[i], splat(coefficient)));
    }
    let c0 = splat(ERFC_FIT[0] - std::f32::consts::LN_2);
    // ½·erfc(a) = t·exp(c − ln 2 − a²).
    let e = exp_nonpositive_avx512::<L>(from_fn(|i| {
        let c = _mm512_fmadd_ps(c[i], t[i], c0);
        _mm512_fnmadd_ps(a[i], a[i], c)
    }));
    // x·t first: |x·t| ≥ ~1 wherever e is tiny, so no product lands below f32's normal range
    // (Intel cores take a microcode assist for every instruction that makes a subnormal).
    from_fn(|i| {
        let xt = _mm512_mul_ps(x[i], t[i]);
        let positive = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x[i], _mm512_setzero_ps());
        _mm512_mask_blend_ps(
            positive,
            _mm512_mul_ps(xt, e[i]),
            _mm512_fnmadd_ps(xt, e[i], x[i]),
        )
    })
}

/// [`gelu_avx512`] on one vector of eight AVX2 lanes.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn gelu_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let splat = _mm256_set1_ps;
    let one = splat(1.0);
    let a = _mm256_mul_ps(
        _mm256_andnot_ps(splat(-0.0), x),
        splat(std::f32::consts::FRAC_1_SQRT_2),
    );
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(a, splat(0.5), one));
    let mut c = splat(ERFC_FIT[9]);
    for &coefficient in ERFC_FIT[1..9].iter().rev() {
        c = _mm256_fmadd_ps(c, t, splat(coefficient));
    }
    c = _mm256_fmadd_ps(c, t, splat(ERFC_FIT[0] - std::f32::consts::LN_2));
    let e = exp_nonpositive_avx2(_mm256_fnmadd_ps(a, a, c));
    // x·t first, as in `gelu_avx512`: no subnormal products.
    let xt = _mm256_mul_ps(x, t);
    let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_setzero_ps());
    _mm256_blendv_ps(_mm256_mul_ps(xt, e), _mm256_fnmadd_ps(xt, e, x), positive)
}

/// [`exp`] of `L` vectors of sixteen non-positive values (clamped below at −87, as `exp` clamps
/// them), every `a·b + c` one FMA and `2^n` by `vscalefps`.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp_nonpositive_avx512<const L: usize>(
    x: [std::arch::x86_64::__m512; L],
) -> [std::arch::x86_64::__m512; L] {
    use std::arch::x86_64::*;
    use std::array::from_fn;
    let splat = _mm512_set1_ps;
    let x: [_; L] = from_fn(|i| _mm512_max_ps(x[i], splat(-87.0)));
    let n: [_; L] = from_fn(|i| {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x[i],
            splat(std::f32::consts::LOG2_E),
        ))
    });
    let r: [_; L] = from_fn(|i| {
        _mm512_fnmadd_ps(
            n[i],
            splat(LN2_LO),
            _mm512_fnmadd_ps(n[i], splat(LN2_HI), x[i]),
        )
    });
    let mut p = [splat(1.0 / 720.0); L];
    for coefficient in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = from_fn(|i| _mm512_fmadd_ps(p[i], r[i], splat(coefficient)));
    }
    from_fn(|i| _mm512_scalef_ps(p[i], n[i]))
}

/// [`exp_nonpositive_avx512`] on one vector of eight AVX2 lanes, `2^n` from the exponent's bits
/// as in [`exp`].
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_nonpositive_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let splat = _mm256_set1_ps;
    // At −87 or above, n ≥ −126: 2^n is a normal f32.
    let x = _mm256_max_ps(x, splat(-87.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        splat(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, splat(LN2_LO), _mm256_fnmadd_ps(n, splat(LN2_HI), x));
    let mut p = splat(1.0 / 720.0);
    for coefficient in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, splat(coefficient));
    }
    let exponent = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(exponent)))
}

/// `ln 2` in two parts: `n · LN2_HI` is exact for the `n` of [`exp`]'s range, so `x − n·ln 2`
/// keeps its low bits.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` as `2^n · e^r` with `n = round(x / ln 2)` and `|r| ≤ ln 2 / 2`; `e^r` by its degree-6
/// Taylor polynomial (truncation below 1.2e-7 relative). Inputs are clamped to the range whose
/// result is a normal f32, which the activations above only reach where they saturate (and
/// blocked attention's softmax only for the keys its mask hides, whose weights it then zeroes).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a library call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    // The integer n sits in the low mantissa bits of `shifted`: no float-to-int conversion, whose
    // saturating form keeps the loop from vectorising.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

with_wide_simd! {
    /// `out[i] = 1 / (1 + e^{−|scores[i]|})` in f64: a binary classifier's top-label confidence
    /// (the logistic of the logit's magnitude), for the ECE of `compare`'s metrics.
    pub(super) avx512 fn logistic_confidences_wide => logistic_confidences_portable(out: &mut [f64], scores: &[f32])
}

#[inline(always)]
fn logistic_confidences_portable(out: &mut [f64], scores: &[f32]) {
    assert_eq!(
        out.len(),
        scores.len(),
        "logistic_confidences: lengths differ"
    );
    out.iter_mut()
        .zip(scores)
        .for_each(|(o, &s)| *o = 1.0 / (1.0 + exp_nonpositive_f64(-f64::from(s).abs())));
}

/// `e^x` for `x ≤ 0` in f64 (NaN stays NaN), within a few ulp: [`exp`]'s reduction with a
/// degree-13 Taylor polynomial (truncation below 5e-18 relative), written with plain products
/// and sums, so every vector width (and a CPU without FMA) gives the same bits. Inputs below −40
/// are taken as −40, where `e^x < 2^{−57}`: `1 + e^x` rounds to 1 either way, and `2^n` stays a
/// normal f64.
#[inline(always)]
fn exp_nonpositive_f64(x: f64) -> f64 {
    // Adding and subtracting 1.5·2^52 rounds to the nearest integer without a library call.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    // ln 2 in two parts: the high one ends in 21 zero bits, so `n · LN2_HI_F64` is exact.
    const LN2_HI_F64: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO_F64: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    const INVERSE_FACTORIALS: [f64; 14] = {
        // Each `1 / k!` rounded once: the factorials up to 13! are exact in f64.
        let (mut c, mut factorial, mut k) = ([1.0; 14], 1.0, 1);
        while k < 14 {
            factorial *= k as f64;
            c[k] = 1.0 / factorial;
            k += 1;
        }
        c
    };
    let x = if x < -40.0 { -40.0 } else { x };
    let shifted = x * std::f64::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI_F64) - n * LN2_LO_F64;
    let p = INVERSE_FACTORIALS[..13]
        .iter()
        .rev()
        .fold(INVERSE_FACTORIALS[13], |p, &c| p * r + c);
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f64::from_bits(n_bits.wrapping_add(1023) << 52);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 row exponential gives the portable one's weights and sum to the bit, over rows
    /// with and without whole chunks of lanes, partial vectors and scores far below the maximum.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_exp_row_is_the_portable_one() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        for len in [1, 7, 8, 31, 32, 33, 64, 77, 128, 301] {
            let scores: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 60.0)
                .collect();
            let (mut want, mut got) = (scores.clone(), scores);
            let want_sum = exp_row(&mut want);
            // SAFETY: the CPU has AVX2 (checked above).
            let got_sum = unsafe { exp_row_avx2(&mut got) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{len}: weights");
            assert_eq!(got_sum.to_bits(), want_sum.to_bits(), "{len}: sum");
        }
    }

    /// Points from −20 to 20, dense where the activations bend.
    fn grid() -> Vec<f32> {
        (-4000..=4000).map(|i| i as f32 * 0.005).collect()
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        for x in (-8600..=8800).map(|i| i as f32 * 0.01) {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn every_activation_matches_its_scalar_definition_in_f64() {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        type Reference<'a> = &'a dyn Fn(f64) -> f64;
        let cases: [(Activation, Reference, f64); 7] = [
            // erfc of an f32-rounded x/√2: its e^{−x²/2} is only this accurate.
            (
                Activation::Gelu,
                &|x| 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2),
                5e-6,
            ),
            (
                Activation::GeluTanh,
                &|x| {
                    let z = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
                    0.5 * x * (1.0 + z.tanh())
                },
                2e-6,
            ),
            (Activation::QuickGelu, &|x| x * sig(1.702 * x), 2e-6),
            (Activation::Silu, &|x| x * sig(x), 2e-6),
            (Activation::Sigmoid, &sig, 5e-7),
            (Activation::Relu, &|x| x.max(0.0), 0.0),
            (Activation::Tanh, &f64::tanh, 2e-7),
        ];
        // Every form this CPU runs (each wide one has its own GELU); the grid's length, no
        // whole number of vectors, leaves them a tail.
        type Form = fn(Activation, &mut [f32]);
        let mut forms: Vec<(&str, Form)> = vec![("portable", apply_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                forms.push(("avx2", |act, y| unsafe { apply_avx2(act, y) }));
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked above).
                forms.push(("avx512", |act, y| unsafe { apply_avx512(act, y) }));
            }
        }
        // The gated form with `up = 1` (fused for SiLU where the CPU has AVX-512).
        forms.push(("gated", |act, y| {
            let (gate, up) = (y.to_vec(), vec![1.0; y.len()]);
            gated(act, &gate, &up, y)
        }));
        for (form, run) in forms {
            for &(act, reference, tolerance) in &cases {
                let mut y = grid();
                run(act, &mut y);
                for (x, got) in grid().into_iter().zip(y) {
                    let want = reference(x as f64);
                    // Relative to each value; the absolute floor only covers results that f32
                    // flushes towards zero (GELU and the logistic forms far out on the left).
                    let bound = tolerance * want.abs() + 1e-9;
                    assert!(
                        (got as f64 - want).abs() <= bound,
                        "{form} {act:?}({x}) = {got}, want {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_slope_matches_the_f64_derivative() {
        use crate::bench::cases::reference;
        // f32 slopes of the gated forms are sums of two terms, `act(z)/z` (the gate) and the
        // rest, which cancel where the slope crosses zero; the bound is relative to the gate
        // as well as to the slope (and to the slope alone for the other activations).
        let gated = [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Silu,
        ];
        type Form = fn(Activation, &[f32], &[f32], &mut [f32]);
        let mut forms: Vec<(&str, Form)> = vec![("portable", backward_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                forms.push(("avx2", |act, z, dy, dz| unsafe {
                    backward_avx2(act, z, dy, dz)
                }));
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked above).
                forms.push(("avx512", |act, z, dy, dz| unsafe {
                    backward_avx512(act, z, dy, dz)
                }));
            }
        }
        let z = grid();
        // Output gradients of both signs and several sizes; the grid's length, no whole number
        // of vectors, leaves every form a tail.
        let dy: Vec<f32> = (0..z.len()).map(|i| [1.0, -0.5, 3.0][i % 3]).collect();
        for (form, run) in forms {
            for act in Activation::ALL {
                let mut dz = vec![f32::NAN; z.len()];
                run(act, &z, &dy, &mut dz);
                for ((&x, &d), got) in z.iter().zip(&dy).zip(dz) {
                    let x64 = x as f64;
                    let want = d as f64 * reference::activation_derivative(act, x64);
                    let gate = if gated.contains(&act) && x != 0.0 {
                        reference::activation(act, x64) / x64
                    } else {
                        0.0
                    };
                    // The absolute floor covers the far tails, below 1e-9, where rounding the
                    // exponent (z²/2, kz) to f32 costs more than this of the value.
                    let bound = 2e-6 * (want.abs() + (d as f64 * gate).abs()) + 1e-9;
                    assert!(
                        (got as f64 - want).abs() <= bound,
                        "{form} {act:?}'({x}) · {d} = {got}, want {want}"
                    );
                }
            }
        }
    }

    /// The f64 logistic confidences against libm's `exp` at scores from 0 to 50 (dense below 5,
    /// where the confidences are far from 1), their negatives, the clamp's edge, the extremes
    /// and NaN; the wide copy this CPU runs against the portable one bit for bit.
    #[test]
    fn logistic_confidences_match_libm_within_two_ulp() {
        let mut scores: Vec<f32> = (0..=200_000).map(|i| i as f32 * 2.5e-5).collect();
        scores.extend((0..=100_000).map(|i| i as f32 * 5e-4));
        scores.extend([
            f32::from_bits(1),
            f32::MIN_POSITIVE,
            39.999,
            40.0,
            40.001,
            700.0,
        ]);
        scores.extend([f32::MAX, f32::INFINITY]);
        let negated: Vec<f32> = scores.iter().map(|&s| -s).collect();
        scores.extend(negated);
        scores.push(f32::NAN);
        let mut wide = vec![0.0; scores.len()];
        logistic_confidences_wide(&mut wide, &scores);
        let mut portable = vec![0.0; scores.len()];
        logistic_confidences_portable(&mut portable, &scores);
        for ((&s, &got), &same) in scores.iter().zip(&wide).zip(&portable) {
            assert_eq!(
                got.to_bits(),
                same.to_bits(),
                "wide and portable differ at {s}"
            );
            let want = 1.0 / (1.0 + (-f64::from(s).abs()).exp());
            if s.is_nan() {
                assert!(got.is_nan(), "confidence of NaN: {got}");
                continue;
            }
            let ulps = (got - want).abs() / (want * f64::EPSILON);
            assert!(
                ulps <= 2.0,
                "confidence of {s}: {got}, libm {want} ({ulps} ulp)"
            );
        }
    }
}
