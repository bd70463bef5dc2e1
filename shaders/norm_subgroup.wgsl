// Row-wise normalisations in place, f32 statistics, reduced with subgroup operations: the kernels
// of norm.wgsl (variants 1–3) where the adapter offers wgpu's SUBGROUP feature. A separate module
// because one that uses subgroup built-ins cannot be created on a device without the feature.
//
// Each subgroup sums its values with subgroupAdd and its first lane leaves the sum in shared
// memory; after one barrier each subgroup adds those sums with a second subgroupAdd (lane l takes
// sums l, l + size, …), so every invocation gets the row's total. Two barriers per reduction
// instead of the tree's ten, and no subgroup size is assumed (8 on lavapipe, 32 or 64 on GPUs):
// `subgroup_id`, `num_subgroups` and `subgroup_size` are read, never derived. Subgroups of one
// size add in the same order and get the same bits; a device mixing sizes in one workgroup could
// differ in the last bit between them, far below the f32 tolerance.
//
// Variants:
//   4. layer_norm_subgroup   — variant 1 (two-pass mean and variance, then the affine map).
//   5. l2_normalize_subgroup — variant 2 (x / max(‖x‖₂, 1e-12)).
//   6. rms_norm_subgroup     — variant 3 (x / √(mean(x²) + eps) · gamma).

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

// One slot per subgroup; there are never more subgroups than invocations.
var<workgroup> partial: array<f32, WORKGROUP>;

struct Invocation {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_size) size: u32,
}

// Sum of `v` over the workgroup; every invocation gets the total.
fn workgroup_sum(t: Invocation, v: f32) -> f32 {
    let own = subgroupAdd(v);
    if t.lane == 0u {
        partial[t.subgroup] = own;
    }
    workgroupBarrier();
    var mine = 0.0;
    for (var s = t.lane; s < t.subgroups; s += t.size) {
        mine += partial[s];
    }
    let total = subgroupAdd(mine);
    // `partial` is reused by the next reduction.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn layer_norm_subgroup(
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
fn l2_normalize_subgroup(
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
fn rms_norm_subgroup(
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
    let inv = 1.0 / sqrt(workgroup_sum(t, squares) / f32(p.width) + p.eps);
    for (var c = t.index; c < p.width; c += WORKGROUP) {
        x[base + c] = x[base + c] * inv * gamma[c];
    }
}
