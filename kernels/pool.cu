// Pooling of packed sequences (rows starts[s]..starts[s+1] belong to sequence s) and row-wise L2
// normalisation, with the semantics of `Pooling` in src/backend/params.rs.
//
// Kernels (variant numbers per kernel):
//   pool_v1         — one block per sequence, threads stride over the feature dimension.
//   l2_normalize_v1 — one block per row.
#include "common.cuh"

// The codes of `Pooling::code` (src/backend/params.rs; a unit test checks each constant).
enum PoolMode : int { POOL_CLS = 0, POOL_MEAN = 1, POOL_MAX = 2, POOL_LAST = 3, POOL_MEAN_SQRT_LEN = 4 };

extern "C" __global__ void pool_v1(const float* __restrict__ hidden, const int* __restrict__ starts,
                                   float* __restrict__ out, int d, int mode) {
    const int s = blockIdx.x, begin = starts[s], end = starts[s + 1], len = end - begin;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float v = 0.0f;  // an empty sequence pools to zeros
        if (len > 0) {
            switch (mode) {
            case POOL_CLS: v = hidden[(size_t)begin * d + c]; break;
            case POOL_LAST: v = hidden[(size_t)(end - 1) * d + c]; break;
            case POOL_MAX:
                v = neg_infinity();
                for (int t = begin; t < end; ++t) v = fmaxf(v, hidden[(size_t)t * d + c]);
                break;
            default:
                for (int t = begin; t < end; ++t) v += hidden[(size_t)t * d + c];
                v /= mode == POOL_MEAN ? (float)len : sqrtf((float)len);
            }
        }
        out[(size_t)s * d + c] = v;
    }
}

extern "C" __global__ void l2_normalize_v1(float* __restrict__ x, int d) {
    __shared__ float scratch[32];
    float* row = x + (size_t)blockIdx.x * d;
    float sq = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) sq += row[i] * row[i];
    const float inv = 1.0f / fmaxf(sqrtf(block_sum(sq, scratch)), 1e-12f);
    for (int i = threadIdx.x; i < d; i += blockDim.x) row[i] *= inv;
}
