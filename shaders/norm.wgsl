// Row-wise normalisations in place, f32 statistics; every row is reduced by one workgroup
// through a shared-memory tree (the fallback where the adapter has no subgroups).
//
// Variants:
//   1. layer_norm   — mean, then the variance of the centred values (two passes, so rows with a
//                     large offset keep their precision), then the affine map.
//   2. l2_normalize — x / max(‖x‖₂, 1e-12).
//   3. rms_norm     — x / √(mean(x²) + eps) · gamma.
// norm_subgroup.wgsl holds the same three with subgroup reductions (variants 4–6).

struct Params {
    rows: u32,
    width: u32,
    eps: f32, // layer_norm and rms_norm
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>; // layer_norm and rms_norm
@group(0) @binding(3) var<storage, read> beta: array<f32>;  // layer_norm only

const WORKGROUP: u32 = 256u;

var<workgroup> partial: array<f32, WORKGROUP>;

// Sum of `v` over the workgroup (tree reduction); every invocation gets the total.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // `partial` is reused by the next reduction.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * groups.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    let n = f32(p.width);
    var sum = 0.0;
    for (var c = lid; c < p.width; c += WORKGROUP) {
        sum += x[base + c];
    }
    let mean = workgroup_sum(lid, sum) / n;
    var squares = 0.0;
    for (var c = lid; c < p.width; c += WORKGROUP) {
        let d = x[base + c] - mean;
        squares += d * d;
    }
    let inv = 1.0 / sqrt(workgroup_sum(lid, squares) / n + p.eps);
    for (var c = lid; c < p.width; c += WORKGROUP) {
        x[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    }
}

@compute @workgroup_size(256)
fn l2_normalize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * groups.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    var squares = 0.0;
    for (var c = lid; c < p.width; c += WORKGROUP) {
        squares += x[base + c] * x[base + c];
    }
    let norm = max(sqrt(workgroup_sum(lid, squares)), 1e-12);
    for (var c = lid; c < p.width; c += WORKGROUP) {
        x[base + c] /= norm;
    }
}

@compute @workgroup_size(256)
fn rms_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * groups.x + wid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    var squares = 0.0;
    for (var c = lid; c < p.width; c += WORKGROUP) {
        squares += x[base + c] * x[base + c];
    }
    let inv = 1.0 / sqrt(workgroup_sum(lid, squares) / f32(p.width) + p.eps);
    for (var c = lid; c < p.width; c += WORKGROUP) {
        x[base + c] = x[base + c] * inv * gamma[c];
    }
}
