// Softmax attention over packed variable-length sequences (rows starts[s]..starts[s+1] of the
// [tokens, (heads + 2·kv_heads)·head_dim] QKV tensor belong to sequence s; no padding rows),
// with causal mask, sliding window (window < 0: none; 0 masks every key) and grouped-query heads, matching
// `AttentionSpec` in src/backend/params.rs. Output: [tokens, heads·head_dim].
//
// Variants:
//   1. attention_v1_naive      — one block per (sequence, head), one thread per query, two passes
//                                over the keys in global memory. The reference on the device.
//   2. attention_v2_flash_hdD  — one block per (sequence, head, 64-query tile); K/V tiles staged in
//                                shared memory, online softmax in one pass, query and output rows
//                                in registers. Instantiated for head_dim D = 32 and 64.
//   3. attention_v3_flash_warp_hdD — one block of 4 warps per (sequence, head, 16-query tile), a
//                                warp per query: the 32 lanes score the 32 keys of a shared K/V
//                                tile at once (lane j takes key j), the online softmax updates
//                                once per tile with two warp reductions, and each lane
//                                accumulates D/32 output columns. Registers hold D/32 floats per
//                                query instead of 2·D, so D = 128 fits. Instantiated for D = 64
//                                and 128.
#include "common.cuh"
#include "attention.cuh"

extern "C" __global__ void attention_v1_naive(const float* __restrict__ qkv, const int* __restrict__ starts,
                                              float* __restrict__ out, AttentionShape a) {
    const int s = blockIdx.x, h = blockIdx.y, begin = starts[s], len = starts[s + 1] - begin;
    const int width = qkv_width(a), hd = a.head_dim, kv = h / (a.heads / a.kv_heads);
    const float* q_base = qkv + (size_t)begin * width + h * hd;
    const float* k_base = qkv + (size_t)begin * width + (a.heads + kv) * hd;
    const float* v_base = qkv + (size_t)begin * width + (a.heads + a.kv_heads + kv) * hd;
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
        const float* q = q_base + (size_t)i * width;
        float* o = out + (size_t)(begin + i) * a.heads * hd + h * hd;
        float max_score = neg_infinity();
        for (int j = 0; j < len; ++j) {
            if (!allows(a, i, j)) continue;
            float dot = 0.0f;
            for (int c = 0; c < hd; ++c) dot += q[c] * k_base[(size_t)j * width + c];
            max_score = fmaxf(max_score, dot * a.scale);
        }
        for (int c = 0; c < hd; ++c) o[c] = 0.0f;
        float total = 0.0f;
        for (int j = 0; j < len; ++j) {
            if (!allows(a, i, j)) continue;
            float dot = 0.0f;
            for (int c = 0; c < hd; ++c) dot += q[c] * k_base[(size_t)j * width + c];
            const float p = expf(dot * a.scale - max_score);
            total += p;
            for (int c = 0; c < hd; ++c) o[c] += p * v_base[(size_t)j * width + c];
        }
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // a query that sees no key gives zeros
        for (int c = 0; c < hd; ++c) o[c] *= inv;
    }
}

#define FLASH_BQ 64
#define FLASH_BKV 32

template <int HD>
__device__ void attention_flash(const float* __restrict__ qkv, const int* __restrict__ starts, float* __restrict__ out,
                                const AttentionShape& a) {
    __shared__ float ks[FLASH_BKV][HD];
    __shared__ float vs[FLASH_BKV][HD];
    const int s = blockIdx.x, h = blockIdx.y, begin = starts[s], len = starts[s + 1] - begin;
    const int q_first = blockIdx.z * FLASH_BQ;
    if (q_first >= len) return;  // whole block: no __syncthreads() is skipped by part of it
    const int width = qkv_width(a), kv = h / (a.heads / a.kv_heads);
    const int i = q_first + threadIdx.x;
    const bool active = i < len;

    float q[HD], o[HD];
    const float* q_row = qkv + (size_t)(begin + (active ? i : q_first)) * width + h * HD;
#pragma unroll
    for (int c = 0; c < HD; ++c) {
        q[c] = q_row[c] * a.scale;
        o[c] = 0.0f;
    }
    float running_max = neg_infinity(), total = 0.0f;

    // Keys any query of this tile may see.
    const int q_last = min(q_first + FLASH_BQ, len) - 1;
    const int key_end = a.causal ? q_last + 1 : len;
    const int key_begin = a.window >= 0 ? max(0, q_first - a.window + 1) : 0;
    for (int j0 = key_begin; j0 < key_end; j0 += FLASH_BKV) {
        for (int e = threadIdx.x; e < FLASH_BKV * HD; e += blockDim.x) {
            const int jj = e / HD, c = e % HD, j = j0 + jj;
            const size_t row = (size_t)(begin + j) * width;
            ks[jj][c] = j < key_end ? qkv[row + (a.heads + kv) * HD + c] : 0.0f;
            vs[jj][c] = j < key_end ? qkv[row + (a.heads + a.kv_heads + kv) * HD + c] : 0.0f;
        }
        __syncthreads();
        if (active) {
            for (int jj = 0; jj < FLASH_BKV && j0 + jj < key_end; ++jj) {
                if (!allows(a, i, j0 + jj)) continue;
                float score = 0.0f;
#pragma unroll
                for (int c = 0; c < HD; ++c) score += q[c] * ks[jj][c];
                if (score > running_max) {  // rescale what was accumulated under the old maximum
                    const float shrink = expf(running_max - score);
                    total *= shrink;
#pragma unroll
                    for (int c = 0; c < HD; ++c) o[c] *= shrink;
                    running_max = score;
                }
                const float p = expf(score - running_max);
                total += p;
#pragma unroll
                for (int c = 0; c < HD; ++c) o[c] += p * vs[jj][c];
            }
        }
        __syncthreads();
    }
    if (!active) return;
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    float* o_row = out + (size_t)(begin + i) * a.heads * HD + h * HD;
#pragma unroll
    for (int c = 0; c < HD; ++c) o_row[c] = o[c] * inv;
}

extern "C" __global__ void __launch_bounds__(FLASH_BQ)
attention_v2_flash_hd32(const float* __restrict__ qkv, const int* __restrict__ starts, float* __restrict__ out, AttentionShape a) {
    attention_flash<32>(qkv, starts, out, a);
}

extern "C" __global__ void __launch_bounds__(FLASH_BQ)
attention_v2_flash_hd64(const float* __restrict__ qkv, const int* __restrict__ starts, float* __restrict__ out, AttentionShape a) {
    attention_flash<64>(qkv, starts, out, a);
}

#define WARP_BQ 16                       // queries per block
#define WARP_WARPS 4                     // warps per block
#define WARP_QPW (WARP_BQ / WARP_WARPS)  // queries per warp
#define WARP_BKV 32                      // keys per shared tile: one per lane

template <int HD>
__device__ void attention_flash_warp(const float* __restrict__ qkv, const int* __restrict__ starts,
                                     float* __restrict__ out, const AttentionShape& a) {
    constexpr int PER_LANE = HD / 32;  // output columns lane, lane + 32, … of each query
    __shared__ float qs[WARP_BQ][HD];
    __shared__ float ks[WARP_BKV][HD + 1];  // +1: lane j reads row j, conflict-free
    __shared__ float vs[WARP_BKV][HD];
    const int s = blockIdx.x, h = blockIdx.y, begin = starts[s], len = starts[s + 1] - begin;
    const int q_first = blockIdx.z * WARP_BQ;
    if (q_first >= len) return;  // whole block: no __syncthreads() is skipped by part of it
    const int width = qkv_width(a), kv = h / (a.heads / a.kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    for (int e = threadIdx.x; e < WARP_BQ * HD; e += blockDim.x) {
        const int qi = e / HD, c = e % HD, i = q_first + qi;
        qs[qi][c] = i < len ? qkv[(size_t)(begin + i) * width + h * HD + c] * a.scale : 0.0f;
    }
    float o[WARP_QPW][PER_LANE], running_max[WARP_QPW], total[WARP_QPW];
#pragma unroll
    for (int qq = 0; qq < WARP_QPW; ++qq) {
        running_max[qq] = neg_infinity();
        total[qq] = 0.0f;
#pragma unroll
        for (int t = 0; t < PER_LANE; ++t) o[qq][t] = 0.0f;
    }

    // Keys any query of this tile may see: [key_begin, key_end).
    const int q_last = min(q_first + WARP_BQ, len) - 1;
    int key_end = a.causal ? q_last + 1 : len;
    if (a.window >= 0) key_end = min(key_end, q_last + a.window);
    const int key_begin = a.window >= 0 ? max(0, q_first - a.window + 1) : 0;
    for (int j0 = key_begin; j0 < key_end; j0 += WARP_BKV) {
        __syncthreads();  // the previous tile is read (and, the first time, the queries staged)
        for (int e = threadIdx.x; e < WARP_BKV * HD; e += blockDim.x) {
            const int jj = e / HD, c = e % HD, j = j0 + jj;
            const size_t row = (size_t)(begin + j) * width;
            ks[jj][c] = j < key_end ? qkv[row + (a.heads + kv) * HD + c] : 0.0f;
            vs[jj][c] = j < key_end ? qkv[row + (a.heads + a.kv_heads + kv) * HD + c] : 0.0f;
        }
        __syncthreads();
        const int j = j0 + lane;
#pragma unroll
        for (int qq = 0; qq < WARP_QPW; ++qq) {
            // i depends on the warp only, so every branch below is taken by the whole warp and
            // the shuffles see all 32 lanes.
            const int qi = warp * WARP_QPW + qq, i = q_first + qi;
            if (i >= len) continue;
            float score = neg_infinity();
            if (j < key_end && allows(a, i, j)) {
                score = 0.0f;
#pragma unroll 16
                for (int c = 0; c < HD; ++c) score += qs[qi][c] * ks[lane][c];
            }
            const float tile_max = warp_max(score);
            if (tile_max == neg_infinity()) continue;  // no key of this tile is visible to i
            const float new_max = fmaxf(running_max[qq], tile_max);
            // exp(−∞) = 0: nothing accumulated yet, or a masked key.
            const float shrink = expf(running_max[qq] - new_max);
            const float p = expf(score - new_max);
            total[qq] = total[qq] * shrink + warp_sum(p);
#pragma unroll
            for (int t = 0; t < PER_LANE; ++t) o[qq][t] *= shrink;
            for (int jj = 0; jj < WARP_BKV; ++jj) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int t = 0; t < PER_LANE; ++t) o[qq][t] += pj * vs[jj][lane + 32 * t];
            }
            running_max[qq] = new_max;
        }
    }
#pragma unroll
    for (int qq = 0; qq < WARP_QPW; ++qq) {
        const int i = q_first + warp * WARP_QPW + qq;
        if (i >= len) continue;
        const float inv = total[qq] > 0.0f ? 1.0f / total[qq] : 0.0f;  // no visible key: zeros
        float* o_row = out + (size_t)(begin + i) * a.heads * HD + h * HD;
#pragma unroll
        for (int t = 0; t < PER_LANE; ++t) o_row[lane + 32 * t] = o[qq][t] * inv;
    }
}

extern "C" __global__ void __launch_bounds__(32 * WARP_WARPS)
attention_v3_flash_warp_hd64(const float* __restrict__ qkv, const int* __restrict__ starts, float* __restrict__ out,
                             AttentionShape a) {
    attention_flash_warp<64>(qkv, starts, out, a);
}

extern "C" __global__ void __launch_bounds__(32 * WARP_WARPS)
attention_v3_flash_warp_hd128(const float* __restrict__ qkv, const int* __restrict__ starts, float* __restrict__ out,
                              AttentionShape a) {
    attention_flash_warp<128>(qkv, starts, out, a);
}
