//! The backends a bench runs on: one per requested GEMM variant. Variants are numbered per
//! backend, as in llm.c's `dev/cuda` (`./gemm 2`), so one table can set naive, tiled and fused
//! kernels side by side; only `linear` has more than one today. On wgpu a variant is a kernel and
//! the element type of the weights it reads: 1 and 2 on f32 weights, 3 and 4 on f16.

use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaGemmVariant, CudaOptions};
use crate::backend::wgpu::{GemmVariant, WgpuBackend, WgpuOptions};
use crate::backend::{self, Backend, BackendKind, OpFamily};
use crate::error::{Error, Result};

/// A numbered kernel variant of `linear` on one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub number: u32,
    pub name: &'static str,
    /// Whether `linear`'s weights are uploaded as f16 (and read as f16 by the kernel).
    pub f16_weights: bool,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number, self.name)
    }
}

/// The CPU backend's only GEMM.
const CPU_GEMM: Variant = Variant {
    number: 1,
    name: "faer",
    f16_weights: false,
};

fn cuda_variant(v: CudaGemmVariant) -> Variant {
    Variant {
        number: v.number(),
        name: v.name(),
        f16_weights: false,
    }
}

/// wgpu's kernel `v`, on f16 weights when `f16_weights`.
fn wgpu_variant(v: GemmVariant, f16_weights: bool) -> Variant {
    Variant {
        number: if f16_weights {
            v.number_f16()
        } else {
            v.number()
        },
        name: if f16_weights { v.name_f16() } else { v.name() },
        f16_weights,
    }
}

/// Every wgpu variant with its kernel, in the order of their numbers.
fn wgpu_variants() -> Vec<(GemmVariant, Variant)> {
    [false, true]
        .into_iter()
        .flat_map(|f16| GemmVariant::ALL.map(|v| (v, wgpu_variant(v, f16))))
        .collect()
}

/// An opened backend and the GEMM variant its `linear` runs.
pub struct Target {
    pub backend: Arc<dyn Backend>,
    /// Adapter name on wgpu, CPU model on the CPU.
    pub device: String,
    pub gemm: Variant,
}

/// The backend `kind` names with GEMM variant number `variant` (`None`: the backend's choice).
/// `Auto` opens the backend `mscope embed --backend auto` would use.
pub fn open(kind: BackendKind, variant: Option<u32>) -> Result<Target> {
    let unknown = |n: u32, known: &[Variant]| {
        let listed: Vec<String> = known.iter().map(Variant::to_string).collect();
        Error::input(format!(
            "--variant {n}: the {kind:?} backend's GEMM variants are {}",
            listed.join(", ")
        ))
    };
    match kind {
        BackendKind::Cpu => match variant {
            None | Some(1) => Ok(Target {
                backend: Arc::new(CpuBackend::new()),
                device: super::machine::cpu_model(),
                gemm: CPU_GEMM,
            }),
            Some(n) => Err(unknown(n, &[CPU_GEMM])),
        },
        BackendKind::Wgpu => {
            let variants = wgpu_variants();
            let picked = match variant {
                None => None,
                Some(n) => Some(*variants.iter().find(|(_, v)| v.number == n).ok_or_else(
                    || {
                        let known: Vec<Variant> = variants.iter().map(|&(_, v)| v).collect();
                        unknown(n, &known)
                    },
                )?),
            };
            let be = WgpuBackend::open(&WgpuOptions {
                gemm: picked.map(|(kernel, _)| kernel),
                ..WgpuOptions::from_env()
            })?;
            let gemm = picked.map_or(wgpu_variant(be.gemm_variant(), false), |(_, v)| v);
            if gemm.f16_weights && !be.keeps_f16() {
                return Err(Error::input(format!(
                    "--variant {gemm}: f16 weights need SHADER_F16, which {} lacks",
                    be.adapter_info().name
                )));
            }
            Ok(Target {
                device: be.adapter_info().name.clone(),
                gemm,
                backend: Arc::new(be),
            })
        }
        BackendKind::Cuda => {
            let gemm = match variant {
                None => None,
                Some(n) => Some(
                    *CudaGemmVariant::ALL
                        .iter()
                        .find(|v| v.number() == n)
                        .ok_or_else(|| unknown(n, &CudaGemmVariant::ALL.map(cuda_variant)))?,
                ),
            };
            let env = CudaOptions::from_env();
            let be = CudaBackend::open(&CudaOptions {
                gemm: gemm.or(env.gemm),
                ..env
            })?;
            Ok(Target {
                device: be.device_name().to_string(),
                gemm: cuda_variant(be.gemm_variant()),
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
