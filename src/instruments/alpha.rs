//! The trimmed comparison of one candidate sample with a reference sample (`mscope alpha`):
//! α̂, the KS distance and its threshold, the trimmed W2 cost and, on request, the profile
//! `d(α)` of the Kolmogorov distance to the α-trimmings of the candidate.

use serde::Serialize;

use crate::backend::trim;
use crate::backend::{Backend, TrimReference, TrimSpec, W2Grid};
use crate::error::{Error, Result};

/// What `mscope alpha` reports; the serialised fields are the JSON report's keys.
#[derive(Clone, Debug, Serialize)]
pub struct AlphaReport {
    pub alpha_hat: f64,
    pub ks: f64,
    pub threshold: f64,
    pub level: f64,
    pub n_candidate: usize,
    pub n_reference: usize,
    pub trimmed_w2: f64,
    /// The trimming level of `trimmed_w2`: the one asked for, or α̂.
    pub w2_alpha: f64,
    #[serde(skip_serializing_if = "Curve::is_unreported")]
    pub curve: Curve,
}

/// `d(α)` at α = i/steps, i = 0..steps; serialised as its points.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(transparent)]
pub struct Curve {
    pub points: Vec<CurvePoint>,
    /// Asked for, rather than computed only to be drawn.
    #[serde(skip)]
    pub reported: bool,
}

impl Curve {
    fn is_unreported(&self) -> bool {
        !self.reported
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct CurvePoint {
    pub alpha: f64,
    pub distance: f64,
}

/// Points of `d(α)` computed only to be drawn.
const DRAWN_STEPS: usize = 100;

/// Most steps of a reported curve: finer than any table or plot resolves, and a bound on the
/// work and memory a mistyped `--curve` can ask for.
pub const MAX_CURVE_STEPS: usize = 100_000;

/// Compares `candidate` with `reference` at `level` on `backend`; `w2_alpha` is the trimming
/// level of the W2 cost [default: α̂]. The curve has `curve` steps when asked for, else
/// `DRAWN_STEPS` when it is to be `drawn`.
pub fn report(
    backend: &dyn Backend,
    candidate: &[f32],
    reference: &[f32],
    (level, w2_alpha): (f64, Option<f64>),
    (curve, drawn): (Option<usize>, bool),
) -> Result<AlphaReport> {
    let spec = TrimSpec {
        level,
        w2_alpha,
        // One reference sample: the merged grid is always used.
        w2_grid: W2Grid::Merged,
    };
    if let Some(steps) = curve.filter(|&s| s > MAX_CURVE_STEPS) {
        return Err(Error::input(format!(
            "--curve {steps}: at most {MAX_CURVE_STEPS} steps"
        )));
    }
    let r = backend.trim_search(&[candidate], TrimReference::Sample(reference), &spec)?[0];
    let curve = if curve.is_some() || drawn {
        let steps = curve.unwrap_or(DRAWN_STEPS).max(1);
        let profile =
            trim::Profile::from_sorted(&trim::sorted(candidate), &trim::sorted(reference));
        Curve {
            points: (0..steps)
                .map(|i| {
                    let alpha = i as f64 / steps as f64;
                    CurvePoint {
                        alpha,
                        distance: profile.distance(alpha),
                    }
                })
                .collect(),
            reported: curve.is_some(),
        }
    } else {
        Curve::default()
    };
    Ok(AlphaReport {
        alpha_hat: r.alpha_hat,
        ks: r.ks,
        threshold: r.threshold,
        level,
        n_candidate: r.n_candidate,
        n_reference: r.n_reference,
        trimmed_w2: r.trimmed_w2,
        w2_alpha: w2_alpha.unwrap_or(r.alpha_hat),
        curve,
    })
}
