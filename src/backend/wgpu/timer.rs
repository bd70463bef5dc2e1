//! Device-side timing with timestamp queries (`Features::TIMESTAMP_QUERY`). While a timer runs,
//! every compute pass writes the device clock at its start and end into a pair of queries of its
//! own; the timed region lasts from the earliest start to the latest end. Pass-level writes are
//! used rather than `CommandEncoder::write_timestamp`, whose placement among the recorded
//! commands wgpu does not guarantee.

use super::device::device_error;
use super::WgpuBackend;
use crate::backend::Backend;
use crate::error::Result;

/// Starts a timed region where the adapter offers timestamp queries.
pub(super) fn start_device_timer(backend: &WgpuBackend) -> Result<bool> {
    backend.host_work.take();
    if backend.timestamps.is_none() {
        return Ok(false);
    }
    backend.start_timer_region();
    Ok(true)
}

/// Submits the region's passes with the resolve of their queries and reads the device seconds
/// they spanned; `None` where no region could be timed or an op computed on the host too
/// ([`crate::backend::HostWork`]).
pub(super) fn stop_device_timer(backend: &WgpuBackend) -> Result<Option<f64>> {
    let host_work = backend.host_work.take();
    let Some(timestamps) = &backend.timestamps else {
        backend.synchronize()?;
        return Ok(None);
    };
    let bytes = backend.submit_with(|encoder, timer| {
        timer
            .take()
            .and_then(|state| timestamps.record_resolve(&state, encoder))
    });
    let Some(bytes) = bytes else {
        backend.wait()?;
        return Ok(None);
    };
    backend.map_for_reading(std::iter::once(&timestamps.readback), "device timer")?;
    let seconds = {
        let view = timestamps
            .readback
            .get_mapped_range(..bytes)
            .map_err(|e| device_error(format!("device timer: {e}")))?;
        timestamps.region_seconds(bytemuck::cast_slice(&view))
    };
    timestamps.readback.unmap();
    Ok(Some(seconds).filter(|_| !host_work))
}

/// Passes one timed region can hold; a region with more is reported untimed (host clock).
const MAX_TIMED_PASSES: u32 = 1024;
/// Bytes of one resolved query (a u64 tick count).
const QUERY_BYTES: u64 = 8;

/// The query set and buffers of the device timer, created once with the backend.
pub(super) struct Timestamps {
    queries: wgpu::QuerySet,
    /// `QUERY_RESOLVE` destination; it cannot be mapped, so it is copied to `readback`.
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    nanoseconds_per_tick: f64,
}

/// A running timer's progress, kept beside the pending encoder so passes take queries in the
/// order they are recorded.
pub(super) struct TimerState {
    next_query: u32,
    overflowed: bool,
}

impl TimerState {
    pub(super) fn new() -> Self {
        TimerState {
            next_query: 0,
            overflowed: false,
        }
    }
}

impl Timestamps {
    pub(super) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let count = 2 * MAX_TIMED_PASSES;
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: u64::from(count) * QUERY_BYTES,
                usage,
                mapped_at_creation: false,
            })
        };
        Timestamps {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("device timer"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolved: buffer(
                "timestamps resolved",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "timestamps readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            nanoseconds_per_tick: f64::from(queue.get_timestamp_period()),
        }
    }

    /// The timestamp writes of the next pass, or `None` once the region has more passes than
    /// the query set holds.
    pub(super) fn pass_writes(
        &self,
        state: &mut TimerState,
    ) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        if state.next_query + 2 > 2 * MAX_TIMED_PASSES {
            state.overflowed = true;
            return None;
        }
        let start = state.next_query;
        state.next_query += 2;
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(start),
            end_of_pass_write_index: Some(start + 1),
        })
    }

    /// Records the copy of a finished region's queries to the readback buffer; returns how many
    /// bytes of it to read, or `None` when the region cannot be timed.
    fn record_resolve(
        &self,
        state: &TimerState,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Option<u64> {
        if state.overflowed || state.next_query == 0 {
            return None;
        }
        let queries = state.next_query;
        encoder.resolve_query_set(&self.queries, 0..queries, &self.resolved, 0);
        let bytes = u64::from(queries) * QUERY_BYTES;
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, bytes);
        Some(bytes)
    }

    /// Seconds from the earliest pass start to the latest pass end among `ticks` (start, end
    /// pairs as [`Timestamps::pass_writes`] assigned them).
    fn region_seconds(&self, ticks: &[u64]) -> f64 {
        let first = ticks.iter().step_by(2).copied().min().unwrap_or(0);
        let last = ticks.iter().skip(1).step_by(2).copied().max().unwrap_or(0);
        last.saturating_sub(first) as f64 * self.nanoseconds_per_tick * 1e-9
    }
}
