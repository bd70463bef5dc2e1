//! The wgpu backend (WGSL shaders in `shaders/`). Its kernels land with the wgpu issue; until
//! then this module enumerates adapters for `mscope devices` and reports the backend as
//! unavailable rather than pretending to run.

use crate::error::Error;

pub fn unavailable() -> Error {
    Error::BackendUnavailable {
        backend: "wgpu",
        reason: "the WGSL kernels are not implemented yet; use --backend cpu".into(),
    }
}

/// What `mscope devices` shows of one adapter.
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
    pub max_storage_binding_bytes: u64,
}

/// Every adapter wgpu can see (Vulkan, Metal, DX12, GL); empty when there is none.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = wgpu::Instance::default();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            let features = adapter.features();
            AdapterSummary {
                name: info.name,
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
                subgroups: features.contains(wgpu::Features::SUBGROUP),
                timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
                max_storage_binding_bytes: adapter.limits().max_storage_buffer_binding_size,
            }
        })
        .collect()
}
