//! `mscope devices`: what this machine offers each backend.

use crate::backend::{cuda, wgpu};
use crate::error::Result;

fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {$( if std::is_x86_feature_detected!($f) { found.push($f); } )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512bf16"
        );
        found
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec!["neon"]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

pub fn run() -> Result<()> {
    let bf16_gemm = crate::backend::cpu::bf16_gemm()
        .map_or_else(|| "none (f32)".to_string(), |v| format!("variant {v}"));
    outln!(
        "cpu: {} threads, SIMD: {}; --matmul-precision medium: {bf16_gemm}",
        rayon::current_num_threads(),
        cpu_features().join(" ")
    )?;

    let adapters = wgpu::list_adapters();
    if adapters.is_empty() {
        outln!("wgpu: no adapter (install a Vulkan driver, e.g. mesa-vulkan-drivers)")?;
    }
    for (i, a) in adapters.iter().enumerate() {
        outln!(
            "wgpu {i}: {} [{} {}] driver {}; shader_f16 {}, subgroups {}, timestamps {}, max storage binding {} MiB",
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.shader_f16,
            a.subgroups,
            a.timestamp_query,
            a.max_storage_binding_bytes >> 20
        )?;
    }

    match cuda::list_devices() {
        Ok(devices) => {
            for d in devices {
                outln!(
                    "cuda {}: {} (sm_{}{}), {:.1} GiB",
                    d.ordinal,
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.memory_bytes as f64 / (1u64 << 30) as f64
                )?;
            }
        }
        Err(why) => outln!("cuda: {why}")?,
    }
    Ok(())
}
