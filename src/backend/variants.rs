//! Kernel variants, numbered once for every backend as llm.c's `dev/cuda` numbers them
//! (`./gemm 2`): a number is one algorithm wherever it runs, each backend implements the numbers
//! its device suits, and `mscope bench --variant N` sets them side by side. A backend asked for a
//! number it lacks lists the ones it has.

/// The kernels behind [`crate::backend::Backend::linear`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmVariant {
    /// 1 — one thread per output: the device-side reference (CUDA).
    Naive,
    /// 2 — 64×64 output tiles staged through shared (workgroup) memory, f32 throughout (CUDA,
    /// WGSL): the GPU default, so every f32 path keeps f32 accuracy.
    Tiled,
    /// 3 — the tiled kernel's register blocks read straight from memory, without shared tiles or
    /// barriers: for software adapters such as lavapipe, where workgroup memory is plain memory
    /// and a barrier a coroutine switch (WGSL).
    Direct,
    /// 4 — tensor cores on bf16 weights and activations with f32 accumulation, relative error
    /// about 1e-3, so opt-in (CUDA, sm_80+).
    MmaBf16,
    /// 5 — variant 2 on f16 weights, widened to f32 as they are loaded (WGSL with SHADER_F16).
    TiledF16,
    /// 6 — variant 3 on f16 weights (WGSL with SHADER_F16).
    DirectF16,
    /// 7 — faer's GEMM, the epilogue in a second pass over the output (CPU).
    Faer,
    /// 8 — packed panels and an 8×32 (AVX-512) or 6×16 (AVX2 + FMA) register tile, the epilogue
    /// applied to the tile before it is stored; f32 weights packed once and kept with their
    /// tensor, f16 and bf16 ones widened block by block as they are packed (CPU: the default on
    /// f32 weight matrices of 2²² values or more, and every GEMM on half-precision weights).
    Packed,
    /// 9 — variant 8 on f16 weights (CPU).
    PackedF16,
    /// 10 — Hopper tensor cores: `wgmma` on bf16 activations and weights staged by TMA through
    /// a multistage mbarrier pipeline, f32 accumulation, relative error about 1e-3 like variant 4;
    /// opt-in (CUDA, sm_90 only; shapes TMA cannot describe run variant 4).
    WgmmaBf16,
    /// 11 — Intel AMX tiles: `tdpbf16ps` on bf16 activations and weights (f32 and f16 weights
    /// rounded as they are packed), f32 accumulation, a 32×32 output tile per step from a 2×2
    /// block of tile registers, the epilogue of variant 8; relative error about 1e-3, so opt-in
    /// (CPU with AMX-BF16: `--matmul-precision medium`).
    AmxBf16,
    /// 12 — 16 output rows per workgroup shared by all its invocations, each x value loaded by
    /// one lane and broadcast to its subgroup, each lane loading the weights of its own 2
    /// columns: for software adapters with subgroups (lavapipe), where every lane's own load is
    /// the cost, 3–4× variant 3 there (WGSL, subgroup build).
    Subgroup,
    /// 13 — variant 12 on f16 weights (WGSL with SHADER_F16 and subgroups).
    SubgroupF16,
    /// 14 — AVX512_BF16's `vdpbf16ps` (two bf16 products added to each f32 lane) on variant
    /// 11's packed operands, an 8 × 32 register tile, f32 accumulation; relative error about
    /// 1e-3, so opt-in (CPU with AVX512_BF16 and no AMX, such as AMD Zen 4:
    /// `--matmul-precision medium`).
    DotBf16,
}

impl GemmVariant {
    /// Every variant, in the order of its number.
    pub const ALL: [GemmVariant; 14] = [
        GemmVariant::Naive,
        GemmVariant::Tiled,
        GemmVariant::Direct,
        GemmVariant::MmaBf16,
        GemmVariant::TiledF16,
        GemmVariant::DirectF16,
        GemmVariant::Faer,
        GemmVariant::Packed,
        GemmVariant::PackedF16,
        GemmVariant::WgmmaBf16,
        GemmVariant::AmxBf16,
        GemmVariant::Subgroup,
        GemmVariant::SubgroupF16,
        GemmVariant::DotBf16,
    ];

    pub fn number(self) -> u32 {
        match self {
            GemmVariant::Naive => 1,
            GemmVariant::Tiled => 2,
            GemmVariant::Direct => 3,
            GemmVariant::MmaBf16 => 4,
            GemmVariant::TiledF16 => 5,
            GemmVariant::DirectF16 => 6,
            GemmVariant::Faer => 7,
            GemmVariant::Packed => 8,
            GemmVariant::PackedF16 => 9,
            GemmVariant::WgmmaBf16 => 10,
            GemmVariant::AmxBf16 => 11,
            GemmVariant::Subgroup => 12,
            GemmVariant::SubgroupF16 => 13,
            GemmVariant::DotBf16 => 14,
        }
    }

    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.number() == number)
    }

    /// The name `bench` prints and `MSCOPE_CUDA_GEMM` accepts.
    pub fn name(self) -> &'static str {
        match self {
            GemmVariant::Naive => "naive",
            GemmVariant::Tiled => "tiled",
            GemmVariant::Direct => "direct",
            GemmVariant::MmaBf16 => "mma-bf16",
            GemmVariant::TiledF16 => "tiled-f16",
            GemmVariant::DirectF16 => "direct-f16",
            GemmVariant::Faer => "faer",
            GemmVariant::Packed => "packed",
            GemmVariant::PackedF16 => "packed-f16",
            GemmVariant::WgmmaBf16 => "wgmma-bf16",
            GemmVariant::AmxBf16 => "amx-bf16",
            GemmVariant::Subgroup => "subgroup",
            GemmVariant::SubgroupF16 => "subgroup-f16",
            GemmVariant::DotBf16 => "dot-bf16",
        }
    }

    /// Whether the kernel multiplies bf16-rounded activations and weights (f32 accumulation), so
    /// its results carry the half-precision tolerance.
    pub fn bf16_operands(self) -> bool {
        matches!(
            self,
            GemmVariant::MmaBf16
                | GemmVariant::WgmmaBf16
                | GemmVariant::AmxBf16
                | GemmVariant::DotBf16
        )
    }

    /// Whether the kernel reads f16 weights (uploaded by [`crate::backend::Backend::upload_f16`]).
    pub fn f16_weights(self) -> bool {
        matches!(
            self,
            GemmVariant::TiledF16
                | GemmVariant::DirectF16
                | GemmVariant::PackedF16
                | GemmVariant::SubgroupF16
        )
    }

    /// The f16-weight build of an f32-weight kernel, where one exists.
    pub fn on_f16_weights(self) -> Option<Self> {
        match self {
            GemmVariant::Tiled => Some(GemmVariant::TiledF16),
            GemmVariant::Direct => Some(GemmVariant::DirectF16),
            GemmVariant::Packed => Some(GemmVariant::PackedF16),
            GemmVariant::Subgroup => Some(GemmVariant::SubgroupF16),
            _ => None,
        }
    }

    /// The f32-weight kernel an f16-weight variant builds on (itself otherwise).
    pub fn on_f32_weights(self) -> Self {
        match self {
            GemmVariant::TiledF16 => GemmVariant::Tiled,
            GemmVariant::DirectF16 => GemmVariant::Direct,
            GemmVariant::PackedF16 => GemmVariant::Packed,
            GemmVariant::SubgroupF16 => GemmVariant::Subgroup,
            other => other,
        }
    }
}

impl std::fmt::Display for GemmVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// The kernels behind [`crate::backend::Backend::ntk_contract`], numbered like the GEMM's: the
/// contraction is two Gram products and a Hadamard product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NtkVariant {
    /// 1 — one thread per output pair (CUDA).
    Naive,
    /// 2 — both Gram tiles staged through shared memory and combined in registers before the one
    /// write (CUDA, WGSL).
    Tiled,
    /// 3 — the tiled kernel's register blocks read straight from memory (WGSL, for software
    /// adapters).
    Direct,
    /// 7 — two faer GEMMs and the Hadamard product on the host (CPU).
    Faer,
}

impl NtkVariant {
    /// Every variant, in the order of its number.
    pub const ALL: [NtkVariant; 4] = [
        NtkVariant::Naive,
        NtkVariant::Tiled,
        NtkVariant::Direct,
        NtkVariant::Faer,
    ];

    pub fn number(self) -> u32 {
        match self {
            NtkVariant::Naive => 1,
            NtkVariant::Tiled => 2,
            NtkVariant::Direct => 3,
            NtkVariant::Faer => 7,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NtkVariant::Naive => "naive",
            NtkVariant::Tiled => "tiled",
            NtkVariant::Direct => "direct",
            NtkVariant::Faer => "faer",
        }
    }
}

/// The kernels behind [`crate::backend::Backend::attention`]: CUDA's (1–4) and the CPU's (7–9;
/// wgpu runs one flash-style kernel of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// 1 — one block per (sequence, head), one thread per query, two passes over the keys in
    /// global memory: the device-side reference, any head_dim.
    Naive,
    /// 2 — flash attention with a thread per query: K/V tiles in shared memory, online softmax,
    /// the query and output rows in registers (head_dim 32 and 64).
    Flash,
    /// 3 — flash attention with a warp per query: the lanes score a tile's 32 keys at once and
    /// split the output columns, so registers hold head_dim/32 values per query (head_dim 64 and
    /// 128, Llama's and Mistral's).
    FlashWarp,
    /// 4 — flash attention on tensor cores: a warp per 16 queries computes `Q·Kᵀ` and `P·V` with
    /// `mma.sync` m16n8k16 on bf16 operands (Q, K, V and P rounded to bf16), f32 accumulation and
    /// f32 softmax state in registers, skipping key tiles the masks hide (head_dim 64 and 128;
    /// others run the default kernel for their head_dim). Relative error about 1e-3 like GEMM
    /// variant 4, so opt-in (CUDA, sm_80+).
    MmaBf16,
    /// 7 — two faer GEMMs per block of 64 queries and head, the row softmax between them (CPU).
    Faer,
    /// 8 — `K`, `V` and `Q` of every head packed per block of 64 queries into the packed GEMM's
    /// panels, the scores computed transposed tile by tile, skipping the tiles a mask hides (CPU:
    /// the default for causal and windowed attention).
    Packed,
    /// 9 — `K` and `V` packed once per sequence and key/value head, then per panel of 8 queries
    /// (6 on AVX2) the scores, softmax and `P·V` in L1, the queries and weights read where they
    /// are (CPU: the default for bidirectional attention).
    Panels,
}

impl AttentionVariant {
    /// Every variant, in the order of its number.
    pub const ALL: [AttentionVariant; 7] = [
        AttentionVariant::Naive,
        AttentionVariant::Flash,
        AttentionVariant::FlashWarp,
        AttentionVariant::MmaBf16,
        AttentionVariant::Faer,
        AttentionVariant::Packed,
        AttentionVariant::Panels,
    ];

    /// The CUDA backend's variants.
    pub const CUDA: [AttentionVariant; 4] = [
        AttentionVariant::Naive,
        AttentionVariant::Flash,
        AttentionVariant::FlashWarp,
        AttentionVariant::MmaBf16,
    ];

    /// The CPU backend's variants.
    pub const CPU: [AttentionVariant; 3] = [
        AttentionVariant::Faer,
        AttentionVariant::Packed,
        AttentionVariant::Panels,
    ];

    pub fn number(self) -> u32 {
        match self {
            AttentionVariant::Naive => 1,
            AttentionVariant::Flash => 2,
            AttentionVariant::FlashWarp => 3,
            AttentionVariant::MmaBf16 => 4,
            AttentionVariant::Faer => 7,
            AttentionVariant::Packed => 8,
            AttentionVariant::Panels => 9,
        }
    }

    /// The name `MSCOPE_CUDA_ATTENTION` (1–4) or `MSCOPE_CPU_ATTENTION` (7–9) accepts.
    pub fn name(self) -> &'static str {
        match self {
            AttentionVariant::Naive => "naive",
            AttentionVariant::Flash => "flash",
            AttentionVariant::FlashWarp => "flash-warp",
            AttentionVariant::MmaBf16 => "mma-bf16",
            AttentionVariant::Faer => "faer",
            AttentionVariant::Packed => "packed",
            AttentionVariant::Panels => "panels",
        }
    }

    /// The head dimensions the variant has a kernel for; `None`: every one.
    pub fn head_dims(self) -> Option<&'static [usize]> {
        match self {
            AttentionVariant::Flash => Some(&[32, 64]),
            AttentionVariant::FlashWarp | AttentionVariant::MmaBf16 => Some(&[64, 128]),
            _ => None,
        }
    }

    pub fn supports_head_dim(self, head_dim: usize) -> bool {
        self.head_dims().is_none_or(|dims| dims.contains(&head_dim))
    }

    /// Whether the kernel multiplies bf16-rounded operands (f32 accumulation), so its results
    /// carry the half-precision tolerance.
    pub fn bf16_operands(self) -> bool {
        self == AttentionVariant::MmaBf16
    }
}

impl std::fmt::Display for AttentionVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_distinct_and_round_trip() {
        for (i, v) in GemmVariant::ALL.into_iter().enumerate() {
            assert_eq!(GemmVariant::from_number(v.number()), Some(v));
            assert!(GemmVariant::ALL[..i]
                .iter()
                .all(|w| w.number() < v.number()));
            if let Some(f16) = v.on_f16_weights() {
                assert!(f16.f16_weights() && f16.on_f32_weights() == v);
            }
        }
        let numbers: Vec<u32> = NtkVariant::ALL.map(NtkVariant::number).to_vec();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]));
        let numbers: Vec<u32> = AttentionVariant::ALL.map(AttentionVariant::number).to_vec();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]));
        // The same algorithm has the same number in both tables.
        for (g, n) in [
            (GemmVariant::Naive, NtkVariant::Naive),
            (GemmVariant::Tiled, NtkVariant::Tiled),
            (GemmVariant::Direct, NtkVariant::Direct),
            (GemmVariant::Faer, NtkVariant::Faer),
        ] {
            assert_eq!((g.number(), g.name()), (n.number(), n.name()));
        }
    }
}
