// LayerNorm (in place) and RMSNorm (into `out`, so a decoder's residual stream needs no copy)
// over rows, f32 statistics (passes over the row held in registers or re-read from L1/L2: rows
// are at most a few thousand floats).
//
// Variants:
//   1. layer_norm_v1 — one block per row, block-wide reductions for mean and variance.
//   2. rms_norm_v1   — one block per row, one block-wide reduction of the squares.
#include "common.cuh"

extern "C" __global__ void layer_norm_v1(float* __restrict__ x, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, int d, float eps) {
    __shared__ float scratch[32];
    float* row = x + (size_t)blockIdx.x * d;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) sum += row[i];
    const float mean = block_sum(sum, scratch) / d;
    float sq = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float c = row[i] - mean;
        sq += c * c;
    }
    const float inv = rsqrtf(block_sum(sq, scratch) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) row[i] = (row[i] - mean) * inv * gamma[i] + beta[i];
}

extern "C" __global__ void rms_norm_v1(const float* __restrict__ x, const float* __restrict__ gamma,
                                       float* __restrict__ out, int d, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (size_t)blockIdx.x * d;
    float* normed = out + (size_t)blockIdx.x * d;
    float sq = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) sq += row[i] * row[i];
    const float inv = rsqrtf(block_sum(sq, scratch) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) normed[i] = row[i] * inv * gamma[i];
}
