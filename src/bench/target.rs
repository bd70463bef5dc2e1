//! The backends a bench runs on: one per requested kernel variant. Variants carry one numbering
//! for every backend (`backend::variants`), as in llm.c's `dev/cuda` (`./gemm 2`), so one table
//! can set naive, tiled and fused kernels side by side. A number picks `linear`'s GEMM and
//! `attention`'s kernel wherever the backend has a variant of that number (the CPU's 7–9 are
//! faer, packed and packed-f16 GEMMs, and faer, packed and panels attention); the other families
//! run the backend's choice. A variant on f16 weights (5, 6, 9, 13) is a kernel and the element
//! type of the weights it reads.

use std::sync::Arc;

use crate::backend::cpu::{bf16_gemm, bf16_unit_available, bf16_unit_name, CpuBackend};
use crate::backend::cuda::{CudaBackend, CudaOptions};
use crate::backend::wgpu::{WgpuBackend, WgpuOptions};
use crate::backend::{self, AttentionVariant, Backend, BackendKind, GemmVariant, OpFamily};
use crate::error::{Error, Result};

/// An opened backend and the kernel variants it runs.
pub struct Target {
    pub backend: Arc<dyn Backend>,
    /// Adapter name on wgpu, CPU model on the CPU.
    pub device: String,
    /// The variant asked for, else the backend's (on the default CPU backend, the one of its
    /// largest weights: see [`Self::linear_variant`]).
    pub gemm: GemmVariant,
    /// The GEMM variant `--variant` asked for (`None`: the backend's choice).
    pub picked_gemm: Option<GemmVariant>,
    /// The attention variant `--variant` asked for (`None`: the backend's choice).
    pub picked_attention: Option<AttentionVariant>,
    /// The CPU backend with its default GEMM, which chooses by weight size.
    cpu_default: Option<CpuBackend>,
}

impl Target {
    /// The GEMM variant `linear` runs on a weight matrix of `weights` values.
    pub fn linear_variant(&self, weights: usize) -> GemmVariant {
        self.cpu_default
            .map_or(self.gemm, |cpu| cpu.linear_variant(weights))
    }

    /// The same device with a `linear` on bf16 operands (AMX tiles or AVX512_BF16 on the CPU;
    /// `wgmma` on sm_90, else `mma.sync` on sm_80+ under CUDA), for the bf16 ceiling probe;
    /// `None` where the device has no such kernel.
    pub fn bf16_gemm_backend(&self) -> Option<Arc<dyn Backend>> {
        match self.backend.name() {
            "cpu" => bf16_gemm().map(|v| Arc::new(CpuBackend::with_gemm(v)) as Arc<dyn Backend>),
            "cuda" => CudaBackend::open_bf16_gemm(&CudaOptions::from_env())
                .map(|be| Arc::new(be) as Arc<dyn Backend>),
            _ => None,
        }
    }
}

/// The variant numbered `number` among `known`.
fn numbered<V: Copy>(known: &[V], number: Option<u32>, of: fn(V) -> u32) -> Option<V> {
    number.and_then(|n| known.iter().copied().find(|&v| of(v) == n))
}

/// `number`'s variants of `kind` among its GEMM variants `gemms` and attention variants
/// `attentions`; an error listing both when it names neither.
fn pick(
    kind: BackendKind,
    number: Option<u32>,
    gemms: &[GemmVariant],
    attentions: &[AttentionVariant],
) -> Result<(Option<GemmVariant>, Option<AttentionVariant>)> {
    let gemm = numbered(gemms, number, GemmVariant::number);
    let attention = numbered(attentions, number, AttentionVariant::number);
    match number {
        Some(n) if gemm.is_none() && attention.is_none() => {
            let listed = |names: Vec<String>| names.join(", ");
            let mut why = format!(
                "--variant {n}: the {kind:?} backend's GEMM variants are {}",
                listed(gemms.iter().map(GemmVariant::to_string).collect())
            );
            if !attentions.is_empty() {
                why += &format!(
                    "; its attention variants {}",
                    listed(attentions.iter().map(AttentionVariant::to_string).collect())
                );
            }
            Err(Error::input(why))
        }
        _ => Ok((gemm, attention)),
    }
}

/// The backend `kind` names with the kernels of variant number `variant` (`None`: the backend's
/// choice). `Auto` opens the backend `mscope embed --backend auto` would use.
pub fn open(kind: BackendKind, variant: Option<u32>) -> Result<Target> {
    match kind {
        BackendKind::Cpu => {
            let (picked_gemm, picked_attention) = pick(
                kind,
                variant,
                &CpuBackend::GEMM_VARIANTS,
                &AttentionVariant::CPU,
            )?;
            if let Some(bf16) = picked_gemm.filter(|v| v.bf16_operands()) {
                if !bf16_unit_available(bf16) {
                    return Err(Error::input(format!(
                        "--variant {}: this CPU lacks {}",
                        bf16.number(),
                        bf16_unit_name(bf16)
                    )));
                }
            }
            let be = picked_gemm
                .map_or_else(CpuBackend::new, CpuBackend::with_gemm)
                .with_attention(picked_attention.or(CpuBackend::from_env().attention_variant()));
            Ok(Target {
                device: super::machine::cpu_model(),
                // The variant asked for: 9 is 8's kernel, on the f16 weights the cases upload.
                gemm: picked_gemm.unwrap_or(be.gemm_variant()),
                cpu_default: picked_gemm.is_none().then_some(be),
                picked_gemm,
                picked_attention,
                backend: Arc::new(be),
            })
        }
        BackendKind::Wgpu => {
            let (picked_gemm, _) = pick(kind, variant, &WgpuBackend::GEMM_VARIANTS, &[])?;
            let be = WgpuBackend::open(&WgpuOptions {
                gemm: picked_gemm,
                ..WgpuOptions::from_env()
            })?;
            let gemm = picked_gemm.unwrap_or(be.gemm_variant());
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
                picked_gemm,
                picked_attention: None,
                backend: Arc::new(be),
            })
        }
        BackendKind::Cuda => {
            let (picked_gemm, picked_attention) = pick(
                kind,
                variant,
                &CudaBackend::GEMM_VARIANTS,
                &AttentionVariant::CUDA,
            )?;
            let env = CudaOptions::from_env();
            let be = CudaBackend::open(&CudaOptions {
                gemm: picked_gemm.or(env.gemm),
                attention: picked_attention.or(env.attention),
                ..env
            })?;
            Ok(Target {
                device: be.device_name().to_string(),
                gemm: be.gemm_variant(),
                cpu_default: None,
                picked_gemm,
                picked_attention,
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
