// Row-wise normalisations, f32 statistics; every row is reduced by one workgroup. layer_norm and
// l2_normalize work in place on `x`; rms_norm reads `source` and writes `x`, so a decoder keeps
// its residual stream without copying it first.
//
// Variants:
//   1. layer_norm   — mean, then the variance of the centred values (two passes, so rows with a
//                     large offset keep their precision), then the affine map.
//   2. l2_normalize — x / max(‖x‖₂, 1e-12).
//   3. rms_norm     — source / √(mean(source²) + eps) · gamma.
//   4–6. the same three in the subgroup build: norm_subgroup.wgsl's reduction replaces the
//        shared-memory tree between the `subgroup build` markers below (src/backend/wgpu/
//        shader_builds.rs), where the adapter offers wgpu's SUBGROUP feature.

struct Params {
    rows: u32,
    width: u32,
    eps: f32, // layer_norm and rms_norm
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>; // layer_norm and rms_norm
@group(0) @binding(3) var<storage, read> beta: array<f32>;  // layer_norm only
// rms_norm only: the rows it normalises into `x` (an entry point binds one of beta and source).
@group(0) @binding(3) var<storage, read> source: array<f32>;

// subgroup build begin: the workgroup size, the invocation's built-ins, and `workgroup_sum`.
const WORKGROUP: u32 = 256u;

struct Invocation {
    @builtin(local_invocation_index) index: u32,
}

var<workgroup> partial: array<f32, WORKGROUP>;

// Sum of `v` over the workgroup (tree reduction in shared memory); every invocation gets the
// total.
fn workgroup_sum(t: Invocation, v: f32) -> f32 {
    partial[t.index] = v;
    workgroupBarrier();
    for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
        if t.index < stride {
            partial[t.index] += partial[t.index + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // `partial` is reused by the next reduction.
    workgroupBarrier();
    return total;
}
// subgroup build end

@compute @workgroup_size(256)
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    t: Invocation,
) {
    let row = wid.y * groups.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    let n = f32(p.width);
    var sum = 0.0;
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        sum += x[base + c];
    }
    let mean = workgroup_sum(t, sum) / n;
    var squares = 0.0;
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        let d = x[base + c] - mean;
        squares += d * d;
    }
    let inv = 1.0 / sqrt(workgroup_sum(t, squares) / n + p.eps);
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        x[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    }
}

@compute @workgroup_size(256)
fn l2_normalize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    t: Invocation,
) {
    let row = wid.y * groups.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    var squares = 0.0;
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        squares += x[base + c] * x[base + c];
    }
    let norm = max(sqrt(workgroup_sum(t, squares)), 1e-12);
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        x[base + c] /= norm;
    }
}

@compute @workgroup_size(256)
fn rms_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    t: Invocation,
) {
    let row = wid.y * groups.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    var squares = 0.0;
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        squares += source[base + c] * source[base + c];
    }
    let inv = 1.0 / sqrt(workgroup_sum(t, squares) / f32(p.width) + p.eps);
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        x[base + c] = source[base + c] * inv * gamma[c];
    }
}
