// The attention shape and mask every attention kernel family shares (attention.cu,
// attention_mma.cu), matching `AttentionSpec` in src/backend/params.rs.
#pragma once

// Must match `AttentionShape` in src/backend/cuda/attention.rs.
struct AttentionShape {
    int heads, kv_heads, head_dim, causal, window;
    float scale;
};

// Whether query i may see key j (positions within one sequence); window < 0: no window.
__device__ __forceinline__ bool allows(const AttentionShape& a, int i, int j) {
    if (a.causal && j > i) return false;
    return a.window < 0 || abs(i - j) < a.window;
}

__device__ __forceinline__ int qkv_width(const AttentionShape& a) { return (a.heads + 2 * a.kv_heads) * a.head_dim; }
