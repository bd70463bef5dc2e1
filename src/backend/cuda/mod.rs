//! The CUDA backend: the kernels of `kernels/` compiled by NVRTC at first use for the device's
//! own architecture and launched through cudarc (dynamic loading: the crate builds and runs
//! where no CUDA is installed, and reports the backend unavailable there).
//!
//! One context and one stream per device, shared by every backend value opened on it; ops are
//! queued on the stream in order and nothing waits for the device until a download or
//! [`Backend::synchronize`]. Debug builds synchronise after every launch so an error names its
//! kernel; release builds surface asynchronous errors at the next synchronisation.
//!
//! Shape: one file per kernel family, mirroring `kernels/*.cu` — `gemm`, `gemm_sm90` (Hopper,
//! launched from `gemm`), `norm`, `rope`, `attention`, `gather`, `pool`, `ntk`, `stats`,
//! `backward`, `trim` — each holding functions named like
//! the [`Backend`] methods they implement, with their variant choice, launch configuration and
//! `#[repr(C)]` parameter structs. `device` holds the plumbing they share (device set-up, kernel
//! lookup and launch, tensor buffers, small uploads, grid arithmetic), [`nvrtc`] the compilation
//! and cubin cache, `memory` the storage of a tensor. `impl Backend` below only delegates, one
//! line an op. A new op goes into its family's file (a new file beside a new `kernels/*.cu`)
//! and gets its one line here.

mod attention;
mod backward;
mod device;
mod gather;
mod gemm;
mod gemm_sm90;
mod memory;
mod norm;
mod ntk;
pub mod nvrtc;
mod pool;
mod rope;
mod stats;
mod trim;

use std::sync::{Arc, Mutex};

use std::borrow::Cow;

use cudarc::driver::{sys::CUevent_flags, CudaEvent};
use half::{bf16, f16};

pub use device::{list_devices, CudaDeviceSummary};
pub use memory::CudaStorage;

use super::{
    shapes, Activation, AttentionSpec, AttentionVariant, Backend, Eigen, GemmVariant, HostWork,
    JlSpec, Matrix64, Moments, NtkVariant, OpFamily, Pooling, RopeSpec, SeqFactors, SeqLayout,
    Tensor, TokenPairing, TrimReference, TrimResult, TrimSpec,
};
use crate::error::{Error, Result};
use crate::tensor::{widen_half, DType, HalfMatrix};
use device::{device_error, Device};
use memory::CudaData;

/// How to open the backend.
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// `None`: [`GemmVariant::Tiled`].
    pub gemm: Option<GemmVariant>,
    /// `None`: [`NtkVariant::Tiled`].
    pub ntk: Option<NtkVariant>,
    /// `None`: chosen per head_dim (see `attention`'s module docs); a variant without a kernel
    /// for a call's head_dim makes that call an error, except variant 4, which runs the default
    /// there.
    pub attention: Option<AttentionVariant>,
}

impl CudaOptions {
    /// Defaults, with the device from `MSCOPE_CUDA_DEVICE`, the GEMM variant from
    /// `MSCOPE_CUDA_GEMM` (`naive`, `tiled`, `mma-bf16`/`mma`, `wgmma-bf16`/`wgmma`) and the attention variant from
    /// `MSCOPE_CUDA_ATTENTION` (`naive`, `flash`, `flash-warp`, `mma-bf16`) when they are set; values that do
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
                    .find(|g| g.name() == v || g.name().strip_suffix("-bf16") == Some(v.as_str()))
            }),
            ntk: None,
            attention: var("MSCOPE_CUDA_ATTENTION")
                .and_then(|v| AttentionVariant::CUDA.into_iter().find(|a| a.name() == v)),
        }
    }
}

pub struct CudaBackend {
    device: Arc<Device>,
    gemm: GemmVariant,
    ntk: NtkVariant,
    attention: Option<AttentionVariant>,
    /// Host fallbacks (large eigenproblems, SPD solves): see [`stats`].
    cpu: super::cpu::CpuBackend,
    /// The start event of a running device timer.
    timer: Mutex<Option<CudaEvent>>,
    /// Set by host fallbacks and the trim search's host finish.
    host_work: HostWork,
}

impl CudaBackend {
    /// The CPU backend, for work kept on the host ([`HostWork`]).
    fn host(&self) -> &super::cpu::CpuBackend {
        self.host_work.mark();
        &self.cpu
    }

    /// The GEMM variants of kernels/gemm.cu and kernels/gemm_sm90.cu (sm_90 devices only).
    pub const GEMM_VARIANTS: [GemmVariant; 4] = [
        GemmVariant::Naive,
        GemmVariant::Tiled,
        GemmVariant::MmaBf16,
        GemmVariant::WgmmaBf16,
    ];
    /// The contraction variants of kernels/ntk.cu.
    pub const NTK_VARIANTS: [NtkVariant; 2] = [NtkVariant::Naive, NtkVariant::Tiled];

    /// Opens device `options.device`, or says why it cannot be opened (no driver, no device, no
    /// NVRTC).
    pub fn open(options: &CudaOptions) -> Result<Self> {
        let device = device::device(options.device)?;
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
        // mma.sync on bf16 and cvt.rn.bf16x2 are sm_80 instructions.
        for (picked, kernel) in [
            (gemm == GemmVariant::MmaBf16, "GEMM"),
            (
                options.attention == Some(AttentionVariant::MmaBf16),
                "attention",
            ),
        ] {
            if picked && device.compute_capability.0 < 8 {
                return Err(Error::input(format!(
                    "{kernel} variant mma-bf16 needs sm_80 or newer; {} is sm_{}{}",
                    device.name, device.compute_capability.0, device.compute_capability.1
                )));
            }
        }
        if gemm == GemmVariant::WgmmaBf16 && device.compute_capability != (9, 0) {
            return Err(Error::input(format!(
                "GEMM variant wgmma-bf16 needs an sm_90 (Hopper) device; {} is sm_{}{}",
                device.name, device.compute_capability.0, device.compute_capability.1
            )));
        }
        Ok(CudaBackend {
            device,
            gemm,
            ntk,
            attention: options.attention,
            cpu: super::cpu::CpuBackend::new(),
            timer: Mutex::new(None),
            host_work: HostWork::default(),
        })
    }

    /// [`Self::open`] with the device's fastest GEMM on bf16 operands: `wgmma` on sm_90, else
    /// `mma.sync` on sm_80 and newer; `None` on older devices or where the device cannot be
    /// opened.
    pub fn open_bf16_gemm(options: &CudaOptions) -> Option<Self> {
        [GemmVariant::WgmmaBf16, GemmVariant::MmaBf16]
            .into_iter()
            .find_map(|gemm| {
                Self::open(&CudaOptions {
                    gemm: Some(gemm),
                    ..options.clone()
                })
                .ok()
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
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// Every family but training (the CPU's only): encoder, backward, NTK, stats (with the
    /// host fallbacks documented in `stats`) and trim (the sort and the ECDF counts on the
    /// device, the f64 scan on the host, see `trim`).
    fn supports(&self, family: OpFamily) -> bool {
        !matches!(family, OpFamily::Training)
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        shapes::upload(shape, data.len())?;
        Ok(self.new_tensor(shape, self.upload_small(data)?))
    }

    /// Half-precision tensors come back widened to f32 (exact).
    fn download(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        let storage = self.storage(tensor)?;
        // Surfaces a failed kernel as this call's error before the copy.
        self.synchronize()?;
        if tensor.is_empty() {
            return Ok(Vec::new());
        }
        let len = tensor.len();
        let out = match &storage.data {
            CudaData::F32(data) => self.stream().clone_dtoh(&data.slice(..len)),
            CudaData::Half(dtype, bits) => {
                self.stream().clone_dtoh(&bits.slice(..len)).map(|bits| {
                    let mut wide = vec![0.0; len];
                    widen_half(*dtype, bytemuck::cast_slice(&bits), &mut wide);
                    wide
                })
            }
        }
        .map_err(device_error)?;
        self.synchronize()?;
        Ok(out)
    }

    /// Kept f16 on the device: `linear` and `gather_rows` read the 16 bits, other ops refuse the
    /// tensor.
    fn upload_f16(&self, shape: &[usize], data: &[f16]) -> Result<Tensor> {
        shapes::upload(shape, data.len())?;
        let bits = self.upload_small(bytemuck::cast_slice::<f16, u16>(data))?;
        Ok(self.new_half_tensor(shape, DType::F16, bits))
    }

    /// Kept bf16 on the device, like [`Backend::upload_f16`]'s f16.
    fn upload_bf16(&self, shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        shapes::upload(shape, data.len())?;
        let bits = self.upload_small(bytemuck::cast_slice::<bf16, u16>(data))?;
        Ok(self.new_half_tensor(shape, DType::BF16, bits))
    }

    /// Copied part by part from where the matrix lies (a checkpoint's memory map) into one
    /// device buffer of its 16-bit values: no host copy of the matrix, but for a part whose
    /// bytes are not 2-aligned.
    fn upload_half(&self, matrix: &HalfMatrix) -> Result<Tensor> {
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let len = rows * cols;
        // SAFETY: every element is written by the copies below before any read.
        let mut bits = unsafe { self.stream().alloc::<u16>(len.max(1)) }.map_err(device_error)?;
        let mut at = 0;
        for part in matrix.parts() {
            let aligned: Cow<[u16]> = match bytemuck::try_cast_slice(part) {
                Ok(halves) if cfg!(target_endian = "little") => Cow::Borrowed(halves),
                _ => Cow::Owned(
                    part.chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                ),
            };
            let end = at + aligned.len();
            self.stream()
                .memcpy_htod(aligned.as_ref(), &mut bits.slice_mut(at..end))
                .map_err(device_error)?;
            // The host bytes must outlive the asynchronous copy.
            self.synchronize()?;
            at = end;
        }
        debug_assert_eq!(at, len, "the parts hold every row");
        Ok(self.new_half_tensor(&[rows, cols], matrix.dtype(), bits))
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
    /// between the two events; a region that computed on the host too has none (see `HostWork`).
    fn start_device_timer(&self) -> Result<bool> {
        self.host_work.take();
        let start = self
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(device_error)?;
        *self.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(start);
        Ok(true)
    }

    fn stop_device_timer(&self) -> Result<Option<f64>> {
        let start = self.timer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let host_work = self.host_work.take();
        let Some(start) = start.filter(|_| !host_work) else {
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
        gemm::linear(self, x, w, bias, act, residual, out)
    }

    fn gated_activation(&self, gate_up: &Tensor, act: Activation, out: &mut Tensor) -> Result<()> {
        gemm::gated_activation(self, gate_up, act, out)
    }

    fn gather_rows(
        &self,
        table: &Tensor,
        ids: &[u32],
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        gather::gather_rows(self, table, ids, accumulate, out)
    }

    fn layer_norm(&self, x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
        norm::layer_norm(self, x, gamma, beta, eps)
    }

    fn rms_norm(&self, x: &Tensor, gamma: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
        norm::rms_norm(self, x, gamma, eps, out)
    }

    fn rope(
        &self,
        qkv: &mut Tensor,
        layout: &SeqLayout,
        spec: &RopeSpec,
        table: &Tensor,
    ) -> Result<()> {
        rope::rope(self, qkv, layout, spec, table)
    }

    fn attention(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        attention::attention(self, qkv, layout, spec, out)
    }

    fn pool(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        mode: Pooling,
        out: &mut Tensor,
    ) -> Result<()> {
        pool::pool(self, hidden, layout, mode, out)
    }

    fn l2_normalize(&self, x: &mut Tensor) -> Result<()> {
        pool::l2_normalize(self, x)
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
        ntk::ntk_contract(self, delta_rows, delta_cols, acts, offset, cols, out)
    }

    fn ntk_contract_seq(
        &self,
        rows: SeqFactors<'_>,
        cols: SeqFactors<'_>,
        pairing: TokenPairing<'_>,
        samples: std::ops::Range<usize>,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::ntk_contract_seq(self, rows, cols, pairing, samples, out)
    }

    fn ntk_sample_gradients(
        &self,
        factors: SeqFactors<'_>,
        acts: &Tensor,
        offset: f32,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::ntk_sample_gradients(self, factors, acts, offset, out)
    }

    fn jl_project(
        &self,
        x: &Tensor,
        spec: &JlSpec,
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::jl_project(self, x, spec, accumulate, out)
    }

    // backward

    fn activation_backward(
        &self,
        pre: &Tensor,
        dy: &Tensor,
        act: Activation,
        out: &mut Tensor,
    ) -> Result<()> {
        backward::activation_backward(self, pre, dy, act, out)
    }

    fn layer_norm_backward(
        &self,
        pre: &Tensor,
        gamma: &Tensor,
        eps: f32,
        dy: &Tensor,
        dx: &mut Tensor,
        normed: &mut Tensor,
    ) -> Result<()> {
        backward::layer_norm_backward(self, pre, gamma, eps, dy, dx, normed)
    }

    fn attention_backward(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        d_out: &Tensor,
        d_qkv: &mut Tensor,
    ) -> Result<()> {
        backward::attention_backward(self, qkv, layout, spec, d_out, d_qkv)
    }

    fn sequence_sums(
        &self,
        values: &Tensor,
        weights: Option<&Tensor>,
        layout: &SeqLayout,
        out: &mut Tensor,
    ) -> Result<()> {
        backward::sequence_sums(self, values, weights, layout, out)
    }

    fn scatter_rows(
        &self,
        delta: &Tensor,
        ids: &[u32],
        accumulate: bool,
        table: &mut Tensor,
    ) -> Result<()> {
        backward::scatter_rows(self, delta, ids, accumulate, table)
    }

    // trim

    fn trim_search(
        &self,
        candidates: &[&[f32]],
        reference: TrimReference<'_>,
        spec: &TrimSpec,
    ) -> Result<Vec<TrimResult>> {
        trim::trim_search(self, candidates, reference, spec)
    }
}
