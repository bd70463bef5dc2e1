//! One op set, three devices. Models and instruments are written once against [`Backend`];
//! a backend is a value chosen at run time (`--backend auto|cpu|wgpu|cuda`).
//!
//! Ops write into tensors the caller allocated, so a forward pass allocates its activations once
//! per batch shape and nothing travels between host and device inside it.

pub mod cpu;
pub mod cuda;
mod shapes;
pub mod trim;
pub mod variants;
pub mod wgpu;

use std::sync::Arc;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{DType, HostData, HostTensor};
pub use trim::{TrimReference, TrimResult, TrimSpec, W2Grid};
pub use variants::{GemmVariant, NtkVariant};

/// Which device runs the op set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// CUDA if a device is present, else wgpu on a hardware adapter, else CPU.
    Auto,
    Cpu,
    Wgpu,
    Cuda,
}

/// Opens the backend `kind` names for work of `family`. `Auto` picks a hardware backend that
/// implements `family`, else the CPU — never a software wgpu adapter (lavapipe is for testing
/// kernels, slower than the CPU path). An explicit kind is opened as asked; ops it lacks report
/// themselves unsupported.
pub fn open(kind: BackendKind, family: OpFamily) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Arc::new(cpu::CpuBackend::new())),
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
                _ => Ok(Arc::new(cpu::CpuBackend::new())),
            }
        }
    }
}

/// Element-wise activation applied in a GEMM epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// Exact GELU, `x·Φ(x)` with the error function (BERT's "gelu").
    Gelu,
    /// GELU's tanh approximation ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh,
    /// `x·σ(1.702x)`, CLIP's activation.
    QuickGelu,
    Silu,
    Relu,
    Tanh,
    Sigmoid,
}

impl Activation {
    /// Every activation, in the order of its [`Activation::code`].
    pub const ALL: [Activation; 8] = [
        Activation::Identity,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::QuickGelu,
        Activation::Silu,
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
    ];

    /// The code kernels receive for this activation: `ACT_*` in `kernels/common.cuh` and
    /// `shaders/gemm.wgsl`, where [`Activation::kernel_name`] names the constant.
    pub fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Gelu => 1,
            Activation::GeluTanh => 2,
            Activation::QuickGelu => 3,
            Activation::Silu => 4,
            Activation::Relu => 5,
            Activation::Tanh => 6,
            Activation::Sigmoid => 7,
        }
    }

    /// The suffix of the kernels' constant for this activation (`ACT_GELU_TANH`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Activation::Identity => "IDENTITY",
            Activation::Gelu => "GELU",
            Activation::GeluTanh => "GELU_TANH",
            Activation::QuickGelu => "QUICK_GELU",
            Activation::Silu => "SILU",
            Activation::Relu => "RELU",
            Activation::Tanh => "TANH",
            Activation::Sigmoid => "SIGMOID",
        }
    }

    /// Maps a Hugging Face `hidden_act` name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            _ => return None,
        })
    }

    /// The scalar definition every backend's kernels are tested against.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// How token rows of one sequence become one embedding (sentence-transformers' pooling modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooling {
    /// The first token ([CLS] / <s>).
    Cls,
    /// Mean over the sequence's tokens.
    Mean,
    /// Element-wise maximum over the tokens.
    Max,
    /// The last token (decoder models).
    Last,
    /// Sum over the tokens divided by √length.
    MeanSqrtLen,
}

impl Pooling {
    /// Every mode, in the order of its [`Pooling::code`].
    pub const ALL: [Pooling; 5] = [
        Pooling::Cls,
        Pooling::Mean,
        Pooling::Max,
        Pooling::Last,
        Pooling::MeanSqrtLen,
    ];

    /// The code kernels receive for this mode: `POOL_*` in `kernels/pool.cu` and
    /// `shaders/pool.wgsl`, where [`Pooling::kernel_name`] names the constant.
    pub fn code(self) -> u32 {
        match self {
            Pooling::Cls => 0,
            Pooling::Mean => 1,
            Pooling::Max => 2,
            Pooling::Last => 3,
            Pooling::MeanSqrtLen => 4,
        }
    }

    /// The suffix of the kernels' constant for this mode (`POOL_MEAN_SQRT_LEN`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Pooling::Cls => "CLS",
            Pooling::Mean => "MEAN",
            Pooling::Max => "MAX",
            Pooling::Last => "LAST",
            Pooling::MeanSqrtLen => "MEAN_SQRT_LEN",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::Last => "last",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
        }
    }
}

/// Variable-length sequences packed back to back: rows `starts[i]..starts[i + 1]` of a
/// `[tokens, width]` tensor belong to sequence `i`. Packing replaces a padding mask: no row is
/// padding, so no work is spent on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqLayout {
    starts: Vec<usize>,
}

impl SeqLayout {
    pub fn from_lengths(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut starts = vec![0];
        for len in lengths {
            starts.push(starts[starts.len() - 1] + len);
        }
        SeqLayout { starts }
    }

    pub fn num_sequences(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn num_tokens(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    /// Row range of sequence `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.starts[i]..self.starts[i + 1]
    }

    /// Each token's position within its sequence (from 0), in row order.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.num_sequences()).flat_map(|s| 0..self.range(s).len())
    }

    pub fn max_len(&self) -> usize {
        (0..self.num_sequences())
            .map(|i| self.range(i).len())
            .max()
            .unwrap_or(0)
    }
}

/// Shape of a softmax attention over a packed `[tokens, (heads + 2·kv_heads)·head_dim]` QKV tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub heads: usize,
    /// Fewer key/value heads than query heads gives grouped-query attention.
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Query `i` sees keys `j <= i` only.
    pub causal: bool,
    /// Query `i` sees keys with `i - j < window` only (Mistral's sliding window).
    pub window: Option<usize>,
    pub scale: f32,
}

impl AttentionSpec {
    /// Bidirectional multi-head attention with the usual 1/√d scale (BERT-style encoders).
    pub fn bidirectional(heads: usize, head_dim: usize) -> Self {
        AttentionSpec {
            heads,
            kv_heads: heads,
            head_dim,
            causal: false,
            window: None,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }

    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Whether query `i` may attend to key `j` (both positions within one sequence).
    #[inline]
    pub fn allows(&self, i: usize, j: usize) -> bool {
        if self.causal && j > i {
            return false;
        }
        match self.window {
            Some(w) => i.abs_diff(j) < w,
            None => true,
        }
    }
}

/// Rotary position embedding of the query and key heads of a packed QKV tensor
/// `[tokens, (heads + 2·kv_heads)·head_dim]` (the layout of [`AttentionSpec::qkv_width`]), in
/// Hugging Face's Llama/Mistral convention: `rotate_half` pairs column `i` of a head with column
/// `i + head_dim/2`, both turned by the angle `pos · inv_freq_i` where `pos` counts from 0 within
/// each sequence. Value heads are left as they are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    pub heads: usize,
    pub kv_heads: usize,
    /// Even: each head is rotated as `head_dim/2` pairs.
    pub head_dim: usize,
    /// `rope_theta` of the model config (10 000 for Llama 2 and Mistral v0.1, 10⁶ for v0.2).
    pub theta: f32,
}

impl RopeSpec {
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Columns `0..rotated_width()` of each row (queries, then keys) are rotated.
    pub fn rotated_width(&self) -> usize {
        (self.heads + self.kv_heads) * self.head_dim
    }

    /// Frequency of pair `i`, `θ^(−2i/head_dim)`, computed in f32 in transformers' order
    /// (`1 / θ^(2i/d)`), so the model turns by the frequencies it was trained with.
    pub fn inv_freq(&self, i: usize) -> f32 {
        1.0 / self.theta.powf((2 * i) as f32 / self.head_dim as f32)
    }

    /// `(cos, sin)` of `pos · inv_freq_i` for positions `0..positions`, laid out
    /// `[positions, head_dim/2, 2]`: the table every backend applies. The angle and its cosine
    /// and sine are taken in f64 and rounded once to f32. transformers forms the angle in f32,
    /// off by up to half its ulp (6e-5 rad for angles between 1024 and 2048), so outputs differ
    /// from its by that much at long positions, in the direction of the exact rotation.
    pub fn table(&self, positions: usize) -> Vec<f32> {
        let half = self.head_dim / 2;
        let freqs: Vec<f64> = (0..half).map(|i| f64::from(self.inv_freq(i))).collect();
        let mut table = vec![0.0f32; positions * half * 2];
        table
            .par_chunks_mut((half * 2).max(1))
            .enumerate()
            .for_each(|(pos, row)| {
                for (pair, freq) in row.chunks_exact_mut(2).zip(&freqs) {
                    let (sin, cos) = (pos as f64 * freq).sin_cos();
                    pair[0] = cos as f32;
                    pair[1] = sin as f32;
                }
            });
        table
    }
}

/// A tensor living on a backend's device: f32 values (f16 for GEMM weights and embedding tables a
/// backend keeps in half precision, see [`Backend::upload_f16`]), row-major.
#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

/// Device memory behind a [`Tensor`]; each backend adds its variant when its issue lands.
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    Wgpu(wgpu::WgpuStorage),
    Cuda(cuda::CudaStorage),
}

impl Storage {
    /// The backend this memory belongs to.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Storage::Cpu(_) => "cpu",
            Storage::Wgpu(_) => "wgpu",
            Storage::Cuda(_) => "cuda",
        }
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type the device holds.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Wgpu(s) => s.dtype(),
            Storage::Cpu(_) | Storage::Cuda(_) => DType::F32,
        }
    }

    /// The error for a tensor handed to a backend it does not live on.
    pub fn foreign(&self, backend: &str) -> Error {
        Error::input(format!(
            "tensor of shape {:?} lives on the {} backend, not {backend}",
            self.shape,
            self.storage.backend_name()
        ))
    }

    /// `(rows, cols)` of a matrix, or an error naming `what`.
    pub fn dims2(&self, what: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => Err(Error::input(format!(
                "{what}: expected a matrix, got shape {:?}",
                self.shape
            ))),
        }
    }
}

/// A small dense f64 matrix on the host, row-major: the `d×d` results of the stats ops, kept in
/// f64 because they are sums over many rows and feed eigen solves and inverses.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix64 {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix64 {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix64 {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }
}

/// Count, mean and centred scatter `Σ (x − μ)(x − μ)ᵀ` of one group of rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub count: usize,
    pub mean: Vec<f64>,
    pub scatter: Matrix64,
}

/// Eigendecomposition of a symmetric matrix: `values` in descending order, column `j` of
/// `vectors` belongs to `values[j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Eigen {
    pub values: Vec<f64>,
    pub vectors: Matrix64,
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
    /// ntk_contract, jl_project: the tangent-kernel instrument's device work.
    Ntk,
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

    /// Uploads f16 values, meant for `linear` weights and `gather_rows` tables. A backend whose
    /// kernels read those in f16 keeps them f16 ([`Tensor::dtype`] says so), halving their memory
    /// and traffic, and its other ops refuse such a tensor. The others widen to f32, which is
    /// exact.
    fn upload_f16(&self, shape: &[usize], data: &[f16]) -> Result<Tensor> {
        let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        self.upload(shape, &wide)
    }

    /// Uploads bf16 values, meant for `linear` weights and `gather_rows` tables: widened to f32
    /// (exact) unless the backend documents another rule (wgpu: as f16 where it keeps f16).
    fn upload_bf16(&self, shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        self.upload(shape, &wide)
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
    /// was taken (no device clock, no device work, or more ops than the timer holds).
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

    /// Row-wise RMSNorm in place, `x / √(mean(x²) + eps) · gamma`, f32 statistics (Llama's and
    /// Mistral's `RMSNorm`).
    fn rms_norm(&self, x: &mut Tensor, gamma: &Tensor, eps: f32) -> Result<()>;

    /// Rotary position embedding of the query and key heads of `qkv` in place ([`RopeSpec`]),
    /// positions counted from 0 within each sequence of `layout`.
    fn rope(&self, qkv: &mut Tensor, layout: &SeqLayout, spec: &RopeSpec) -> Result<()>;

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

    /// `out (+)= x·Pᵀ` for `x: [n, d]`, `out: [n, spec.dim]`, `P` the projection [`JlSpec`]
    /// describes over `d` columns; adds when `accumulate`.
    fn jl_project(
        &self,
        x: &Tensor,
        spec: &JlSpec,
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()>;

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

/// Distribution of the entries of a [`JlSpec`] projection matrix (before the `1/√k` scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JlDistribution {
    /// ±1 with probability ½ each.
    Rademacher,
    /// Standard normal.
    Gaussian,
}

/// A Johnson–Lindenstrauss projection `P: [dim, columns]` whose entry `(j, c)` is
/// `dist(seed, j, column_offset + c) / √dim`, generated from [`crate::random::counter_hash`]
/// where it is used and never stored. `column_offset` places the projected columns inside a
/// longer vector (a tile of a flattened per-sample gradient), so tiles projected separately and
/// summed give the projection of the whole vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JlSpec {
    pub seed: u64,
    pub dim: usize,
    pub distribution: JlDistribution,
    pub column_offset: u64,
}

impl JlSpec {
    /// Entry `(j, c)` of the projection, scale included: the definition every backend's
    /// generator is tested against.
    #[inline]
    pub fn entry(&self, j: usize, c: usize) -> f32 {
        let (row, col) = (j as u64, self.column_offset + c as u64);
        let value = match self.distribution {
            JlDistribution::Rademacher => crate::random::rademacher(self.seed, row, col),
            JlDistribution::Gaussian => crate::random::gaussian(self.seed, row, col),
        };
        value / (self.dim as f32).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::{Activation, Pooling};

    /// The kernels' enum constants are the codes the host passes: each `PREFIX_NAME` constant
    /// of a source carries its variant's `code()`.
    fn assert_codes(
        source: &str,
        file: &str,
        codes: &[(String, u32)],
        format: fn(&str, u32) -> String,
    ) {
        for (name, code) in codes {
            let line = format(name, *code);
            assert!(source.contains(&line), "{file} lacks `{line}`");
        }
    }

    #[test]
    fn kernel_constants_match_the_codes() {
        let acts: Vec<(String, u32)> = Activation::ALL
            .iter()
            .map(|a| (format!("ACT_{}", a.kernel_name()), a.code()))
            .collect();
        let pools: Vec<(String, u32)> = Pooling::ALL
            .iter()
            .map(|p| (format!("POOL_{}", p.kernel_name()), p.code()))
            .collect();
        let wgsl = |name: &str, code: u32| format!("const {name}: u32 = {code}u;");
        let cuda = |name: &str, code: u32| format!("{name} = {code}");
        let cuh = include_str!("../../kernels/common.cuh");
        assert_codes(cuh, "kernels/common.cuh", &acts, cuda);
        assert_codes(
            include_str!("../../shaders/gemm.wgsl"),
            "shaders/gemm.wgsl",
            &acts,
            wgsl,
        );
        assert_codes(
            include_str!("../../kernels/pool.cu"),
            "kernels/pool.cu",
            &pools,
            cuda,
        );
        assert_codes(
            include_str!("../../shaders/pool.wgsl"),
            "shaders/pool.wgsl",
            &pools,
            wgsl,
        );
    }
}
