// GEMM with fused epilogue: out = act(x·wᵀ + bias) + residual, x: [n, k], w: [m, k] (PyTorch's
// Linear layout, so both operands are contiguous along k), out and residual: [n, out_stride].
// Accumulation, x, bias, residual and out are f32; the weights are f32 or, in the f16 build, f16.
// One dispatch computes output columns col0..col0 + m from the m weight rows bound as `w`: the
// whole matrix (col0 = 0, out_stride = m), or one part of a matrix larger than one storage
// binding, held in parts of whole rows and dispatched once per part (src/backend/wgpu/gemm.rs).
// Bias, residual and out are indexed by the full column col0 + j, so the epilogue applies per
// part unchanged.
//
// Variants (numbered as every backend numbers its GEMMs, src/backend/variants.rs):
//   2. linear_tiled — 64×64 output tile per workgroup of 16×16 threads, k consumed 16 at a time
//      through workgroup-shared tiles stored k-major as vec4s; each thread keeps a 4×4 register
//      block (rows 4·ly.., columns 4·lx..) as four vec4 accumulators, so the inner loop is two
//      vector loads and four vector FMAs (no private arrays, which software drivers such as
//      lavapipe keep in memory). Edges are zero-filled on load and masked on store, so any
//      n, k, m works.
//   3. linear_direct — the same 4×4 register block per thread, read straight from the storage
//      buffers without workgroup tiles or barriers. For software adapters, where workgroup memory
//      is ordinary memory and each barrier a coroutine switch: about 2× faster than variant 2 on
//      lavapipe (MiniLM's 1317×384×1536: 1.6–3.1 s against 3.7–5.5 s, loaded 2-core machine).
//   5. linear_tiled, f16 build — variant 2 on f16 weights, widened to f32 as they are loaded.
//   6. linear_direct, f16 build — variant 3 on f16 weights.
//  12. linear_subgroup (the subgroup build: gemm_subgroup.wgsl between the `subgroup build`
//      markers at the end of this file) — 16 output rows per workgroup shared by all its
//      invocations, their x values loaded once per subgroup and broadcast: for software
//      adapters with subgroups, where each lane's own load is the cost (MiniLM's FFN-up, 256
//      rows, on lavapipe: 98 ms against the direct kernel's 325 ms).
//  13. linear_subgroup, f16 + subgroup build — variant 12 on f16 weights.
// Beside them, gated_activation (the gated feed-forward's act(gate) ⊙ up) and activation_backward
// (the backward family's dy ⊙ act'(pre), here beside the activations it differentiates), at the end
// of the file.
// The f16 build (src/backend/wgpu/shader_builds.rs) is this file with `enable f16;` and `Weight`
// aliased to f16; it needs the adapter's SHADER_F16 and halves the weight bytes read.

struct Params {
    n: u32,
    k: u32,
    m: u32,          // weight rows bound: output columns of this dispatch
    has_bias: u32,
    has_residual: u32,
    activation: u32, // one of ACT_*
    col0: u32,       // output column of the bound weight's first row
    out_stride: u32, // columns of out and residual (all rows of the whole matrix)
}

// `Activation::code` (src/backend/params.rs; a unit test checks each constant).
const ACT_IDENTITY: u32 = 0u;
const ACT_GELU: u32 = 1u;
const ACT_GELU_TANH: u32 = 2u;
const ACT_QUICK_GELU: u32 = 3u;
const ACT_SILU: u32 = 4u;
const ACT_RELU: u32 = 5u;
const ACT_TANH: u32 = 6u;
const ACT_SIGMOID: u32 = 7u;

alias Weight = f32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<Weight>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;     // read when has_bias
@group(0) @binding(4) var<storage, read> residual: array<f32>; // read when has_residual
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// erfc(x) from Numerical Recipes' Chebyshev fit (fractional error < 1.2e-7 for every x). Working
// with erfc rather than 1 + erf keeps GELU's relative accuracy for negative inputs, where
// 1 + erf(x) cancels.
fn erfc(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-z * z + poly);
    return select(2.0 - r, r, x >= 0.0);
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// Must match `Activation::apply` in src/backend/params.rs.
fn activate(v: f32) -> f32 {
    switch p.activation {
        case ACT_GELU: {
            // x·Φ(x) = x·erfc(-x/√2)/2
            return 0.5 * v * erfc(-v * 0.70710678118654752);
        }
        case ACT_GELU_TANH: {
            return 0.5 * v * (1.0 + tanh(0.7978845608 * (v + 0.044715 * v * v * v)));
        }
        case ACT_QUICK_GELU: {
            return v * sigmoid(1.702 * v);
        }
        case ACT_SILU: {
            return v * sigmoid(v);
        }
        case ACT_RELU: {
            return max(v, 0.0);
        }
        case ACT_TANH: {
            return tanh(v);
        }
        case ACT_SIGMOID: {
            return sigmoid(v);
        }
        default: {
            return v;
        }
    }
}

// Must match `Activation::derivative` in src/backend/params.rs.
fn activation_derivative(v: f32) -> f32 {
    switch p.activation {
        case ACT_GELU: {
            // Φ(v) + v·φ(v)
            return 0.5 * erfc(-v * 0.70710678118654752) + v * exp(-0.5 * v * v) * 0.3989422804;
        }
        case ACT_GELU_TANH: {
            let t = tanh(0.7978845608 * (v + 0.044715 * v * v * v));
            return 0.5 * (1.0 + t)
                + 0.5 * v * (1.0 - t * t) * 0.7978845608 * (1.0 + 3.0 * 0.044715 * v * v);
        }
        case ACT_QUICK_GELU: {
            let s = sigmoid(1.702 * v);
            return s + 1.702 * v * s * (1.0 - s);
        }
        case ACT_SILU: {
            let s = sigmoid(v);
            return s + v * s * (1.0 - s);
        }
        case ACT_RELU: {
            return select(0.0, 1.0, v > 0.0);
        }
        case ACT_TANH: {
            let t = tanh(v);
            return 1.0 - t * t;
        }
        case ACT_SIGMOID: {
            let s = sigmoid(v);
            return s * (1.0 - s);
        }
        default: {
            return 1.0;
        }
    }
}

const TILE: u32 = 64u;   // output rows and columns per workgroup
const TILE_K: u32 = 16u; // k per shared tile
const QUADS: u32 = 16u;  // TILE / 4: vec4 columns of a tile row

// k-major tiles of vec4s: element (kk, q) holds rows (or columns) 4q..4q+3 at k = kk.
var<workgroup> x_tile: array<vec4<f32>, 256>; // TILE_K * QUADS
var<workgroup> w_tile: array<vec4<f32>, 256>;

// The epilogue for output row `i` (< n) and column `j` (< m) of the bound weight rows.
fn store_output(i: u32, j: u32, v: f32) {
    let col = p.col0 + j;
    var y = v;
    if p.has_bias != 0u {
        y += bias[col];
    }
    y = activate(y);
    if p.has_residual != 0u {
        y += residual[i * p.out_stride + col];
    }
    out[i * p.out_stride + col] = y;
}

// The epilogue for one output row `i` and the four columns from `j` of the bound weight rows.
fn store_row(i: u32, j: u32, acc: vec4<f32>) {
    if i >= p.n {
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        if j + c < p.m {
            store_output(i, j + c, acc[c]);
        }
    }
}

@compute @workgroup_size(16, 16)
fn linear_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    // Loading: thread `tid` copies k = 4·(tid / 64) .. +4 of tile row (and column) tid % 64.
    let load_r = tid % TILE;
    let load_k = (tid / TILE) * 4u;
    let xr = row0 + load_r;
    let wr = col0 + load_r;

    // Rows 4·ly .. +4 (one vec4 of columns 4·lx .. +4 each).
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        for (var e = 0u; e < 4u; e++) {
            let kk = load_k + e;
            let gk = k0 + kk;
            var xv = 0.0;
            if xr < p.n && gk < p.k {
                xv = x[xr * p.k + gk];
            }
            var wv = 0.0;
            if wr < p.m && gk < p.k {
                wv = f32(w[wr * p.k + gk]);
            }
            x_tile[kk * QUADS + load_r / 4u][load_r % 4u] = xv;
            w_tile[kk * QUADS + load_r / 4u][load_r % 4u] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = x_tile[kk * QUADS + lid.y];
            let b = w_tile[kk * QUADS + lid.x];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }

    let i = row0 + 4u * lid.y;
    let j = col0 + 4u * lid.x;
    store_row(i, j, acc0);
    store_row(i + 1u, j, acc1);
    store_row(i + 2u, j, acc2);
    store_row(i + 3u, j, acc3);
}

// Rows (or columns) `first`..`first + 3` clamped to `count - 1`, as offsets of rows of length k:
// edge threads read a valid row and store_row drops what they computed from it.
fn row_offsets(first: u32, count: u32) -> vec4<u32> {
    let last = count - 1u;
    return min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last)) * p.k;
}

@compute @workgroup_size(16, 16)
fn linear_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = 4u * gid.y;
    let j = 4u * gid.x;
    let xi = row_offsets(i, p.n);
    let wj = row_offsets(j, p.m);
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var kk = 0u; kk < p.k; kk++) {
        let b = vec4<f32>(
            f32(w[wj.x + kk]),
            f32(w[wj.y + kk]),
            f32(w[wj.z + kk]),
            f32(w[wj.w + kk]),
        );
        acc0 = fma(vec4<f32>(x[xi.x + kk]), b, acc0);
        acc1 = fma(vec4<f32>(x[xi.y + kk]), b, acc1);
        acc2 = fma(vec4<f32>(x[xi.z + kk]), b, acc2);
        acc3 = fma(vec4<f32>(x[xi.w + kk]), b, acc3);
    }
    store_row(i, j, acc0);
    store_row(i + 1u, j, acc1);
    store_row(i + 2u, j, acc2);
    store_row(i + 3u, j, acc3);
}

// gated_activation — out[i, j] = act(x[i, j]) · x[i, m + j] for x: [n, 2m] (gate beside up, one
// GEMM's output), out: [n, m]; `activation` picks act (SiLU: SwiGLU). One invocation per output,
// the grid spread over y for large outputs. It reads `x` and writes `out`; the other bindings
// are bound but unused.
const GATED_WORKGROUP: u32 = 256u;

@compute @workgroup_size(256)
fn gated_activation(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.y * groups.x * GATED_WORKGROUP + gid.x;
    if i >= p.n * p.m {
        return;
    }
    let row = i / p.m;
    let gate = row * 2u * p.m + (i - row * p.m);
    out[i] = activate(x[gate]) * x[gate + p.m];
}

// activation_backward — out[i] = residual[i] · act'(x[i]) for the pre-activation x and the
// gradient at the activation's output bound as `residual`, all n·m values (m = `m`); one
// invocation per value. The weight and bias bindings are bound but unused.
@compute @workgroup_size(256)
fn activation_backward(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.y * groups.x * GATED_WORKGROUP + gid.x;
    if i >= p.n * p.m {
        return;
    }
    out[i] = residual[i] * activation_derivative(x[i]);
}

// subgroup build begin: nothing in the plain builds; the subgroup build puts gemm_subgroup.wgsl
// (variants 12 and 13) here.
// subgroup build end
