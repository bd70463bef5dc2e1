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
/// last a whole number of [`GAP_LANES`] points).
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
    avx512 fn binary_churn_wide => binary_churn_portable(
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

with_wide_simd! {
    /// [`super::add_calibration`], as wide as the CPU allows.
    avx512 fn add_calibration_wide => add_calibration_portable(
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
    // Local sums, kept in registers: fifteen vectors of eight f64 lanes.
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
        let got = sums.ece(n);
        assert!((got - want).abs() <= 1e-14, "ECE {got}, want {want}");
        // A NaN confidence makes the ECE NaN, as the plain sums would.
        confidences[n - 1] = f64::NAN;
        let mut sums = MetricSums::default();
        add_calibration_wide(&mut sums, &confidences, &right);
        assert!(sums.ece(n).is_nan());
    }
}
