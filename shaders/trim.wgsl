// Trim family: the sort and merge behind the trimmed-CDF search (α̂, KS, trimmed W2).
//
// Samples arrive as u32 keys in an order-preserving encoding of their f32 values
// (instruments::trim::order_bits), one row per sample, each row padded to a power of two with
// 0xFFFFFFFF, which lies above the key of every finite value. The host then scans each sorted row
// in f64 (the α̂ solve and the W2 selection need f64, which WGSL lacks).
//
// Variants (entry points):
//   1. bitonic_local  — every compare-exchange stage of a bitonic sort whose stride fits in one
//                       workgroup's 2048-key tile, in workgroup memory: the whole sort of chunks of
//                       up to 2048 keys, or the tail of one merge step after its long strides.
//   2. bitonic_global — one compare-exchange stage with a stride of 2048 keys or more, in place in
//                       storage (one dispatch per stage; WebGPU orders dispatches that share a
//                       buffer).
//   3. ecdf_counts    — for every key of every sorted row, the number of reference keys < and ≤
//                       it, by binary search in the sorted reference: the merged ECDF counts.

struct Params {
    // Rows of the key buffer and keys per row (a power of two).
    rows: u32,
    width: u32,
    // Bitonic: length of the runs being merged (0 = the whole local sort) and the stride of the
    // stage (bitonic_local: the first of its strides).
    block: u32,
    stride: u32,
    // ecdf_counts: keys in the reference.
    reference_len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The bitonic entry points sort this buffer in place.
@group(0) @binding(1) var<storage, read_write> keys: array<u32>;
// ecdf_counts reads sorted rows and the sorted reference and writes (lt, le) per key.
@group(0) @binding(1) var<storage, read> sorted: array<u32>;
@group(0) @binding(2) var<storage, read> reference: array<u32>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;

const WORKGROUP: u32 = 256u;
// Keys per workgroup tile of bitonic_local (8 KiB of workgroup memory).
const TILE: u32 = 2048u;

var<workgroup> tile: array<u32, TILE>;

// Index of the invocation over a grid wrapped onto y past the per-dimension limit.
fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.y * groups.x * WORKGROUP + gid.x;
}

// The lower key of compare-exchange pair `t` at stride `stride` (a power of two).
fn pair_low(t: u32, stride: u32) -> u32 {
    return ((t & ~(stride - 1u)) << 1u) | (t & (stride - 1u));
}

@compute @workgroup_size(256)
fn bitonic_global(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let id = flat_index(gid, groups);
    let pairs = p.width / 2u;
    if (id >= p.rows * pairs) {
        return;
    }
    let row_start = (id / pairs) * p.width;
    let lo = pair_low(id % pairs, p.stride);
    let hi = lo + p.stride;
    // Runs of `block` keys alternate ascending and descending, so that pairs of them merge.
    let ascending = (lo & p.block) == 0u;
    let a = keys[row_start + lo];
    let b = keys[row_start + hi];
    if ((a > b) == ascending) {
        keys[row_start + lo] = b;
        keys[row_start + hi] = a;
    }
}

@compute @workgroup_size(256)
fn bitonic_local(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let size = min(p.width, TILE);
    let start = (wid.y * groups.x + wid.x) * size;
    if (start >= p.rows * p.width) {
        return;
    }
    // Position of the tile inside its row: it decides the direction of every run.
    let offset = start % p.width;
    for (var i = lid; i < size; i += WORKGROUP) {
        tile[i] = keys[start + i];
    }
    workgroupBarrier();

    let whole_sort = p.block == 0u;
    var block = select(p.block, 2u, whole_sort);
    let last_block = select(p.block, size, whole_sort);
    loop {
        var stride = select(p.stride, block / 2u, whole_sort);
        loop {
            for (var t = lid; t < size / 2u; t += WORKGROUP) {
                let lo = pair_low(t, stride);
                let hi = lo + stride;
                let ascending = ((offset + lo) & block) == 0u;
                let a = tile[lo];
                let b = tile[hi];
                if ((a > b) == ascending) {
                    tile[lo] = b;
                    tile[hi] = a;
                }
            }
            workgroupBarrier();
            if (stride == 1u) {
                break;
            }
            stride = stride / 2u;
        }
        if (block >= last_block) {
            break;
        }
        block = block * 2u;
    }

    for (var i = lid; i < size; i += WORKGROUP) {
        keys[start + i] = tile[i];
    }
}

@compute @workgroup_size(256)
fn ecdf_counts(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let id = flat_index(gid, groups);
    if (id >= p.rows * p.width) {
        return;
    }
    let v = sorted[id];
    // First reference key >= v, then first key > v, searching on from the first.
    var lo = 0u;
    var hi = p.reference_len;
    while (lo < hi) {
        let mid = lo + (hi - lo) / 2u;
        if (reference[mid] < v) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    let below = lo;
    hi = p.reference_len;
    while (lo < hi) {
        let mid = lo + (hi - lo) / 2u;
        if (reference[mid] <= v) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    counts[2u * id] = below;
    counts[2u * id + 1u] = lo;
}
