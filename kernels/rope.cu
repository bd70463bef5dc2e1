// Rotary position embedding in place on the query and key heads of a packed QKV tensor
// `[tokens, (heads + 2·kv_heads)·head_dim]`, Hugging Face's `rotate_half` convention (column i of
// a head pairs with column i + head_dim/2). The host supplies each token's position within its
// sequence; `table` is the model's (cos, sin) table `[positions, head_dim/2]`
// (`RopeFrequencies::table`), built once when the model loads with its angles computed in f64, so
// no angle is formed in f32 on the device and the frequencies' scaling (llama3, …) is already in
// it.
//
// Variants:
//   1. rope_v1 — one thread per rotated pair (grid-stride), consecutive threads on consecutive
//                pairs of a head, so both halves of a head are read coalesced.

extern "C" __global__ void rope_v1(float* __restrict__ qkv, const int* __restrict__ positions,
                                   const float2* __restrict__ table, int tokens, int width,
                                   int rotated_heads, int half) {
    const size_t pairs_per_token = (size_t)rotated_heads * half;
    const size_t total = (size_t)tokens * pairs_per_token;
    for (size_t id = (size_t)blockIdx.x * blockDim.x + threadIdx.x; id < total;
         id += (size_t)gridDim.x * blockDim.x) {
        const size_t token = id / pairs_per_token;
        const int pair = (int)(id % pairs_per_token), head = pair / half, i = pair % half;
        const float2 cs = table[(size_t)positions[token] * half + i];
        float* first = qkv + token * width + (size_t)head * 2 * half + i;
        const float a = first[0], b = first[half];
        first[0] = a * cs.x - b * cs.y;
        first[half] = b * cs.x + a * cs.y;
    }
}
