// Softmax attention of packed variable-length sequences over a fused QKV tensor
// [tokens, (heads + 2·kv_heads)·head_dim]; out: [tokens, heads·head_dim]. Masks follow
// `AttentionSpec::allows`: causal (key ≤ query) and sliding window (|query − key| < window);
// grouped-query heads share key/value head h / (heads / kv_heads).
//
// Variants:
//   1. attention_online — one workgroup per (query block of 64, head, sequence), one thread per
//      query. Keys and values stream through workgroup memory 16 rows at a time; each thread
//      keeps a running max, denominator and output row (online softmax), so scores are never
//      stored. Key blocks no query of the block can see are skipped.

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
// Below any score; WGSL has no infinity literal.
const MASKED: f32 = -3.0e38;

var<workgroup> k_tile: array<f32, 2048>; // BLOCK_K * MAX_HEAD_DIM
var<workgroup> v_tile: array<f32, 2048>;
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
    let width = (p.heads + 2u * p.kv_heads) * hd;
    let kv = h / (p.heads / p.kv_heads);
    let k_col = (p.heads + kv) * hd;
    let v_col = (p.heads + p.kv_heads + kv) * hd;
    let qi = q0 + lid;
    let has_query = qi < len;

    var q: array<f32, MAX_HEAD_DIM>;
    var o: array<f32, MAX_HEAD_DIM>;
    if has_query {
        for (var c = 0u; c < hd; c++) {
            q[c] = qkv[(start + qi) * width + h * hd + c];
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
        for (var e = lid; e < keys * hd; e += BLOCK_Q) {
            let j = e / hd;
            let c = e - j * hd;
            let row = (start + kb + j) * width;
            k_tile[j * hd + c] = qkv[row + k_col + c];
            v_tile[j * hd + c] = qkv[row + v_col + c];
        }
        workgroupBarrier();
        if has_query {
            var scores: array<f32, BLOCK_K>;
            var block_max = MASKED;
            for (var j = 0u; j < keys; j++) {
                scores[j] = MASKED;
                if allows(qi, kb + j) {
                    var dot = 0.0;
                    for (var c = 0u; c < hd; c++) {
                        dot = fma(q[c], k_tile[j * hd + c], dot);
                    }
                    scores[j] = dot * p.scale;
                    block_max = max(block_max, scores[j]);
                }
            }
            if block_max > MASKED {
                let new_max = max(running_max, block_max);
                let correction = exp(running_max - new_max);
                denominator *= correction;
                for (var c = 0u; c < hd; c++) {
                    o[c] *= correction;
                }
                for (var j = 0u; j < keys; j++) {
                    if scores[j] > MASKED {
                        let weight = exp(scores[j] - new_max);
                        denominator += weight;
                        for (var c = 0u; c < hd; c++) {
                            o[c] = fma(weight, v_tile[j * hd + c], o[c]);
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
            out[base + c] = o[c] * inv;
        }
    }
}
