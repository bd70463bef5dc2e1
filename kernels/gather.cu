// Embedding gather: out[i] (+)= table[ids[i]] for a [rows, d] table (one table split across
// several buffers is handled by the host, one launch per part with ids rebased).
//
// Variants:
//   1. gather_rows_v1 — one block per output row, threads stride over d.
#include "common.cuh"

extern "C" __global__ void gather_rows_v1(const float* __restrict__ table, const unsigned* __restrict__ ids,
                                          float* __restrict__ out, int d, int accumulate) {
    const float* src = table + (size_t)ids[blockIdx.x] * d;
    float* dst = out + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = accumulate ? dst[i] + src[i] : src[i];
}
