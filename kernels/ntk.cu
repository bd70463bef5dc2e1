// The tangent-kernel instrument's device work (src/backend/mod.rs, `ntk_contract` and
// `jl_project`): one layer's share of a Gram block,
//     out[i, j] += (D_r[i]·D_c[j]) · (A_r[i]·A_c[j] + offset)     (without A: out += D_r·D_cᵀ),
// and the dense Johnson–Lindenstrauss projection out (+)= x·Pᵀ whose entries are generated in
// registers from the counter hash of src/random.rs and never stored.
//
// Variants (numbered as src/backend/variants.rs numbers them; 3 is WGSL's):
//   1. ntk_contract_v1_naive — one thread per output, two dot products from global memory. The
//                              reference on the device.
//   2. ntk_contract_v2_tiled — one 64×64 output tile per block: both tile products (D_r·D_cᵀ and
//                              A_r·A_cᵀ) accumulate in registers (tile.cuh) and are combined
//                              there, so neither Gram matrix nor their Hadamard product is
//                              written to global memory.
//   jl_project_v1            — the 64×64 tile product with the Y operand P generated per slice
//                              (Rademacher or Gaussian), `accumulate` adds to out.
//
// The sequence forms (`ntk_contract_seq`, `ntk_sample_gradients`):
//   ntk_seq_segment_sum      — the token-level form's second half: the host contracts one chunk
//                              of row tokens × column tokens with ntk_contract_v* into a scratch
//                              Gram tile, and one warp per sample pair sums the pair's rectangle
//                              of it into out (the embedding form: only pairs of equal ids),
//                              clearing the entries it reads so the tile is zero for the next
//                              chunk. Lanes stride over the rectangle and a fixed shuffle tree
//                              combines them: the sum does not depend on scheduling.
//   ntk_sample_gradients_tiled — the materialised form: each sample's Σ_t δ_tᵀ[a_t, √offset] as
//                              a tile product over its tokens (tile.cuh), one 64×64 tile of the
//                              [p, q + 1] gradient per block.
#include "common.cuh"
#include "tile.cuh"

extern "C" __global__ void ntk_contract_v1_naive(const float* __restrict__ dr, const float* __restrict__ dc,
                                                 const float* __restrict__ ar, const float* __restrict__ ac,
                                                 float* __restrict__ out, int n_r, int n_c, int p, int q,
                                                 float offset) {
    const int i = blockIdx.y * blockDim.y + threadIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_r || j >= n_c) return;
    float g = 0.0f;
    for (int e = 0; e < p; ++e) g += dr[(size_t)i * p + e] * dc[(size_t)j * p + e];
    if (ar) {  // no activation factors: the layer's kernel is the gradient Gram alone
        float a = 0.0f;
        for (int e = 0; e < q; ++e) a += ar[(size_t)i * q + e] * ac[(size_t)j * q + e];
        g *= a + offset;
    }
    out[(size_t)i * n_c + j] += g;
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
ntk_contract_v2_tiled(const float* __restrict__ dr, const float* __restrict__ dc, const float* __restrict__ ar,
                      const float* __restrict__ ac, float* __restrict__ out, int n_r, int n_c, int p, int q,
                      float offset) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    float grad[4][4] = {}, act[4][4] = {};
    tile_product(grad, row0, col0, p, RowMajor{dr, n_r, p}, RowMajor{dc, n_c, p});
    if (ar) tile_product(act, row0, col0, q, RowMajor{ar, n_r, q}, RowMajor{ac, n_c, q});
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + tx * 4 + j;
            if (row < n_r && col < n_c)
                out[(size_t)row * n_c + col] += ar ? grad[i][j] * (act[i][j] + offset) : grad[i][j];
        }
    }
}

// --- sequence forms ---------------------------------------------------------------------------

// Must match `SegmentShape` in src/backend/cuda/ntk.rs.
struct SegmentShape {
    int first_r, first_c;  // first row / column sample meeting the chunk
    int pairs_r, pairs_c;  // samples meeting the chunk on each side
    int r0, c0;            // first row / column token of the chunk
    int len_r, len_c;      // tokens of the chunk; len_c is the tile's row stride
    int out_col, out_stride;
    int embedding;         // 1: only token pairs of equal ids count
};

// Block (32, 8): warp y of block (x, y) takes row sample first_r + blockIdx.y and column sample
// first_c + blockIdx.x·8 + threadIdx.y.
extern "C" __global__ void ntk_seq_segment_sum(float* __restrict__ gram, const int* __restrict__ row_starts,
                                               const int* __restrict__ col_starts,
                                               const unsigned* __restrict__ row_ids,
                                               const unsigned* __restrict__ col_ids, float* __restrict__ out,
                                               SegmentShape s) {
    const int pair_c = blockIdx.x * blockDim.y + threadIdx.y;
    if (pair_c >= s.pairs_c) return;  // whole warps leave together: the shuffles stay full
    const int i = s.first_r + blockIdx.y, j = s.first_c + pair_c;
    const int t0 = max(row_starts[i], s.r0), t1 = max(min(row_starts[i + 1], s.r0 + s.len_r), t0);
    const int u0 = max(col_starts[j], s.c0), u1 = max(min(col_starts[j + 1], s.c0 + s.len_c), u0);
    const int w = u1 - u0, cells = w * (t1 - t0);
    float sum = 0.0f;
    for (int e = threadIdx.x; e < cells; e += 32) {
        const int t = t0 + e / w, u = u0 + e % w;
        float* cell = gram + (size_t)(t - s.r0) * s.len_c + (u - s.c0);
        const float v = *cell;
        *cell = 0.0f;
        if (!s.embedding || row_ids[t] == col_ids[u]) sum += v;
    }
    sum = warp_sum(sum);
    if (threadIdx.x == 0) out[(size_t)i * s.out_stride + (j - s.out_col)] += sum;
}

// Must match `GradientShape` in src/backend/cuda/ntk.rs.
struct GradientShape {
    int p, q;
    float bias_input;  // √offset, the bias column's input
};

// Block (x, y, z): columns 64·x.. and rows 64·y.. of sample z's [p, q + 1] gradient.
extern "C" __global__ void __launch_bounds__(TILE_THREADS)
ntk_sample_gradients_tiled(const float* __restrict__ delta, const float* __restrict__ acts,
                           const int* __restrict__ starts, float* __restrict__ out, GradientShape s) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    const int first = starts[blockIdx.z], tokens = starts[blockIdx.z + 1] - first;
    const int width = s.q + 1;
    float acc[4][4] = {};
    // X(o, t) = δ[first + t, o] and Y(k, t) = [a_{first + t}, √offset][k]: the contracted index is
    // the token.
    tile_product(
        acc, row0, col0, tokens,
        [&](int o, int t) { return (o < s.p && t < tokens) ? delta[(size_t)(first + t) * s.p + o] : 0.0f; },
        [&](int k, int t) {
            if (t >= tokens || k > s.q) return 0.0f;
            return k == s.q ? s.bias_input : acts[(size_t)(first + t) * s.q + k];
        });
    float* g = out + (size_t)blockIdx.z * s.p * width;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int o = row0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = col0 + tx * 4 + j;
            if (o < s.p && k < width) g[(size_t)o * width + k] = acc[i][j];
        }
    }
}

// --- counter-based random entries: must match src/random.rs bit for bit -----------------------

__device__ __forceinline__ unsigned long long splitmix_finalise(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ unsigned long long counter_hash(unsigned long long seed, unsigned long long row,
                                                           unsigned long long col) {
    unsigned long long h = splitmix_finalise(seed ^ 0x243F6A8885A308D3ull);
    h = splitmix_finalise(h ^ (row * 0x9E3779B97F4A7C15ull));
    return splitmix_finalise(h ^ (col * 0xD1B54A32D192ED03ull));
}

// Must match `JlDistribution` codes in src/backend/cuda/ntk.rs.
enum JlDistribution : int { JL_RADEMACHER = 0, JL_GAUSSIAN = 1 };

// Entry (j, c) of P before the 1/√dim scale. Gaussian: Box–Muller on the hash's two 32-bit
// halves with the same f32 operations as random.rs (logf/cosf may differ from libm by an ulp).
__device__ __forceinline__ float jl_value(int distribution, unsigned long long seed, unsigned long long row,
                                          unsigned long long col) {
    const unsigned long long h = counter_hash(seed, row, col);
    if (distribution == JL_RADEMACHER) return (h >> 63) == 0 ? 1.0f : -1.0f;
    const float u = ((float)(unsigned)(h >> 32) + 0.5f) / 4294967296.0f;
    const float v = (float)(unsigned)(h & 0xFFFFFFFFull) / 4294967296.0f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.28318548f * v);
}

struct JlShape {
    unsigned long long seed, column_offset;
    int n, d, dim, distribution, accumulate;
    float sqrt_dim;  // divided by, as JlSpec::entry does, so Rademacher entries are exact
};

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
jl_project_v1(const float* __restrict__ x, float* __restrict__ out, JlShape s) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    float acc[4][4] = {};
    const auto entry = [&s](int j, int c) {
        return (j < s.dim && c < s.d)
                   ? jl_value(s.distribution, s.seed, (unsigned long long)j, s.column_offset + (unsigned long long)c) /
                         s.sqrt_dim
                   : 0.0f;
    };
    tile_product(acc, row0, col0, s.d, RowMajor{x, s.n, s.d}, entry);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + tx * 4 + j;
            if (row < s.n && col < s.dim) {
                float* o = out + (size_t)row * s.dim + col;
                *o = s.accumulate ? *o + acc[i][j] : acc[i][j];
            }
        }
    }
}
