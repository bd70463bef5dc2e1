// Per-group moments of the rows of x: [n, d] (PCA's covariance, LDA's class scatters); f32.
//
// Work comes as items, each a chunk of one group's rows (`Item`), so many groups of any sizes run
// in one dispatch and every partial result sums a bounded number of rows in f32; the host adds
// the items' partials in f64 (no portable f64 in WGSL).
//
// Entry points:
//   1. group_sums — one thread per (item, column): the column's sum over the item's rows, into
//      partial[item·d + column]. The host turns them into means.
//   2. scatter_tiled — the centred Gram Σ (x − μ)(x − μ)ᵀ of an item's rows, one 64×64 tile of the
//      d×d result per workgroup of 16×16 threads (4×4 register block each), rows consumed 16 at a
//      time through shared slabs of centred values, into partial[item·d² + i·d + j]. Only tiles on
//      or above the diagonal run; the host mirrors them.

struct Params {
    d: u32,
    items: u32,
    tiles: u32, // ⌈d / 64⌉
    _pad: u32,
}

// One chunk of a group's rows: rows[start .. start + count] index x; `group` indexes means.
struct Item {
    start: u32,
    count: u32,
    group: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> items: array<Item>;
@group(0) @binding(4) var<storage, read> means: array<f32>; // [groups, d]; unused by group_sums
@group(0) @binding(5) var<storage, read_write> partial: array<f32>;

const WORKGROUP: u32 = 256u;
const TILE: u32 = 64u;   // result rows and columns per workgroup
const TILE_K: u32 = 16u; // data rows per shared slab
const QUADS: u32 = 16u;  // TILE / 4

@compute @workgroup_size(256)
fn group_sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let index = (wid.y * groups.x + wid.x) * WORKGROUP + tid;
    if index >= p.items * p.d {
        return;
    }
    let item = items[index / p.d];
    let column = index % p.d;
    var sum = 0.0;
    for (var r = 0u; r < item.count; r++) {
        sum += x[rows[item.start + r] * p.d + column];
    }
    partial[index] = sum;
}

// k-major slabs of vec4s: element (kk, quad) holds columns 4·quad .. +4 of data row kk.
var<workgroup> left: array<vec4<f32>, 256>; // TILE_K * QUADS
var<workgroup> right: array<vec4<f32>, 256>;

// Centred value of column `column` of the item's data row `r`, 0 past either edge.
fn centred(item: Item, r: u32, column: u32) -> f32 {
    if r >= item.count || column >= p.d {
        return 0.0;
    }
    return x[rows[item.start + r] * p.d + column] - means[item.group * p.d + column];
}

fn store_row(base: u32, i: u32, j: u32, v: vec4<f32>) {
    if i >= p.d {
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        if j + c < p.d {
            partial[base + i * p.d + j + c] = v[c];
        }
    }
}

@compute @workgroup_size(16, 16)
fn scatter_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let flat = wid.y * groups.x + wid.x;
    let per_item = p.tiles * p.tiles;
    let tile_i = (flat % per_item) / p.tiles;
    let tile_j = flat % p.tiles;
    // Whole workgroups leave together, so the barriers below stay in uniform control flow.
    if flat >= p.items * per_item || tile_j < tile_i {
        return;
    }
    let item = items[flat / per_item];
    let i0 = tile_i * TILE;
    let j0 = tile_j * TILE;
    // Loading: thread `tid` copies data rows 4·(tid / 64) .. +4 of tile column tid % 64.
    let load_c = tid % TILE;
    let load_r = (tid / TILE) * 4u;

    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var r0 = 0u; r0 < item.count; r0 += TILE_K) {
        for (var e = 0u; e < 4u; e++) {
            let kk = load_r + e;
            left[kk * QUADS + load_c / 4u][load_c % 4u] = centred(item, r0 + kk, i0 + load_c);
            right[kk * QUADS + load_c / 4u][load_c % 4u] = centred(item, r0 + kk, j0 + load_c);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = left[kk * QUADS + lid.y];
            let b = right[kk * QUADS + lid.x];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }
    let base = (flat / per_item) * p.d * p.d;
    let i = i0 + 4u * lid.y;
    let j = j0 + 4u * lid.x;
    store_row(base, i, j, acc0);
    store_row(base, i + 1u, j, acc1);
    store_row(base, i + 2u, j, acc2);
    store_row(base, i + 3u, j, acc3);
}
