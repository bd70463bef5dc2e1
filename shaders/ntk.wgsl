// Tangent-kernel ops: one layer's Gram contraction and the counter-based JL projection; f32.
//
// Entry points (the contraction's variants numbered as src/backend/variants.rs numbers them):
//   2. contract_tiled — out += (D_r·D_cᵀ) ⊙ (A_r·A_cᵀ + offset), or out += D_r·D_cᵀ without
//      activations. A 64×64 output tile per workgroup of 16×16 threads, each thread a 4×4 register
//      block; both Gram tiles are formed in the same workgroup through 16-wide shared k-slabs (as
//      gemm.wgsl's linear_tiled), and the Hadamard product is taken in registers, so neither Gram
//      matrix ever reaches memory. For GPUs.
//   3. contract_direct — the same 4×4 blocks read straight from the storage buffers, without
//      shared tiles or barriers: for software adapters (see gemm.wgsl's variant 3).
//   jl_project — out (+)= x·Pᵀ, P: [k, d] with entries dist(seed, j, column_offset + c)/√k
//      generated here and never stored (must match `JlSpec::entry` and src/random.rs). A 64×64
//      tile of out per workgroup: each 16-column slab of P's tile is generated once into shared
//      memory and used by all 64 rows of x, so generation costs d·k·⌈n/64⌉ hashes, not n·d·k.
//      Tiled only: without shared memory every row of x would regenerate its P entries.
//   seq_segment_sum — the token-level sequence form's second half: a chunk of the token Gram
//      (written by contract_* into a scratch tile) summed per sample pair into out, the embedding
//      form counting only pairs of equal ids.
//   sample_gradients — the materialised sequence form: each sample's Σ_t δ_tᵀ[a_t, √offset],
//      one invocation per entry (direct; its loop runs over the sample's tokens).
//
// The host splits large operands into storage-binding-sized parts and dispatches once per pair of
// row and column ranges; `*_row` parameters are where a range starts inside the bound part.

struct ContractParams {
    rows: u32,       // output rows of this dispatch
    cols: u32,       // output columns of this dispatch
    p: u32,          // gradient factor width
    q: u32,          // activation factor width
    dr_row: u32,     // first row of the range in the bound part of D_r
    dc_row: u32,     // … of D_c
    ar_row: u32,     // … of A_r
    ac_row: u32,     // … of A_c
    out_row: u32,    // … of out
    out_col: u32,    // first output column of this dispatch
    out_stride: u32, // columns of out
    has_acts: u32,
    offset: f32,
}

struct JlParams {
    rows: u32,      // rows of x (and out) in this dispatch
    d: u32,         // columns of x
    k: u32,         // projection dimension
    x_row: u32,     // first row of the range in the bound part of x
    out_row: u32,   // … of out
    accumulate: u32,
    gaussian: u32,  // 0: Rademacher, 1: Gaussian
    sqrt_k: f32,    // √k as the host computes it in f32
    seed: vec2<u32>,          // (low, high) words of the u64 seed
    column_offset: vec2<u32>, // (low, high) words of the u64 column offset
}

const TILE: u32 = 64u;   // output rows and columns per workgroup
const TILE_K: u32 = 16u; // reduction depth per shared slab
const QUADS: u32 = 16u;  // TILE / 4

// The two shaders' bindings share slots; each entry point statically uses one set.
@group(0) @binding(0) var<uniform> cp: ContractParams;
@group(0) @binding(1) var<storage, read> dr: array<f32>;
@group(0) @binding(2) var<storage, read> dc: array<f32>;
@group(0) @binding(3) var<storage, read> ar: array<f32>; // read when has_acts
@group(0) @binding(4) var<storage, read> ac: array<f32>; // read when has_acts
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// k-major slabs of vec4s: element (kk, quad) holds rows (or columns) 4·quad .. +4 at depth kk.
var<workgroup> row_tile: array<vec4<f32>, 256>; // TILE_K * QUADS
var<workgroup> col_tile: array<vec4<f32>, 256>;

// A thread's 4×4 block: rows 4·ly .. +4, each a vec4 of columns 4·lx .. +4.
struct Block {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

/// `b` plus this thread's 4×4 share of the product of the slabs staged in `row_tile` and
/// `col_tile` (the inner loop of both tiled kernels; the caller brackets it with barriers).
fn multiply_staged_slab(acc: Block, lid: vec3<u32>) -> Block {
    var b = acc;
    for (var kk = 0u; kk < TILE_K; kk++) {
        let a = row_tile[kk * QUADS + lid.y];
        let c = col_tile[kk * QUADS + lid.x];
        b.r0 = fma(vec4<f32>(a.x), c, b.r0);
        b.r1 = fma(vec4<f32>(a.y), c, b.r1);
        b.r2 = fma(vec4<f32>(a.z), c, b.r2);
        b.r3 = fma(vec4<f32>(a.w), c, b.r3);
    }
    return b;
}

// Operand 0 is the gradient factors (width p), operand 1 the activation factors (width q).
fn row_value(operand: u32, i: u32, kk: u32) -> f32 {
    if operand == 0u {
        return dr[(cp.dr_row + i) * cp.p + kk];
    }
    return ar[(cp.ar_row + i) * cp.q + kk];
}

fn col_value(operand: u32, j: u32, kk: u32) -> f32 {
    if operand == 0u {
        return dc[(cp.dc_row + j) * cp.p + kk];
    }
    return ac[(cp.ac_row + j) * cp.q + kk];
}

// The block of the operand's Gram tile at (row0, col0), through shared slabs.
fn gram_tiled(operand: u32, width: u32, row0: u32, col0: u32, lid: vec3<u32>, tid: u32) -> Block {
    // Loading: thread `tid` copies depths 4·(tid / 64) .. +4 of tile row (and column) tid % 64.
    let load_r = tid % TILE;
    let load_k = (tid / TILE) * 4u;
    let i = row0 + load_r;
    let j = col0 + load_r;
    var b = Block();
    for (var k0 = 0u; k0 < width; k0 += TILE_K) {
        for (var e = 0u; e < 4u; e++) {
            let kk = load_k + e;
            let gk = k0 + kk;
            var rv = 0.0;
            if i < cp.rows && gk < width {
                rv = row_value(operand, i, gk);
            }
            var cv = 0.0;
            if j < cp.cols && gk < width {
                cv = col_value(operand, j, gk);
            }
            row_tile[kk * QUADS + load_r / 4u][load_r % 4u] = rv;
            col_tile[kk * QUADS + load_r / 4u][load_r % 4u] = cv;
        }
        workgroupBarrier();
        b = multiply_staged_slab(b, lid);
        workgroupBarrier();
    }
    return b;
}

// The block of the operand's Gram tile whose first row is i and first column j, read directly;
// rows and columns past the edge are clamped to the last one and dropped by `accumulate_row`.
fn gram_direct(operand: u32, width: u32, i: u32, j: u32) -> Block {
    let ri = min(vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(cp.rows - 1u));
    let cj = min(vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(cp.cols - 1u));
    var b = Block();
    for (var kk = 0u; kk < width; kk++) {
        let c = vec4<f32>(
            col_value(operand, cj.x, kk),
            col_value(operand, cj.y, kk),
            col_value(operand, cj.z, kk),
            col_value(operand, cj.w, kk),
        );
        b.r0 = fma(vec4<f32>(row_value(operand, ri.x, kk)), c, b.r0);
        b.r1 = fma(vec4<f32>(row_value(operand, ri.y, kk)), c, b.r1);
        b.r2 = fma(vec4<f32>(row_value(operand, ri.z, kk)), c, b.r2);
        b.r3 = fma(vec4<f32>(row_value(operand, ri.w, kk)), c, b.r3);
    }
    return b;
}

// out[i, j .. j + 4] += g ⊙ (a + offset), or += g without activations; edges masked.
fn accumulate_row(i: u32, j: u32, g: vec4<f32>, a: vec4<f32>) {
    if i >= cp.rows {
        return;
    }
    var v = g;
    if cp.has_acts != 0u {
        v = g * (a + cp.offset);
    }
    let base = (cp.out_row + i) * cp.out_stride + cp.out_col + j;
    for (var c = 0u; c < 4u; c++) {
        if j + c < cp.cols {
            out[base + c] += v[c];
        }
    }
}

fn accumulate_block(i: u32, j: u32, g: Block, a: Block) {
    accumulate_row(i, j, g.r0, a.r0);
    accumulate_row(i + 1u, j, g.r1, a.r1);
    accumulate_row(i + 2u, j, g.r2, a.r2);
    accumulate_row(i + 3u, j, g.r3, a.r3);
}

@compute @workgroup_size(16, 16)
fn contract_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let g = gram_tiled(0u, cp.p, row0, col0, lid, tid);
    var a = Block();
    if cp.has_acts != 0u {
        a = gram_tiled(1u, cp.q, row0, col0, lid, tid);
    }
    accumulate_block(row0 + 4u * lid.y, col0 + 4u * lid.x, g, a);
}

@compute @workgroup_size(16, 16)
fn contract_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = 4u * gid.y;
    let j = 4u * gid.x;
    let g = gram_direct(0u, cp.p, i, j);
    var a = Block();
    if cp.has_acts != 0u {
        a = gram_direct(1u, cp.q, i, j);
    }
    accumulate_block(i, j, g, a);
}

// ---- JL projection -------------------------------------------------------------------------

@group(0) @binding(0) var<uniform> jp: JlParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> projected: array<f32>;

// WGSL has no u64: a u64 is vec2<u32>(low word, high word), and the three operations
// src/random.rs's `counter_hash` needs (xor, shift right by < 32, wrapping multiply) are written
// on word pairs here once.

// High word of the 64-bit product of two u32s, from 16-bit halves (WGSL has no mulhi).
fn mul_hi32(a: u32, b: u32) -> u32 {
    let al = a & 0xFFFFu;
    let ah = a >> 16u;
    let bl = b & 0xFFFFu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let mid = (ll >> 16u) + (lh & 0xFFFFu) + (hl & 0xFFFFu);
    return ah * bh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
}

// a·b mod 2⁶⁴.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x * b.x, mul_hi32(a.x, b.x) + a.x * b.y + a.y * b.x);
}

// a >> s for 0 < s < 32.
fn shr64(a: vec2<u32>, s: u32) -> vec2<u32> {
    return vec2<u32>((a.x >> s) | (a.y << (32u - s)), a.y >> s);
}

// SplitMix64's finaliser (`mix` in src/random.rs).
fn mix64(z0: vec2<u32>) -> vec2<u32> {
    var z = mul64(z0 ^ shr64(z0, 30u), vec2<u32>(0x1CE4E5B9u, 0xBF58476Du));
    z = mul64(z ^ shr64(z, 27u), vec2<u32>(0x133111EBu, 0x94D049BBu));
    return z ^ shr64(z, 31u);
}

// a + b mod 2⁶⁴.
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let low = a.x + b.x;
    return vec2<u32>(low, a.y + b.y + select(0u, 1u, low < a.x));
}

// `counter_hash(seed, row, col)` after its first two mixes: those depend on (seed, row) only, so
// a thread that generates one row of P computes them once.
fn row_hash(row: u32) -> vec2<u32> {
    let h = mix64(jp.seed ^ vec2<u32>(0x85A308D3u, 0x243F6A88u));
    return mix64(h ^ mul64(vec2<u32>(row, 0u), vec2<u32>(0x7F4A7C15u, 0x9E3779B9u)));
}

// Entry (row, c) of P, scale included: `JlSpec::entry`.
fn jl_entry(row_h: vec2<u32>, c: u32) -> f32 {
    let col = add64(jp.column_offset, vec2<u32>(c, 0u));
    let h = mix64(row_h ^ mul64(col, vec2<u32>(0xD192ED03u, 0xD1B54A32u)));
    var value: f32;
    if jp.gaussian == 0u {
        value = select(1.0, -1.0, (h.y >> 31u) != 0u);
    } else {
        // Box–Muller on the two words, as `random::gaussian`. cos(2πv) is taken as
        // −cos(2π(v − ½)) so the argument stays in [−π, π], where Vulkan and Metal bound cos's
        // error (outside it they promise nothing useful).
        let u = (f32(h.y) + 0.5) / 4294967296.0;
        let v = f32(h.x) / 4294967296.0;
        value = -sqrt(-2.0 * log(u)) * cos(6.2831853071795865 * (v - 0.5));
    }
    return value / jp.sqrt_k;
}

@compute @workgroup_size(16, 16)
fn jl_project(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row0 = wid.y * TILE; // rows of x
    let col0 = wid.x * TILE; // rows of P (projected dimensions)
    let load_r = tid % TILE;
    let load_k = (tid / TILE) * 4u;
    let i = row0 + load_r;
    let j = col0 + load_r;
    let row_h = row_hash(j);
    var b = Block();
    for (var k0 = 0u; k0 < jp.d; k0 += TILE_K) {
        for (var e = 0u; e < 4u; e++) {
            let kk = load_k + e;
            let gk = k0 + kk;
            var xv = 0.0;
            if i < jp.rows && gk < jp.d {
                xv = x[(jp.x_row + i) * jp.d + gk];
            }
            var pv = 0.0;
            if j < jp.k && gk < jp.d {
                pv = jl_entry(row_h, gk);
            }
            row_tile[kk * QUADS + load_r / 4u][load_r % 4u] = xv;
            col_tile[kk * QUADS + load_r / 4u][load_r % 4u] = pv;
        }
        workgroupBarrier();
        b = multiply_staged_slab(b, lid);
        workgroupBarrier();
    }
    let ri = row0 + 4u * lid.y;
    let cj = col0 + 4u * lid.x;
    store_projected(ri, cj, b.r0);
    store_projected(ri + 1u, cj, b.r1);
    store_projected(ri + 2u, cj, b.r2);
    store_projected(ri + 3u, cj, b.r3);
}

fn store_projected(i: u32, j: u32, v: vec4<f32>) {
    if i >= jp.rows {
        return;
    }
    let base = (jp.out_row + i) * jp.k + j;
    for (var c = 0u; c < 4u; c++) {
        if j + c < jp.k {
            if jp.accumulate != 0u {
                projected[base + c] += v[c];
            } else {
                projected[base + c] = v[c];
            }
        }
    }
}

// ---- sequence forms ---------------------------------------------------------------------------
//
// The token-level form runs contract_* on one chunk of row tokens × column tokens into a scratch
// Gram tile (the Hadamard product already taken), then seq_segment_sum adds each sample pair's
// share of the tile to out. Every tile entry belongs to exactly one pair, so the pair's workgroup
// also clears the entries it reads: the scratch is zero again for the next chunk.

struct SegmentParams {
    first_r: u32,   // first row sample touching the chunk
    first_c: u32,   // first column sample touching the chunk (index into the column layout)
    r0: u32,        // first row token of the chunk
    c0: u32,        // first column token of the chunk
    len_r: u32,     // row tokens of the chunk
    len_c: u32,     // column tokens of the chunk: the scratch tile's row stride
    out_col: u32,   // column sample of out's column 0
    out_stride: u32,
    embedding: u32, // 1: only pairs of equal token ids count
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> sp: SegmentParams;
@group(0) @binding(1) var<storage, read_write> gram: array<f32>;
@group(0) @binding(2) var<storage, read> row_starts: array<u32>;
@group(0) @binding(3) var<storage, read> col_starts: array<u32>;
@group(0) @binding(4) var<storage, read> row_ids: array<u32>; // read when embedding
@group(0) @binding(5) var<storage, read> col_ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> seq_out: array<f32>;

const SEGMENT_THREADS: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// One workgroup per sample pair (row sample first_r + y, column sample first_c + x): its threads
// stride over the pair's rectangle of the tile, then a fixed-order tree sums their shares.
@compute @workgroup_size(64)
fn seq_segment_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = sp.first_r + wid.y;
    let j = sp.first_c + wid.x;
    let t0 = max(row_starts[i], sp.r0);
    let t1 = max(min(row_starts[i + 1u], sp.r0 + sp.len_r), t0);
    let s0 = max(col_starts[j], sp.c0);
    let s1 = max(min(col_starts[j + 1u], sp.c0 + sp.len_c), s0);
    let w = s1 - s0;
    var sum = 0.0;
    for (var e = lid; e < w * (t1 - t0); e += SEGMENT_THREADS) {
        let t = t0 + e / w;
        let s = s0 + e % w;
        let k = (t - sp.r0) * sp.len_c + (s - sp.c0);
        let v = gram[k];
        gram[k] = 0.0;
        if sp.embedding == 0u || row_ids[t] == col_ids[s] {
            sum += v;
        }
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = SEGMENT_THREADS / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        seq_out[i * sp.out_stride + (j - sp.out_col)] += partial[0];
    }
}

// ntk_sample_gradients: out[i, o·(q + 1) + k] = Σ_{t ∈ i} δ[t, o]·[a_t, √offset][k], one
// invocation per entry of a dispatch's samples, the grid flattened as `y · groups_x + x`.

struct GradientParams {
    p: u32,
    q: u32,
    first: u32,    // first sample of this dispatch (the first row of the bound part of out)
    samples: u32,  // samples of this dispatch
    groups_x: u32,
    bias_input: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> gp: GradientParams;
@group(0) @binding(1) var<storage, read> token_delta: array<f32>;
@group(0) @binding(2) var<storage, read> token_acts: array<f32>;
@group(0) @binding(3) var<storage, read> token_starts: array<u32>;
@group(0) @binding(4) var<storage, read_write> gradients: array<f32>;

@compute @workgroup_size(64)
fn sample_gradients(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = (wid.y * gp.groups_x + wid.x) * 64u + lid;
    let width = gp.p * (gp.q + 1u);
    if g >= gp.samples * width {
        return;
    }
    let i = gp.first + g / width;
    let e = g % width;
    let o = e / (gp.q + 1u);
    let k = e % (gp.q + 1u);
    var sum = 0.0;
    for (var t = token_starts[i]; t < token_starts[i + 1u]; t++) {
        var a = gp.bias_input;
        if k < gp.q {
            a = token_acts[t * gp.q + k];
        }
        sum = fma(token_delta[t * gp.p + o], a, sum);
    }
    gradients[g] = sum;
}
