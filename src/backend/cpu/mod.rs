//! The CPU backend: rayon for parallel loops, our packed GEMM (or faer, variant 7) for `linear`. It is the
//! reference every other backend is tested against, and a fast path of its own (packed
//! sequences, fused epilogues).
//!
//! Memory: f32 tensors are host vectors ([`Storage::Cpu`]), or for f32 weights and tables a
//! checkpoint's memory map read in place ([`Storage::CpuMapped`]); f16 and bf16 GEMM weights and
//! embedding tables stay half precision where they are ([`Storage::CpuHalf`]: a checkpoint's
//! memory map, shared, or an owned copy for [`Backend::upload_f16`]), read by `linear` a packed
//! panel at a time and by `gather_rows` a row at a time; the other ops refuse them.
//!
//! Shape: one file per op family, as `kernels/*.cu` and `shaders/*.wgsl` are split — `gemm`
//! (also the public [`gemm()`] and [`Operand`] of host loops), `gemm_packed` (GEMM variants
//! 8 and 9, and the f32 GEMM of half-precision weights) and `gemm_bf16` (variants 11 and 14,
//! bf16 operands on AMX tiles or AVX512_BF16, behind [`CpuBackend::with_matmul_precision`]),
//! `norm`, `rope`, `attention`, `gather`, `pool`, `ntk`, `stats`, `trim` — each holding
//! functions named like the [`Backend`] methods they implement (`backward` holds the
//! host-slice functions the classifier's backward pass calls, and in `backward::on_tensors` the
//! backward family's ops over them); `activation` holds the vectorised epilogues, `calibration`
//! the per-block passes of `compare`'s classifier metrics, `common` what several families share
//! (tensor values, packed-sequence splits, lane sums). `impl Backend` below only delegates, one
//! line an op. A new op goes into its family's file (a new file for a new
//! family) and gets its one line here.

use super::{
    shapes, Activation, AttentionSpec, AttentionVariant, Backend, DropoutMask, Eigen, GemmVariant,
    JlSpec, MatmulPrecision, Matrix64, Moments, OpFamily, Pooling, RopeSpec, SeqFactors, SeqLayout,
    Storage, Tensor, TokenPairing, TrimReference, TrimResult, TrimSpec,
};
use crate::error::Result;
use crate::tensor::{HalfMatrix, SharedBytes};
use half::{bf16, f16};

mod activation;
mod attention;
mod attention_panels;
pub mod backward;
mod calibration;
mod common;
mod gather;
mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_bf16;
mod gemm_packed;
mod norm;
mod ntk;
mod pool;
mod rope;
mod stats;
mod trim;

pub use gemm::{gemm, gemm_in_task, Operand};

/// The bf16 GEMM this CPU runs for `--matmul-precision medium`: AMX tiles (variant 11) where it
/// has them, else AVX512_BF16's `vdpbf16ps` (14); `None` on CPUs with neither.
pub fn bf16_gemm() -> Option<GemmVariant> {
    [GemmVariant::AmxBf16, GemmVariant::DotBf16]
        .into_iter()
        .find(|&v| bf16_unit_available(v))
}

/// What the bf16 GEMM `variant` (11 or 14) needs of the CPU, for messages.
pub fn bf16_unit_name(variant: GemmVariant) -> &'static str {
    match variant {
        GemmVariant::AmxBf16 => "an AMX-BF16 tile unit the kernel lets it use",
        _ => "AVX512_BF16",
    }
}

/// Whether this CPU runs `variant`, one of the bf16 GEMMs (11 or 14).
pub fn bf16_unit_available(variant: GemmVariant) -> bool {
    #[cfg(target_arch = "x86_64")]
    return gemm_bf16::available(variant);
    #[cfg(not(target_arch = "x86_64"))]
    false
}
pub(crate) use gemm_packed::PackedCache;

/// `sums[i] += f64::from(row[i])` for every `i`: a row added into f64 accumulators (a cluster's
/// centre sums) in the widest SIMD the CPU has. Each element sees the same additions in the same
/// order on every CPU, so results do not depend on the width.
pub fn add_widened(sums: &mut [f64], row: &[f32]) {
    common::add_widened_wide(sums, row)
}

/// `out[i] = 1 / (1 + e^{−|scores[i]|})` in f64, the top-label confidence of binary logits, in
/// the widest SIMD the CPU has; the same bits on every CPU (plain products and sums, no FMA),
/// within a few ulp of libm's `exp`.
pub fn logistic_confidences(out: &mut [f64], scores: &[f32]) {
    activation::logistic_confidences_wide(out, scores)
}

pub use calibration::{MetricSums, ECE_BINS};

/// Adds a block of a binary classifier's points to its churn counts in `sums`:
/// `positive_votes[p]` of the ensemble's `models` models predict the positive label at point `p`
/// (whose score is `scores[p]`), in the widest SIMD the CPU has.
pub fn binary_churn(sums: &mut MetricSums, scores: &[f32], positive_votes: &[u32], models: u32) {
    calibration::binary_churn_wide(sums, scores, positive_votes, models)
}

/// Adds a block of points (top-label confidences, whether the label is right) to the accuracy
/// and the calibration bins of `sums`, in the widest SIMD the CPU has; the same bits on every
/// CPU.
pub fn add_calibration(sums: &mut MetricSums, confidences: &[f64], right: &[bool]) {
    calibration::add_calibration_wide(sums, confidences, right)
}

/// `out[j] = row · others[j]` for the `[out.len(), row.len()]` rows `others` (row-major): the
/// dot products of one row with a few others (k-means centres) in one sweep over the row, in
/// f32, in the widest SIMD the CPU has. The products are added in sixteen fixed lanes on every
/// CPU, so results do not depend on the width.
pub fn row_dots(out: &mut [f32], row: &[f32], others: &[f32]) {
    common::row_dots_wide(out, row, others)
}

/// The default backend's crossover from faer's GEMM to ours, in values of the weight matrix:
/// every Linear of the models we run (MiniLM's smallest, 384 × 384, is 147 k; SmolLM2's 576 ×
/// 576 is 332 k) runs ours; faer keeps only small heads. On the Emerald Rapids Xeon ours beat
/// faer's at all of them, and SmolLM2's and MiniLM's whole runs took 10% and 25% less CPU time
/// with them on ours (BENCHMARKS.md, 2026-12-06, h27k); at 4 M (chosen on Zen 4, where faer
/// won MiniLM's) SmolLM2's qkv, o and down projections ran faer.
pub const PACKED_MIN_WEIGHTS: usize = 1 << 17;

#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    /// The kernel of `linear` on f32 weights (half-precision weights always run variant 8's).
    gemm: GemmVariant,
    /// Whether `linear` runs faer's GEMM instead on f32 weight matrices under
    /// [`PACKED_MIN_WEIGHTS`] values (the default backend; not one opened with a variant).
    by_size: bool,
    /// The kernel of `attention`; `None`: chosen by the mask (see `attention`'s module docs).
    attention: Option<AttentionVariant>,
}

impl CpuBackend {
    /// faer's GEMM, ours on f32 and on f16 weights, and ours on bf16 operands (AMX tiles,
    /// AVX512_BF16).
    pub const GEMM_VARIANTS: [GemmVariant; 5] = [
        GemmVariant::Faer,
        GemmVariant::Packed,
        GemmVariant::PackedF16,
        GemmVariant::AmxBf16,
        GemmVariant::DotBf16,
    ];

    /// The CPU backend with its default GEMM, chosen per weight matrix: ours (variant 8) for
    /// matrices of [`PACKED_MIN_WEIGHTS`] values or more, which it keeps packed after their first
    /// use, finishing the epilogue in registers; faer's (7) for smaller ones.
    /// `linear_gated` runs ours at every size: its fused epilogue saves a pass faer cannot.
    pub fn new() -> Self {
        CpuBackend {
            by_size: true,
            ..Self::with_gemm(GemmVariant::Packed)
        }
    }

    /// The CPU backend running `linear` on f32 weights with `variant` (7 or 8; 9 is 8, on the
    /// f16 weights a caller uploads; the bf16 ones, 11 on AMX and 14 on AVX512_BF16, run every
    /// `linear` and `linear_gated`, on all weights). Where the CPU lacks the unit, 11 or 14 is
    /// refused for 8 with one line on stderr.
    pub fn with_gemm(variant: GemmVariant) -> Self {
        let gemm = match variant.on_f32_weights() {
            bf16 @ (GemmVariant::AmxBf16 | GemmVariant::DotBf16) if !bf16_unit_available(bf16) => {
                eprintln!(
                    "mscope: this CPU lacks {}: GEMM variant {bf16} runs the f32 packed GEMM (8)",
                    bf16_unit_name(bf16)
                );
                GemmVariant::Packed
            }
            other => other,
        };
        CpuBackend {
            gemm,
            by_size: false,
            attention: None,
        }
    }

    /// This backend with `linear`'s operands at `precision`, as torch's
    /// `set_float32_matmul_precision` sets them: `Highest` keeps it as it is (f32), `Medium`
    /// runs every GEMM with bf16 operands and f32 sums — on AMX tiles (variant 11), else with
    /// AVX512_BF16 (14) — where the CPU has either; elsewhere the setting is a hint, and the f32
    /// path runs after one line on stderr.
    pub fn with_matmul_precision(self, precision: MatmulPrecision) -> Self {
        match precision {
            MatmulPrecision::Highest => self,
            MatmulPrecision::Medium => match bf16_gemm() {
                Some(bf16) => CpuBackend {
                    attention: self.attention,
                    ..Self::with_gemm(bf16)
                },
                None => {
                    eprintln!(
                        "mscope: --matmul-precision medium: this CPU has no bf16 GEMM \
                         (AMX-BF16 tiles or AVX512_BF16): linear stays f32"
                    );
                    self
                }
            },
        }
    }

    /// The backend with its default GEMM and the attention variant `MSCOPE_CPU_ATTENTION` names
    /// (`faer`, `packed`, `panels`) when it is set; a value that does not parse is ignored.
    pub fn from_env() -> Self {
        let attention = std::env::var("MSCOPE_CPU_ATTENTION")
            .ok()
            .and_then(|v| AttentionVariant::CPU.into_iter().find(|a| a.name() == v));
        Self::new().with_attention(attention)
    }

    /// This backend running `attention` with `variant` (7, 8 or 9; `None`: chosen by the mask).
    pub fn with_attention(self, variant: Option<AttentionVariant>) -> Self {
        CpuBackend {
            attention: variant,
            ..self
        }
    }

    /// The kernel of `linear` on f32 weights (on the default backend, on those of
    /// [`PACKED_MIN_WEIGHTS`] values or more; faer's below).
    pub fn gemm_variant(&self) -> GemmVariant {
        self.gemm
    }

    /// The kernel `linear` runs on f32 weights of `weights` values: on the default backend,
    /// faer's under [`PACKED_MIN_WEIGHTS`]; else [`Self::gemm_variant`].
    pub fn linear_variant(&self, weights: usize) -> GemmVariant {
        if self.by_size && weights < PACKED_MIN_WEIGHTS {
            GemmVariant::Faer
        } else {
            self.gemm
        }
    }

    /// The kernel of `attention` it was opened with (`None`: chosen by the mask).
    pub fn attention_variant(&self) -> Option<AttentionVariant> {
        self.attention
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn supports(&self, _family: OpFamily) -> bool {
        true
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_owned(shape, data.to_vec())
    }

    /// Kept as it is: no copy.
    fn upload_owned(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        shapes::upload(shape, data.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(data),
            cpu_packed: PackedCache::default(),
        })
    }

    /// Kept f16: `linear` and `gather_rows` widen what they read.
    fn upload_f16(&self, shape: &[usize], data: &[f16]) -> Result<Tensor> {
        self.upload_half(&HalfMatrix::from_f16(shape, data)?)
    }

    /// Kept bf16: `linear` and `gather_rows` widen what they read.
    fn upload_bf16(&self, shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        self.upload_half(&HalfMatrix::from_bf16(shape, data)?)
    }

    /// Kept where it is when 4-byte aligned (the clone shares the map): no copy of a large
    /// embedding table of which a batch reads a few rows.
    fn upload_mapped(&self, shape: &[usize], bytes: &SharedBytes) -> Result<Tensor> {
        shapes::upload(shape, super::mapped_f32(bytes)?.len())?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::CpuMapped(bytes.clone()),
            cpu_packed: PackedCache::default(),
        })
    }

    /// Kept where it is: a memory-mapped matrix stays mapped (the clone shares the map).
    fn upload_half(&self, matrix: &HalfMatrix) -> Result<Tensor> {
        Ok(Tensor {
            shape: vec![matrix.rows(), matrix.cols()],
            storage: Storage::CpuHalf(matrix.clone()),
            cpu_packed: PackedCache::default(),
        })
    }

    fn download(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        match common::matrix(tensor)? {
            common::Matrix::F32(v) => Ok(v.to_vec()),
            common::Matrix::Half(m) => Ok(m.to_host()?.into_f32()),
        }
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(vec![0.0; shape.iter().product()]),
            cpu_packed: PackedCache::default(),
        })
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
        gemm::linear(self.linear_variant(w.len()), x, w, bias, act, residual, out)
    }

    /// Fused into our packed GEMM on every weight size on the default backend: at SmolLM2's
    /// 1.8 M values it beats faer's GEMM plus the separate pass
    /// over the `[n, 2m]` product that faer, which keeps no epilogue, needs (`linear` then
    /// `gated_activation`: the backend opened with variant 7).
    fn linear_gated(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
        gate_up: &mut Option<Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        let half = matches!(w.storage, Storage::CpuHalf(_));
        if half || self.gemm != GemmVariant::Faer {
            gemm::linear_gated(self.gemm, x, w, bias, act, out)
        } else {
            super::linear_then_gated(self, x, w, bias, act, gate_up, out)
        }
    }

    fn gated_activation(&self, gate_up: &Tensor, act: Activation, out: &mut Tensor) -> Result<()> {
        gemm::gated_activation(gate_up, act, out)
    }

    fn gather_rows(
        &self,
        table: &Tensor,
        ids: &[u32],
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        gather::gather_rows(table, ids, accumulate, out)
    }

    fn layer_norm(&self, x: &mut Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
        norm::layer_norm(x, gamma, beta, eps)
    }

    fn rms_norm(&self, x: &Tensor, gamma: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
        norm::rms_norm(x, gamma, eps, out)
    }

    fn rope(
        &self,
        qkv: &mut Tensor,
        layout: &SeqLayout,
        spec: &RopeSpec,
        table: &Tensor,
    ) -> Result<()> {
        rope::rope(qkv, layout, spec, table)
    }

    fn attention(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        attention::attention(qkv, layout, spec, out, self.attention)
    }

    fn pool(
        &self,
        hidden: &Tensor,
        layout: &SeqLayout,
        mode: Pooling,
        out: &mut Tensor,
    ) -> Result<()> {
        pool::pool(hidden, layout, mode, out)
    }

    fn l2_normalize(&self, x: &mut Tensor) -> Result<()> {
        pool::l2_normalize(x)
    }

    // stats

    fn scatter(&self, x: &Tensor, groups: &[&[u32]]) -> Result<Vec<Moments>> {
        stats::scatter(x, groups)
    }

    fn symmetric_eigen(&self, matrices: &[Matrix64]) -> Result<Vec<Eigen>> {
        stats::symmetric_eigen(matrices)
    }

    fn spd_solve(&self, systems: &[(Matrix64, Matrix64)]) -> Result<Vec<Matrix64>> {
        stats::spd_solve(systems)
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
        ntk::ntk_contract(delta_rows, delta_cols, acts, offset, cols, out)
    }

    fn ntk_contract_seq(
        &self,
        rows: SeqFactors<'_>,
        cols: SeqFactors<'_>,
        pairing: TokenPairing<'_>,
        samples: std::ops::Range<usize>,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::ntk_contract_seq(rows, cols, pairing, samples, out)
    }

    fn ntk_sample_gradients(
        &self,
        factors: SeqFactors<'_>,
        acts: &Tensor,
        offset: f32,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::ntk_sample_gradients(factors, acts, offset, out)
    }

    fn jl_project(
        &self,
        x: &Tensor,
        spec: &JlSpec,
        accumulate: bool,
        out: &mut Tensor,
    ) -> Result<()> {
        ntk::jl_project(x, spec, accumulate, out)
    }

    // trim

    fn activation_backward(
        &self,
        pre: &Tensor,
        dy: &Tensor,
        act: Activation,
        out: &mut Tensor,
    ) -> Result<()> {
        backward::on_tensors::activation_backward(pre, dy, act, out)
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
        backward::on_tensors::layer_norm_backward(pre, gamma, eps, dy, dx, normed)
    }

    fn attention_backward(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        d_out: &Tensor,
        d_qkv: &mut Tensor,
    ) -> Result<()> {
        backward::on_tensors::attention_backward(qkv, layout, spec, d_out, d_qkv)
    }

    fn sequence_sums(
        &self,
        values: &Tensor,
        weights: Option<&Tensor>,
        layout: &SeqLayout,
        out: &mut Tensor,
    ) -> Result<()> {
        backward::on_tensors::sequence_sums(values, weights, layout, out)
    }

    fn scatter_rows(
        &self,
        delta: &Tensor,
        ids: &[u32],
        accumulate: bool,
        table: &mut Tensor,
    ) -> Result<()> {
        backward::on_tensors::scatter_rows(delta, ids, accumulate, table)
    }

    fn dropout(
        &self,
        x: &Tensor,
        mask: &DropoutMask,
        residual: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        backward::on_tensors::dropout(x, mask, residual, out)
    }

    fn attention_dropout(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        mask: &DropoutMask,
        out: &mut Tensor,
    ) -> Result<()> {
        backward::on_tensors::attention_dropout(qkv, layout, spec, mask, out)
    }

    fn attention_dropout_backward(
        &self,
        qkv: &Tensor,
        layout: &SeqLayout,
        spec: &AttentionSpec,
        mask: &DropoutMask,
        d_out: &Tensor,
        d_qkv: &mut Tensor,
    ) -> Result<()> {
        backward::on_tensors::attention_dropout_backward(qkv, layout, spec, mask, d_out, d_qkv)
    }

    fn trim_search(
        &self,
        candidates: &[&[f32]],
        reference: TrimReference<'_>,
        spec: &TrimSpec,
    ) -> Result<Vec<TrimResult>> {
        trim::trim_search(candidates, reference, spec)
    }
}
