//! The CUDA backend: the kernels of `kernels/` compiled by NVRTC at first use for the device's
//! own architecture and launched through cudarc (dynamic loading: the crate builds and runs
//! where no CUDA is installed, and reports the backend unavailable there).
//!
//! One context and one stream per device, shared by every backend value opened on it; ops are
//! queued on the stream in order and nothing waits for the device until a download or
//! [`Backend::synchronize`]. Debug builds synchronise after every launch so an error names its
//! kernel; release builds surface asynchronous errors at the next synchronisation.

pub mod kernels;
mod memory;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    sys::CUevent_flags, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DeviceRepr,
    LaunchArgs, LaunchConfig, PushKernelArg,
};

pub use memory::CudaStorage;

use super::{
    shapes, Activation, AttentionSpec, Backend, Eigen, GemmVariant, JlDistribution, JlSpec,
    Matrix64, Moments, NtkVariant, OpFamily, Pooling, RopeSpec, SeqLayout, Storage, Tensor,
    TrimReference, TrimResult, TrimSpec,
};
use crate::error::{Error, Result};
use kernels::ModuleCache;

/// How to open the backend.
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// `None`: [`GemmVariant::Tiled`].
    pub gemm: Option<GemmVariant>,
    /// `None`: [`NtkVariant::Tiled`].
    pub ntk: Option<NtkVariant>,
}

impl CudaOptions {
    /// Defaults, with the device from `MSCOPE_CUDA_DEVICE` and the GEMM variant from
    /// `MSCOPE_CUDA_GEMM` (`naive`, `tiled`, `mma-bf16`/`mma`) when they are set; values that do
    /// not parse are ignored.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        CudaOptions {
            device: var("MSCOPE_CUDA_DEVICE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            gemm: var("MSCOPE_CUDA_GEMM").and_then(|v| {
                GemmVariant::ALL
                    .into_iter()
                    .find(|g| g.name() == v || (v == "mma" && *g == GemmVariant::MmaBf16))
            }),
            ntk: None,
        }
    }
}

/// A device's one stream (which holds its context) and its kernel modules, shared by every backend value
/// opened on it (so kernels are compiled once per process).
struct Device {
    ordinal: usize,
    stream: Arc<CudaStream>,
    modules: ModuleCache,
    name: String,
    compute_capability: (i32, i32),
}

fn unavailable(reason: String) -> Error {
    Error::BackendUnavailable {
        backend: "cuda",
        reason,
    }
}

/// The error for a variant [`CudaBackend::open`] refuses, should one reach a launch.
fn unsupported_variant(variant: String) -> Error {
    device_error(format!("variant {variant} has no CUDA kernel"))
}

fn device_error(message: impl std::fmt::Display) -> Error {
    Error::Device {
        backend: "cuda",
        message: message.to_string(),
    }
}

/// The shared [`Device`] of `ordinal`, created on first use.
fn device(ordinal: usize) -> Result<Arc<Device>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
    let mut devices = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = devices.get(&ordinal) {
        return Ok(d.clone());
    }
    let count = list_devices().map_err(unavailable)?.len();
    if ordinal >= count {
        return Err(unavailable(format!(
            "device {ordinal} requested, the driver reports {count}"
        )));
    }
    if !kernels::nvrtc_available() {
        return Err(unavailable(
            "NVRTC not found (libnvrtc: put the CUDA toolkit's lib64 on LD_LIBRARY_PATH)".into(),
        ));
    }
    let nvrtc = kernels::nvrtc_version().map_err(unavailable)?;
    let fail = |e: cudarc::driver::DriverError| unavailable(format!("device {ordinal}: {e}"));
    let ctx = CudaContext::new(ordinal).map_err(fail)?;
    // SAFETY: every op of the backend runs on the device's one stream, in order, so no buffer is
    // used by two streams and cudarc's per-buffer events would only add overhead.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(fail)?;
    let compute_capability = ctx.compute_capability().map_err(fail)?;
    let arch = format!("sm_{}{}", compute_capability.0, compute_capability.1);
    let d = Arc::new(Device {
        ordinal,
        name: ctx.name().map_err(fail)?,
        modules: ModuleCache::new(ctx, arch, nvrtc),
        stream,
        compute_capability,
    });
    devices.insert(ordinal, d.clone());
    Ok(d)
}

pub struct CudaBackend {
    device: Arc<Device>,
    gemm: GemmVariant,
    ntk: NtkVariant,
    /// Host fallbacks (large eigenproblems, SPD solves): see [`stats`].
    cpu: super::cpu::CpuBackend,
    /// The start event of a running device timer.
    timer: Mutex<Option<CudaEvent>>,
}

/// Threads per block of the row-wise kernels: a multiple of the warp (their reductions shuffle
/// whole warps), at most 256.
fn row_threads(d: usize) -> u32 {
    d.clamp(1, 256).next_multiple_of(32) as u32
}

/// `value` as a kernel's `int`, or an error naming it.
fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::input(format!("{what} {value} exceeds i32")))
}

/// Largest grid extent along y and z.
const MAX_GRID_YZ: usize = 65_535;

fn grid_yz(value: usize, what: &str) -> Result<u32> {
    shapes::ensure(value <= MAX_GRID_YZ, || {
        format!("{what}: {value} blocks exceed the CUDA grid's {MAX_GRID_YZ}")
    })?;
    Ok(value as u32)
}

/// Must match `AttentionShape` in kernels/attention.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttentionShape {
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    causal: i32,
    /// Negative: no window.
    window: i32,
    scale: f32,
}

// SAFETY: a plain repr(C) struct of 4-byte scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for AttentionShape {}

/// Must match `JlShape` in kernels/ntk.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct JlShape {
    seed: u64,
    column_offset: u64,
    n: i32,
    d: i32,
    dim: i32,
    /// `JlDistribution` code of ntk.cu.
    distribution: i32,
    accumulate: i32,
    sqrt_dim: f32,
}

// SAFETY: a plain repr(C) struct of scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for JlShape {}

/// The null device pointer passed for an absent optional input.
const NULL: u64 = 0;

impl CudaBackend {
    /// The GEMM variants of kernels/gemm.cu.
    pub const GEMM_VARIANTS: [GemmVariant; 3] =
        [GemmVariant::Naive, GemmVariant::Tiled, GemmVariant::MmaBf16];
    /// The contraction variants of kernels/ntk.cu.
    pub const NTK_VARIANTS: [NtkVariant; 2] = [NtkVariant::Naive, NtkVariant::Tiled];

    /// Opens device `options.device`, or says why it cannot be opened (no driver, no device, no
    /// NVRTC).
    pub fn open(options: &CudaOptions) -> Result<Self> {
        let device = device(options.device)?;
        let gemm = options.gemm.unwrap_or(GemmVariant::Tiled);
        let ntk = options.ntk.unwrap_or(NtkVariant::Tiled);
        if !Self::GEMM_VARIANTS.contains(&gemm) || !Self::NTK_VARIANTS.contains(&ntk) {
            let listed: Vec<String> = Self::GEMM_VARIANTS.map(|v| v.to_string()).to_vec();
            return Err(Error::input(format!(
                "GEMM variant {gemm} / NTK variant {} is not a CUDA kernel; CUDA's GEMMs are {}, \
                 its NTK contractions 1 (naive) and 2 (tiled)",
                ntk.number(),
                listed.join(", ")
            )));
        }
        if gemm == GemmVariant::MmaBf16 && device.compute_capability.0 < 8 {
            return Err(Error::input(format!(
                "GEMM variant mma-bf16 needs sm_80 or newer; {} is sm_{}{}",
                device.name, device.compute_capability.0, device.compute_capability.1
            )));
        }
        Ok(CudaBackend {
            device,
            gemm,
            ntk,
            cpu: super::cpu::CpuBackend::new(),
            timer: Mutex::new(None),
        })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.device.name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.device.compute_capability
    }

    /// The GEMM kernel `linear` launches.
    pub fn gemm_variant(&self) -> GemmVariant {
        self.gemm
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.device.stream
    }

    fn function(&self, family: &'static str, name: &'static str) -> Result<CudaFunction> {
        self.device
            .modules
            .function(family, name)
            .map_err(device_error)
    }

    /// Launches what `args` built; debug builds wait for the kernel so a fault names it.
    fn launch(&self, name: &str, args: &mut LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
        if cfg.grid_dim.0 == 0 || cfg.grid_dim.1 == 0 || cfg.grid_dim.2 == 0 {
            return Ok(());
        }
        // SAFETY: every caller passes the kernel's parameters in order with matching types
        // (device buffers sized by the shape checks, i32 dimensions, repr(C) structs).
        unsafe { args.launch(cfg) }.map_err(|e| device_error(format!("{name}: {e}")))?;
        if cfg!(debug_assertions) {
            self.stream()
                .synchronize()
                .map_err(|e| device_error(format!("{name}: {e}")))?;
        }
        Ok(())
    }

    fn storage<'a>(&self, t: &'a Tensor) -> Result<&'a CudaStorage> {
        match &t.storage {
            Storage::Cuda(s) if s.owner == self.device.ordinal as u64 => Ok(s),
            Storage::Cuda(_) => Err(Error::input(format!(
                "tensor of shape {:?} lives on another CUDA device",
                t.shape
            ))),
            _ => Err(t.foreign("cuda")),
        }
    }

    fn slice<'a>(&self, t: &'a Tensor) -> Result<&'a CudaSlice<f32>> {
        Ok(&self.storage(t)?.data)
    }

    fn slice_mut<'a>(&self, t: &'a mut Tensor) -> Result<&'a mut CudaSlice<f32>> {
        self.storage(t)?;
        match &mut t.storage {
            Storage::Cuda(s) => Ok(s.data_mut()),
            _ => unreachable!("checked above"),
        }
    }

    fn new_tensor(&self, shape: &[usize], data: CudaSlice<f32>) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda(CudaStorage::new(self.device.ordinal as u64, data)),
        }
    }

    /// Small host data (ids, sequence starts) as a device buffer; never empty, since a buffer
    /// of zero bytes cannot be allocated.
    fn upload_small<T: DeviceRepr + Copy + Default>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        let placeholder = [T::default()];
        let data = if data.is_empty() {
            &placeholder[..]
        } else {
            data
        };
        self.stream().clone_htod(data).map_err(device_error)
    }

    /// The bf16 copy of weights `w`, made once by the conversion kernel.
    fn bf16_weights<'a>(&self, w: &'a Tensor) -> Result<&'a CudaSlice<u16>> {
        let storage = self.storage(w)?;
        if let Some(b) = storage.bf16.get() {
            return Ok(b);
        }
        let len = w.len().max(1);
        // SAFETY: every element is written by the conversion kernel below before any read.
        let mut bits = unsafe { self.stream().alloc::<u16>(len) }.map_err(device_error)?;
        let f = self.function("gemm", "to_bf16_v1")?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(&storage.data).arg(&mut bits).arg(&len);
        let blocks = len.div_ceil(256).min(1 << 16) as u32;
        self.launch(
            "to_bf16_v1",
            &mut args,
            LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            },
        )?;
        drop(args);
        // Another thread may have converted it meanwhile; either copy is the same.
        let _ = storage.bf16.set(bits);
        Ok(storage.bf16.get().expect("set above"))
    }
}

/// `[blocks_x, blocks_y]` of 2-D tiles over an `[rows, cols]` output.
fn tile_grid(rows: usize, cols: usize, tile: usize, what: &str) -> Result<(u32, u32, u32)> {
    let x = u32::try_from(cols.div_ceil(tile))
        .map_err(|_| Error::input(format!("{what}: {cols} columns exceed the CUDA grid")))?;
    Ok((x, grid_yz(rows.div_ceil(tile), what)?, 1))
}

fn config(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: 0,
    }
}

/// The layout's row offsets as the kernels read them.
fn sequence_starts(layout: &SeqLayout) -> Result<Vec<i32>> {
    layout
        .starts()
        .iter()
        .map(|&s| to_i32(s, "sequence start"))
        .collect()
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// Trim has no CUDA kernels yet; every other family runs here (stats with the host
    /// fallbacks documented in [`stats`]).
    fn supports(&self, family: OpFamily) -> bool {
        family != OpFamily::Trim
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        shapes::upload(shape, data.len())?;
        Ok(self.new_tensor(shape, self.upload_small(data)?))
    }

    fn download(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        let data = self.slice(tensor)?;
        // Surfaces a failed kernel as this call's error before the copy.
        self.synchronize()?;
        if tensor.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .stream()
            .clone_dtoh(&data.slice(..tensor.len()))
            .map_err(device_error)?;
        self.synchronize()?;
        Ok(out)
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        let data = self
            .stream()
            .alloc_zeros::<f32>(len.max(1))
            .map_err(device_error)?;
        Ok(self.new_tensor(shape, data))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream().synchronize().map_err(device_error)
    }

    /// CUDA events on the backend's one stream: the region covers every kernel and copy queued
    /// between the two events, and none of the host work (host fallbacks run outside it).
    fn start_device_timer(&self) -> Result<bool> {
        let start = self
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(device_error)?;
        *self.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(start);
        Ok(true)
    }

    fn stop_device_timer(&self) -> Result<Option<f64>> {
        let start = self.timer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(start) = start else {
            self.synchronize()?;
            return Ok(None);
        };
        let end = self
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(device_error)?;
        // elapsed_ms waits for both events.
        let ms = start.elapsed_ms(&end).map_err(device_error)?;
        Ok(Some(f64::from(ms) / 1e3))
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
        let (ni, ki, mi) = (
            to_i32(n, "linear rows")?,
            to_i32(k, "linear features")?,
            to_i32(m, "linear outputs")?,
        );
        let act = act.code() as i32;
        let (kernel, cfg) = match self.gemm {
            GemmVariant::Naive => (
                "gemm_v1_naive",
                config(tile_grid(n, m, 16, "linear")?, (16, 16, 1)),
            ),
            GemmVariant::Tiled => (
                "gemm_v2_tiled",
                config(tile_grid(n, m, 64, "linear")?, (256, 1, 1)),
            ),
            GemmVariant::MmaBf16 => (
                "gemm_v4_mma_bf16",
                config(tile_grid(n, m, 64, "linear")?, (128, 1, 1)),
            ),
            other => return Err(unsupported_variant(other.to_string())),
        };
        let f = self.function("gemm", kernel)?;
        let w_bf16 = match self.gemm {
            GemmVariant::MmaBf16 => Some(self.bf16_weights(w)?),
            _ => None,
        };
        let (x, w) = (self.slice(x)?, self.slice(w)?);
        let bias = bias.map(|t| self.slice(t)).transpose()?;
        let residual = residual.map(|t| self.slice(t)).transpose()?;
        let out = self.slice_mut(out)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(x);
        match w_bf16 {
            Some(bits) => args.arg(bits),
            None => args.arg(w),
        };
        match bias {
            Some(b) => args.arg(b),
            None => args.arg(&NULL),
        };
        match residual {
            Some(r) => args.arg(r),
            None => args.arg(&NULL),
        };
        args.arg(out).arg(&ni).arg(&mi).arg(&ki).arg(&act);
        self.launch(kernel, &mut args, cfg)
    }

    fn gather_rows(
        &self,
        table: &Tensor,
        ids: &[u32],
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        let (_, d) = shapes::gather(table, ids, out)?;
        let (di, acc) = (to_i32(d, "gather width")?, i32::from(accumulate));
        let blocks = u32::try_from(ids.len())
            .map_err(|_| Error::input(format!("gather: {} ids exceed u32", ids.len())))?;
        let ids = self.upload_small(ids)?;
        let f = self.function("gather", "gather_rows_v1")?;
        let table = self.slice(table)?;
        let out = self.slice_mut(out)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(table).arg(&ids).arg(out).arg(&di).arg(&acc);
        let cfg = config((blocks, 1, 1), (row_threads(d), 1, 1));
        self.launch("gather_rows_v1", &mut args, cfg)
    }

    fn layer_norm(&self, x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
        let (n, d) = shapes::layer_norm(x, gamma, beta)?;
        let di = to_i32(d, "layer_norm width")?;
        let rows = u32::try_from(n).map_err(|_| Error::input("layer_norm: rows exceed u32"))?;
        let f = self.function("norm", "layer_norm_v1")?;
        let (gamma, beta) = (self.slice(gamma)?, self.slice(beta)?);
        let x = self.slice_mut(x)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(x).arg(gamma).arg(beta).arg(&di).arg(&eps);
        let cfg = config((rows, 1, 1), (row_threads(d), 1, 1));
        self.launch("layer_norm_v1", &mut args, cfg)
    }

    fn rms_norm(&self, x: &mut Tensor, gamma: &Tensor, eps: f32) -> Result<()> {
        let (n, d) = shapes::rms_norm(x, gamma)?;
        let di = to_i32(d, "rms_norm width")?;
        let rows = u32::try_from(n).map_err(|_| Error::input("rms_norm: rows exceed u32"))?;
        let f = self.function("norm", "rms_norm_v1")?;
        let gamma = self.slice(gamma)?;
        let x = self.slice_mut(x)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(x).arg(gamma).arg(&di).arg(&eps);
        let cfg = config((rows, 1, 1), (row_threads(d), 1, 1));
        self.launch("rms_norm_v1", &mut args, cfg)
    }

    fn rope(&self, qkv: &mut Tensor, layout: &SeqLayout, spec: &RopeSpec) -> Result<()> {
        let (tokens, width) = shapes::rope(qkv, layout, spec)?;
        let half = spec.head_dim / 2;
        let rotated_heads = spec.heads + spec.kv_heads;
        let (ti, wi, hi, halfi) = (
            to_i32(tokens, "rope tokens")?,
            to_i32(width, "rope width")?,
            to_i32(rotated_heads, "rope heads")?,
            to_i32(half, "rope head_dim")?,
        );
        let pairs = tokens * rotated_heads * half;
        if pairs == 0 {
            return Ok(());
        }
        let positions: Vec<i32> = layout.positions().map(|p| p as i32).collect();
        let positions = self.upload_small(&positions)?;
        let table = self.upload_small(&spec.table(layout.max_len()))?;
        let f = self.function("rope", "rope_v1")?;
        let qkv = self.slice_mut(qkv)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(qkv)
            .arg(&positions)
            .arg(&table)
            .arg(&ti)
            .arg(&wi)
            .arg(&hi)
            .arg(&halfi);
        // A grid-stride loop covers what a capped grid leaves.
        let blocks = pairs.div_ceil(256).min(1 << 16) as u32;
        self.launch("rope_v1", &mut args, config((blocks, 1, 1), (256, 1, 1)))
    }

    fn attention(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        shapes::attention(qkv, layout, spec, out)?;
        let (sequences, max_len) = (layout.num_sequences(), layout.max_len());
        if max_len == 0 {
            return Ok(());
        }
        let shape = AttentionShape {
            heads: to_i32(spec.heads, "attention heads")?,
            kv_heads: to_i32(spec.kv_heads, "attention kv_heads")?,
            head_dim: to_i32(spec.head_dim, "attention head_dim")?,
            causal: spec.causal.into(),
            // A window longer than every sequence masks nothing more; clamping keeps it an i32.
            window: match spec.window {
                Some(w) => to_i32(w.min(max_len), "attention window")?,
                None => -1,
            },
            scale: spec.scale,
        };
        let seqs = u32::try_from(sequences)
            .map_err(|_| Error::input("attention: sequences exceed u32"))?;
        let heads = grid_yz(spec.heads, "attention heads")?;
        let (kernel, cfg) = match spec.head_dim {
            32 | 64 => (
                if spec.head_dim == 32 {
                    "attention_v2_flash_hd32"
                } else {
                    "attention_v2_flash_hd64"
                },
                // Must match FLASH_BQ in kernels/attention.cu.
                config(
                    (
                        seqs,
                        heads,
                        grid_yz(max_len.div_ceil(64), "attention query tiles")?,
                    ),
                    (64, 1, 1),
                ),
            ),
            _ => ("attention_v1_naive", config((seqs, heads, 1), (128, 1, 1))),
        };
        let starts = self.upload_small(&sequence_starts(layout)?)?;
        let f = self.function("attention", kernel)?;
        let qkv = self.slice(qkv)?;
        let out = self.slice_mut(out)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(qkv).arg(&starts).arg(out).arg(&shape);
        self.launch(kernel, &mut args, cfg)
    }

    fn pool(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        mode: Pooling,
        out: &mut Tensor,
    ) -> Result<()> {
        let d = shapes::pool(hidden, layout, out)?;
        let di = to_i32(d, "pool width")?;
        let mode = mode.code() as i32;
        let seqs = u32::try_from(layout.num_sequences())
            .map_err(|_| Error::input("pool: sequences exceed u32"))?;
        let starts = self.upload_small(&sequence_starts(layout)?)?;
        let f = self.function("pool", "pool_v1")?;
        let hidden = self.slice(hidden)?;
        let out = self.slice_mut(out)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(hidden).arg(&starts).arg(out).arg(&di).arg(&mode);
        let cfg = config((seqs, 1, 1), (row_threads(d), 1, 1));
        self.launch("pool_v1", &mut args, cfg)
    }

    fn l2_normalize(&self, x: &mut Tensor) -> Result<()> {
        let (n, d) = shapes::l2_normalize(x)?;
        let di = to_i32(d, "l2_normalize width")?;
        let rows = u32::try_from(n).map_err(|_| Error::input("l2_normalize: rows exceed u32"))?;
        let f = self.function("pool", "l2_normalize_v1")?;
        let x = self.slice_mut(x)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(x).arg(&di);
        let cfg = config((rows, 1, 1), (row_threads(d), 1, 1));
        self.launch("l2_normalize_v1", &mut args, cfg)
    }

    // stats

    fn scatter(&self, x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>> {
        stats::scatter(self, x, groups)
    }

    fn symmetric_eigen(&self, matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
        stats::symmetric_eigen(self, matrices)
    }

    fn spd_solve(&self, systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>> {
        stats::spd_solve(self, systems)
    }

    // ntk

    fn ntk_contract(
        &self,
        delta_rows: &Tensor,
        delta_cols: &Tensor,
        acts: Option<(&Tensor, &Tensor)>,
        offset: f32,
        cols: std::ops::Range<usize>,
        out: &mut Tensor,
    ) -> Result<()> {
        let n_r = shapes::ntk_contract(delta_rows, delta_cols, acts, &cols, out)?;
        let n_c = cols.len();
        if n_r == 0 || n_c == 0 {
            return Ok(());
        }
        let p = delta_rows.shape()[1];
        let q = acts.map_or(0, |(a, _)| a.shape()[1]);
        let (nri, nci, pi, qi) = (
            to_i32(n_r, "ntk_contract rows")?,
            to_i32(n_c, "ntk_contract columns")?,
            to_i32(p, "ntk_contract gradient width")?,
            to_i32(q, "ntk_contract activation width")?,
        );
        let (kernel, cfg) = match self.ntk {
            NtkVariant::Naive => (
                "ntk_contract_v1_naive",
                config(tile_grid(n_r, n_c, 16, "ntk_contract")?, (16, 16, 1)),
            ),
            NtkVariant::Tiled => (
                "ntk_contract_v2_tiled",
                config(tile_grid(n_r, n_c, 64, "ntk_contract")?, (256, 1, 1)),
            ),
            other => return Err(unsupported_variant(format!("ntk {}", other.name()))),
        };
        let f = self.function("ntk", kernel)?;
        // The column samples `cols` are a row range of the column factors.
        let dr = self.slice(delta_rows)?;
        // (Open-ended views: a start of 0 stays inside the one-element buffer of a zero width.)
        let dc = self.slice(delta_cols)?.slice(cols.start * p..);
        let acts = match acts {
            Some((ar, ac)) => Some((self.slice(ar)?, self.slice(ac)?.slice(cols.start * q..))),
            None => None,
        };
        let out = self.slice_mut(out)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(dr).arg(&dc);
        match &acts {
            Some((ar, ac)) => args.arg(*ar).arg(ac),
            None => args.arg(&NULL).arg(&NULL),
        };
        args.arg(out)
            .arg(&nri)
            .arg(&nci)
            .arg(&pi)
            .arg(&qi)
            .arg(&offset);
        self.launch(kernel, &mut args, cfg)
    }

    fn jl_project(
        &self,
        x: &Tensor,
        spec: &JlSpec,
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, d) = shapes::jl_project(x, spec.dim, out)?;
        let shape = JlShape {
            seed: spec.seed,
            column_offset: spec.column_offset,
            n: to_i32(n, "jl_project rows")?,
            d: to_i32(d, "jl_project columns")?,
            dim: to_i32(spec.dim, "jl_project dimension")?,
            // ntk.cu's JL_* codes.
            distribution: match spec.distribution {
                JlDistribution::Rademacher => 0,
                JlDistribution::Gaussian => 1,
            },
            accumulate: accumulate.into(),
            // JlSpec::entry divides by this very f32.
            sqrt_dim: (spec.dim as f32).sqrt(),
        };
        let cfg = config(tile_grid(n, spec.dim, 64, "jl_project")?, (256, 1, 1));
        let f = self.function("ntk", "jl_project_v1")?;
        let x = self.slice(x)?;
        let out = self.slice_mut(out)?;
        let mut args = self.stream().launch_builder(&f);
        args.arg(x).arg(out).arg(&shape);
        self.launch("jl_project_v1", &mut args, cfg)
    }

    // trim

    fn trim_search(
        &self,
        _candidates: &[&[f32]],
        _reference: TrimReference<'_>,
        _spec: &TrimSpec,
    ) -> Result<Vec<TrimResult>> {
        Err(Error::Unsupported {
            backend: "cuda",
            op: "trim_search",
        })
    }
}

/// What `mscope devices` shows of one CUDA device.
pub struct CudaDeviceSummary {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

/// The CUDA devices, or why there are none. cudarc panics when libcuda is missing, so its
/// presence is checked first.
pub fn list_devices() -> Result<Vec<CudaDeviceSummary>, String> {
    // SAFETY: only probes whether the driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda not found)".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("CUDA driver error: {e}"))?;
    if count == 0 {
        return Err("the CUDA driver reports no device".into());
    }
    (0..count as usize)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal).map_err(|e| format!("device {ordinal}: {e}"))?;
            let describe = |e| format!("device {ordinal}: {e}");
            Ok(CudaDeviceSummary {
                ordinal,
                name: ctx.name().map_err(describe)?,
                compute_capability: ctx.compute_capability().map_err(describe)?,
                memory_bytes: ctx.total_mem().map_err(describe)?,
            })
        })
        .collect()
}
