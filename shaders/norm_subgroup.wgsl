// The subgroup reduction of norm.wgsl's kernels (variants 4–6): its subgroup build puts this
// file in place of the shared-memory tree between its `subgroup build` markers. A separate build
// because a module that uses subgroup built-ins cannot be created on a device without the
// feature.
//
// Each subgroup sums its values with subgroupAdd and its first lane leaves the sum in shared
// memory; after one barrier each subgroup adds those sums with a second subgroupAdd (lane l takes
// sums l, l + size, …), so every invocation gets the row's total. Two barriers per reduction
// instead of the tree's ten, and no subgroup size is assumed (8 on lavapipe, 32 or 64 on GPUs):
// `subgroup_id`, `num_subgroups` and `subgroup_size` are read, never derived. Subgroups of one
// size add in the same order and get the same bits; a device mixing sizes in one workgroup could
// differ in the last bit between them, far below the f32 tolerance.

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
