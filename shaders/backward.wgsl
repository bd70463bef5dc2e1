// The backward family: the gradient kernels of a transformer classifier's backward pass, with the
// semantics of the `Backend` methods of the same names (src/backend/mod.rs) and the CPU reference
// in src/backend/cpu/backward.rs. `activation_backward` lives in gemm.wgsl, beside the epilogue
// activations it differentiates.
//
// Variants (1 for each op: the plain algorithm; numbers as in kernels/backward.cu):
//   1. layer_norm_backward — one thread per row: the centred mean and variance in two passes
//      (a row offset far from zero must not cancel), the row means of g = dy ⊙ γ and g ⊙ x̂ in a
//      third, dx and x̂ written in a fourth.
//   1. attention_backward_stats, then attention_backward — the first, one thread per (query,
//      head), stores its softmax row's maximum, 1/Σexp and c = Σ_j P_ij·(dO_i·V_j) (= dO_i·O_i);
//      the second, one workgroup per (token, head) and one thread per channel, sums over the
//      sequence the channel of dQ (the token as query), dK and dV (the token as key), recomputing
//      P and dS from the stored statistics once per key for all channels (a chunk of keys at a
//      time, through workgroup memory), so no [len, len] matrix is stored.
//   1. sequence_sums — one thread per (sequence, column): the column summed over the sequence's
//      tokens in order, each value times its weight when the op has weights (a bias's or a
//      LayerNorm γ's per-sample gradient).
//   1. scatter_rows — one thread per (table row, column): the sum of the row's ids' gradient rows
//      in token order, through a CSR index the host builds (row_starts, then the tokens sorted
//      by id), so the result is deterministic and needs no float atomics.

// ---- layer_norm_backward -------------------------------------------------------------------

struct NormParams {
    rows: u32,
    width: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> np: NormParams;
@group(0) @binding(1) var<storage, read> ln_pre: array<f32>;
@group(0) @binding(2) var<storage, read> ln_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> ln_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> ln_dx: array<f32>;
@group(0) @binding(5) var<storage, read_write> ln_normed: array<f32>;

const ROW_WORKGROUP: u32 = 64u;

@compute @workgroup_size(64)
fn layer_norm_backward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let row = gid.y * groups.x * ROW_WORKGROUP + gid.x;
    if row >= np.rows {
        return;
    }
    let d = np.width;
    let base = row * d;
    var sum = 0.0;
    for (var c = 0u; c < d; c++) {
        sum += ln_pre[base + c];
    }
    let mean = sum / f32(d);
    var sq = 0.0;
    for (var c = 0u; c < d; c++) {
        let v = ln_pre[base + c] - mean;
        sq += v * v;
    }
    let inv = 1.0 / sqrt(sq / f32(d) + np.eps);
    var g_sum = 0.0;
    var gx_sum = 0.0;
    for (var c = 0u; c < d; c++) {
        let h = (ln_pre[base + c] - mean) * inv;
        let g = ln_dy[base + c] * ln_gamma[c];
        g_sum += g;
        gx_sum += g * h;
    }
    let g_mean = g_sum / f32(d);
    let gx_mean = gx_sum / f32(d);
    for (var c = 0u; c < d; c++) {
        let h = (ln_pre[base + c] - mean) * inv;
        ln_normed[base + c] = h;
        ln_dx[base + c] = inv * (ln_dy[base + c] * ln_gamma[c] - g_mean - h * gx_mean);
    }
}

// ---- attention_backward --------------------------------------------------------------------

struct AttentionParams {
    heads: u32,
    head_dim: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> ap: AttentionParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> starts: array<u32>; // sequences + 1 row offsets
@group(0) @binding(3) var<storage, read> d_out: array<f32>;
// Per (token, head): the softmax row's maximum, 1/Σexp, and c = rowsum(P ⊙ dP).
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> d_qkv: array<f32>;

const QUERY_WORKGROUP: u32 = 64u;

// ⟨qkv[a, a_col..a_col + head_dim], qkv[b, b_col..b_col + head_dim]⟩: one head's Q, K or V
// columns (the caller passes the head's column offsets).
fn qkv_dot(a: u32, a_col: u32, b: u32, b_col: u32) -> f32 {
    let width = 3u * ap.heads * ap.head_dim;
    var dot = 0.0;
    for (var e = 0u; e < ap.head_dim; e++) {
        dot += qkv[a * width + a_col + e] * qkv[b * width + b_col + e];
    }
    return dot;
}

// ⟨dO_i, V_j⟩ of one head.
fn dout_dot_v(i: u32, j: u32, h: u32) -> f32 {
    let width = 3u * ap.heads * ap.head_dim;
    let out_width = ap.heads * ap.head_dim;
    var dot = 0.0;
    for (var e = 0u; e < ap.head_dim; e++) {
        dot += d_out[i * out_width + h * ap.head_dim + e]
            * qkv[j * width + 2u * out_width + h * ap.head_dim + e];
    }
    return dot;
}

// Grid: (query blocks of QUERY_WORKGROUP, heads, sequences).
@compute @workgroup_size(64)
fn attention_backward_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = gid.y;
    let start = starts[gid.z];
    let len = starts[gid.z + 1u] - start;
    if gid.x >= len {
        return;
    }
    let i = start + gid.x;
    let out_width = ap.heads * ap.head_dim;
    let q_col = h * ap.head_dim;
    let k_col = out_width + h * ap.head_dim;
    var row_max = -3.0e38;
    for (var j = start; j < start + len; j++) {
        row_max = max(row_max, ap.scale * qkv_dot(i, q_col, j, k_col));
    }
    var denominator = 0.0;
    var weighted = 0.0;
    for (var j = start; j < start + len; j++) {
        let e = exp(ap.scale * qkv_dot(i, q_col, j, k_col) - row_max);
        denominator += e;
        weighted += e * dout_dot_v(i, j, h);
    }
    let at = (i * ap.heads + h) * 3u;
    stats[at] = row_max;
    stats[at + 1u] = 1.0 / denominator;
    stats[at + 2u] = weighted / denominator;
}

// Per key j of the chunk a workgroup is at: (P_tj, dP_tj − c_t, P_jt, dP_jt − c_j) for its
// token t, computed once and shared by the threads of every channel.
var<workgroup> key_terms: array<vec4<f32>, QUERY_WORKGROUP>;
var<workgroup> sequence_bounds: vec2<u32>;

// Grid: (tokens of the longest sequence, heads, sequences); one workgroup per (token, head),
// its threads the head's channels (QUERY_WORKGROUP at a time). For each chunk of
// QUERY_WORKGROUP keys, thread l first computes key l's four terms (four head-wide dot products),
// then each thread adds every key of the chunk into its channel of dQ, dK and dV.
@compute @workgroup_size(64)
fn attention_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wid.y;
    if lid == 0u {
        sequence_bounds = vec2<u32>(starts[wid.z], starts[wid.z + 1u]);
    }
    // Uniform across the workgroup, so the loops below may hold barriers.
    let bounds = workgroupUniformLoad(&sequence_bounds);
    let start = bounds.x;
    let len = bounds.y - bounds.x;
    if wid.x >= len {
        return;
    }
    let t = start + wid.x;
    let hd = ap.head_dim;
    let width = 3u * ap.heads * hd;
    let out_width = ap.heads * hd;
    let q_col = h * hd;
    let k_col = out_width + h * hd;
    let v_col = 2u * out_width + h * hd;
    let t_stats = (t * ap.heads + h) * 3u;
    for (var e0 = 0u; e0 < hd; e0 += QUERY_WORKGROUP) {
        let e = e0 + lid;
        var dq = 0.0;
        var dk = 0.0;
        var dv = 0.0;
        for (var j0 = start; j0 < start + len; j0 += QUERY_WORKGROUP) {
            let j = j0 + lid;
            if j < start + len {
                // t as the query of key j: P_tj and dS_tj / P_tj; t as the key of query j: the
                // same of (j, t).
                let j_stats = (j * ap.heads + h) * 3u;
                key_terms[lid] = vec4<f32>(
                    exp(ap.scale * qkv_dot(t, q_col, j, k_col) - stats[t_stats]) * stats[t_stats + 1u],
                    dout_dot_v(t, j, h) - stats[t_stats + 2u],
                    exp(ap.scale * qkv_dot(j, q_col, t, k_col) - stats[j_stats]) * stats[j_stats + 1u],
                    dout_dot_v(j, t, h) - stats[j_stats + 2u],
                );
            }
            workgroupBarrier();
            if e < hd {
                let keys = min(QUERY_WORKGROUP, start + len - j0);
                for (var k = 0u; k < keys; k++) {
                    let terms = key_terms[k];
                    let jk = j0 + k;
                    dq += terms.x * terms.y * qkv[jk * width + k_col + e];
                    dv += terms.z * d_out[jk * out_width + h * hd + e];
                    dk += terms.z * terms.w * qkv[jk * width + q_col + e];
                }
            }
            workgroupBarrier();
        }
        if e < hd {
            d_qkv[t * width + q_col + e] = ap.scale * dq;
            d_qkv[t * width + k_col + e] = ap.scale * dk;
            d_qkv[t * width + v_col + e] = dv;
        }
    }
}

// ---- scatter_rows --------------------------------------------------------------------------

struct ScatterParams {
    rows: u32,
    width: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> sp: ScatterParams;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> row_starts: array<u32>; // rows + 1 offsets into `order`
@group(0) @binding(3) var<storage, read> order: array<u32>;      // token indices sorted by id
@group(0) @binding(4) var<storage, read_write> table: array<f32>;

const SCATTER_WORKGROUP: u32 = 256u;

@compute @workgroup_size(256)
fn scatter_rows(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.y * groups.x * SCATTER_WORKGROUP + gid.x;
    if i >= sp.rows * sp.width {
        return;
    }
    let r = i / sp.width;
    let c = i - r * sp.width;
    var sum = 0.0;
    for (var k = row_starts[r]; k < row_starts[r + 1u]; k++) {
        sum += delta[order[k] * sp.width + c];
    }
    if sp.accumulate != 0u {
        table[i] += sum;
    } else {
        table[i] = sum;
    }
}

// ---- sequence_sums -------------------------------------------------------------------------

struct SumParams {
    sequences: u32,
    width: u32,
    weighted: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> up: SumParams;
@group(0) @binding(1) var<storage, read> sum_values: array<f32>;
@group(0) @binding(2) var<storage, read> sum_weights: array<f32>; // the values again when unweighted
@group(0) @binding(3) var<storage, read> sum_starts: array<u32>;  // sequences + 1 token offsets
@group(0) @binding(4) var<storage, read_write> sum_out: array<f32>;

const SUM_WORKGROUP: u32 = 256u;

@compute @workgroup_size(256)
fn sequence_sums(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.y * groups.x * SUM_WORKGROUP + gid.x;
    if i >= up.sequences * up.width {
        return;
    }
    let s = i / up.width;
    let c = i - s * up.width;
    var sum = 0.0;
    for (var t = sum_starts[s]; t < sum_starts[s + 1u]; t++) {
        let v = sum_values[t * up.width + c];
        if up.weighted != 0u {
            sum += v * sum_weights[t * up.width + c];
        } else {
            sum += v;
        }
    }
    sum_out[i] = sum;
}
