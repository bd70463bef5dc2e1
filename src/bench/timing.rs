//! Warm-up, then timed repetitions on a monotonic clock. Each repetition ends with the backend's
//! `synchronize`, so on a GPU the time covers the device's execution, not only the recording
//! (wall clock with a completion wait; device timestamp queries are not used yet).

use std::time::Instant;

use crate::backend::Backend;
use crate::error::Result;

/// Seconds of the timed repetitions of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Every repetition, in run order.
    pub seconds: Vec<f64>,
}

impl Timing {
    pub fn median(&self) -> f64 {
        let mut sorted = self.seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            0.5 * (sorted[mid - 1] + sorted[mid])
        }
    }

    pub fn min(&self) -> f64 {
        self.seconds.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.seconds.iter().copied().fold(0.0, f64::max)
    }
}

/// Runs `op` `warmup` times untimed (pipeline compilation, first-touch page faults, caches),
/// then `repeat` times timed.
pub fn measure(
    backend: &dyn Backend,
    warmup: usize,
    repeat: usize,
    op: &mut dyn FnMut() -> Result<()>,
) -> Result<Timing> {
    for _ in 0..warmup {
        op()?;
        backend.synchronize()?;
    }
    let seconds = (0..repeat)
        .map(|_| {
            let start = Instant::now();
            op()?;
            backend.synchronize()?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    Ok(Timing { seconds })
}
