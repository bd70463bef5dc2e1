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
//! operations, so the same results). The packed GEMM calls `apply` once per register tile.
//!
//! Keep each activation's loop body small: LLVM's loop vectoriser judges the body as a whole,
//! and a GELU that also evaluated a separate small-argument erf polynomial (for erf accurate to
//! 1.5e-7 near 0, where `1 − erfc` is only good to 4e-7) was left scalar — 10 ns an element
//! instead of under 1 on AVX-512.

use super::common::{lane_sum, with_wide_simd};
use crate::backend::Activation;

with_wide_simd! {
    /// Applies `act` to every value of `y` in place (sixteen lanes where the CPU has AVX-512).
    avx512 fn apply => apply_portable(act: Activation, y: &mut [f32])
}

with_wide_simd! {
    /// `row ← softmax(row)`: the maximum subtracted, then `exp` and a lane-wise sum (an empty
    /// row stays empty).
    fn softmax => softmax_portable(row: &mut [f32])
}

#[inline(always)]
fn softmax_portable(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / lane_sum(row, |v| v);
    row.iter_mut().for_each(|v| *v *= inv);
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

/// `x·Φ(x) = ½x·erfc(−x/√2)`, with `erfc(a)`, `a = |x|/√2`, as `t·exp(−a² + c(t))`,
/// `t = 1/(1 + a/2)`, and the reflection `erfc(−a) = 2 − erfc(a)`: for negative x the small
/// erfc is used directly, never `1 + erf`, so the tail keeps its relative accuracy.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    // c(t) = C[0] + C[1]·t + … + C[9]·t⁹.
    const C: [f32; 10] = [
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
    let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * a);
    let c = C.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    let erfc_a = t * exp(c - a * a);
    let erfc_minus = if x >= 0.0 { 2.0 - erfc_a } else { erfc_a };
    0.5 * x * erfc_minus
}

/// `e^x` as `2^n · e^r` with `n = round(x / ln 2)` and `|r| ≤ ln 2 / 2`; `e^r` by its degree-6
/// Taylor polynomial (truncation below 1.2e-7 relative). Inputs are clamped to the range whose
/// result is a normal f32, which the activations above only reach where they saturate (and
/// blocked attention's softmax only for the keys its mask hides, whose weights it then zeroes).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a library call.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        for (act, reference, tolerance) in cases {
            let mut y = grid();
            apply(act, &mut y);
            for (x, got) in grid().into_iter().zip(y) {
                let want = reference(x as f64);
                // Relative to each value; the absolute floor only covers results that f32
                // flushes towards zero (GELU and the logistic forms far out on the left).
                let bound = tolerance * want.abs() + 1e-9;
                assert!(
                    (got as f64 - want).abs() <= bound,
                    "{act:?}({x}) = {got}, want {want}"
                );
            }
        }
    }
}
