//! The per-block passes of `compare`'s classifier metrics (churn, accuracy and the expected
//! calibration error's bins), branch-free so that the copies compiled for AVX-512 and AVX2
//! vectorise them: the baseline x86-64 target made the bin a libm `ceil` and an integer
//! conversion per point. Every lane sum has a fixed layout (point `p` in lane `p mod
//! GAP_LANES`), so the results do not depend on the vector width or the threads.

use super::common::with_wide_simd;

/// Bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Lanes of [`MetricSums::gaps`]: one AVX-512 register of f64 per bin.
const GAP_LANES: usize = 8;

/// One model's running sums over its points, blocks of them at a time (every block but the
/// last a whole number of eight points, the lanes of the calibration sums).
#[derive(Clone, Debug, Default)]
pub struct MetricSums {
    /// Over the points, how many other models predict another label.
    pub disagreements: u64,
    /// Points whose label differs from the ensemble's majority vote.
    pub off_majority: u64,
    /// Points labelled correctly.
    pub right: u64,
    /// `gaps[b][j]`: `Σ (right − confidence)` over the points of lane `j` in bin `b`, which
    /// holds confidences in `(b/15, (b+1)/15]`.
    gaps: [[f64; GAP_LANES]; ECE_BINS],
}

impl MetricSums {
    /// Expected calibration error `Σ_b |Σ_{p∈B_b} (right_p − confidence_p)| / n`, `n` points in
    /// all, the lanes combined in a fixed order.
    pub fn ece(&self, n: usize) -> f64 {
        self.gaps
            .iter()
            .map(|l| ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])))
            .map(|gap| gap.abs() / n as f64)
            .sum()
    }
}

with_wide_simd! {
    /// [`super::binary_churn`], as wide as the CPU allows.
    pub(super) avx512 fn binary_churn_wide => binary_churn_portable(
        sums: &mut MetricSums,
        scores: &[f32],
        positive_votes: &[u32],
        models: u32
    )
}

#[inline(always)]
fn binary_churn_portable(
    sums: &mut MetricSums,
    scores: &[f32],
    positive_votes: &[u32],
    models: u32,
) {
    assert_eq!(
        scores.len(),
        positive_votes.len(),
        "binary_churn: lengths differ"
    );
    let (mut disagreements, mut off_majority) = (0u64, 0u64);
    for (&s, &positive) in scores.iter().zip(positive_votes) {
        let predicts_positive = s > 0.0;
        // The models that predict the other label; the majority is positive only with more
        // than half of the votes (a tie goes to the smaller label).
        let others = if predicts_positive {
            models - positive
        } else {
            positive
        };
        disagreements += u64::from(others);
        off_majority +=
            u64::from(predicts_positive != (2 * u64::from(positive) > u64::from(models)));
    }
    sums.disagreements += disagreements;
    sums.off_majority += off_majority;
}

/// [`super::add_calibration`]: whole lanes of points in AVX-512 where the CPU has it (the
/// compiler left alone vectorises [`add_lanes`] across the bins, with a gather and a scatter
/// per bin), else as [`add_calibration_narrow`]; the same bits either way.
pub(super) fn add_calibration_wide(sums: &mut MetricSums, confidences: &[f64], right: &[bool]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        assert_eq!(
            confidences.len(),
            right.len(),
            "add_calibration: lengths differ"
        );
        let whole = confidences.len() / GAP_LANES * GAP_LANES;
        // SAFETY: the CPU has AVX-512F (checked above).
        unsafe {
            add_whole_lanes_avx512(
                &mut sums.gaps,
                confidences[..whole].as_chunks().0,
                right[..whole].as_chunks().0,
            )
        };
        sums.right += right[..whole].iter().map(|&r| u64::from(r)).sum::<u64>();
        return add_calibration_portable(sums, &confidences[whole..], &right[whole..]);
    }
    add_calibration_narrow(sums, confidences, right)
}

with_wide_simd! {
    /// [`add_calibration_portable`] compiled for AVX2 where the CPU has it: [`ece_bin`]'s
    /// ceiling one `vroundpd` a lane (the baseline target has no rounding instruction, so
    /// there it is a libm call a point).
    fn add_calibration_narrow => add_calibration_portable(
        sums: &mut MetricSums,
        confidences: &[f64],
        right: &[bool]
    )
}

#[inline(always)]
fn add_calibration_portable(sums: &mut MetricSums, confidences: &[f64], right: &[bool]) {
    assert_eq!(
        confidences.len(),
        right.len(),
        "add_calibration: lengths differ"
    );
    let mut gaps = sums.gaps;
    let (confidence_chunks, confidence_tail) = confidences.as_chunks::<GAP_LANES>();
    let (right_chunks, right_tail) = right.as_chunks::<GAP_LANES>();
    for (c, r) in confidence_chunks.iter().zip(right_chunks) {
        add_lanes(&mut gaps, c, r);
    }
    // The tail padded with points of no gap (confidence 0, wrong), which add nothing.
    let (mut c, mut r) = ([0.0; GAP_LANES], [false; GAP_LANES]);
    c[..confidence_tail.len()].copy_from_slice(confidence_tail);
    r[..right_tail.len()].copy_from_slice(right_tail);
    add_lanes(&mut gaps, &c, &r);
    sums.gaps = gaps;
    sums.right += right.iter().map(|&r| u64::from(r)).sum::<u64>();
}

/// [`add_lanes`] over whole lanes of points, the fifteen bins' sums in registers: the bin by
/// `vrndscalepd` (ceiling), `vmaxpd` against 1 (which gives 1 for NaN, as `f64::max` does)
/// and `vminpd`, each gap added by a masked `vaddpd` (the portable form adds 0 to the other
/// bins: the same sums, none of which is −0).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_whole_lanes_avx512(
    gaps: &mut [[f64; GAP_LANES]; ECE_BINS],
    confidences: &[[f64; GAP_LANES]],
    right: &[[bool; GAP_LANES]],
) {
    use std::arch::x86_64::*;
    let splat = _mm512_set1_pd;
    let mut sums: [__m512d; ECE_BINS] = std::array::from_fn(|b| _mm512_loadu_pd(gaps[b].as_ptr()));
    for (c, r) in confidences.iter().zip(right) {
        let c = _mm512_loadu_pd(c.as_ptr());
        let r = u64::from_le_bytes(r.map(u8::from));
        let right_mask = _mm512_test_epi64_mask(
            _mm512_cvtepu8_epi64(_mm_cvtsi64_si128(r as i64)),
            _mm512_set1_epi64(1),
        );
        let gap = _mm512_mask_sub_pd(
            _mm512_sub_pd(_mm512_setzero_pd(), c),
            right_mask,
            splat(1.0),
            c,
        );
        let ceiling = _mm512_roundscale_pd::<{ _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC }>(
            _mm512_mul_pd(c, splat(ECE_BINS as f64)),
        );
        let bin = _mm512_sub_pd(
            _mm512_min_pd(_mm512_max_pd(ceiling, splat(1.0)), splat(ECE_BINS as f64)),
            splat(1.0),
        );
        for (b, sum) in sums.iter_mut().enumerate() {
            let in_bin = _mm512_cmpeq_pd_mask(bin, splat(b as f64));
            *sum = _mm512_mask_add_pd(*sum, in_bin, *sum, gap);
        }
    }
    for (b, sum) in sums.iter().enumerate() {
        _mm512_storeu_pd(gaps[b].as_mut_ptr(), *sum);
    }
}

/// Adds one point per lane to the gaps of its bin (and nothing to the other bins).
#[inline(always)]
fn add_lanes(
    gaps: &mut [[f64; GAP_LANES]; ECE_BINS],
    confidences: &[f64; GAP_LANES],
    right: &[bool; GAP_LANES],
) {
    // Plain loops: every call here is inlined into the wide copy (a call left out of line
    // would be compiled for the baseline target, its `ceil` a libm call).
    let (mut bins, mut point_gaps) = ([0.0; GAP_LANES], [0.0; GAP_LANES]);
    for j in 0..GAP_LANES {
        bins[j] = ece_bin(confidences[j]);
        point_gaps[j] = f64::from(u8::from(right[j])) - confidences[j];
    }
    for (b, lanes) in gaps.iter_mut().enumerate() {
        for j in 0..GAP_LANES {
            lanes[j] += if bins[j] == b as f64 {
                point_gaps[j]
            } else {
                0.0
            };
        }
    }
}

/// The bin of a confidence as an f64, `⌈15·confidence⌉ − 1` kept in `0..15` (NaN in bin 0):
/// compared with each bin's index in f64, with no conversion to an integer.
#[inline(always)]
fn ece_bin(confidence: f64) -> f64 {
    // `max` before `min`: a NaN ceiling becomes 1.
    (confidence * ECE_BINS as f64)
        .ceil()
        .max(1.0)
        .min(ECE_BINS as f64)
        - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bin against `f64::ceil`'s integer bin at bin edges, their neighbours and odd values.
    #[test]
    fn ece_bin_is_the_ceiling_bin() {
        let by_ceil = |c: f64| ((c * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        let mut confidences = vec![
            0.0,
            -0.0,
            -1.0,
            1e-300,
            0.5,
            1.0,
            2.0,
            f64::INFINITY,
            f64::NAN,
        ];
        for b in 0..=ECE_BINS {
            let edge = b as f64 / ECE_BINS as f64;
            confidences.extend([edge, edge.next_down(), edge.next_up()]);
        }
        confidences.extend((0..10_000).map(|i| i as f64 / 9_999.0));
        for c in confidences {
            assert_eq!(ece_bin(c), by_ceil(c) as f64, "confidence {c:e}");
        }
    }

    /// The wide copies against the plain definitions on points of every bin, a tail past the
    /// last whole lane and NaN: churn counts equal, the ECE sums within rounding of f64 sums
    /// per bin taken point by point.
    #[test]
    fn block_passes_match_their_definitions() {
        let n = 1_003;
        let models = 7u32;
        let scores: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let votes: Vec<u32> = (0..n).map(|i| (i * 13 % 8) as u32).collect();
        let mut confidences: Vec<f64> = (0..n).map(|i| (i * 53 % 1000) as f64 / 999.0).collect();
        let right: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
        let mut sums = MetricSums::default();
        binary_churn_wide(&mut sums, &scores, &votes, models);
        add_calibration_wide(&mut sums, &confidences, &right);
        let (mut disagreements, mut off) = (0, 0);
        for (&s, &v) in scores.iter().zip(&votes) {
            let label = usize::from(s > 0.0);
            let counts = [models - v, v];
            disagreements += u64::from(models - counts[label]);
            let majority = usize::from(counts[1] > counts[0]);
            off += u64::from(label != majority);
        }
        assert_eq!(
            (sums.disagreements, sums.off_majority),
            (disagreements, off)
        );
        assert_eq!(sums.right, right.iter().filter(|&&r| r).count() as u64);
        let (mut bin_right, mut bin_confidence) = ([0.0; ECE_BINS], [0.0; ECE_BINS]);
        for (&c, &r) in confidences.iter().zip(&right) {
            let b = ((c * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
            bin_right[b] += f64::from(u8::from(r));
            bin_confidence[b] += c;
        }
        let want: f64 = (0..ECE_BINS)
            .map(|b| (bin_right[b] - bin_confidence[b]).abs() / n as f64)
            .sum();
        let mut portable = MetricSums::default();
        add_calibration_portable(&mut portable, &confidences, &right);
        assert_eq!(portable.right, sums.right);
        for (w, p) in sums
            .gaps
            .iter()
            .flatten()
            .zip(portable.gaps.iter().flatten())
        {
            assert_eq!(w.to_bits(), p.to_bits(), "wide and portable sums differ");
        }
        let got = sums.ece(n);
        assert!((got - want).abs() <= 1e-14, "ECE {got}, want {want}");
        // A NaN confidence makes the ECE NaN, as the plain sums would.
        confidences[n - 1] = f64::NAN;
        let mut sums = MetricSums::default();
        add_calibration_wide(&mut sums, &confidences, &right);
        assert!(sums.ece(n).is_nan());
    }
}
