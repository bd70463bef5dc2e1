//! The CUDA backend (kernels in `kernels/`, compiled by NVRTC through cudarc). Its kernels land
//! with the CUDA issue; until then this module lists devices for `mscope devices` and reports the
//! backend as unavailable. The kernel sources are already embedded and compile-checked.

pub mod kernels;

use cudarc::driver::CudaContext;

use crate::error::Error;

pub fn unavailable() -> Error {
    let reason = match list_devices() {
        Err(why) => why,
        Ok(_) => "the CUDA kernels are not implemented yet; use --backend cpu".into(),
    };
    Error::BackendUnavailable {
        backend: "cuda",
        reason,
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
