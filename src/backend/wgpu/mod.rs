//! The wgpu backend: the WGSL kernels of `shaders/` on any Vulkan, Metal or DX12 adapter, and on
//! Mesa's lavapipe in CI.
//!
//! Tensors stay in device buffers between ops. Each op records a compute pass into one pending
//! command encoder, which is submitted when a download needs results or when enough passes have
//! queued; a forward pass therefore never waits on the device until its output is read.

mod adapter;
mod kernels;
mod memory;
mod ntk;
mod rope;
mod shader_builds;
mod stats;
mod timer;
mod trim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use bytemuck::Pod;
use half::{bf16, f16};
use wgpu::util::DeviceExt;

pub use adapter::{list_adapters, AdapterSummary};
pub use memory::WgpuStorage;

use super::{
    shapes, Activation, AttentionSpec, Backend, Eigen, GemmVariant, JlSpec, Matrix64, Moments,
    OpFamily, Pooling, RopeSpec, SeqLayout, Storage, Tensor, TrimReference, TrimResult, TrimSpec,
};
use crate::error::{Error, Result};
use crate::tensor::DType;
use kernels::{
    AttentionParams, GatherParams, Kernel, LinearParams, NormParams, PipelineCache, PoolParams,
};
use memory::{buffer_bytes, plan_parts, rows_and_width, USAGE};
use timer::{TimerState, Timestamps};

/// Passes recorded before the pending encoder is submitted without waiting for a download, so the
/// device starts on long sequences of ops while the host records the rest.
const PASSES_PER_SUBMIT: usize = 32;

/// Threads per workgroup of the element-wise kernels (gather, pool).
const ELEMENT_WORKGROUP: usize = 256;

/// Must match `MAX_HEAD_DIM` in shaders/attention.wgsl.
const MAX_HEAD_DIM: usize = 128;
/// Must match `BLOCK_Q` in shaders/attention.wgsl.
const ATTENTION_BLOCK_Q: usize = 64;
/// Output rows and columns per workgroup of both GEMM variants (shaders/gemm.wgsl).
const GEMM_TILE: usize = 64;

/// How to open the backend.
#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// Case-insensitive substring of the adapter name; `None` takes the most hardware-like one.
    pub adapter: Option<String>,
    /// Whether a software adapter (lavapipe) may be opened.
    pub allow_software: bool,
    /// Largest buffer a table part may have; `None` means the device's storage-binding limit.
    /// Tests lower it to exercise split tables with small data.
    pub max_binding_bytes: Option<u64>,
    /// `None` picks by adapter: [`GemmVariant::Direct`] on software adapters, else tiled. The NTK
    /// contraction (two GEMMs) follows the same choice; an f16-weight variant picks the kernel
    /// it builds on (which build runs follows the weights' dtype).
    pub gemm: Option<GemmVariant>,
    /// Whether the norm family reduces rows with subgroup operations where the adapter offers
    /// them (norm.wgsl's subgroup build); false keeps the shared-memory reduction everywhere, so tests
    /// can run both on one adapter.
    pub subgroups: bool,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            adapter: None,
            allow_software: true,
            max_binding_bytes: None,
            gemm: None,
            subgroups: true,
        }
    }
}

impl WgpuOptions {
    /// Defaults, with the adapter picked by `MSCOPE_WGPU_ADAPTER` when it is set.
    pub fn from_env() -> Self {
        WgpuOptions {
            adapter: std::env::var("MSCOPE_WGPU_ADAPTER")
                .ok()
                .filter(|s| !s.is_empty()),
            ..Default::default()
        }
    }
}

/// The command encoder ops record into until it is submitted.
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    passes: usize,
    /// Set while a device timer runs.
    timer: Option<TimerState>,
}

pub struct WgpuBackend {
    /// Unique per opened backend; tags its tensors.
    id: u64,
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    pipelines: PipelineCache,
    pending: Mutex<Pending>,
    /// Bound in place of an absent optional input: layouts are fixed, so every binding needs a
    /// buffer; the kernel's parameters say not to read it.
    placeholder: wgpu::Buffer,
    /// Tables larger than this are split into parts of whole rows.
    max_part_bytes: u64,
    max_workgroups_per_dim: u32,
    gemm: Kernel,
    /// Whether the norm family dispatches its subgroup kernels.
    subgroup_norms: bool,
    /// The device timer, where the adapter offers timestamp queries.
    timestamps: Option<Timestamps>,
}

impl WgpuBackend {
    /// The GEMM variants of shaders/gemm.wgsl: its two kernels on f32 weights, then their f16
    /// builds.
    pub const GEMM_VARIANTS: [GemmVariant; 4] = [
        GemmVariant::Tiled,
        GemmVariant::Direct,
        GemmVariant::TiledF16,
        GemmVariant::DirectF16,
    ];

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
        let gemm = match options.gemm.map(GemmVariant::on_f32_weights) {
            Some(GemmVariant::Tiled) => Kernel::LinearTiled,
            Some(GemmVariant::Direct) => Kernel::LinearDirect,
            Some(other) => {
                let listed: Vec<String> = Self::GEMM_VARIANTS.map(|v| v.to_string()).to_vec();
                return Err(unavailable(format!(
                    "GEMM variant {other} is not a wgpu kernel; wgpu has {}",
                    listed.join(", ")
                )));
            }
            None if software => Kernel::LinearDirect,
            None => Kernel::LinearTiled,
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(WgpuBackend {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            gemm,
            subgroup_norms,
            pipelines: PipelineCache::new(),
            pending: Mutex::new(Pending {
                encoder: None,
                passes: 0,
                timer: None,
            }),
            placeholder,
            max_part_bytes: options
                .max_binding_bytes
                .map_or(device_cap, |b| b.min(device_cap)),
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            timestamps: device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
                .then(|| Timestamps::new(&device, &queue)),
            adapter: info,
            device,
            queue,
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// The GEMM kernel `linear` dispatches on f32 weights.
    pub fn gemm_variant(&self) -> GemmVariant {
        match self.gemm {
            Kernel::LinearDirect => GemmVariant::Direct,
            _ => GemmVariant::Tiled,
        }
    }

    /// Whether layer_norm, rms_norm and l2_normalize run their subgroup kernels.
    pub fn subgroup_norms(&self) -> bool {
        self.subgroup_norms
    }

    /// The kernel a norm-family op dispatches on this device.
    fn norm_kernel(&self, kernel: Kernel) -> Kernel {
        if self.subgroup_norms {
            kernel.with_subgroups()
        } else {
            kernel
        }
    }

    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| device_error(e.to_string()))
    }

    /// Maps `buffers` for reading once the submitted work that fills them has run.
    fn map_for_reading<'a>(
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

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while recording leaves nothing half-done that a later op could trip on.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether f16 uploads stay f16 on the device (the adapter offers SHADER_F16).
    pub fn keeps_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The f32 storage of `t`, which must live on this backend's device; only `linear`'s weight
    /// and `gather_rows`' table may be f16.
    fn storage<'a>(&self, t: &'a Tensor) -> Result<&'a WgpuStorage> {
        let storage = self.storage_any_dtype(t)?;
        require_f32(t, storage, "wgpu operand")?;
        Ok(storage)
    }

    /// The storage of `t`, of any element type, which must live on this backend's device.
    fn storage_any_dtype<'a>(&self, t: &'a Tensor) -> Result<&'a WgpuStorage> {
        match &t.storage {
            Storage::Wgpu(s) if s.owner == self.id => Ok(s),
            Storage::Wgpu(_) => Err(Error::input(format!(
                "tensor of shape {:?} lives on another wgpu device",
                t.shape
            ))),
            _ => Err(t.foreign("wgpu")),
        }
    }

    /// The single f32 buffer of `t`; split tables are only read by `gather_rows`.
    fn buffer<'a>(&self, t: &'a Tensor, op: &str) -> Result<&'a wgpu::Buffer> {
        require_f32(t, self.storage_any_dtype(t)?, op)?;
        self.single_buffer(t, op)
    }

    /// The single buffer of `t`, of any element type.
    fn single_buffer<'a>(&self, t: &'a Tensor, op: &str) -> Result<&'a wgpu::Buffer> {
        let storage = self.storage_any_dtype(t)?;
        match &storage.parts[..] {
            [buffer] => Ok(buffer),
            parts => Err(Error::input(format!(
                "{op}: tensor of shape {:?} is split into {} buffers (larger than one storage \
                 binding of {} bytes); only gather_rows reads split tables",
                t.shape,
                parts.len(),
                self.max_part_bytes
            ))),
        }
    }

    /// The buffer of an optional input, or the placeholder when it is absent.
    fn optional_buffer<'a>(&'a self, t: Option<&'a Tensor>, op: &str) -> Result<&'a wgpu::Buffer> {
        t.map_or(Ok(&self.placeholder), |t| self.buffer(t, op))
    }

    fn new_tensor(
        &self,
        shape: &[usize],
        dtype: DType,
        parts: Vec<wgpu::Buffer>,
        rows_per_part: usize,
    ) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            storage: Storage::Wgpu(WgpuStorage {
                owner: self.id,
                parts,
                rows_per_part,
                dtype,
            }),
        }
    }

    fn plan(&self, shape: &[usize], dtype: DType) -> Result<(usize, usize)> {
        plan_parts(shape, dtype, self.max_part_bytes).ok_or_else(|| {
            Error::input(format!(
                "tensor of shape {shape:?}: one row exceeds the storage-binding limit of {} bytes",
                self.max_part_bytes
            ))
        })
    }

    /// A tensor of `data`, elements of `dtype`, in parts of whole rows.
    fn upload_elements<T: Pod>(&self, shape: &[usize], data: &[T], dtype: DType) -> Result<Tensor> {
        shapes::upload(shape, data.len())?;
        let len = data.len();
        let (rows_per_part, parts) = self.plan(shape, dtype)?;
        let (_, row_values) = rows_and_width(shape);
        let part_values = rows_per_part * row_values;
        let buffers = (0..parts)
            .map(|i| {
                let values = &data[(i * part_values).min(len)..((i + 1) * part_values).min(len)];
                // create_buffer_init pads to 4 bytes, but makes an empty buffer for no contents.
                let contents: &[u8] = if values.is_empty() {
                    &[0; 4]
                } else {
                    bytemuck::cast_slice(values)
                };
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents,
                        usage: USAGE,
                    })
            })
            .collect();
        Ok(self.new_tensor(shape, dtype, buffers, rows_per_part))
    }

    /// A read-only storage buffer of small host data (ids, sequence starts).
    fn upload_u32(&self, label: &str, data: &[u32]) -> wgpu::Buffer {
        let data = if data.is_empty() { &[0] } else { data };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// Workgroup grid for `workgroups` groups laid out along x, wrapping onto y past the
    /// per-dimension limit; kernels flatten it back as `y · groups.x + x`.
    fn grid(&self, workgroups: usize) -> Result<[u32; 3]> {
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

    /// Records one dispatch of `kernel` with `params` at binding 0 and `storage` after it.
    fn dispatch<P: Pod>(
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
        let encoder = encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
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

fn device_error(message: String) -> Error {
    Error::Device {
        backend: "wgpu",
        message,
    }
}

/// `value` as a shader index, or an error when it does not fit in u32.
fn to_u32(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::input(format!("{what} {value} exceeds u32")))
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn supports(&self, family: OpFamily) -> bool {
        matches!(
            family,
            OpFamily::Encoder | OpFamily::Stats | OpFamily::Ntk | OpFamily::Trim
        )
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_elements(shape, data, DType::F32)
    }

    /// Kept f16 where the adapter has SHADER_F16 (for `linear`'s weight and `gather_rows`'
    /// table); widened to f32 elsewhere.
    fn upload_f16(&self, shape: &[usize], data: &[f16]) -> Result<Tensor> {
        if self.keeps_f16() {
            self.upload_elements(shape, data, DType::F16)
        } else {
            let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
            self.upload(shape, &wide)
        }
    }

    /// Converted to f16 where f16 is kept and every finite value lies within f16's range: bf16's
    /// 8-bit significand fits f16's 11 bits, so the conversion is exact from f16's smallest
    /// normal 2⁻¹⁴ up and off by at most 2⁻²⁵ below it. Otherwise widened to f32 (exact).
    fn upload_bf16(&self, shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        let f16_max = f16::MAX.to_f32();
        if !self.keeps_f16() || wide.iter().any(|v| v.is_finite() && v.abs() > f16_max) {
            return self.upload(shape, &wide);
        }
        let narrow: Vec<f16> = wide.iter().map(|&v| f16::from_f32(v)).collect();
        self.upload_elements(shape, &narrow, DType::F16)
    }

    fn download(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        let storage = self.storage_any_dtype(tensor)?;
        let dtype = storage.dtype;
        let (rows, row_values) = rows_and_width(&tensor.shape);
        let mut pending = self.lock_pending();
        let mut encoder = pending.encoder.take().unwrap_or_else(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        pending.passes = 0;
        let staging: Vec<(wgpu::Buffer, usize)> = storage
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let values = storage.part_rows(i, rows).len() * row_values;
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("download"),
                    size: buffer_bytes(values, dtype),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(part, 0, &buffer, 0, buffer_bytes(values, dtype));
                (buffer, values)
            })
            .collect();
        self.queue.submit([encoder.finish()]);
        drop(pending);

        self.map_for_reading(staging.iter().map(|(buffer, _)| buffer), "download")?;
        let mut out = Vec::with_capacity(tensor.len());
        for (buffer, values) in &staging {
            let view = buffer
                .get_mapped_range(..)
                .map_err(|e| device_error(format!("download: {e}")))?;
            match dtype {
                DType::F16 => out.extend(
                    bytemuck::cast_slice::<u8, f16>(&view)[..*values]
                        .iter()
                        .map(|v| v.to_f32()),
                ),
                _ => out.extend_from_slice(&bytemuck::cast_slice::<u8, f32>(&view)[..*values]),
            }
        }
        Ok(out)
    }

    /// Submits recorded work and waits until the device has finished it.
    fn synchronize(&self) -> Result<()> {
        let mut pending = self.lock_pending();
        if let Some(encoder) = pending.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
        pending.passes = 0;
        drop(pending);
        self.wait()
    }

    fn start_device_timer(&self) -> Result<bool> {
        if self.timestamps.is_none() {
            return Ok(false);
        }
        self.lock_pending().timer = Some(TimerState::new());
        Ok(true)
    }

    fn stop_device_timer(&self) -> Result<Option<f64>> {
        let mut pending = self.lock_pending();
        let (Some(timestamps), Some(state)) = (&self.timestamps, pending.timer.take()) else {
            drop(pending);
            self.synchronize()?;
            return Ok(None);
        };
        let mut encoder = pending.encoder.take().unwrap_or_else(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        pending.passes = 0;
        let bytes = timestamps.record_resolve(&state, &mut encoder);
        self.queue.submit([encoder.finish()]);
        drop(pending);
        let Some(bytes) = bytes else {
            self.wait()?;
            return Ok(None);
        };
        let readback = timestamps.readback();
        self.map_for_reading(std::iter::once(readback), "device timer")?;
        let seconds = {
            let view = readback
                .get_mapped_range(..bytes)
                .map_err(|e| device_error(format!("device timer: {e}")))?;
            timestamps.region_seconds(bytemuck::cast_slice(&view))
        };
        readback.unmap();
        Ok(Some(seconds))
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let (rows_per_part, parts) = self.plan(shape, DType::F32)?;
        let (rows, row_values) = rows_and_width(shape);
        let buffers = (0..parts)
            .map(|i| {
                let part_rows = rows_per_part.min(rows - i * rows_per_part);
                // wgpu zero-initialises new buffers.
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: buffer_bytes(part_rows * row_values, DType::F32),
                    usage: USAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        Ok(self.new_tensor(shape, DType::F32, buffers, rows_per_part))
    }

    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
        residual: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, k, m) = shapes::linear(x, w, bias, residual, out)?;
        let buffers = [
            self.buffer(x, "linear input")?,
            self.single_buffer(w, "linear weight")?,
            self.optional_buffer(bias, "linear bias")?,
            self.optional_buffer(residual, "linear residual")?,
            self.buffer(out, "linear output")?,
        ];
        let params = LinearParams {
            n: to_u32(n, "linear rows")?,
            k: to_u32(k, "linear features")?,
            m: to_u32(m, "linear outputs")?,
            has_bias: bias.is_some().into(),
            has_residual: residual.is_some().into(),
            activation: act.code(),
            _pad: [0; 2],
        };
        let groups = [
            m.div_ceil(GEMM_TILE) as u32,
            n.div_ceil(GEMM_TILE) as u32,
            1,
        ];
        if groups[..2].iter().any(|&g| g > self.max_workgroups_per_dim) {
            return Err(Error::input(format!(
                "linear: [{n}, {m}] output exceeds the device's workgroup grid"
            )));
        }
        let kernel = match w.dtype() {
            DType::F16 => self.gemm.with_f16_weights(),
            _ => self.gemm,
        };
        self.dispatch(kernel, &params, &buffers, groups);
        Ok(())
    }

    fn gather_rows(
        &self,
        table: &Tensor,
        ids: &[u32],
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        let (rows, d) = shapes::gather(table, ids, out)?;
        let storage = self.storage_any_dtype(table)?;
        let kernel = match storage.dtype {
            DType::F16 => Kernel::GatherF16,
            _ => Kernel::Gather,
        };
        let out_buffer = self.buffer(out, "gather output")?;
        let ids_buffer = self.upload_u32("ids", ids);
        let groups = self.grid((ids.len() * d).div_ceil(ELEMENT_WORKGROUP))?;
        for (i, part) in storage.parts.iter().enumerate() {
            let part_rows = storage.part_rows(i, rows);
            let params = GatherParams {
                rows: to_u32(ids.len(), "gather ids")?,
                width: to_u32(d, "gather width")?,
                first_row: part_rows.start as u32,
                part_rows: part_rows.len() as u32,
                accumulate: accumulate.into(),
                _pad: [0; 3],
            };
            self.dispatch(kernel, &params, &[part, &ids_buffer, out_buffer], groups);
        }
        Ok(())
    }

    fn layer_norm(&self, x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
        let (n, d) = shapes::layer_norm(x, gamma, beta)?;
        let params = NormParams {
            rows: to_u32(n, "layer_norm rows")?,
            width: to_u32(d, "layer_norm width")?,
            eps,
            _pad: 0,
        };
        let buffers = [
            self.buffer(x, "layer_norm input")?,
            self.buffer(gamma, "layer_norm gamma")?,
            self.buffer(beta, "layer_norm beta")?,
        ];
        let kernel = self.norm_kernel(Kernel::LayerNorm);
        self.dispatch(kernel, &params, &buffers, self.grid(n)?);
        Ok(())
    }

    fn rms_norm(&self, x: &mut Tensor, gamma: &Tensor, eps: f32) -> Result<()> {
        let (n, d) = shapes::rms_norm(x, gamma)?;
        let params = NormParams {
            rows: to_u32(n, "rms_norm rows")?,
            width: to_u32(d, "rms_norm width")?,
            eps,
            _pad: 0,
        };
        let buffers = [
            self.buffer(x, "rms_norm input")?,
            self.buffer(gamma, "rms_norm gamma")?,
        ];
        let kernel = self.norm_kernel(Kernel::RmsNorm);
        self.dispatch(kernel, &params, &buffers, self.grid(n)?);
        Ok(())
    }

    fn rope(&self, qkv: &mut Tensor, layout: &SeqLayout, spec: &RopeSpec) -> Result<()> {
        self.rotate(qkv, layout, spec)
    }

    fn attention(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        shapes::attention(qkv, layout, spec, out)?;
        shapes::ensure(spec.head_dim <= MAX_HEAD_DIM, || {
            format!(
                "attention: head_dim {} exceeds the wgpu kernel's {MAX_HEAD_DIM}",
                spec.head_dim
            )
        })?;
        let max_len = layout.max_len();
        let params = AttentionParams {
            heads: to_u32(spec.heads, "attention heads")?,
            kv_heads: to_u32(spec.kv_heads, "attention kv_heads")?,
            head_dim: spec.head_dim as u32,
            causal: spec.causal.into(),
            has_window: spec.window.is_some().into(),
            // A window as long as the longest sequence masks nothing more; clamping keeps the
            // shader's index arithmetic in range.
            window: to_u32(spec.window.unwrap_or(0).min(max_len), "attention window")?,
            scale: spec.scale,
            _pad: 0,
        };
        let groups = [
            max_len.div_ceil(ATTENTION_BLOCK_Q),
            spec.heads,
            layout.num_sequences(),
        ];
        let max = self.max_workgroups_per_dim as usize;
        shapes::ensure(groups.iter().all(|&g| g <= max), || {
            format!(
                "attention: {} sequences × {} heads × {} query blocks exceed the device's grid",
                groups[2], groups[1], groups[0]
            )
        })?;
        let starts = self.upload_u32("sequence starts", &sequence_starts(layout)?);
        let buffers = [
            self.buffer(qkv, "attention qkv")?,
            &starts,
            self.buffer(out, "attention output")?,
        ];
        self.dispatch(
            Kernel::Attention,
            &params,
            &buffers,
            groups.map(|g| g as u32),
        );
        Ok(())
    }

    fn pool(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        mode: Pooling,
        out: &mut Tensor,
    ) -> Result<()> {
        let d = shapes::pool(hidden, layout, out)?;
        let sequences = layout.num_sequences();
        let params = PoolParams {
            sequences: to_u32(sequences, "pool sequences")?,
            width: to_u32(d, "pool width")?,
            mode: mode.code(),
            _pad: 0,
        };
        let starts = self.upload_u32("sequence starts", &sequence_starts(layout)?);
        let buffers = [
            self.buffer(hidden, "pool input")?,
            &starts,
            self.buffer(out, "pool output")?,
        ];
        let groups = self.grid((sequences * d).div_ceil(ELEMENT_WORKGROUP))?;
        self.dispatch(Kernel::Pool, &params, &buffers, groups);
        Ok(())
    }

    fn l2_normalize(&self, x: &mut Tensor) -> Result<()> {
        let (n, d) = shapes::l2_normalize(x)?;
        let params = NormParams {
            rows: to_u32(n, "l2_normalize rows")?,
            width: to_u32(d, "l2_normalize width")?,
            eps: 0.0,
            _pad: 0,
        };
        let buffers = [self.buffer(x, "l2_normalize input")?];
        let kernel = self.norm_kernel(Kernel::L2Normalize);
        self.dispatch(kernel, &params, &buffers, self.grid(n)?);
        Ok(())
    }

    fn scatter(&self, x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>> {
        self.scatter_moments(x, groups)
    }

    fn symmetric_eigen(&self, matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
        self.host_eigen(matrices)
    }

    fn spd_solve(&self, systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>> {
        self.host_spd_solve(systems)
    }

    fn ntk_contract(
        &self,
        delta_rows: &Tensor,
        delta_cols: &Tensor,
        acts: Option<(&Tensor, &Tensor)>,
        offset: f32,
        cols: std::ops::Range<usize>,
        out: &mut Tensor,
    ) -> Result<()> {
        self.contract(delta_rows, delta_cols, acts, offset, cols, out)
    }

    fn jl_project(
        &self,
        x: &Tensor,
        spec: &JlSpec,
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        self.project(x, spec, accumulate, out)
    }

    fn trim_search(
        &self,
        candidates: &[&[f32]],
        reference: TrimReference<'_>,
        spec: &TrimSpec,
    ) -> Result<Vec<TrimResult>> {
        self.trim(candidates, reference, spec)
    }
}

/// The layout's row offsets as the shaders read them.
fn sequence_starts(layout: &SeqLayout) -> Result<Vec<u32>> {
    layout
        .starts()
        .iter()
        .map(|&s| to_u32(s, "sequence start"))
        .collect()
}
