// Rotary position embedding in place on the query and key heads of a packed QKV tensor
// `[tokens, (heads + 2·kv_heads)·head_dim]` (Hugging Face's `rotate_half` convention: column i of
// a head pairs with column i + head_dim/2). The host supplies each token's position within its
// sequence; `table` is the model's (cos, sin) table `[positions, head_dim/2]`
// (`RopeFrequencies::table`), built once when the model loads with its angles computed in f64, so
// no angle is formed in f32 here and the frequencies' scaling (llama3, …) is already in it.
//
// Variants:
//   1. rope — one invocation per rotated pair, consecutive invocations on consecutive pairs of a
//             head (both halves of the head are read contiguously).

struct Params {
    tokens: u32,
    width: u32,
    rotated_heads: u32, // heads + kv_heads
    half: u32,          // head_dim / 2
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>; // [position, pair] → (cos, sin)

const WORKGROUP: u32 = 256u;

@compute @workgroup_size(256)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = (wid.y * groups.x + wid.x) * WORKGROUP + lid;
    let pairs_per_token = p.rotated_heads * p.half;
    if id >= p.tokens * pairs_per_token {
        return;
    }
    let token = id / pairs_per_token;
    let pair = id % pairs_per_token;
    let head = pair / p.half;
    let i = pair % p.half;
    let cs = table[positions[token] * p.half + i];
    let first = token * p.width + head * 2u * p.half + i;
    let a = qkv[first];
    let b = qkv[first + p.half];
    qkv[first] = a * cs.x - b * cs.y;
    qkv[first + p.half] = b * cs.x + a * cs.y;
}
