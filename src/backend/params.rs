//! Parameters of the ops: epilogue activations, pooling modes, the packed sequence layout, and
//! the attention, RoPE and JL projection specs. Each carries the scalar definition every backend's
//! kernels are tested against, and the codes kernels receive are defined here once.

use rayon::prelude::*;

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

    /// `act'(z)`, the slope the backward pass multiplies output gradients by (written from the
    /// pre-activation `z`, as [`Activation::apply`] is).
    #[inline]
    pub fn derivative(self, z: f32) -> f32 {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        match self {
            Activation::Identity => 1.0,
            // d/dz z·Φ(z) = Φ(z) + z·φ(z)
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erff(z * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * z * z).exp() * 0.398_942_3;
                cdf + z * pdf
            }
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                let t = (SQRT_2_OVER_PI * (z + 0.044_715 * z * z * z)).tanh();
                0.5 * (1.0 + t)
                    + 0.5 * z * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * z * z)
            }
            Activation::QuickGelu => {
                let s = sigmoid(1.702 * z);
                s + 1.702 * z * s * (1.0 - s)
            }
            Activation::Silu => {
                let s = sigmoid(z);
                s + z * s * (1.0 - s)
            }
            Activation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => {
                let t = z.tanh();
                1.0 - t * t
            }
            Activation::Sigmoid => {
                let s = sigmoid(z);
                s * (1.0 - s)
            }
        }
    }
}

/// How token rows of one sequence become one embedding (sentence-transformers' pooling modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooling {
    /// The first token (`[CLS]` / `<s>`).
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

    /// First row of each sequence, then the row count: `num_sequences() + 1` entries.
    pub fn starts(&self) -> &[usize] {
        &self.starts
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

    /// The sequences whose rows meet `rows` (and any empty ones between them).
    pub fn sequences_meeting(&self, rows: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        let n = self.num_sequences();
        self.starts[1..].partition_point(|&end| end <= rows.start)
            ..self.starts[..n].partition_point(|&start| start < rows.end)
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
/// each sequence. Value heads are left as they are. The angles come from a table the model builds
/// once ([`RopeFrequencies::upload_table`]); the spec is only the shape of the heads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    pub heads: usize,
    pub kv_heads: usize,
    /// Even: each head is rotated as `head_dim/2` pairs.
    pub head_dim: usize,
}

impl RopeSpec {
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Columns `0..rotated_width()` of each row (queries, then keys) are rotated.
    pub fn rotated_width(&self) -> usize {
        (self.heads + self.kv_heads) * self.head_dim
    }
}

/// How a model rescales its RoPE frequencies (the `rope_type`s of transformers that mscope runs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: pair `i` turns at `θ^(−2i/head_dim)`.
    None,
    /// Llama 3.1's `llama3`: a frequency whose wavelength `2π/f` is longer than
    /// `original_max_position_embeddings / low_freq_factor` is divided by `factor`, one shorter
    /// than `original_max_position_embeddings / high_freq_factor` is kept, and one in between
    /// is blended: `(1 − s)·f/factor + s·f` with
    /// `s = (original_max_position_embeddings / wavelength − low_freq_factor) /
    /// (high_freq_factor − low_freq_factor)`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Where a model's RoPE angles come from: the base θ and the scaling of the frequencies.
///
/// A model turns them into one `(cos, sin)` table of every position it accepts when it loads
/// ([`RopeFrequencies::upload_table`]), and every `rope` call reads its rows. A table rather
/// than the frequencies alone because it is both the simplest kernel (one 8-byte load per pair,
/// no transcendental on the device) and the most accurate: its angles are formed and their
/// cosine and sine taken in f64 on the host, rounded once, so every backend turns by the same
/// f32 values. A device forming `pos · inv_freq` in f32 would be off by up to half an ulp of the
/// angle (2.4e-4 rad at position 8 000), beyond the f32 tolerance of the op, and WGSL's `sin`
/// and `cos` promise no accuracy outside `[−π, π]`. The cost is `positions × head_dim` f32
/// values per model: 16 MiB for Mistral-7B's 32 768 positions of 128-wide heads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeFrequencies {
    /// `rope_theta` of the model config (10 000 for Llama 2 and Mistral v0.1, 10⁶ for v0.2).
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeFrequencies {
    /// The inverse frequency of each of the `head_dim/2` pairs, as transformers computes its
    /// `inv_freq` buffer (`_compute_default_rope_parameters`, `_compute_llama3_parameters`): in
    /// f32, rounding at each step as torch does, so the values are its values bit for bit.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let base = self.theta as f32;
        (0..head_dim / 2)
            .map(|i| {
                let f = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
                self.scaling.apply(f)
            })
            .collect()
    }

    /// `(cos, sin)` of `pos · inv_freq_i` for positions `0..positions`, laid out
    /// `[positions, head_dim/2, 2]`: the table every backend's `rope` reads. Each angle is
    /// formed from the f32 frequency in f64, and its cosine and sine are rounded once to f32.
    /// transformers forms the angle in f32, off by up to half its ulp (6e-5 rad for angles
    /// between 1024 and 2048), so outputs differ from its by that much at long positions, in the
    /// direction of the exact rotation.
    pub fn table(&self, head_dim: usize, positions: usize) -> Vec<f32> {
        let freqs: Vec<f64> = self.inv_freq(head_dim).into_iter().map(f64::from).collect();
        let mut table = vec![0.0f32; positions * freqs.len() * 2];
        table
            .par_chunks_mut((freqs.len() * 2).max(1))
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

    /// [`RopeFrequencies::table`] uploaded to `backend` as a `[positions, head_dim/2, 2]` tensor,
    /// the table argument of [`Backend::rope`](super::Backend::rope).
    pub fn upload_table(
        &self,
        backend: &dyn super::Backend,
        head_dim: usize,
        positions: usize,
    ) -> crate::Result<super::Tensor> {
        backend.upload(
            &[positions, head_dim / 2, 2],
            &self.table(head_dim, positions),
        )
    }
}

impl RopeScaling {
    /// The frequency `f` of one pair after the scaling, in f32 as transformers' tensor ops.
    fn apply(self, f: f32) -> f32 {
        match self {
            RopeScaling::None => f,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            } => {
                let (factor, low, high) = (factor as f32, low as f32, high as f32);
                let original = original as f32;
                let wavelength = (2.0 * std::f64::consts::PI) as f32 / f;
                // transformers' band edges are Python floats compared with the f32 wavelengths.
                let (wavelength_64, original_64) = (f64::from(wavelength), original as f64);
                if wavelength_64 < original_64 / f64::from(high) {
                    f
                } else if wavelength_64 > original_64 / f64::from(low) {
                    f / factor
                } else {
                    let s = (original / wavelength - low) / (high - low);
                    (1.0 - s) * f / factor + s * f
                }
            }
        }
    }
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

/// One side of a sequence tangent-kernel contraction (`Backend::ntk_contract_seq`,
/// `Backend::ntk_sample_gradients`): the per-token output-gradient factors of packed samples.
/// Sample `i` owns rows `layout.range(i)` of `delta: [tokens, p]`; as in `ntk_contract`, a row
/// holds every class's `δ` side by side (`p = classes·d_out`), so the contraction over `p` is
/// the trace over classes.
#[derive(Clone, Copy)]
pub struct SeqFactors<'a> {
    pub delta: &'a crate::backend::Tensor,
    pub layout: &'a SeqLayout,
}

/// What weighs each token pair's `⟨δ_t, δ_s⟩` in the token-level form
/// ([`crate::backend::Backend::ntk_contract_seq`]); each variant holds the row side's and the
/// column side's per-token inputs.
#[derive(Clone, Copy)]
pub enum TokenPairing<'a> {
    /// `⟨a_t, a_s⟩ + offset`: a Linear layer from its inputs `a: [tokens, q]`; offset 1 adds the
    /// bias's share, 0 leaves it out.
    Linear {
        rows: &'a crate::backend::Tensor,
        cols: &'a crate::backend::Tensor,
        offset: f32,
    },
    /// `1` if `id_t = id_s`, else `0`: an embedding table looked up by one id per token (word,
    /// position or token-type ids). The CPU takes dot products only where ids match; GPUs
    /// contract every token pair and mask. A table of a few rows whose ids repeat within a
    /// sample (token types) is cheaper materialised: `ntk_sample_gradients` with one-hot
    /// activations `[tokens, rows]` and offset 0 gives each sample's `[p, rows + 1]` gradient.
    Embedding { rows: &'a [u32], cols: &'a [u32] },
}

impl<'a> TokenPairing<'a> {
    /// The Linear form's activations and offset, or the embedding form's ids (offset 0): the
    /// operands the GPU hosts hand to their contraction and per-pair kernels.
    #[allow(clippy::type_complexity)]
    pub fn parts(
        self,
    ) -> (
        Option<(&'a crate::backend::Tensor, &'a crate::backend::Tensor)>,
        f32,
        Option<(&'a [u32], &'a [u32])>,
    ) {
        match self {
            TokenPairing::Linear { rows, cols, offset } => (Some((rows, cols)), offset, None),
            TokenPairing::Embedding { rows, cols } => (None, 0.0, Some((rows, cols))),
        }
    }
}

/// How a GPU host walks the token-level form: scratch tiles of `chunk_r × chunk_c` tokens over
/// every row token against the tokens of the column samples asked for, row chunk by row chunk.
pub struct TokenChunks {
    pub chunk_r: usize,
    pub chunk_c: usize,
    pub chunks: Vec<TokenChunk>,
}

/// One scratch tile of [`TokenChunks`]: its row and column tokens and the samples they meet.
pub struct TokenChunk {
    pub rows: std::ops::Range<usize>,
    pub cols: std::ops::Range<usize>,
    pub row_samples: std::ops::Range<usize>,
    pub col_samples: std::ops::Range<usize>,
}

impl TokenChunks {
    /// Tiles of at most `side × side` tokens over `rows`' tokens against those of the column
    /// samples `samples` of `cols`.
    pub fn new(
        rows: &SeqLayout,
        cols: &SeqLayout,
        samples: &std::ops::Range<usize>,
        side: usize,
    ) -> Self {
        let row_tokens = 0..rows.num_tokens();
        let c_starts = cols.starts();
        let col_tokens = c_starts[samples.start]..c_starts[samples.end];
        let chunk_r = side.min(row_tokens.len()).max(1);
        let chunk_c = side.min(col_tokens.len()).max(1);
        let mut chunks = Vec::new();
        for r0 in row_tokens.clone().step_by(chunk_r) {
            let rt = r0..(r0 + chunk_r).min(row_tokens.end);
            for c0 in col_tokens.clone().step_by(chunk_c) {
                let ct = c0..(c0 + chunk_c).min(col_tokens.end);
                chunks.push(TokenChunk {
                    row_samples: rows.sequences_meeting(&rt),
                    col_samples: cols.sequences_meeting(&ct),
                    rows: rt.clone(),
                    cols: ct,
                });
            }
        }
        TokenChunks {
            chunk_r,
            chunk_c,
            chunks,
        }
    }
}

/// How one Linear layer's share of a sequence tangent kernel is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqForm {
    /// [`crate::backend::Backend::ntk_contract_seq`]: Gram matrices over the tokens of both
    /// sides, `T_r·T_c·(p + q)` multiply-adds per sample pair.
    Tokens,
    /// [`crate::backend::Backend::ntk_sample_gradients`] on both sides, then
    /// [`crate::backend::Backend::ntk_contract`] of the flattened per-sample gradients:
    /// `p·(q + 1)` multiply-adds per sample pair, once each sample's gradient is formed.
    Materialised,
}

impl SeqForm {
    /// The cheaper form for a Linear layer with `d_in = q` inputs and `p` gradient columns
    /// (`classes·d_out`) between samples of `tokens_rows` and `tokens_cols` tokens (a length
    /// bucket's mean): token-level costs `T_r·T_c·(p + q)` per pair, materialised `p·(q + 1)`.
    /// Forming each sample's gradient (`T·p·(q + 1)`, once per sample and side) is left out: a
    /// block row of a kernel shares it among all its columns, so it is small beside the pairs
    /// once the kernel is wider than a sequence is long.
    pub fn choose(tokens_rows: f64, tokens_cols: f64, p: usize, q: usize) -> SeqForm {
        let tokens = tokens_rows * tokens_cols * (p + q) as f64;
        let materialised = p as f64 * (q + 1) as f64;
        if tokens <= materialised {
            SeqForm::Tokens
        } else {
            SeqForm::Materialised
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Activation, Pooling, SeqForm};

    /// Issue 17's numbers: at CoLA's ~12 tokens the token-level form wins for every Linear of a
    /// BERT-base encoder layer, at 128 tokens materialising wins; the pooler and classifier see
    /// one token per sample, where the token-level form always wins.
    #[test]
    fn seq_form_follows_the_cost_rule() {
        // (d_in, d_out) of BERT-base's query/key/value/attention-output, intermediate, output.
        let encoder = [(768, 768), (768, 3072), (3072, 768)];
        for classes in [1, 2, 3] {
            for (d_in, d_out) in encoder {
                let p = classes * d_out;
                assert_eq!(SeqForm::choose(12.0, 12.0, p, d_in), SeqForm::Tokens);
                assert_eq!(
                    SeqForm::choose(128.0, 128.0, p, d_in),
                    SeqForm::Materialised
                );
                // Ragged buckets: short rows against long columns.
                assert_eq!(SeqForm::choose(12.0, 128.0, p, d_in), SeqForm::Materialised);
            }
            for (d_in, d_out) in [(768, 768), (768, classes)] {
                assert_eq!(
                    SeqForm::choose(1.0, 1.0, classes * d_out, d_in),
                    SeqForm::Tokens
                );
            }
        }
        // The crossover of a 768×768 layer with one class: T² = 768·769/1536 ≈ 384.5.
        assert_eq!(SeqForm::choose(19.0, 20.0, 768, 768), SeqForm::Tokens);
        assert_eq!(SeqForm::choose(20.0, 20.0, 768, 768), SeqForm::Materialised);
    }

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
