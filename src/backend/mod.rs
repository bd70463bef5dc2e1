//! One op set, three devices. Models and instruments are written once against [`Backend`];
//! a backend is a value chosen at run time (`--backend auto|cpu|wgpu|cuda`).
//!
//! Ops write into tensors the caller allocated, so a forward pass allocates its activations once
//! per batch shape and nothing travels between host and device inside it.

pub mod cpu;
pub mod cuda;
pub mod dropout;
mod params;
mod shapes;
mod simd;
pub mod stats;
mod tensor;
pub mod trim;
pub mod variants;
pub mod wgpu;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::tensor::{HalfMatrix, HostData, HostTensor, SharedBytes};
pub use dropout::DropoutMask;
pub use params::{
    Activation, AttentionSpec, JlDistribution, JlSpec, Pooling, RopeFrequencies, RopeScaling,
    RopeSpec, SeqFactors, SeqForm, SeqLayout, TokenChunk, TokenChunks, TokenPairing,
};
pub use stats::{Eigen, Matrix64, Moments};
pub use tensor::{Storage, Tensor};
pub use trim::{TrimReference, TrimResult, TrimSpec, W2Grid};
pub use variants::{AttentionVariant, GemmVariant, NtkVariant};

/// Which device runs the op set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// CUDA if a device is present, else wgpu on a hardware adapter, else CPU.
    Auto,
    Cpu,
    Wgpu,
    Cuda,
}

/// How precisely `linear` multiplies f32 operands, after torch's
/// `set_float32_matmul_precision`: a hint a backend follows where its hardware has the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MatmulPrecision {
    /// f32 products and sums: every backend's contract.
    #[default]
    Highest,
    /// bf16-rounded activations and weights, f32 sums (relative error about 1e-3): on the CPU,
    /// AMX tiles (GEMM variant 11) where it has them, else AVX512_BF16 (14); under CUDA, tensor
    /// cores (`wgmma`, variant 10, on sm_90, else `mma.sync`, variant 4, on sm_80+) unless
    /// `MSCOPE_CUDA_GEMM` names a GEMM; wgpu keeps its f32 GEMM.
    Medium,
}

/// [`open`] with `linear`'s operands at `precision` ([`MatmulPrecision`]): `Medium` reaches the
/// CPU backend and CUDA's bf16 GEMMs; a backend without one keeps its own GEMM, after one line
/// on stderr.
pub fn open_with_precision(
    kind: BackendKind,
    family: OpFamily,
    precision: MatmulPrecision,
) -> Result<Arc<dyn Backend>> {
    let cpu = || cpu::CpuBackend::from_env().with_matmul_precision(precision);
    let be = match kind {
        BackendKind::Cpu => return Ok(Arc::new(cpu())),
        _ => open(kind, family)?,
    };
    if be.name() == "cpu" {
        return Ok(Arc::new(cpu()));
    }
    if precision == MatmulPrecision::Medium {
        let env = cuda::CudaOptions::from_env();
        if be.name() == "cuda" && env.gemm.is_none() {
            if let Some(bf16) = cuda::CudaBackend::open_bf16_gemm(&env) {
                return Ok(Arc::new(bf16));
            }
        }
        eprintln!(
            "mscope: --matmul-precision medium: {} keeps its GEMM (bf16 ones: AMX or AVX512_BF16 \
             on the CPU, sm_80+ under CUDA unless MSCOPE_CUDA_GEMM picks one)",
            be.name()
        );
    }
    Ok(be)
}

/// Opens the backend `kind` names for work of `family`. `Auto` picks a hardware backend that
/// implements `family`, else the CPU — never a software wgpu adapter (lavapipe is for testing
/// kernels, slower than the CPU path). An explicit kind is opened as asked; ops it lacks report
/// themselves unsupported.
pub fn open(kind: BackendKind, family: OpFamily) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Arc::new(cpu::CpuBackend::from_env())),
        BackendKind::Wgpu => Ok(Arc::new(wgpu::WgpuBackend::open(
            &wgpu::WgpuOptions::from_env(),
        )?)),
        BackendKind::Cuda => Ok(Arc::new(cuda::CudaBackend::open(
            &cuda::CudaOptions::from_env(),
        )?)),
        BackendKind::Auto => {
            if let Ok(be) = cuda::CudaBackend::open(&cuda::CudaOptions::from_env()) {
                if be.supports(family) {
                    return Ok(Arc::new(be));
                }
            }
            let hardware = wgpu::WgpuOptions {
                allow_software: false,
                ..wgpu::WgpuOptions::from_env()
            };
            match wgpu::WgpuBackend::open(&hardware) {
                Ok(be) if be.supports(family) => Ok(Arc::new(be)),
                _ => Ok(Arc::new(cpu::CpuBackend::from_env())),
            }
        }
    }
}

/// Opens device `index` of backend `kind` (`--devices`): a CUDA ordinal, or a wgpu adapter's
/// position in `mscope devices`. The CPU is one device already (its threads share the work);
/// `auto` must be made explicit.
pub fn open_device(kind: BackendKind, index: usize) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Wgpu => Ok(Arc::new(wgpu::WgpuBackend::open(&wgpu::WgpuOptions {
            adapter_index: Some(index),
            ..wgpu::WgpuOptions::from_env()
        })?)),
        BackendKind::Cuda => Ok(Arc::new(cuda::CudaBackend::open(&cuda::CudaOptions {
            device: index,
            ..cuda::CudaOptions::from_env()
        })?)),
        BackendKind::Cpu | BackendKind::Auto => Err(Error::input(
            "--devices needs --backend cuda or --backend wgpu (the CPU backend already uses \
             every core)",
        )),
    }
}

/// The op set's families, so a caller (or a parity test) can ask what a backend implements
/// before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpFamily {
    /// memory, linear, gather, layer_norm, rms_norm, rope, attention, pool, l2_normalize: an
    /// encoder (or decoder) forward.
    Encoder,
    /// scatter, symmetric_eigen, spd_solve.
    Stats,
    /// trim_search.
    Trim,
    /// activation_backward, layer_norm_backward, attention_backward, scatter_rows,
    /// sequence_sums: the gradient kernels of a transformer classifier's backward pass. A linear layer's input gradient
    /// `dx = δ·W` is `linear` with the transposed weight (and `dx` of a residual branch as its
    /// residual), so it has no op of its own; its weight and bias gradients are the tangent-kernel
    /// instrument's `ntk_*` factors.
    Backward,
    /// ntk_contract, ntk_contract_seq, ntk_sample_gradients, jl_project: the tangent-kernel
    /// instrument's device work.
    Ntk,
    /// dropout, attention_dropout, attention_dropout_backward: what a training step adds to the
    /// backward family (fine-tuning with dropout). The CPU's only: training runs there.
    Training,
}

/// The f32 values of `bytes` for [`Backend::upload_mapped`], or the error for bytes that cannot be
/// read in place.
pub(crate) fn mapped_f32(bytes: &SharedBytes) -> Result<&[f32]> {
    bytes.as_f32().ok_or_else(|| {
        Error::input(format!(
            "upload_mapped: {bytes:?} are not 4-byte aligned little-endian f32 values"
        ))
    })
}

/// [`Backend::linear_gated`] unfused: `linear` into `gate_up` (allocated `[n, 2m]` unless it
/// already has that shape), then `gated_activation`.
pub(crate) fn linear_then_gated<B: Backend + ?Sized>(
    be: &B,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    gate_up: &mut Option<Tensor>,
    out: &mut Tensor,
) -> Result<()> {
    let (n, _, m) = shapes::linear_gated(x, w, bias, out)?;
    if gate_up.as_ref().is_none_or(|t| t.shape() != [n, 2 * m]) {
        *gate_up = Some(be.zeros(&[n, 2 * m])?);
    }
    let product = gate_up.as_mut().expect("allocated above");
    be.linear(x, w, bias, Activation::Identity, None, product)?;
    be.gated_activation(product, act, out)
}

/// The op set. Every backend implements each op or reports it unsupported; the CPU backend is
/// the reference the others are tested against.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether every op of `family` runs here; the others return [`Error::Unsupported`].
    fn supports(&self, family: OpFamily) -> bool;

    // memory
    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor>;
    fn download(&self, tensor: &Tensor) -> Result<Vec<f32>>;
    fn zeros(&self, shape: &[usize]) -> Result<Tensor>;

    /// The largest tensor, in bytes, that every op reads or writes whole (one storage binding on
    /// wgpu); `None` where any size is. Only weights and tables may be larger (split across
    /// buffers, [`Backend::linear`] and [`Backend::gather_rows`] read them part by part), so
    /// callers that choose a batch keep every activation of it within this size.
    fn max_activation_bytes(&self) -> Option<u64> {
        None
    }

    /// Uploads f16 values, meant for `linear` weights and `gather_rows` tables. A backend whose
    /// kernels read those in f16 keeps them f16 ([`Tensor::dtype`] says so), halving their memory
    /// and traffic, and its other ops refuse such a tensor. The others widen to f32, which is
    /// exact.
    fn upload_f16(&self, shape: &[usize], data: &[f16]) -> Result<Tensor> {
        let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        self.upload(shape, &wide)
    }

    /// Uploads bf16 values, meant for `linear` weights and `gather_rows` tables: widened to f32
    /// (exact) unless the backend documents another rule (wgpu: as f16 where it keeps f16; CUDA
    /// and the CPU: kept bf16).
    fn upload_bf16(&self, shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        self.upload(shape, &wide)
    }

    /// Uploads a half-precision matrix, meant for `linear` weights and `gather_rows` tables. The
    /// CPU keeps it where it is (a memory-mapped checkpoint stays mapped, read panel by panel);
    /// CUDA copies its 16-bit values part by part to the device; wgpu uploads a host copy through
    /// [`Backend::upload_f16`] / [`Backend::upload_bf16`].
    fn upload_half(&self, matrix: &HalfMatrix) -> Result<Tensor> {
        self.upload_host(&matrix.to_host()?)
    }

    /// Uploads f32 values lent by their owner (a checkpoint's memory map; readable in place,
    /// [`SharedBytes::as_f32`]), meant for weights and tables no op writes. The CPU keeps them
    /// where they are (no copy: a batch reads a few rows of a large embedding table, and pages
    /// are read as the ops touch them); the others upload a copy.
    fn upload_mapped(&self, shape: &[usize], bytes: &SharedBytes) -> Result<Tensor> {
        self.upload(shape, mapped_f32(bytes)?)
    }

    /// Uploads f32 values the caller hands over (a weight stack built for this tensor): the CPU
    /// keeps the vector itself, the others upload it as [`Backend::upload`] does.
    fn upload_owned(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        self.upload(shape, &data)
    }

    /// Uploads a host tensor through the upload of its dtype.
    fn upload_host(&self, tensor: &HostTensor) -> Result<Tensor> {
        let shape = tensor.shape();
        match tensor.data() {
            HostData::F32(v) => self.upload(shape, v),
            HostData::F16(v) => self.upload_f16(shape, v),
            HostData::BF16(v) => self.upload_bf16(shape, v),
            HostData::I64(_) => Err(Error::input(format!(
                "upload: tensor of shape {shape:?} is I64; the op set computes on floats"
            ))),
        }
    }

    /// Waits until every op issued so far has finished on the device, so a timer read after it
    /// covers their execution. Backends whose ops finish before returning need not override it.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Starts timing the ops issued from now on with the device's own clock (timestamp queries,
    /// events), so host-side recording and launch overhead stay out of the figure. Returns false
    /// where the device has no such clock; the caller then times on the host.
    fn start_device_timer(&self) -> Result<bool> {
        Ok(false)
    }

    /// Waits for the ops issued since [`Backend::start_device_timer`] and returns the device
    /// seconds from the start of the first to the end of the last, or `None` where no device time
    /// was taken (no device clock, no device work, more ops than the timer holds, or an op that
    /// computed on the host too).
    fn stop_device_timer(&self) -> Result<Option<f64>> {
        self.synchronize()?;
        Ok(None)
    }

    /// `out = act(x·wᵀ + bias) + residual` with `x: [n, k]`, `w: [m, k]` (PyTorch's Linear layout),
    /// `bias: [m]`, `residual, out: [n, m]`.
    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
        residual: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()>;

    /// `out = act(x·W_gateᵀ + b_gate) ⊙ (x·W_upᵀ + b_up)` for `x: [n, k]`, `w: [2m, k]` holding
    /// the gate rows `0..m` over the up rows `m..2m`, `bias: [2m]` alike, `out: [n, m]`: the first
    /// half of a gated feed-forward (SwiGLU with SiLU) in one op. Where the backend fuses it (the
    /// CPU's packed GEMM) the `[n, 2m]` product never exists and `gate_up` stays as it is;
    /// elsewhere it is [`Backend::linear`] into `gate_up` (allocated by the first call that needs
    /// it, kept while its shape fits, so a forward passes one slot to every layer) then
    /// [`Backend::gated_activation`].
    fn linear_gated(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
        gate_up: &mut Option<Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        linear_then_gated(self, x, w, bias, act, gate_up, out)
    }

    /// `out = act(gate) ⊙ up` for `gate_up: [n, 2m]` holding the gate in columns `0..m` and up in
    /// `m..2m` (the output of one GEMM over the stacked gate and up projections), `out: [n, m]`:
    /// the gated feed-forward of Llama, Mistral and Qwen2 with SiLU (SwiGLU), GeGLU with GELU.
    fn gated_activation(&self, gate_up: &Tensor, act: Activation, out: &mut Tensor) -> Result<()>;

    /// `out[i] (+)= table[ids[i]]` for a `[rows, d]` table; adds when `accumulate`.
    fn gather_rows(
        &self,
        table: &Tensor,
        ids: &[u32],
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()>;

    /// Row-wise LayerNorm in place, f32 statistics.
    fn layer_norm(&self, x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()>;

    /// Row-wise RMSNorm into `out`, `x / √(mean(x²) + eps) · gamma`, f32 statistics (Llama's
    /// and Mistral's `RMSNorm`). Out of place because a pre-norm decoder normalises a residual
    /// stream it keeps: writing the normed rows elsewhere saves a copy of every row.
    fn rms_norm(&self, x: &Tensor, gamma: &Tensor, eps: f32, out: &mut Tensor) -> Result<()>;

    /// Rotary position embedding of the query and key heads of `qkv` in place ([`RopeSpec`]),
    /// positions counted from 0 within each sequence of `layout`, angles read from `table`: the
    /// `[positions, head_dim/2, 2]` `(cos, sin)` table of [`RopeFrequencies::upload_table`],
    /// built once per model, with at least as many positions as the longest sequence.
    fn rope(
        &self,
        qkv: &mut Tensor,
        layout: &SeqLayout,
        spec: &RopeSpec,
        table: &Tensor,
    ) -> Result<()>;

    /// Softmax attention of every packed sequence with itself; `out: [tokens, heads·head_dim]`.
    fn attention(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()>;

    /// One row per sequence: `out: [sequences, d]`.
    fn pool(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        mode: Pooling,
        out: &mut Tensor,
    ) -> Result<()>;

    /// Row-wise `x / max(‖x‖₂, 1e-12)` in place (torch.nn.functional.normalize).
    fn l2_normalize(&self, x: &mut Tensor) -> Result<()>;

    // stats

    /// [`Moments`] of each group of row indices of `x: [n, d]`, accumulated in f64: one group of
    /// every row gives the covariance (`scatter / (n − 1)`), one group per class gives LDA's
    /// per-class scatters in one pass. An empty group has count 0, zero mean and zero scatter.
    fn scatter(&self, x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>>;

    /// Eigendecomposition of each symmetric matrix of a batch (many small problems run side by
    /// side, one large one uses every core).
    fn symmetric_eigen(&self, matrices: &[Matrix64]) -> Result<Vec<Eigen>>;

    /// `X = A⁻¹ B` for each pair of a batch, `A` symmetric positive definite (Cholesky); an `A`
    /// that is not positive definite is an error naming its place in the batch.
    fn spd_solve(&self, systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>>;

    // ntk

    /// `out += (D_r·D_cᵀ) ⊙ (A_r·A_cᵀ + offset)` — one layer's share of a tangent kernel between
    /// row samples and the column samples `cols` (a range of the column factors' rows), from
    /// output-gradient factors `D: [n, p]` (all classes of a sample side by side) and activation
    /// factors `A: [n, q]`; without activation factors, `out += D_r·D_cᵀ`.
    /// `out: [n_r, cols.len()]`.
    fn ntk_contract(
        &self,
        delta_rows: &Tensor,
        delta_cols: &Tensor,
        acts: Option<(&Tensor, &Tensor)>,
        offset: f32,
        cols: std::ops::Range<usize>,
        out: &mut Tensor,
    ) -> Result<()>;

    /// The token-level form of one layer's share of a tangent kernel between packed sequences:
    /// `out[i, j] += Σ_{t ∈ i, s ∈ j} ⟨δ_t, δ_s⟩·w(t, s)` for every row sample `i` of `rows` and
    /// column sample `j` in `samples` (a range of `cols`' samples), with `w` from `pairing`:
    /// `⟨a_t, a_s⟩ + offset` for a Linear layer (its weight's and, with offset 1, its bias's
    /// share), `[id_t = id_s]` for an embedding table. `out: [rows' samples, samples.len()]`.
    /// Only the column tokens of `samples` are read, and a GPU holds at most one tile of the
    /// token Gram matrices at a time. Long sequences: [`SeqForm::choose`] says when
    /// [`Backend::ntk_sample_gradients`] and [`Backend::ntk_contract`] are cheaper.
    fn ntk_contract_seq(
        &self,
        rows: SeqFactors<'_>,
        cols: SeqFactors<'_>,
        pairing: TokenPairing<'_>,
        samples: std::ops::Range<usize>,
        out: &mut Tensor,
    ) -> Result<()>;

    /// The materialised form's per-sample layer gradients: row `i` of `out: [samples, p·(q+1)]`
    /// is the row-major `[p, q + 1]` matrix `Σ_{t ∈ i} δ_tᵀ·[a_t, √offset]` — the gradient of
    /// the layer's `[W | b]` with the bias input scaled so that `ntk_contract(G_r, G_c, None, ..)`
    /// of two such outputs equals [`Backend::ntk_contract_seq`]'s Linear form with `offset`
    /// (`offset ≥ 0`). `factors.delta: [tokens, p]`, `acts: [tokens, q]`.
    fn ntk_sample_gradients(
        &self,
        factors: SeqFactors<'_>,
        acts: &Tensor,
        offset: f32,
        out: &mut Tensor,
    ) -> Result<()>;

    /// `out (+)= x·Pᵀ` for `x: [n, d]`, `out: [n, spec.dim]`, `P` the projection [`JlSpec`]
    /// describes over `d` columns; adds when `accumulate`.
    fn jl_project(
        &self,
        x: &Tensor,
        spec: &JlSpec,
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()>;

    // backward

    /// `out = dy ⊙ act'(pre)`: the gradient at an epilogue's pre-activation `pre: [n, m]` (the
    /// `linear` output before `act`) from the gradient `dy: [n, m]` at its output.
    fn activation_backward(
        &self,
        pre: &Tensor,
        dy: &Tensor,
        act: Activation,
        out: &mut Tensor,
    ) -> Result<()>;

    /// LayerNorm's backward pass over the rows `pre: [n, d]` it normalised, with `gamma: [d]`:
    /// from the gradient `dy: [n, d]` at its output, writes the gradient `dx: [n, d]` at its
    /// input, `(g − mean(g) − x̂·mean(g ⊙ x̂))/σ` with `g = dy ⊙ γ`, and the normalised rows
    /// `normed = x̂ = (x − μ)/σ: [n, d]`, from which the caller forms the per-token parameter
    /// gradients `∂/∂γ = dy ⊙ x̂` and `∂/∂β = dy`. Row statistics as in `layer_norm`
    /// (biased variance, `eps` inside the root).
    fn layer_norm_backward(
        &self,
        pre: &Tensor,
        gamma: &Tensor,
        eps: f32,
        dy: &Tensor,
        dx: &mut Tensor,
        normed: &mut Tensor,
    ) -> Result<()>;

    /// The backward pass of `attention` for bidirectional attention without grouped heads
    /// (`causal` false, no window, `kv_heads == heads`; others are refused): from the packed
    /// `qkv: [tokens, 3·heads·head_dim]` the forward read and the gradient `d_out: [tokens,
    /// heads·head_dim]` at its output, writes `d_qkv` of `qkv`'s shape (dQ, dK, dV side by side
    /// as Q, K, V are). With `P = softmax(scale·Q·Kᵀ)` per sequence and head: `dV = Pᵀ·dO`,
    /// `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`, `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`; sequences of
    /// `layout` never see each other, so padding needs no mask.
    fn attention_backward(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        d_out: &Tensor,
        d_qkv: &mut Tensor,
    ) -> Result<()>;

    /// The adjoint of `gather_rows`: `table[r] (+)= Σ_{i: ids[i] = r} delta[i]` for `delta:
    /// [ids.len(), d]` and `table: [rows, d]`, the sum over each row's ids in the order of `i`;
    /// without `accumulate` every row of `table` is overwritten (rows no id names become zero).
    /// An embedding table's gradient: a sample's when `ids` and `delta` are its tokens.
    fn scatter_rows(
        &self,
        delta: &Tensor,
        ids: &[u32],
        accumulate: bool,
        table: &mut Tensor,
    ) -> Result<()>;

    /// Per-sequence sums of token rows: `out[s] = Σ_{t ∈ s} values[t] (⊙ weights[t])` for
    /// `values` (and `weights`): `[layout.num_tokens(), d]`, `out: [layout.num_sequences(), d]`,
    /// every token of a sequence in order. A sample's gradient of a bias (`values` = the output
    /// gradients) or of a LayerNorm's γ (`values` = the gradients at its output, `weights` = the
    /// normalised rows) from its per-token terms.
    fn sequence_sums(
        &self,
        values: &Tensor,
        weights: Option<&Tensor>,
        layout: &SeqLayout,
        out: &mut Tensor,
    ) -> Result<()>;

    // training ([`OpFamily::Training`]): the CPU's only (fine-tuning runs there); the other
    // backends report these ops unsupported.

    /// `out = x ⊙ mask (+ residual)` for `x, residual, out: [n, d]`, entry `(r, c)` of `x` scaled
    /// by `mask.factor(r, c)` ([`DropoutMask`]): inverted dropout of a layer's output, and, with
    /// the same mask on the gradient at that output, its backward pass.
    fn dropout(
        &self,
        _x: &Tensor,
        _mask: &DropoutMask,
        _residual: Option<&Tensor>,
        _out: &mut Tensor,
    ) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.name(),
            op: "dropout (training runs on the cpu backend)",
        })
    }

    /// [`Backend::attention`] for bidirectional attention without grouped heads, its
    /// probabilities dropped by `mask` before they weigh the values (transformers' attention
    /// dropout in train mode): `O = (M ⊙ P)·V` per sequence and head, `M`'s entry for query
    /// token `t` (packed row), head `h` and key position `j` (within the sequence) being
    /// `mask.factor(t·heads + h, j)`.
    fn attention_dropout(
        &self,
        _qkv: &Tensor,
        _layout: &SeqLayout,
        _spec: &AttentionSpec,
        _mask: &DropoutMask,
        _out: &mut Tensor,
    ) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.name(),
            op: "attention_dropout (training runs on the cpu backend)",
        })
    }

    /// The backward pass of [`Backend::attention_dropout`] with the same `mask`, as
    /// [`Backend::attention_backward`] is `attention`'s: `dV = (M ⊙ P)ᵀ·dO`,
    /// `dP = M ⊙ (dO·Vᵀ)`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, then dQ and dK as there.
    fn attention_dropout_backward(
        &self,
        _qkv: &Tensor,
        _layout: &SeqLayout,
        _spec: &AttentionSpec,
        _mask: &DropoutMask,
        _d_out: &Tensor,
        _d_qkv: &mut Tensor,
    ) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.name(),
            op: "attention_dropout_backward (training runs on the cpu backend)",
        })
    }

    // trim

    /// Trimmed comparison of every candidate sample with its reference
    /// ([`trim`]): sort, merge into ECDF counts, solve for α̂, KS and the
    /// trimmed W2 cost. Host slices in and out: the inputs are read once and the results are a
    /// few numbers per candidate, so nothing would stay on a device between calls.
    fn trim_search(
        &self,
        candidates: &[&[f32]],
        reference: TrimReference<'_>,
        spec: &TrimSpec,
    ) -> Result<Vec<TrimResult>>;
}

/// Set by a device backend's op that computes on the host as well (faer fallbacks, the trim
/// search's f64 finish): the timed region it ran in reports no device time, since the device's
/// clock would not show the host's share, and the caller times it on the host.
#[derive(Debug, Default)]
pub(crate) struct HostWork(AtomicBool);

impl HostWork {
    pub(crate) fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether an op marked host work since the last call.
    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}
