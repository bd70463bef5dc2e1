//! The wgpu backend: the WGSL kernels of `shaders/` on any Vulkan, Metal or DX12 adapter, and on
//! Mesa's lavapipe in CI.
//!
//! # Where things are
//!
//! One file per kernel family, named like its shader in `shaders/`: `gemm.rs` (`linear`),
//! `norm.rs` (`layer_norm`, `rms_norm`, `l2_normalize`), `rope.rs`, `attention.rs`, `gather.rs`
//! (`gather_rows`), `pool.rs`, `ntk.rs` (`ntk_contract`, `jl_project`), `stats.rs` (`scatter`,
//! `symmetric_eigen`, `spd_solve`), `trim.rs` (`trim_search`) and `backward.rs`
//! (`layer_norm_backward`, `attention_backward`, `scatter_rows`; `activation_backward` is in
//! `gemm.rs`, beside the activations). Each holds one function per op, named like the
//! [`Backend`] method that calls it in one line below, together with what only that family knows:
//! which kernel (and [`GemmVariant`]) it runs, its workgroup sizes and the other constants that
//! must match its shader, and its `#[repr(C)]` `Params` block. Around them:
//! `device.rs` (opening the adapter, the pending encoder, waiting and mapping, the generic
//! `dispatch`, the lookup of a tensor's buffers), `memory.rs` (tensor storage and the memory ops),
//! `timer.rs` (the device timer), `kernels.rs` (every entry point's source, name and bind-group
//! layout, and the pipeline cache), `shader_builds.rs` (the f16 and subgroup builds, shared with
//! build.rs) and `adapter.rs` (listing and selecting adapters).
//!
//! A new op therefore goes in its family's file (a new family gets a new shader and file): add its
//! `kernels::Kernel` variant and the three `match` arms that describe it, its `Params` struct,
//! and a function that checks shapes (`backend::shapes`), fills `Params`, looks up its buffers
//! and calls `WgpuBackend::dispatch`.
//!
//! # How an op runs
//!
//! Tensors stay in device buffers between ops. `dispatch` builds the kernel's pipeline on first
//! use, binds `Params` as a uniform at binding 0 and the storage buffers after it, and records one
//! compute pass into a single pending command encoder. That encoder is submitted without waiting
//! every few dozen passes (`PASSES_PER_SUBMIT`), so the device starts on long sequences of ops
//! while the host records the rest, and whenever results are needed: `download`, `synchronize`
//! and the device timer submit it and wait.
//! A forward pass therefore never waits on the device until its output is read.

mod adapter;
mod attention;
mod backward;
mod device;
mod gather;
mod gemm;
mod kernels;
mod memory;
mod norm;
mod ntk;
mod pool;
mod rope;
mod shader_builds;
mod stats;
mod timer;
mod trim;

use std::ops::Range;
use std::sync::Mutex;

use half::{bf16, f16};

pub use adapter::{list_adapters, AdapterSummary};
pub use memory::WgpuStorage;

use super::{
    Activation, AttentionSpec, Backend, Eigen, GemmVariant, HostWork, JlSpec, Matrix64, Moments,
    OpFamily, Pooling, RopeSpec, SeqFactors, SeqLayout, Tensor, TokenPairing, TrimReference,
    TrimResult, TrimSpec,
};
use crate::error::Result;
use device::Pending;
use kernels::PipelineCache;
use timer::Timestamps;

/// How to open the backend.
#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// Case-insensitive substring of the adapter name; `None` takes the most hardware-like one.
    pub adapter: Option<String>,
    /// The adapter's position in [`list_adapters`] (`mscope devices` numbers them; `--devices`
    /// picks by it); overrides `adapter`.
    pub adapter_index: Option<usize>,
    /// Whether a software adapter (lavapipe) may be opened.
    pub allow_software: bool,
    /// Largest buffer a tensor part may have; `None` means the device's storage-binding limit
    /// (a lower value only lowers it). Tests lower it to exercise split tables and split GEMM
    /// weights with small data; every tensor is planned under it, activations included.
    pub max_binding_bytes: Option<u64>,
    /// `None` picks by adapter: on software adapters [`GemmVariant::Subgroup`] where the device
    /// has subgroups (see `subgroups`) and [`GemmVariant::Direct`] otherwise, else tiled. The NTK
    /// contraction (two GEMMs) follows the same choice; an f16-weight variant picks the kernel
    /// it builds on (which build runs follows the weights' dtype).
    pub gemm: Option<GemmVariant>,
    /// Whether kernels use subgroup operations where the adapter offers them: the norm family's
    /// row reductions (norm.wgsl's subgroup build) and, on software adapters, the default GEMM
    /// (variant 12, gemm.wgsl's subgroup build); false keeps the shared-memory reductions and
    /// the direct GEMM, so tests can run both on one adapter.
    pub subgroups: bool,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            adapter: None,
            adapter_index: None,
            allow_software: true,
            max_binding_bytes: None,
            gemm: None,
            subgroups: true,
        }
    }
}

impl WgpuOptions {
    /// Defaults, with the adapter picked by `MSCOPE_WGPU_ADAPTER` when it is set.
    pub fn from_env() -> Self {
        WgpuOptions {
            adapter: std::env::var("MSCOPE_WGPU_ADAPTER")
                .ok()
                .filter(|s| !s.is_empty()),
            ..Default::default()
        }
    }
}

/// An opened adapter ([`WgpuBackend::open`]) with the state its ops share.
pub struct WgpuBackend {
    /// Unique per opened backend; tags its tensors.
    id: u64,
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    pipelines: PipelineCache,
    pending: Mutex<Pending>,
    /// Bound in place of an absent optional input: layouts are fixed, so every binding needs a
    /// buffer; the kernel's parameters say not to read it.
    placeholder: wgpu::Buffer,
    /// Tensors larger than this are split into parts of whole rows.
    max_part_bytes: u64,
    max_workgroups_per_dim: u32,
    /// The f32-weight GEMM variant `linear` runs (tiled, direct or subgroup); f16 weights run its
    /// f16 build.
    gemm: GemmVariant,
    /// Whether the norm family dispatches its subgroup kernels.
    subgroup_norms: bool,
    /// Loop iterations one shader invocation may run in all before the driver silently ends its
    /// loops (llvmpipe's limiter, [`device::LLVMPIPE_LOOP_LIMIT`]); `None` where there is none.
    loop_limit: Option<u64>,
    /// The device timer, where the adapter offers timestamp queries.
    timestamps: Option<Timestamps>,
    /// Set by the faer fallbacks and the trim search's host finish.
    host_work: HostWork,
}

impl WgpuBackend {
    /// The GEMM variants of shaders/gemm.wgsl: its two kernels on f32 weights, their f16 builds,
    /// then the subgroup build's kernel on f32 and f16 weights.
    pub const GEMM_VARIANTS: [GemmVariant; 6] = [
        GemmVariant::Tiled,
        GemmVariant::Direct,
        GemmVariant::TiledF16,
        GemmVariant::DirectF16,
        GemmVariant::Subgroup,
        GemmVariant::SubgroupF16,
    ];

    /// The adapter this backend runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// The GEMM kernel `linear` dispatches on f32 weights.
    pub fn gemm_variant(&self) -> GemmVariant {
        self.gemm
    }

    /// Whether layer_norm, rms_norm and l2_normalize run their subgroup kernels.
    pub fn subgroup_norms(&self) -> bool {
        self.subgroup_norms
    }

    /// Whether f16 uploads stay f16 on the device (the adapter offers SHADER_F16).
    pub fn keeps_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn max_activation_bytes(&self) -> Option<u64> {
        Some(self.max_part_bytes)
    }

    fn supports(&self, family: OpFamily) -> bool {
        matches!(
            family,
            OpFamily::Encoder
                | OpFamily::Stats
                | OpFamily::Ntk
                | OpFamily::Trim
                | OpFamily::Backward
        )
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        memory::upload(self, shape, data)
    }

    /// Kept f16 where the adapter has SHADER_F16 (for `linear`'s weight and `gather_rows`'
    /// table); widened to f32 elsewhere.
    fn upload_f16(&self, shape: &[usize], data: &[f16]) -> Result<Tensor> {
        memory::upload_f16(self, shape, data)
    }

    /// Converted to f16 where f16 is kept and bf16's values fit f16's range (exactly above f16's
    /// smallest normal); otherwise widened to f32 (exact).
    fn upload_bf16(&self, shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        memory::upload_bf16(self, shape, data)
    }

    fn download(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        memory::download(self, tensor)
    }

    /// Submits recorded work and waits until the device has finished it.
    fn synchronize(&self) -> Result<()> {
        device::synchronize(self)
    }

    fn start_device_timer(&self) -> Result<bool> {
        timer::start_device_timer(self)
    }

    fn stop_device_timer(&self) -> Result<Option<f64>> {
        timer::stop_device_timer(self)
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        memory::zeros(self, shape)
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
        norm::l2_normalize(self, x)
    }

    fn scatter(&self, x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>> {
        stats::scatter(self, x, groups)
    }

    fn symmetric_eigen(&self, matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
        self.host_work.mark();
        stats::symmetric_eigen(matrices)
    }

    fn spd_solve(&self, systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>> {
        self.host_work.mark();
        stats::spd_solve(systems)
    }

    fn ntk_contract(
        &self,
        delta_rows: &Tensor,
        delta_cols: &Tensor,
        acts: Option<(&Tensor, &Tensor)>,
        offset: f32,
        cols: Range<usize>,
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

    fn activation_backward(
        &self,
        pre: &Tensor,
        dy: &Tensor,
        act: Activation,
        out: &mut Tensor,
    ) -> Result<()> {
        gemm::activation_backward(self, pre, dy, act, out)
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

    fn trim_search(
        &self,
        candidates: &[&[f32]],
        reference: TrimReference<'_>,
        spec: &TrimSpec,
    ) -> Result<Vec<TrimResult>> {
        trim::trim_search(self, candidates, reference, spec)
    }
}
