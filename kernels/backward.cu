// The backward family: the gradient kernels of a transformer classifier's backward pass, with the
// semantics of the `Backend` methods of the same names (src/backend/mod.rs) and the CPU reference
// in src/backend/cpu/backward.rs; the same algorithms as shaders/backward.wgsl.
//
// Kernels (variant numbers per kernel):
//   activation_backward_v1      — one thread per value: dy · act'(pre) (`activation_derivative`,
//                                 common.cuh).
//   layer_norm_backward_v1      — one block per row: centred mean and variance, then the row means
//                                 of g = dy ⊙ γ and g ⊙ x̂ (block sums), then dx and x̂.
//   attention_backward_stats_v1 — one thread per (query, head): its softmax row's maximum,
//                                 1/Σexp and c = Σ_j P_ij·(dO_i·V_j), into `stats`.
//   attention_backward_v1       — one thread per (token, head, channel): the channel of dQ (the
//                                 token as query), dK and dV (the token as key), P and dS
//                                 recomputed from `stats`, so no [len, len] matrix is stored.
//   scatter_rows_v1             — one thread per table value: the sum of its row's ids' gradient
//                                 rows in token order, through a CSR index built on the host
//                                 (deterministic, no float atomics).
//   sequence_sums_v1            — one thread per (sequence, column): the column summed over the
//                                 sequence's tokens in order, times the weights where `weighted`
//                                 (a bias's or a LayerNorm γ's per-sample gradient).
#include "common.cuh"

extern "C" __global__ void activation_backward_v1(const float* __restrict__ pre, const float* __restrict__ dy,
                                                  float* __restrict__ out, long long len, int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = dy[i] * activation_derivative(act, pre[i]);
}

extern "C" __global__ void layer_norm_backward_v1(const float* __restrict__ pre, const float* __restrict__ gamma,
                                                  const float* __restrict__ dy, float* __restrict__ dx,
                                                  float* __restrict__ normed, int d, float eps) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * d;
    const float* x = pre + base;
    const float* g_out = dy + base;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) sum += x[c];
    const float mean = block_sum(sum, scratch) / d;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) sq += (x[c] - mean) * (x[c] - mean);
    const float inv = rsqrtf(block_sum(sq, scratch) / d + eps);
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float g = g_out[c] * gamma[c];
        g_sum += g;
        gx_sum += g * (x[c] - mean) * inv;
    }
    const float g_mean = block_sum(g_sum, scratch) / d;
    const float gx_mean = block_sum(gx_sum, scratch) / d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float h = (x[c] - mean) * inv;
        normed[base + c] = h;
        dx[base + c] = inv * (g_out[c] * gamma[c] - g_mean - h * gx_mean);
    }
}

// ⟨a[0..hd), b[0..hd)⟩
__device__ __forceinline__ float head_dot(const float* a, const float* b, int hd) {
    float dot = 0.0f;
    for (int e = 0; e < hd; ++e) dot += a[e] * b[e];
    return dot;
}

// Grid: (query blocks, heads, sequences).
extern "C" __global__ void attention_backward_stats_v1(const float* __restrict__ qkv, const int* __restrict__ starts,
                                                       const float* __restrict__ d_out, float* __restrict__ stats,
                                                       int heads, int hd, float scale) {
    const int h = blockIdx.y, start = starts[blockIdx.z], len = starts[blockIdx.z + 1] - start;
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= len) return;
    const size_t width = 3 * (size_t)heads * hd, out_width = (size_t)heads * hd;
    const size_t i = start + q;
    const float* qi = qkv + i * width + (size_t)h * hd;
    const float* doi = d_out + i * out_width + (size_t)h * hd;
    float row_max = neg_infinity();
    for (int j = start; j < start + len; ++j)
        row_max = fmaxf(row_max, scale * head_dot(qi, qkv + j * width + out_width + (size_t)h * hd, hd));
    float denominator = 0.0f, weighted = 0.0f;
    for (int j = start; j < start + len; ++j) {
        const float* row = qkv + j * width;
        const float e = expf(scale * head_dot(qi, row + out_width + (size_t)h * hd, hd) - row_max);
        denominator += e;
        weighted += e * head_dot(doi, row + 2 * out_width + (size_t)h * hd, hd);
    }
    float* s = stats + (i * heads + h) * 3;
    s[0] = row_max;
    s[1] = 1.0f / denominator;
    s[2] = weighted / denominator;
}

// Grid: (blocks of (token, channel) pairs of a sequence, heads, sequences).
extern "C" __global__ void attention_backward_v1(const float* __restrict__ qkv, const int* __restrict__ starts,
                                                 const float* __restrict__ d_out, const float* __restrict__ stats,
                                                 float* __restrict__ d_qkv, int heads, int hd, float scale) {
    const int h = blockIdx.y, start = starts[blockIdx.z], len = starts[blockIdx.z + 1] - start;
    const long long pair = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (pair >= (long long)len * hd) return;
    const size_t t = start + pair / hd;
    const int e = (int)(pair % hd);
    const size_t width = 3 * (size_t)heads * hd, out_width = (size_t)heads * hd;
    const size_t q_col = (size_t)h * hd, k_col = out_width + q_col, v_col = 2 * out_width + q_col;
    const float* t_row = qkv + t * width;
    const float* dot = d_out + t * out_width + q_col;
    const float* ts = stats + (t * heads + h) * 3;
    float dq = 0.0f, dk = 0.0f, dv = 0.0f;
    for (int j = start; j < start + len; ++j) {
        const float* j_row = qkv + (size_t)j * width;
        const float* doj = d_out + (size_t)j * out_width + q_col;
        const float* js = stats + ((size_t)j * heads + h) * 3;
        // t as the query of key j
        const float p_tj = expf(scale * head_dot(t_row + q_col, j_row + k_col, hd) - ts[0]) * ts[1];
        dq += p_tj * (head_dot(dot, j_row + v_col, hd) - ts[2]) * j_row[k_col + e];
        // t as the key of query j
        const float p_jt = expf(scale * head_dot(j_row + q_col, t_row + k_col, hd) - js[0]) * js[1];
        dv += p_jt * doj[e];
        dk += p_jt * (head_dot(doj, t_row + v_col, hd) - js[2]) * j_row[q_col + e];
    }
    d_qkv[t * width + q_col + e] = scale * dq;
    d_qkv[t * width + k_col + e] = scale * dk;
    d_qkv[t * width + v_col + e] = dv;
}

extern "C" __global__ void scatter_rows_v1(const float* __restrict__ delta, const int* __restrict__ row_starts,
                                           const int* __restrict__ order, float* __restrict__ table, int rows,
                                           int d, int accumulate) {
    const long long len = (long long)rows * d;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / d), c = (int)(i % d);
        float sum = 0.0f;
        for (int k = row_starts[r]; k < row_starts[r + 1]; ++k) sum += delta[(size_t)order[k] * d + c];
        table[i] = accumulate ? table[i] + sum : sum;
    }
}

extern "C" __global__ void sequence_sums_v1(const float* __restrict__ values, const float* __restrict__ weights,
                                            const int* __restrict__ starts, float* __restrict__ out,
                                            int sequences, int d, int weighted) {
    const long long len = (long long)sequences * d;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        const int s = (int)(i / d), c = (int)(i % d);
        float sum = 0.0f;
        for (int t = starts[s]; t < starts[s + 1]; ++t) {
            const float v = values[(size_t)t * d + c];
            sum += weighted ? v * weights[(size_t)t * d + c] : v;
        }
        out[i] = sum;
    }
}
