//! The device plumbing every family file builds on: opening the adapter, the pending command
//! encoder and its submit policy, waiting and mapping, the generic [`WgpuBackend::dispatch`], and
//! the lookup of a tensor's buffers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::kernels::{Kernel, PipelineCache};
use super::memory::{buffer_bytes, WgpuStorage, USAGE};
use super::timer::{TimerState, Timestamps};
use super::{adapter, gemm, WgpuBackend, WgpuOptions};
use crate::backend::{shapes, HostWork, SeqLayout, Storage, Tensor};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Passes recorded before the pending encoder is submitted without waiting for a download, so the
/// device starts on long sequences of ops while the host records the rest.
const PASSES_PER_SUBMIT: usize = 32;

/// Mesa's llvmpipe (the lavapipe Vulkan driver) counts the loop iterations of each shader
/// invocation, all loops together, and ends every loop once the count reaches this
/// (`LP_MAX_TGSI_LOOP_ITERATIONS`): a longer kernel would return garbage without an error.
pub(super) const LLVMPIPE_LOOP_LIMIT: u64 = 65_535;

/// Reduction depth per shared slab of the tiled kernels (`TILE_K` in gemm.wgsl, ntk.wgsl).
const SLAB_DEPTH: usize = 16;

/// Loop iterations per invocation of a tiled kernel reducing over `depth` through shared slabs:
/// per slab its own loop, a 4-step load and a 16-step multiply, each with its exit test, and a
/// quarter more for what that leaves out (attention.wgsl's bound, counted the same way, came
/// within 3% of llvmpipe's).
pub(super) fn slab_loop_iterations(depth: usize) -> u64 {
    let slabs = depth.div_ceil(SLAB_DEPTH) as u64 + 1;
    slabs * (1 + 5 + (SLAB_DEPTH as u64 + 1)) * 5 / 4
}

/// Loop iterations per invocation of a direct kernel reducing over `depth` one step at a time,
/// with the same quarter's margin.
pub(super) fn direct_loop_iterations(depth: usize) -> u64 {
    (depth as u64 + 1) * 5 / 4
}

/// The command encoder ops record into until it is submitted.
#[derive(Default)]
pub(super) struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    passes: usize,
    /// Set while a device timer runs.
    timer: Option<TimerState>,
}

impl WgpuBackend {
    /// Opens the adapter `options` select, or says why none could be opened.
    pub fn open(options: &WgpuOptions) -> Result<Self> {
        let unavailable = |reason: String| Error::BackendUnavailable {
            backend: "wgpu",
            reason,
        };
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = adapter::select(
            &instance,
            options.adapter_index,
            options.adapter.as_deref(),
            options.allow_software,
        )
        .map_err(unavailable)?;
        let info = adapter.get_info();
        let offered = adapter.limits();
        // WebGPU's defaults cover the kernels (16 KiB workgroup memory, 256 invocations); only
        // buffer sizes are raised to what the adapter offers, since they bound model size.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: offered.max_storage_buffer_binding_size,
            max_buffer_size: offered.max_buffer_size,
            ..wgpu::Limits::default()
        };
        let subgroup_norms =
            options.subgroups && adapter.features().contains(wgpu::Features::SUBGROUP);
        // SHADER_F16 lets GEMM weights and embedding tables stay f16 on the device (the f16
        // builds of gemm.wgsl and gather.wgsl).
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
        wanted.set(wgpu::Features::SUBGROUP, subgroup_norms);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("mscope"),
            required_features: adapter.features() & wanted,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| unavailable(format!("{}: {e}", info.name)))?;
        let device_cap = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: buffer_bytes(1, DType::F32),
            usage: USAGE,
            mapped_at_creation: false,
        });
        let software = info.device_type == wgpu::DeviceType::Cpu;
        let loop_limit = (info.driver == "llvmpipe").then_some(LLVMPIPE_LOOP_LIMIT);
        let subgroup_gemm = subgroup_norms && info.subgroup_min_size >= gemm::MIN_SUBGROUP_SIZE;
        let gemm =
            gemm::choose_variant(options.gemm, software, subgroup_gemm).map_err(unavailable)?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(WgpuBackend {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            gemm,
            subgroup_norms,
            loop_limit,
            pipelines: PipelineCache::default(),
            pending: Mutex::default(),
            placeholder,
            max_part_bytes: options
                .max_binding_bytes
                .map_or(device_cap, |b| b.min(device_cap)),
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            timestamps: device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
                .then(|| Timestamps::new(&device, &queue)),
            host_work: HostWork::default(),
            adapter: info,
            device,
            queue,
        })
    }

    pub(super) fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| device_error(e.to_string()))
    }

    /// Maps `buffers` for reading once the submitted work that fills them has run.
    pub(super) fn map_for_reading<'a>(
        &self,
        buffers: impl Iterator<Item = &'a wgpu::Buffer>,
        op: &str,
    ) -> Result<()> {
        let (sender, receiver) = mpsc::channel();
        let mut mapped = 0;
        for buffer in buffers {
            let sender = sender.clone();
            buffer.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = sender.send(r);
            });
            mapped += 1;
        }
        self.wait()?;
        for _ in 0..mapped {
            receiver
                .recv()
                .expect("map callbacks run during wait")
                .map_err(|e| device_error(format!("{op}: {e}")))?;
        }
        Ok(())
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while recording leaves nothing half-done that a later op could trip on.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Submits the recorded passes followed by what `finish` records after them (copies to
    /// readback buffers); `finish` also gets the running device timer's state.
    pub(super) fn submit_with<R>(
        &self,
        finish: impl FnOnce(&mut wgpu::CommandEncoder, &mut Option<TimerState>) -> R,
    ) -> R {
        let mut pending = self.lock_pending();
        let mut encoder = pending.encoder.take().unwrap_or_else(|| self.new_encoder());
        pending.passes = 0;
        let finished = finish(&mut encoder, &mut pending.timer);
        self.queue.submit([encoder.finish()]);
        finished
    }

    /// Starts a device timer region: passes recorded from now on write timestamps.
    pub(super) fn start_timer_region(&self) {
        self.lock_pending().timer = Some(TimerState::new());
    }

    /// The f32 storage of `t`, which must live on this backend's device; only `linear`'s weight
    /// and `gather_rows`' table may be f16.
    pub(super) fn storage<'a>(&self, t: &'a Tensor) -> Result<&'a WgpuStorage> {
        let storage = self.storage_any_dtype(t)?;
        require_f32(t, storage, "wgpu operand")?;
        Ok(storage)
    }

    /// The storage of `t`, of any element type, which must live on this backend's device.
    pub(super) fn storage_any_dtype<'a>(&self, t: &'a Tensor) -> Result<&'a WgpuStorage> {
        match &t.storage {
            Storage::Wgpu(s) if s.owner == self.id => Ok(s),
            Storage::Wgpu(_) => Err(Error::input(format!(
                "tensor of shape {:?} lives on another wgpu device",
                t.shape
            ))),
            _ => Err(t.foreign("wgpu")),
        }
    }

    /// The single f32 buffer of `t`; split tensors are only read by `gather_rows` (its table),
    /// `linear` (its weight) and the NTK ops, which dispatch per part.
    pub(super) fn buffer<'a>(&self, t: &'a Tensor, op: &str) -> Result<&'a wgpu::Buffer> {
        let storage = self.storage_any_dtype(t)?;
        require_f32(t, storage, op)?;
        match &storage.parts[..] {
            [buffer] => Ok(buffer),
            parts => Err(Error::input(format!(
                "{op}: tensor of shape {:?} is split into {} buffers (larger than one storage \
                 binding of {} bytes), and {op} reads it from one binding; gather_rows' table, linear's \
                 weight and the NTK ops' operands may be split",
                t.shape,
                parts.len(),
                self.max_part_bytes
            ))),
        }
    }

    /// The buffer of an optional input, or the placeholder when it is absent.
    pub(super) fn optional_buffer<'a>(
        &'a self,
        t: Option<&'a Tensor>,
        op: &str,
    ) -> Result<&'a wgpu::Buffer> {
        t.map_or(Ok(&self.placeholder), |t| self.buffer(t, op))
    }

    /// A read-only storage buffer of small host data (ids, positions).
    pub(super) fn upload_u32(&self, label: &str, data: &[u32]) -> wgpu::Buffer {
        let data = if data.is_empty() { &[0] } else { data };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// The layout's row offsets as the shaders read them (`sequences + 1` of them).
    pub(super) fn upload_sequence_starts(&self, layout: &SeqLayout) -> Result<wgpu::Buffer> {
        let starts = layout
            .starts()
            .iter()
            .map(|&s| to_u32(s, "sequence start"))
            .collect::<Result<Vec<u32>>>()?;
        Ok(self.upload_u32("sequence starts", &starts))
    }

    /// Refuses a dispatch whose invocations would each run `iterations` loop iterations on a
    /// driver that stops them earlier (see [`LLVMPIPE_LOOP_LIMIT`]); `what` names the work.
    pub(super) fn check_loop_limit(
        &self,
        iterations: u64,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        match self.loop_limit {
            Some(limit) if iterations > limit => Err(Error::input(format!(
                "{}: {} needs {iterations} loop iterations per shader invocation, and {} stops \
                 every invocation's loops after {limit}; run it on the CPU backend or a GPU",
                self.adapter.name,
                what(),
                self.adapter.driver
            ))),
            _ => Ok(()),
        }
    }

    /// Workgroup grid for `workgroups` groups laid out along x, wrapping onto y past the
    /// per-dimension limit; kernels flatten it back as `y · groups.x + x`.
    pub(super) fn grid(&self, workgroups: usize) -> Result<[u32; 3]> {
        let max = self.max_workgroups_per_dim as usize;
        let x = workgroups.clamp(1, max);
        let y = workgroups.div_ceil(x);
        if y > max {
            return Err(Error::input(format!(
                "{workgroups} workgroups exceed the device's {max}×{max} grid"
            )));
        }
        Ok([x as u32, y as u32, 1])
    }

    /// Records one dispatch of `kernel` with `params` at binding 0 and `storage` after it, as a
    /// pass of its own in the pending encoder; every [`PASSES_PER_SUBMIT`] passes, the encoder is
    /// submitted without waiting.
    pub(super) fn dispatch<P: Pod>(
        &self,
        kernel: Kernel,
        params: &P,
        storage: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) {
        debug_assert_eq!(storage.len(), kernel.storage().len());
        if groups.contains(&0) {
            return;
        }
        let pipeline = self.pipelines.get(&self.device, kernel);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(&uniform)
            .chain(storage.iter().copied())
            .enumerate()
            .map(|(i, buffer)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.layout,
            entries: &entries,
        });

        let mut pending = self.lock_pending();
        let Pending {
            encoder,
            passes,
            timer,
        } = &mut *pending;
        let encoder = encoder.get_or_insert_with(|| self.new_encoder());
        let timestamp_writes = match (&self.timestamps, timer.as_mut()) {
            (Some(timestamps), Some(state)) => timestamps.pass_writes(state),
            _ => None,
        };
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        *passes += 1;
        if *passes >= PASSES_PER_SUBMIT {
            let encoder = pending.encoder.take().expect("recorded above");
            pending.passes = 0;
            self.queue.submit([encoder.finish()]);
        }
    }
}

/// Submits recorded work and waits until the device has finished it.
pub(super) fn synchronize(backend: &WgpuBackend) -> Result<()> {
    let mut pending = backend.lock_pending();
    if let Some(encoder) = pending.encoder.take() {
        backend.queue.submit([encoder.finish()]);
    }
    pending.passes = 0;
    drop(pending);
    backend.wait()
}

/// The error for a half-precision tensor handed to an op that reads f32 only.
fn require_f32(t: &Tensor, storage: &WgpuStorage, what: &str) -> Result<()> {
    shapes::ensure(storage.dtype == DType::F32, || {
        format!(
            "{what}: tensor of shape {:?} holds {:?} values; on wgpu only linear's weight and \
             gather_rows' table may be half precision, every other operand must be f32",
            t.shape, storage.dtype
        )
    })
}

pub(super) fn device_error(message: String) -> Error {
    Error::Device {
        backend: "wgpu",
        message,
    }
}

/// `value` as a shader index, or an error when it does not fit in u32.
pub(super) fn to_u32(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::input(format!("{what} {value} exceeds u32")))
}
