// Embedding gather: out[i, :] = table[ids[i], :], or += when accumulating.
//
// Variants:
//   1. gather_rows — one thread per output element. A table larger than one storage binding is
//      uploaded in parts of whole rows; the host dispatches once per part, and each dispatch
//      writes only the rows whose id falls in its part, so every output row is written once.
//   2. gather_rows, f16 build — variant 1 on an f16 table (src/backend/wgpu/shader_builds.rs),
//      each value widened to f32 as it is read; halves the memory of large vocabularies.

struct Params {
    rows: u32,       // output rows (= number of ids)
    width: u32,      // row width d
    first_row: u32,  // table row held at the start of this part
    part_rows: u32,  // rows held by this part
    accumulate: u32, // 1: add to out, 0: overwrite
}

alias Weight = f32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<Weight>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WORKGROUP: u32 = 256u;

@compute @workgroup_size(256)
fn gather_rows(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    // Large outputs spread the grid over y (x is capped at 65535 workgroups).
    let i = gid.y * groups.x * WORKGROUP + gid.x;
    if i >= p.rows * p.width {
        return;
    }
    let row = i / p.width;
    let id = ids[row];
    if id < p.first_row || id >= p.first_row + p.part_rows {
        return;
    }
    let v = f32(table[(id - p.first_row) * p.width + (i - row * p.width)]);
    if p.accumulate != 0u {
        out[i] += v;
    } else {
        out[i] = v;
    }
}
