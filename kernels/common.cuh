// Shared device helpers for every kernel family. build.rs splices this file in place of
// `#include "common.cuh"`, so NVRTC needs no include path at run time.
#pragma once

// The codes of `Activation::code` (src/backend/params.rs; a unit test checks each constant) and
// the same definitions as `Activation::apply`.
enum Activation : int {
    ACT_IDENTITY = 0,
    ACT_GELU = 1,
    ACT_GELU_TANH = 2,
    ACT_QUICK_GELU = 3,
    ACT_SILU = 4,
    ACT_RELU = 5,
    ACT_TANH = 6,
    ACT_SIGMOID = 7,
};

__device__ __forceinline__ float apply_activation(int act, float x) {
    switch (act) {
    case ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case ACT_GELU_TANH: return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
    case ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    case ACT_SILU: return x / (1.0f + expf(-x));
    case ACT_RELU: return fmaxf(x, 0.0f);
    case ACT_TANH: return tanhf(x);
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    default: return x;
    }
}

// act'(x), the same definitions as `Activation::derivative` (the backward family).
__device__ __forceinline__ float activation_derivative(int act, float x) {
    switch (act) {
    case ACT_GELU:  // Φ(x) + x·φ(x)
        return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * expf(-0.5f * x * x) * 0.3989422804f;
    case ACT_GELU_TANH: {
        const float t = tanhf(0.7978845608f * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.7978845608f * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case ACT_QUICK_GELU: {
        const float s = 1.0f / (1.0f + expf(-1.702f * x));
        return s + 1.702f * x * s * (1.0f - s);
    }
    case ACT_SILU: {
        const float s = 1.0f / (1.0f + expf(-x));
        return s + x * s * (1.0f - s);
    }
    case ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case ACT_TANH: {
        const float t = tanhf(x);
        return 1.0f - t * t;
    }
    case ACT_SIGMOID: {
        const float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f - s);
    }
    default: return 1.0f;
    }
}

// Half-precision values as a checkpoint stores them (linear weights, embedding tables), kept in
// their 16 bits on the device: distinct types so that a kernel template reads each the right way.
struct Bf16 {
    unsigned short bits;
};
struct F16 {
    unsigned short bits;
};

// Widening to f32 is exact for both: bf16 is the top half of an f32; f16 converts in hardware
// (inline PTX, since NVRTC's fp16 header is not assumed).
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(Bf16 v) { return __uint_as_float((unsigned)v.bits << 16); }
__device__ __forceinline__ float widen(F16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

// NVRTC has no <cmath>, so no INFINITY macro.
__device__ __forceinline__ float neg_infinity() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over the block; every thread gets the total. `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}

// The GEMM epilogue every variant shares: out = act(acc + bias) + residual.
__device__ __forceinline__ float epilogue(float acc, const float* bias, const float* residual, int act,
                                          int row, int col, int m) {
    if (bias) acc += bias[col];
    acc = apply_activation(act, acc);
    if (residual) acc += residual[(size_t)row * m + col];
    return acc;
}
