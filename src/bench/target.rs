//! The backends a bench runs on: one per requested GEMM variant. Variants carry one numbering for
//! every backend (`backend::variants`), as in llm.c's `dev/cuda` (`./gemm 2`), so one table can
//! set naive, tiled and fused kernels side by side; only `linear` has more than one today. A
//! variant on f16 weights (5, 6) is a kernel and the element type of the weights it reads.

use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaOptions};
use crate::backend::wgpu::{WgpuBackend, WgpuOptions};
use crate::backend::{self, Backend, BackendKind, GemmVariant, OpFamily};
use crate::error::{Error, Result};

/// An opened backend and the GEMM variant its `linear` runs.
pub struct Target {
    pub backend: Arc<dyn Backend>,
    /// Adapter name on wgpu, CPU model on the CPU.
    pub device: String,
    /// The variant asked for, else the backend's (on the default CPU backend, the one of its
    /// largest weights: see [`Self::linear_variant`]).
    pub gemm: GemmVariant,
    /// The CPU backend with its default GEMM, which chooses by weight size.
    cpu_default: Option<CpuBackend>,
}

impl Target {
    /// The GEMM variant `linear` runs on a weight matrix of `weights` values.
    pub fn linear_variant(&self, weights: usize) -> GemmVariant {
        self.cpu_default
            .map_or(self.gemm, |cpu| cpu.linear_variant(weights))
    }
}

/// The backend `kind` names with GEMM variant number `variant` (`None`: the backend's choice).
/// `Auto` opens the backend `mscope embed --backend auto` would use.
pub fn open(kind: BackendKind, variant: Option<u32>) -> Result<Target> {
    // The variant asked for, if `kind` has it; else an error listing the ones it has.
    let pick = |known: &[GemmVariant]| -> Result<Option<GemmVariant>> {
        let Some(n) = variant else { return Ok(None) };
        match known.iter().find(|v| v.number() == n) {
            Some(&v) => Ok(Some(v)),
            None => {
                let listed: Vec<String> = known.iter().map(GemmVariant::to_string).collect();
                Err(Error::input(format!(
                    "--variant {n}: the {kind:?} backend's GEMM variants are {}",
                    listed.join(", ")
                )))
            }
        }
    };
    match kind {
        BackendKind::Cpu => {
            let picked = pick(&CpuBackend::GEMM_VARIANTS)?;
            let be = picked
                .map_or_else(CpuBackend::new, CpuBackend::with_gemm)
                .with_attention(CpuBackend::from_env().attention_variant());
            Ok(Target {
                device: super::machine::cpu_model(),
                // The variant asked for: 9 is 8's kernel, on the f16 weights the cases upload.
                gemm: picked.unwrap_or(be.gemm_variant()),
                cpu_default: picked.is_none().then_some(be),
                backend: Arc::new(be),
            })
        }
        BackendKind::Wgpu => {
            let picked = pick(&WgpuBackend::GEMM_VARIANTS)?;
            let be = WgpuBackend::open(&WgpuOptions {
                gemm: picked,
                ..WgpuOptions::from_env()
            })?;
            let gemm = picked.unwrap_or(be.gemm_variant());
            if gemm.f16_weights() && !be.keeps_f16() {
                return Err(Error::input(format!(
                    "--variant {gemm}: f16 weights need SHADER_F16, which {} lacks",
                    be.adapter_info().name
                )));
            }
            Ok(Target {
                device: be.adapter_info().name.clone(),
                gemm,
                cpu_default: None,
                backend: Arc::new(be),
            })
        }
        BackendKind::Cuda => {
            let picked = pick(&CudaBackend::GEMM_VARIANTS)?;
            let env = CudaOptions::from_env();
            let be = CudaBackend::open(&CudaOptions {
                gemm: picked.or(env.gemm),
                ..env
            })?;
            Ok(Target {
                device: be.device_name().to_string(),
                gemm: be.gemm_variant(),
                cpu_default: None,
                backend: Arc::new(be),
            })
        }
        BackendKind::Auto => {
            let picked = match backend::open(BackendKind::Auto, OpFamily::Encoder)?.name() {
                "cuda" => BackendKind::Cuda,
                "wgpu" => BackendKind::Wgpu,
                _ => BackendKind::Cpu,
            };
            open(picked, variant)
        }
    }
}
