//! Device plumbing shared by every CUDA op family: the driver probe, one context, stream and
//! module cache per device, kernel lookup and [`CudaBackend::launch`], the device buffers behind
//! tensors, small host-to-device uploads, and the grid arithmetic of the launch configurations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig,
};

use super::memory::CudaData;
use super::nvrtc::{self, ModuleCache};
use super::{CudaBackend, CudaStorage};
use crate::backend::{shapes, SeqLayout, Storage, Tensor};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// A device's one stream (which holds its context) and its kernel modules, shared by every backend value
/// opened on it (so kernels are compiled once per process).
pub(super) struct Device {
    pub(super) ordinal: usize,
    stream: Arc<CudaStream>,
    modules: ModuleCache,
    pub(super) name: String,
    pub(super) compute_capability: (i32, i32),
    /// Streaming multiprocessors: how many blocks a launch needs to fill the device.
    pub(super) multiprocessors: usize,
}

fn unavailable(reason: String) -> Error {
    Error::BackendUnavailable {
        backend: "cuda",
        reason,
    }
}

/// The error for a variant [`CudaBackend::open`] refuses, should one reach a launch.
pub(super) fn unsupported_variant(variant: String) -> Error {
    device_error(format!("variant {variant} has no CUDA kernel"))
}

pub(super) fn device_error(message: impl std::fmt::Display) -> Error {
    Error::Device {
        backend: "cuda",
        message: message.to_string(),
    }
}

/// The shared [`Device`] of `ordinal`, created on first use.
pub(super) fn device(ordinal: usize) -> Result<Arc<Device>> {
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
    if !nvrtc::nvrtc_available() {
        return Err(unavailable(
            "NVRTC not found (libnvrtc: put the CUDA toolkit's lib64 on LD_LIBRARY_PATH)".into(),
        ));
    }
    let nvrtc = nvrtc::nvrtc_version().map_err(unavailable)?;
    let fail = |e: cudarc::driver::DriverError| unavailable(format!("device {ordinal}: {e}"));
    let ctx = CudaContext::new(ordinal).map_err(fail)?;
    // SAFETY: every op of the backend runs on the device's one stream, in order, so no buffer is
    // used by two streams and cudarc's per-buffer events would only add overhead.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(fail)?;
    let compute_capability = ctx.compute_capability().map_err(fail)?;
    let multiprocessors = ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(fail)?
        .max(1) as usize;
    let arch = format!("sm_{}{}", compute_capability.0, compute_capability.1);
    let d = Arc::new(Device {
        ordinal,
        name: ctx.name().map_err(fail)?,
        modules: ModuleCache::new(ctx, arch, nvrtc),
        stream,
        compute_capability,
        multiprocessors,
    });
    devices.insert(ordinal, d.clone());
    Ok(d)
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

impl CudaBackend {
    pub(super) fn stream(&self) -> &Arc<CudaStream> {
        &self.device.stream
    }

    pub(super) fn function(
        &self,
        family: &'static str,
        name: &'static str,
    ) -> Result<CudaFunction> {
        self.device
            .modules
            .function(family, name)
            .map_err(device_error)
    }

    /// Launches what `args` built; debug builds, and any build with `MSCOPE_CUDA_SYNC=1`, wait
    /// for the kernel so an asynchronous fault names it rather than a later call.
    pub(super) fn launch(
        &self,
        name: &str,
        args: &mut LaunchArgs<'_>,
        cfg: LaunchConfig,
    ) -> Result<()> {
        if cfg.grid_dim.0 == 0 || cfg.grid_dim.1 == 0 || cfg.grid_dim.2 == 0 {
            return Ok(());
        }
        // SAFETY: every caller passes the kernel's parameters in order with matching types
        // (device buffers sized by the shape checks, i32 dimensions, repr(C) structs).
        unsafe { args.launch(cfg) }.map_err(|e| device_error(format!("{name}: {e}")))?;
        if cfg!(debug_assertions) || synchronous_launches() {
            self.stream()
                .synchronize()
                .map_err(|e| device_error(format!("{name}: {e}")))?;
        }
        Ok(())
    }

    pub(super) fn storage<'a>(&self, t: &'a Tensor) -> Result<&'a CudaStorage> {
        match &t.storage {
            Storage::Cuda(s) if s.owner == self.device.ordinal as u64 => Ok(s),
            Storage::Cuda(_) => Err(Error::input(format!(
                "tensor of shape {:?} lives on another CUDA device",
                t.shape
            ))),
            _ => Err(t.foreign("cuda")),
        }
    }

    /// The f32 values of `t`, which an op reads; f16/bf16 values are refused with the rule.
    pub(super) fn slice<'a>(&self, t: &'a Tensor) -> Result<&'a CudaSlice<f32>> {
        match &self.storage(t)?.data {
            CudaData::F32(d) => Ok(d),
            CudaData::Half(dtype, _) => Err(half_refused(t, *dtype)),
        }
    }

    pub(super) fn slice_mut<'a>(&self, t: &'a mut Tensor) -> Result<&'a mut CudaSlice<f32>> {
        let dtype = self.storage(t)?.dtype();
        if dtype != DType::F32 {
            return Err(half_refused(t, dtype));
        }
        match &mut t.storage {
            Storage::Cuda(s) => Ok(s.data_mut().expect("f32 values, checked above")),
            _ => unreachable!("checked above"),
        }
    }

    pub(super) fn new_tensor(&self, shape: &[usize], data: CudaSlice<f32>) -> Tensor {
        self.tensor_of(shape, CudaData::F32(data))
    }

    /// A tensor of f16 or bf16 `bits`.
    pub(super) fn new_half_tensor(
        &self,
        shape: &[usize],
        dtype: DType,
        bits: CudaSlice<u16>,
    ) -> Tensor {
        self.tensor_of(shape, CudaData::Half(dtype, bits))
    }

    fn tensor_of(&self, shape: &[usize], data: CudaData) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cuda(CudaStorage::new(self.device.ordinal as u64, data)),
            cpu_packed: Default::default(),
        }
    }

    /// Small host data (ids, sequence starts) as a device buffer; never empty, since a buffer
    /// of zero bytes cannot be allocated.
    pub(super) fn upload_small<T: DeviceRepr + Copy + Default>(
        &self,
        data: &[T],
    ) -> Result<CudaSlice<T>> {
        let placeholder = [T::default()];
        let data = if data.is_empty() {
            &placeholder[..]
        } else {
            data
        };
        self.stream().clone_htod(data).map_err(device_error)
    }
}

/// The error for a half-precision tensor handed to an op that reads f32.
fn half_refused(t: &Tensor, dtype: DType) -> Error {
    Error::input(format!(
        "tensor of shape {:?} holds {dtype:?} values on the CUDA device; only linear weights and \
         gather_rows tables may be half precision",
        t.shape
    ))
}

/// The null device pointer passed for an absent optional input.
pub(super) const NULL: u64 = 0;

/// Threads per block of the row-wise kernels: a multiple of the warp (their reductions shuffle
/// whole warps), at most 256.
pub(super) fn row_threads(d: usize) -> u32 {
    d.clamp(1, 256).next_multiple_of(32) as u32
}

/// `value` as a kernel's `int`, or an error naming it.
pub(super) fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::input(format!("{what} {value} exceeds i32")))
}

/// Largest grid extent along y and z.
pub(super) const MAX_GRID_YZ: usize = 65_535;

pub(super) fn grid_yz(value: usize, what: &str) -> Result<u32> {
    shapes::ensure(value <= MAX_GRID_YZ, || {
        format!("{what}: {value} blocks exceed the CUDA grid's {MAX_GRID_YZ}")
    })?;
    Ok(value as u32)
}

/// `[blocks_x, blocks_y]` of 2-D tiles over an `[rows, cols]` output.
pub(super) fn tile_grid(
    rows: usize,
    cols: usize,
    tile: usize,
    what: &str,
) -> Result<(u32, u32, u32)> {
    let x = u32::try_from(cols.div_ceil(tile))
        .map_err(|_| Error::input(format!("{what}: {cols} columns exceed the CUDA grid")))?;
    Ok((x, grid_yz(rows.div_ceil(tile), what)?, 1))
}

pub(super) fn config(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: 0,
    }
}

/// The layout's row offsets as the kernels read them.
pub(super) fn sequence_starts(layout: &SeqLayout) -> Result<Vec<i32>> {
    layout
        .starts()
        .iter()
        .map(|&s| to_i32(s, "sequence start"))
        .collect()
}

/// `MSCOPE_CUDA_SYNC=1`: every launch waits for its kernel (read once per process).
fn synchronous_launches() -> bool {
    static SYNC: OnceLock<bool> = OnceLock::new();
    *SYNC.get_or_init(|| std::env::var_os("MSCOPE_CUDA_SYNC").is_some_and(|v| v == "1"))
}
