// GEMM variant 12 (subgroup) and, in the f16 build, 13 (subgroup-f16): gemm.wgsl's subgroup
// build puts this kernel between its `subgroup build` markers, so it shares that file's
// `Params`, bindings, activations and epilogue (`store_output`). A separate build because a
// module that uses subgroup built-ins cannot be created on a device without wgpu's SUBGROUP
// feature.
//
// For software adapters (lavapipe). llvmpipe runs 8 invocations as the lanes of one SIMD
// register, and every storage load whose address it cannot prove uniform costs a scalar load
// per lane, each inserted through the stack (about 25 cycles a lane): the loads, not the FMAs,
// bound the direct kernel (16 FMAs per 8 such loads). Here all invocations of a workgroup share
// their 16 output rows, so one lane's load serves every lane: lane l loads x[row, k0 + l] for
// its rows and `subgroupBroadcast` hands lane t's value to all lanes for step k0 + t; each lane
// loads only the weights of its own 2 output columns. 256 FMAs per 32 loads, 3–4× the direct
// kernel's speed on lavapipe (the note in gemm.wgsl's header).
//
// Workgroup: 64 invocations; output rows 16·wid.y .. +16, columns 128·wid.x + lid and + 64.
// Needs subgroups of at least 8 invocations (the host checks the adapter's minimum); larger
// subgroups load lanes 8.. unused. Rows, columns and k steps past the edge read a clamped
// in-bounds element and are zeroed (k) or dropped at the store (rows, columns), so any n, k, m
// works.

const SUBGROUP_ROWS: u32 = 16u;    // output rows per workgroup, shared by all its invocations
const SUBGROUP_THREADS: u32 = 64u; // invocations per workgroup, one output column each per half
const SUBGROUP_STEP: u32 = 8u;     // k per broadcast round: lanes 0..7 load one value each

// Rows 4q..4q+3 of the workgroup (acc_q*) for column j (acc_*0) and column j + 64 (acc_*1).
var<private> acc00: vec4<f32>;
var<private> acc01: vec4<f32>;
var<private> acc10: vec4<f32>;
var<private> acc11: vec4<f32>;
var<private> acc20: vec4<f32>;
var<private> acc21: vec4<f32>;
var<private> acc30: vec4<f32>;
var<private> acc31: vec4<f32>;
// Offsets of the invocation's two weight rows (clamped to the last).
var<private> w_row0: u32;
var<private> w_row1: u32;

// x at column `kk` of rows `first`..`first + 3` (clamped), zero when kk is past k.
fn x_quad(first: u32, kk: u32, inside: bool) -> vec4<f32> {
    let r = row_offsets(first, p.n) + vec4<u32>(kk);
    return select(vec4<f32>(), vec4<f32>(x[r.x], x[r.y], x[r.z], x[r.w]), inside);
}

// One k step: the broadcast x values of the 16 rows times this invocation's two weights.
fn subgroup_step(b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>, kt: u32) {
    let inside = kt < p.k;
    let kk = min(kt, p.k - 1u);
    let w0 = vec4<f32>(select(0.0, f32(w[w_row0 + kk]), inside));
    let w1 = vec4<f32>(select(0.0, f32(w[w_row1 + kk]), inside));
    acc00 = fma(b0, w0, acc00);
    acc01 = fma(b0, w1, acc01);
    acc10 = fma(b1, w0, acc10);
    acc11 = fma(b1, w1, acc11);
    acc20 = fma(b2, w0, acc20);
    acc21 = fma(b2, w1, acc21);
    acc30 = fma(b3, w0, acc30);
    acc31 = fma(b3, w1, acc31);
}

// The epilogue for rows `i`..`i + 3` of column `j`.
fn store_column(i: u32, j: u32, acc: vec4<f32>) {
    if j >= p.m {
        return;
    }
    for (var r = 0u; r < 4u; r++) {
        if i + r < p.n {
            store_output(i + r, j, acc[r]);
        }
    }
}

@compute @workgroup_size(64)
fn linear_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let i0 = wid.y * SUBGROUP_ROWS;
    let j0 = wid.x * 2u * SUBGROUP_THREADS + lid;
    let j1 = j0 + SUBGROUP_THREADS;
    w_row0 = min(j0, p.m - 1u) * p.k;
    w_row1 = min(j1, p.m - 1u) * p.k;
    // Every invocation runs every step (the broadcasts need the whole subgroup).
    for (var k0 = 0u; k0 < p.k; k0 += SUBGROUP_STEP) {
        let own = k0 + lane;
        let inside = own < p.k;
        let kk = min(own, p.k - 1u);
        let x0 = x_quad(i0, kk, inside);
        let x1 = x_quad(i0 + 4u, kk, inside);
        let x2 = x_quad(i0 + 8u, kk, inside);
        let x3 = x_quad(i0 + 12u, kk, inside);
        // subgroupBroadcast takes a constant lane, hence one line per step.
        subgroup_step(subgroupBroadcast(x0, 0u), subgroupBroadcast(x1, 0u),
            subgroupBroadcast(x2, 0u), subgroupBroadcast(x3, 0u), k0);
        subgroup_step(subgroupBroadcast(x0, 1u), subgroupBroadcast(x1, 1u),
            subgroupBroadcast(x2, 1u), subgroupBroadcast(x3, 1u), k0 + 1u);
        subgroup_step(subgroupBroadcast(x0, 2u), subgroupBroadcast(x1, 2u),
            subgroupBroadcast(x2, 2u), subgroupBroadcast(x3, 2u), k0 + 2u);
        subgroup_step(subgroupBroadcast(x0, 3u), subgroupBroadcast(x1, 3u),
            subgroupBroadcast(x2, 3u), subgroupBroadcast(x3, 3u), k0 + 3u);
        subgroup_step(subgroupBroadcast(x0, 4u), subgroupBroadcast(x1, 4u),
            subgroupBroadcast(x2, 4u), subgroupBroadcast(x3, 4u), k0 + 4u);
        subgroup_step(subgroupBroadcast(x0, 5u), subgroupBroadcast(x1, 5u),
            subgroupBroadcast(x2, 5u), subgroupBroadcast(x3, 5u), k0 + 5u);
        subgroup_step(subgroupBroadcast(x0, 6u), subgroupBroadcast(x1, 6u),
            subgroupBroadcast(x2, 6u), subgroupBroadcast(x3, 6u), k0 + 6u);
        subgroup_step(subgroupBroadcast(x0, 7u), subgroupBroadcast(x1, 7u),
            subgroupBroadcast(x2, 7u), subgroupBroadcast(x3, 7u), k0 + 7u);
    }
    store_column(i0, j0, acc00);
    store_column(i0 + 4u, j0, acc10);
    store_column(i0 + 8u, j0, acc20);
    store_column(i0 + 12u, j0, acc30);
    store_column(i0, j1, acc01);
    store_column(i0 + 4u, j1, acc11);
    store_column(i0 + 8u, j1, acc21);
    store_column(i0 + 12u, j1, acc31);
}
