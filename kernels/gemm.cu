// Linear layers: out[n, m] = act(x[n, k] · w[m, k]ᵀ + bias[m]) + residual[n, m], with w in
// PyTorch's [out, in] layout (which is exactly the column-major B operand mma.sync wants).
// Every variant handles sizes that are not multiples of its tile.
//
// Variants (numbered as every backend numbers its GEMMs, src/backend/variants.rs; 3, 5 and 6 are
// WGSL's):
//   1. gemm_v1_naive        — one thread per output, f32. The reference on the device.
//   2. gemm_v2_tiled        — 64×64 block tile, 16-deep K slices in shared memory, 4×4 outputs
//                             per thread in registers, f32 (the tile loop is tile.cuh's).
//   4. gemm_v4_mma_bf16     — tensor cores (mma.sync m16n8k16, sm_80+): bf16 weights, f32
//                             activations rounded to bf16 while staged in shared memory, f32
//                             accumulation. 64×64 block tile, 4 warps of 32×32.
//
// Weights kept in half precision (`Backend::upload_f16` / `upload_bf16` on CUDA keep the
// checkpoint's 16 bits): each variant has a build per weight type, named with the suffix
// `_f16w` / `_bf16w`, which widens the weights to f32 as they are loaded (exact), so variants 1
// and 2 keep f32 accuracy. Variant 4 reads bf16 weights as they are (`gemm_v4_mma_bf16` serves
// both the f32 path's bf16 copy and bf16 weights) and rounds f16 weights to bf16 while staging
// them (`gemm_v4_mma_bf16_f16w`).
//
// Helper kernel: to_bf16_v1 — converts f32 weights to bf16 once, for variant 4.
// Gated feed-forward: gated_activation_v1 — out[i, j] = act(x[i, j]) · x[i, m + j] for x: [n, 2m]
// (gate beside up, one GEMM's output), grid-stride over the n·m outputs.
#include "common.cuh"
#include "tile.cuh"

// W: the weights' element type (float, F16 or Bf16).
template <class W>
__device__ __forceinline__ void gemm_naive(const float* __restrict__ x, const W* __restrict__ w,
                                           const float* __restrict__ bias, const float* __restrict__ residual,
                                           float* __restrict__ out, int n, int m, int k, int act) {
    const int row = blockIdx.y * blockDim.y + threadIdx.y, col = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n || col >= m) return;
    float acc = 0.0f;
    for (int p = 0; p < k; ++p) acc += x[(size_t)row * k + p] * widen(w[(size_t)col * k + p]);
    out[(size_t)row * m + col] = epilogue(acc, bias, residual, act, row, col, m);
}

#define GEMM_NAIVE(name, W)                                                                              \
    extern "C" __global__ void name(const float* __restrict__ x, const W* __restrict__ w,                \
                                    const float* __restrict__ bias, const float* __restrict__ residual,  \
                                    float* __restrict__ out, int n, int m, int k, int act) {             \
        gemm_naive(x, w, bias, residual, out, n, m, k, act);                                             \
    }
GEMM_NAIVE(gemm_v1_naive, float)
GEMM_NAIVE(gemm_v1_naive_f16w, F16)
GEMM_NAIVE(gemm_v1_naive_bf16w, Bf16)

// 256 threads: a 16×16 grid, each thread owning a 4×4 block of the 64×64 tile (tile.cuh); the
// weights are widened to f32 as they are staged in shared memory.
template <class W>
__device__ __forceinline__ void gemm_tiled(const float* __restrict__ x, const W* __restrict__ w,
                                           const float* __restrict__ bias, const float* __restrict__ residual,
                                           float* __restrict__ out, int n, int m, int k, int act) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    float acc[4][4] = {};
    tile_product(acc, row0, col0, k, RowMajor{x, n, k}, RowMajorOf<W>{w, m, k});
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + tx * 4 + j;
            if (row < n && col < m) out[(size_t)row * m + col] = epilogue(acc[i][j], bias, residual, act, row, col, m);
        }
    }
}

#define GEMM_TILED(name, W)                                                                              \
    extern "C" __global__ void __launch_bounds__(TILE_THREADS)                                           \
    name(const float* __restrict__ x, const W* __restrict__ w, const float* __restrict__ bias,           \
         const float* __restrict__ residual, float* __restrict__ out, int n, int m, int k, int act) {    \
        gemm_tiled(x, w, bias, residual, out, n, m, k, act);                                             \
    }
GEMM_TILED(gemm_v2_tiled, float)
GEMM_TILED(gemm_v2_tiled_f16w, F16)
GEMM_TILED(gemm_v2_tiled_bf16w, Bf16)

#define V3_BM 64
#define V3_BN 64
#define V3_BK 32
#define V3_PAD 8  // keeps rows 4-byte aligned and spreads fragment loads over banks

// f32 → bf16 bits, round to nearest even (NaN stays NaN).
__device__ __forceinline__ unsigned short to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// The bf16 bits variant 4 stages: bf16 weights as they are, f16 weights rounded.
__device__ __forceinline__ unsigned short bf16_bits(Bf16 v) { return v.bits; }
__device__ __forceinline__ unsigned short bf16_bits(F16 v) { return to_bf16(widen(v)); }

__device__ __forceinline__ unsigned pair(const unsigned short* p) {
    return *reinterpret_cast<const unsigned*>(p);  // two consecutive bf16, lower column in the low half
}

// 128 threads = 4 warps in a 2×2 grid, each warp computing 32×32 as 2×4 m16n8 tiles.
template <class W>
__device__ __forceinline__ void gemm_mma_bf16(const float* __restrict__ x, const W* __restrict__ w,
                                              const float* __restrict__ bias, const float* __restrict__ residual,
                                              float* __restrict__ out, int n, int m, int k, int act) {
    __shared__ __align__(16) unsigned short xs[V3_BM][V3_BK + V3_PAD];
    __shared__ __align__(16) unsigned short ws[V3_BN][V3_BK + V3_PAD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int group = lane >> 2, quad = lane & 3;  // mma fragment coordinates
    const int warp_row = (warp / 2) * 32, warp_col = (warp % 2) * 32;
    const int row0 = blockIdx.y * V3_BM, col0 = blockIdx.x * V3_BN;
    float acc[2][4][4] = {};
    for (int k0 = 0; k0 < k; k0 += V3_BK) {
        for (int e = tid; e < V3_BM * V3_BK; e += 128) {
            const int r = e / V3_BK, kk = e % V3_BK, gk = k0 + kk;
            xs[r][kk] = (row0 + r < n && gk < k) ? to_bf16(x[(size_t)(row0 + r) * k + gk]) : 0;
            ws[r][kk] = (col0 + r < m && gk < k) ? bf16_bits(w[(size_t)(col0 + r) * k + gk]) : 0;
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < V3_BK; ks += 16) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r = warp_row + mi * 16 + group;
                a[mi][0] = pair(&xs[r][ks + quad * 2]);
                a[mi][1] = pair(&xs[r + 8][ks + quad * 2]);
                a[mi][2] = pair(&xs[r][ks + quad * 2 + 8]);
                a[mi][3] = pair(&xs[r + 8][ks + quad * 2 + 8]);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int c = warp_col + ni * 8 + group;
                b[ni][0] = pair(&ws[c][ks + quad * 2]);
                b[ni][1] = pair(&ws[c][ks + quad * 2 + 8]);
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) {
                    float* d = acc[mi][ni];
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                        : "r"(a[mi][0]), "r"(a[mi][1]), "r"(a[mi][2]), "r"(a[mi][3]), "r"(b[ni][0]), "r"(b[ni][1]));
                }
        }
        __syncthreads();
    }
    // Accumulator fragment: d[0], d[1] at (group, 2·quad + {0,1}); d[2], d[3] eight rows lower.
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = row0 + warp_row + mi * 16 + group + (e >= 2 ? 8 : 0);
                const int col = col0 + warp_col + ni * 8 + quad * 2 + (e & 1);
                if (row < n && col < m) out[(size_t)row * m + col] = epilogue(acc[mi][ni][e], bias, residual, act, row, col, m);
            }
}

#define GEMM_MMA(name, W)                                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                                    \
    name(const float* __restrict__ x, const W* __restrict__ w, const float* __restrict__ bias,           \
         const float* __restrict__ residual, float* __restrict__ out, int n, int m, int k, int act) {    \
        gemm_mma_bf16(x, w, bias, residual, out, n, m, k, act);                                          \
    }
GEMM_MMA(gemm_v4_mma_bf16, Bf16)
GEMM_MMA(gemm_v4_mma_bf16_f16w, F16)

extern "C" __global__ void to_bf16_v1(const float* __restrict__ src, unsigned short* __restrict__ dst, size_t len) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = to_bf16(src[i]);
}

extern "C" __global__ void gated_activation_v1(const float* __restrict__ x, float* __restrict__ out, size_t n,
                                               size_t m, int act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n * m; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / m, gate = row * 2 * m + (i - row * m);
        out[i] = apply_activation(act, x[gate]) * x[gate + m];
    }
}
