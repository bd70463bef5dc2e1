//! Adapter discovery and selection: what `mscope devices` lists and which adapter a backend opens.

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

/// Every adapter a backend can open (Vulkan, Metal, DX12; GL has no storage-buffer compute
/// path worth using), in the order [`WgpuOptions::adapter_index`] counts; empty when there is
/// none.
///
/// [`WgpuOptions::adapter_index`]: super::WgpuOptions::adapter_index
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = wgpu::Instance::default();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
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

/// Lower is preferred: hardware before virtual before software.
fn preference(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The compute adapter to open: the `index`-th one when an index is given (as asked, software
/// or not), else the first whose name contains `name_filter` (case-insensitive) when one is
/// given, else the most hardware-like one. Software adapters (lavapipe) only count when
/// `allow_software`. The error says what was available.
pub(super) fn select(
    instance: &wgpu::Instance,
    index: Option<usize>,
    name_filter: Option<&str>,
    allow_software: bool,
) -> Result<wgpu::Adapter, String> {
    // GL has no storage-buffer compute path worth using; the primary APIs all do.
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    if adapters.is_empty() {
        return Err(
            "no Vulkan/Metal/DX12 adapter (install a Vulkan driver, e.g. mesa-vulkan-drivers)"
                .into(),
        );
    }
    let names: Vec<String> = adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!("{} [{:?}]", info.name, info.device_type)
        })
        .collect();
    if let Some(index) = index {
        let count = adapters.len();
        return adapters.into_iter().nth(index).ok_or_else(|| {
            format!(
                "no adapter {index}: {count} adapter(s), numbered from 0: {}",
                names.join(", ")
            )
        });
    }
    let mut candidates: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| allow_software || a.get_info().device_type != wgpu::DeviceType::Cpu)
        .filter(|a| {
            name_filter.is_none_or(|f| a.get_info().name.to_lowercase().contains(&f.to_lowercase()))
        })
        .collect();
    candidates.sort_by_key(|a| preference(a.get_info().device_type));
    candidates.into_iter().next().ok_or_else(|| {
        let wanted = match name_filter {
            Some(f) => format!("no adapter named like {f:?}"),
            None => "no hardware adapter".into(),
        };
        let skipped = if allow_software {
            ""
        } else {
            " (software adapters not considered)"
        };
        format!("{wanted}{skipped} among: {}", names.join(", "))
    })
}
