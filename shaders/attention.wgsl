// Softmax attention of packed variable-length sequences over a fused QKV tensor
// [tokens, (heads + 2·kv_heads)·head_dim]; out: [tokens, heads·head_dim]. Masks follow
// `AttentionSpec::allows`: causal (key ≤ query) and sliding window (|query − key| < window);
// grouped-query heads share key/value head h / (heads / kv_heads).
//
// Variants:
//   1. attention_online — one workgroup per (query block of 64, head, sequence), one thread per
//      query. Keys and values stream through workgroup memory 16 rows at a time as vec4s; each
//      thread keeps a running max, denominator and output row (online softmax), so scores are
//      never stored. Key blocks no query of the block can see are skipped.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,   // at most MAX_HEAD_DIM
    causal: u32,
    has_window: u32,
    window: u32,     // clamped by the host to the longest sequence
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> starts: array<u32>; // sequences + 1 row offsets
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const BLOCK_Q: u32 = 64u;
const BLOCK_K: u32 = 16u;
const MAX_HEAD_DIM: u32 = 128u;
// Head rows live in vec4s, zero-padded to a multiple of CHUNK vec4s (16 channels); every channel
// loop takes one chunk per iteration. Few iterations matter beyond speed: llvmpipe stops each
// invocation after 65 535 loop iterations in all, which the host checks against
// `attention_loop_iterations` before dispatching there.
const CHUNK: u32 = 4u;
const MAX_HEAD_VECS: u32 = 32u; // MAX_HEAD_DIM / 4
// Below any score; WGSL has no infinity literal.
const MASKED: f32 = -3.0e38;

var<workgroup> k_tile: array<vec4<f32>, 512>; // BLOCK_K * MAX_HEAD_VECS
var<workgroup> v_tile: array<vec4<f32>, 512>;
var<workgroup> seq_bounds: vec2<u32>;

fn allows(i: u32, j: u32) -> bool {
    if p.causal != 0u && j > i {
        return false;
    }
    if p.has_window != 0u {
        let distance = select(j - i, i - j, i >= j);
        return distance < p.window;
    }
    return true;
}

// Channels 4s..4s+3 of the head row starting at `base`, zero past head_dim.
fn head_vec(base: u32, s: u32) -> vec4<f32> {
    let c = 4u * s;
    let last = p.head_dim - 1u;
    return vec4<f32>(
        select(0.0, qkv[base + min(c, last)], c < p.head_dim),
        select(0.0, qkv[base + min(c + 1u, last)], c + 1u < p.head_dim),
        select(0.0, qkv[base + min(c + 2u, last)], c + 2u < p.head_dim),
        select(0.0, qkv[base + min(c + 3u, last)], c + 3u < p.head_dim),
    );
}

@compute @workgroup_size(64)
fn attention_online(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wid.y;
    let q0 = wid.x * BLOCK_Q;
    if lid == 0u {
        seq_bounds = vec2<u32>(starts[wid.z], starts[wid.z + 1u]);
    }
    // Uniform across the workgroup, so the key loop below may contain barriers.
    let bounds = workgroupUniformLoad(&seq_bounds);
    let start = bounds.x;
    let len = bounds.y - bounds.x;
    if q0 >= len {
        return;
    }

    let hd = p.head_dim;
    // vec4s per padded head row, a whole number of chunks.
    let hv = CHUNK * ((hd + 4u * CHUNK - 1u) / (4u * CHUNK));
    let width = (p.heads + 2u * p.kv_heads) * hd;
    let kv = h / (p.heads / p.kv_heads);
    let k_col = (p.heads + kv) * hd;
    let v_col = (p.heads + p.kv_heads + kv) * hd;
    let qi = q0 + lid;
    let has_query = qi < len;

    var q: array<vec4<f32>, MAX_HEAD_VECS>;
    var o: array<vec4<f32>, MAX_HEAD_VECS>;
    if has_query {
        for (var s = 0u; s < hv; s++) {
            q[s] = head_vec((start + qi) * width + h * hd, s);
        }
    }

    // Keys any query of this block may see.
    let q_last = min(q0 + BLOCK_Q, len) - 1u;
    var k_begin = 0u;
    var k_end = len;
    if p.causal != 0u {
        k_end = q_last + 1u;
    }
    if p.has_window != 0u {
        if q0 + 1u > p.window {
            k_begin = q0 + 1u - p.window;
        }
        k_end = min(k_end, q_last + p.window);
    }

    var running_max = MASKED;
    var denominator = 0.0;
    for (var kb = k_begin; kb < k_end; kb += BLOCK_K) {
        let keys = min(BLOCK_K, k_end - kb);
        for (var e = lid; e < keys * hv; e += BLOCK_Q) {
            let j = e / hv;
            let s = e - j * hv;
            let row = (start + kb + j) * width;
            k_tile[e] = head_vec(row + k_col, s);
            v_tile[e] = head_vec(row + v_col, s);
        }
        workgroupBarrier();
        if has_query {
            var scores: array<f32, BLOCK_K>;
            var block_max = MASKED;
            for (var j = 0u; j < keys; j++) {
                scores[j] = MASKED;
                if allows(qi, kb + j) {
                    let kj = j * hv;
                    var dot = vec4<f32>(0.0);
                    for (var s = 0u; s < hv; s += CHUNK) {
                        dot = fma(q[s], k_tile[kj + s], dot);
                        dot = fma(q[s + 1u], k_tile[kj + s + 1u], dot);
                        dot = fma(q[s + 2u], k_tile[kj + s + 2u], dot);
                        dot = fma(q[s + 3u], k_tile[kj + s + 3u], dot);
                    }
                    scores[j] = (dot.x + dot.y + dot.z + dot.w) * p.scale;
                    block_max = max(block_max, scores[j]);
                }
            }
            if block_max > MASKED {
                let new_max = max(running_max, block_max);
                let correction = exp(running_max - new_max);
                denominator *= correction;
                for (var s = 0u; s < hv; s += CHUNK) {
                    o[s] *= correction;
                    o[s + 1u] *= correction;
                    o[s + 2u] *= correction;
                    o[s + 3u] *= correction;
                }
                for (var j = 0u; j < keys; j++) {
                    if scores[j] > MASKED {
                        let weight = exp(scores[j] - new_max);
                        denominator += weight;
                        let vj = j * hv;
                        for (var s = 0u; s < hv; s += CHUNK) {
                            o[s] = fma(vec4<f32>(weight), v_tile[vj + s], o[s]);
                            o[s + 1u] = fma(vec4<f32>(weight), v_tile[vj + s + 1u], o[s + 1u]);
                            o[s + 2u] = fma(vec4<f32>(weight), v_tile[vj + s + 2u], o[s + 2u]);
                            o[s + 3u] = fma(vec4<f32>(weight), v_tile[vj + s + 3u], o[s + 3u]);
                        }
                    }
                }
                running_max = new_max;
            }
        }
        workgroupBarrier();
    }

    if has_query {
        // A query that sees no key (only with an empty window) yields zeros, as on the CPU.
        let inv = select(0.0, 1.0 / denominator, denominator > 0.0);
        let base = (start + qi) * p.heads * hd + h * hd;
        for (var c = 0u; c < hd; c++) {
            out[base + c] = o[c / 4u][c % 4u] * inv;
        }
    }
}
