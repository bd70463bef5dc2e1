// Embedding gather: out[i] (+)= table[ids[i]] for a [rows, d] table (one table split across
// several buffers is handled by the host, one launch per part with ids rebased).
//
// Variants:
//   1. gather_rows_v1 — one block per output row, threads stride over d. Builds per table type:
//      gather_rows_v1 (f32), gather_rows_v1_f16 and gather_rows_v1_bf16 (tables kept in the
//      checkpoint's 16 bits, widened exactly as they are read).
#include "common.cuh"

template <class T>
__device__ __forceinline__ void gather_rows(const T* __restrict__ table, const unsigned* __restrict__ ids,
                                            float* __restrict__ out, int d, int accumulate) {
    const T* src = table + (size_t)ids[blockIdx.x] * d;
    float* dst = out + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = accumulate ? dst[i] + widen(src[i]) : widen(src[i]);
}

#define GATHER_ROWS(name, T)                                                                            \
    extern "C" __global__ void name(const T* __restrict__ table, const unsigned* __restrict__ ids,      \
                                    float* __restrict__ out, int d, int accumulate) {                   \
        gather_rows(table, ids, out, d, accumulate);                                                    \
    }
GATHER_ROWS(gather_rows_v1, float)
GATHER_ROWS(gather_rows_v1_f16, F16)
GATHER_ROWS(gather_rows_v1_bf16, Bf16)
