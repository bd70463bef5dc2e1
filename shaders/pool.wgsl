// Pooling of packed sequences: one output row per sequence (sentence-transformers' modes).
//
// Variants:
//   1. pool — one thread per (sequence, column), looping over the sequence's rows; the mode is a
//      uniform. An empty sequence gives zeros.

struct Params {
    sequences: u32,
    width: u32,
    mode: u32, // one of POOL_*
}

// `Pooling::code` (src/backend/params.rs; a unit test checks each constant).
const POOL_CLS: u32 = 0u;
const POOL_MEAN: u32 = 1u;
const POOL_MAX: u32 = 2u;
const POOL_LAST: u32 = 3u;
const POOL_MEAN_SQRT_LEN: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> hidden: array<f32>;
@group(0) @binding(2) var<storage, read> starts: array<u32>; // sequences + 1 row offsets
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WORKGROUP: u32 = 256u;

@compute @workgroup_size(256)
fn pool(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = gid.y * groups.x * WORKGROUP + gid.x;
    if i >= p.sequences * p.width {
        return;
    }
    let s = i / p.width;
    let c = i - s * p.width;
    let start = starts[s];
    let end = starts[s + 1u];
    if end == start {
        out[i] = 0.0;
        return;
    }
    switch p.mode {
        case POOL_CLS: {
            out[i] = hidden[start * p.width + c];
        }
        case POOL_LAST: {
            out[i] = hidden[(end - 1u) * p.width + c];
        }
        case POOL_MAX: {
            var m = hidden[start * p.width + c];
            for (var t = start + 1u; t < end; t++) {
                m = max(m, hidden[t * p.width + c]);
            }
            out[i] = m;
        }
        default: {
            var sum = 0.0;
            for (var t = start; t < end; t++) {
                sum += hidden[t * p.width + c];
            }
            let n = f32(end - start);
            out[i] = sum / select(n, sqrt(n), p.mode == POOL_MEAN_SQRT_LEN);
        }
    }
}
