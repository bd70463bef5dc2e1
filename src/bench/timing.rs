//! Warm-up, then timed repetitions. Each repetition is timed by the device's own clock where the
//! backend has one (wgpu timestamp queries), else by a monotonic host clock around the op and the
//! backend's `synchronize` (so on a GPU the time still covers the device's execution).

use std::time::Instant;

use crate::backend::Backend;
use crate::error::Result;

/// Which clock timed a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The device's timestamps, from the start of the first kernel to the end of the last.
    Device,
    /// The host's monotonic clock around the op and a wait for the device.
    Host,
}

impl Clock {
    pub fn name(self) -> &'static str {
        match self {
            Clock::Device => "device",
            Clock::Host => "host",
        }
    }
}

/// Seconds of the timed repetitions of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Every repetition, in run order.
    pub seconds: Vec<f64>,
    pub clock: Clock,
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
/// then `repeat` times timed. Device times are used only when every repetition has one, so one
/// case never mixes clocks.
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
    let (mut host, mut device) = (Vec::with_capacity(repeat), Vec::with_capacity(repeat));
    for _ in 0..repeat {
        let start = Instant::now();
        backend.start_device_timer()?;
        op()?;
        device.push(backend.stop_device_timer()?);
        host.push(start.elapsed().as_secs_f64());
    }
    Ok(match device.into_iter().collect::<Option<Vec<f64>>>() {
        Some(seconds) => Timing {
            seconds,
            clock: Clock::Device,
        },
        None => Timing {
            seconds: host,
            clock: Clock::Host,
        },
    })
}
