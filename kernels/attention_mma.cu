// Tensor-core flash attention (sm_80+: mma.sync bf16 and cvt.rn.bf16x2), the same contract as
// attention.cu: packed variable-length sequences in the [tokens, (heads + 2·kv_heads)·head_dim]
// f32 QKV tensor, causal mask, sliding window (window < 0: none; 0 masks every key), grouped-query
// heads (query head h reads key/value head h / (heads / kv_heads)); f32 output [tokens,
// heads·head_dim]. A family of its own so that attention.cu keeps compiling for older devices.
//
// Variants (numbered as every backend numbers its attention kernels, src/backend/variants.rs):
//   4. attention_v4_mma_bf16_hdD — one block of 4 warps per (sequence, head, 64-query tile), a
//                                  warp per 16 queries. S = Q·Kᵀ and O += P·V on
//                                  mma.sync.aligned.m16n8k16 (bf16 × bf16 → f32) over 64-key
//                                  tiles staged in shared memory; online softmax with the f32
//                                  running maximum and sum of each query row in registers.
//                                  Instantiated for D = 64 and 128.
//
// Precision: Q, K and V are rounded to bf16 (round to nearest even) as they are loaded — Q from
// global memory straight into its mma fragments, K and V while they are staged into shared memory
// — and P is rounded to bf16 before P·V. Scores, the softmax state and O accumulate in f32.
// Relative error about 1e-3, hence opt-in.
//
// Why no cp.async: it copies bytes unchanged, but the tiles are converted from f32 to bf16 on the
// way into shared memory, which needs the values in registers. Staging f32 tiles by cp.async and
// converting per fragment would double the shared memory (64 KiB a stage at D = 128) and convert
// every tile four times, once per warp.
//
// Tiles that masks hide are skipped whole: the block's key loop covers only keys some query of
// the tile may see ([key_begin, key_end): causal stops at the last query, a window starts
// window − 1 keys before the first query, rounded down to a tile edge), a warp skips the tiles
// none of its 16 queries may see, and applies the element mask only to tiles that are partly
// visible to it.
//
// mma.m16n8k16 fragments (PTX ISA, "Matrix fragments for mma.m16n8k16"); lane l, g = l / 4,
// t = l mod 4; a .b32 register holds two bf16, the lower column (or lower k) in its low half:
//   A (16×16, row-major)  a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..2t+1)  a2 = (g, 2t+8..2t+9)
//                         a3 = (g+8, 2t+8..2t+9)                                  (row, col)
//   B (16×8, "col")       b0 = (2t..2t+1, g)  b1 = (2t+8..2t+9, g)                  (k, n)
//   C (16×8, f32)         c0, c1 = (g, 2t), (g, 2t+1)   c2, c3 = (g+8, 2t), (g+8, 2t+1)
// Used here as:
//   Q·Kᵀ: A = the warp's 16 query rows × 16 head columns (Q fragments, loaded once and kept in
//         registers: D/4 registers); B = Kᵀ, i.e. K row-major [key][column] read as "col":
//         b0 = Ks[8n + g][16s + 2t..], b1 = Ks[8n + g][16s + 8 + 2t..], one 32-bit load each.
//         C: S tile n (keys 8n..8n+7) of the 64-key tile, 8 tiles = 32 f32 per lane.
//   P·V:  A = P over keys 16k..16k+15, which is exactly the C fragments of S tiles 2k and 2k+1
//         rounded pairwise to bf16: a0 = S[2k].c0c1, a1 = S[2k].c2c3, a2 = S[2k+1].c0c1,
//         a3 = S[2k+1].c2c3 — P never leaves registers. B = V [key][column], which "col" needs
//         transposed: ldmatrix.x4.trans loads four 8×8 bf16 blocks, lane l giving the row address
//         of block l / 8, row l mod 8 (keys 16k + (l mod 8) + 8·((l / 8) mod 2), columns 16c +
//         8·(l / 16)); it returns b0, b1 of output tile 2c and b0, b1 of tile 2c + 1.
//         C: O tile c (columns 8c..8c+7), D/8 tiles = D/2 f32 per lane.
// So lane l holds the softmax state of rows g and g + 8 of its warp's 16 queries: a running
// maximum of each (reduced over the 4 lanes of its quad, which hold the row's other columns) and a
// partial sum of its own columns, reduced over the quad once, at the end.
//
// Shared memory: K and V tiles of 64 rows × (D + 8) bf16: the 8 padding columns make rows 16-byte
// aligned (ldmatrix) and shift consecutive rows by 4 banks, so the B-fragment loads and ldmatrix
// rows of a warp fall in 32 distinct banks. 18 KiB at D = 64, 34 KiB at D = 128.
#include "common.cuh"
#include "attention.cuh"

#define MMA_BQ 64        // queries per block
#define MMA_WARPS 4      // warps per block, 16 queries each
#define MMA_BKV 64       // keys per shared tile
#define MMA_KV_PAD 8     // bf16 padding columns of a shared row

// Two f32 rounded to bf16 (nearest even) and packed: `low` in the low half.
__device__ __forceinline__ unsigned pack_bf16(float low, float high) {
    unsigned packed;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(high), "f"(low));
    return packed;
}

__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8×8 bf16 blocks from shared memory, transposed; `row` is this lane's row address.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const unsigned short* row) {
    const unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

__device__ __forceinline__ unsigned shared_pair(const unsigned short* p) {
    return *reinterpret_cast<const unsigned*>(p);  // two consecutive bf16, the lower column low
}

// The query tile's flash attention; see the header for the layouts.
template <int HD>
__device__ __forceinline__ void attention_mma(const float* __restrict__ qkv, const int* __restrict__ starts,
                                              float* __restrict__ out, const AttentionShape& a) {
    constexpr int ROW = HD + MMA_KV_PAD;   // shared row length, bf16
    constexpr int D_STEPS = HD / 16;       // k-steps of Q·Kᵀ
    constexpr int O_TILES = HD / 8;        // n-tiles of O
    constexpr int S_TILES = MMA_BKV / 8;   // n-tiles of S
    __shared__ __align__(16) unsigned short ks[MMA_BKV * ROW];
    __shared__ __align__(16) unsigned short vs[MMA_BKV * ROW];

    const int s = blockIdx.x, h = blockIdx.y, begin = starts[s], len = starts[s + 1] - begin;
    const int q_first = blockIdx.z * MMA_BQ;
    if (q_first >= len) return;  // whole block: no __syncthreads() is skipped by part of it
    const int width = qkv_width(a), kv = h / (a.heads / a.kv_heads);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    // This warp's queries: [warp_first, warp_last]; rows g and g + 8 of them are this lane's.
    const int warp_first = q_first + 16 * warp, warp_last = min(warp_first + 15, len - 1);
    const bool warp_active = warp_first < len;
    const int row_lo = warp_first + g, row_hi = row_lo + 8;

    // Q fragments, rounded to bf16 from global memory; rows past the sequence are zeros.
    unsigned q[D_STEPS][4];
    {
        const float* q_lo = qkv + (size_t)(begin + row_lo) * width + h * HD + 2 * t;
        const float* q_hi = qkv + (size_t)(begin + row_hi) * width + h * HD + 2 * t;
        const bool lo_in = row_lo < len, hi_in = row_hi < len;
#pragma unroll
        for (int d = 0; d < D_STEPS; ++d) {
            const float2 zero = make_float2(0.0f, 0.0f);
            const float2 x0 = lo_in ? *reinterpret_cast<const float2*>(q_lo + 16 * d) : zero;
            const float2 x1 = hi_in ? *reinterpret_cast<const float2*>(q_hi + 16 * d) : zero;
            const float2 x2 = lo_in ? *reinterpret_cast<const float2*>(q_lo + 16 * d + 8) : zero;
            const float2 x3 = hi_in ? *reinterpret_cast<const float2*>(q_hi + 16 * d + 8) : zero;
            q[d][0] = pack_bf16(x0.x, x0.y);
            q[d][1] = pack_bf16(x1.x, x1.y);
            q[d][2] = pack_bf16(x2.x, x2.y);
            q[d][3] = pack_bf16(x3.x, x3.y);
        }
    }

    float o[O_TILES][4];
#pragma unroll
    for (int c = 0; c < O_TILES; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0.0f;
    // Running maxima of the scaled scores in log2 units, and this lane's partial row sums.
    float max_lo = neg_infinity(), max_hi = neg_infinity(), sum_lo = 0.0f, sum_hi = 0.0f;
    const float scale_log2 = a.scale * 1.4426950408889634f;  // exp(x·scale) = 2^(x·scale·log2 e)

    // Keys some query of the block may see: [key_begin, key_end), key_begin on a tile edge.
    const int q_last = min(q_first + MMA_BQ, len) - 1;
    int key_end = a.causal ? q_last + 1 : len;
    if (a.window >= 0) key_end = min(key_end, q_last + a.window);
    const int key_begin = a.window >= 0 ? max(0, q_first - a.window + 1) / MMA_BKV * MMA_BKV : 0;
    const float* k_base = qkv + (size_t)begin * width + (a.heads + kv) * HD;
    const float* v_base = qkv + (size_t)begin * width + (a.heads + a.kv_heads + kv) * HD;

    for (int j0 = key_begin; j0 < key_end; j0 += MMA_BKV) {
        __syncthreads();  // every warp has finished reading the previous tile
        // Stage K and V rows j0…j0+63 as bf16, four columns (one float4) a step; rows at or past
        // key_end are zeros (masked below, and zero V keeps 0·V finite). Unrolled twice: deeper
        // unrolling keeps more loads in flight but costs 47 registers at D = 128 (225 against 178).
#pragma unroll 2
        for (int e = tid; e < MMA_BKV * HD / 4; e += 32 * MMA_WARPS) {
            const int r = e / (HD / 4), c = 4 * (e % (HD / 4)), j = j0 + r;
            uint2 k_bits = make_uint2(0u, 0u), v_bits = make_uint2(0u, 0u);
            if (j < key_end) {
                const float4 kx = *reinterpret_cast<const float4*>(k_base + (size_t)j * width + c);
                const float4 vx = *reinterpret_cast<const float4*>(v_base + (size_t)j * width + c);
                k_bits = make_uint2(pack_bf16(kx.x, kx.y), pack_bf16(kx.z, kx.w));
                v_bits = make_uint2(pack_bf16(vx.x, vx.y), pack_bf16(vx.z, vx.w));
            }
            *reinterpret_cast<uint2*>(&ks[r * ROW + c]) = k_bits;
            *reinterpret_cast<uint2*>(&vs[r * ROW + c]) = v_bits;
        }
        __syncthreads();

        // Whether this warp's queries see none, all or part of the tile's keys (uniform over the
        // warp, so the mma and shuffles below run with all 32 lanes).
        const int j_last = j0 + MMA_BKV - 1;
        const bool hidden = !warp_active || j0 >= key_end || (a.causal && j0 > warp_last) ||
                            (a.window >= 0 && (j0 - warp_last >= a.window || warp_first - j_last >= a.window));
        if (hidden) continue;
        const bool whole = j_last < key_end && (!a.causal || j_last <= warp_first) &&
                           (a.window < 0 || (warp_last - j0 < a.window && j_last - warp_first < a.window));

        // S = Q·Kᵀ for the 64 keys.
        float sc[S_TILES][4];
#pragma unroll
        for (int n = 0; n < S_TILES; ++n) {
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
            const unsigned short* k_row = &ks[(8 * n + g) * ROW + 2 * t];
#pragma unroll
            for (int d = 0; d < D_STEPS; ++d)
                mma_bf16_m16n8k16(sc[n], q[d], shared_pair(k_row + 16 * d), shared_pair(k_row + 16 * d + 8));
        }

        // Scale to log2 units, mask, and take each row's maximum over the tile.
        float tile_lo = neg_infinity(), tile_hi = neg_infinity();
#pragma unroll
        for (int n = 0; n < S_TILES; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = sc[n][e] * scale_log2;
                if (!whole) {
                    const int i = e < 2 ? row_lo : row_hi, j = j0 + 8 * n + 2 * t + (e & 1);
                    if (j >= key_end || !allows(a, i, j)) v = neg_infinity();
                }
                sc[n][e] = v;
                if (e < 2)
                    tile_lo = fmaxf(tile_lo, v);
                else
                    tile_hi = fmaxf(tile_hi, v);
            }
        // The quad's 4 lanes hold one row's 64 columns between them.
#pragma unroll
        for (int offset = 1; offset < 4; offset <<= 1) {
            tile_lo = fmaxf(tile_lo, __shfl_xor_sync(0xffffffffu, tile_lo, offset));
            tile_hi = fmaxf(tile_hi, __shfl_xor_sync(0xffffffffu, tile_hi, offset));
        }
        const float new_lo = fmaxf(max_lo, tile_lo), new_hi = fmaxf(max_hi, tile_hi);
        // A row with no visible key yet keeps −∞; subtracting 0 instead keeps exp2 at 0, not NaN.
        const float ref_lo = new_lo == neg_infinity() ? 0.0f : new_lo;
        const float ref_hi = new_hi == neg_infinity() ? 0.0f : new_hi;
        const float shrink_lo = exp2f(max_lo - ref_lo), shrink_hi = exp2f(max_hi - ref_hi);
        max_lo = new_lo;
        max_hi = new_hi;
        sum_lo *= shrink_lo;
        sum_hi *= shrink_hi;
#pragma unroll
        for (int c = 0; c < O_TILES; ++c) {
            o[c][0] *= shrink_lo;
            o[c][1] *= shrink_lo;
            o[c][2] *= shrink_hi;
            o[c][3] *= shrink_hi;
        }

        // P = exp2(S − max), summed in f32 and rounded to bf16 A fragments in place of S.
        unsigned p[MMA_BKV / 16][4];
#pragma unroll
        for (int n = 0; n < S_TILES; ++n) {
            const float p0 = exp2f(sc[n][0] - ref_lo), p1 = exp2f(sc[n][1] - ref_lo);
            const float p2 = exp2f(sc[n][2] - ref_hi), p3 = exp2f(sc[n][3] - ref_hi);
            sum_lo += p0 + p1;
            sum_hi += p2 + p3;
            p[n / 2][2 * (n & 1)] = pack_bf16(p0, p1);
            p[n / 2][2 * (n & 1) + 1] = pack_bf16(p2, p3);
        }

        // O += P·V.
#pragma unroll
        for (int k = 0; k < MMA_BKV / 16; ++k) {
            const unsigned short* v_row = &vs[(16 * k + (lane & 7) + 8 * ((lane >> 3) & 1)) * ROW + 8 * (lane >> 4)];
#pragma unroll
            for (int c = 0; c < O_TILES / 2; ++c) {
                unsigned b[4];
                ldmatrix_x4_trans(b, v_row + 16 * c);
                mma_bf16_m16n8k16(o[2 * c], p[k], b[0], b[1]);
                mma_bf16_m16n8k16(o[2 * c + 1], p[k], b[2], b[3]);
            }
        }
    }
    if (!warp_active) return;

#pragma unroll
    for (int offset = 1; offset < 4; offset <<= 1) {
        sum_lo += __shfl_xor_sync(0xffffffffu, sum_lo, offset);
        sum_hi += __shfl_xor_sync(0xffffffffu, sum_hi, offset);
    }
    const float inv_lo = sum_lo > 0.0f ? 1.0f / sum_lo : 0.0f;  // a query that sees no key gives zeros
    const float inv_hi = sum_hi > 0.0f ? 1.0f / sum_hi : 0.0f;
    const int out_width = a.heads * HD;
    float* out_lo = out + (size_t)(begin + row_lo) * out_width + h * HD + 2 * t;
    float* out_hi = out + (size_t)(begin + row_hi) * out_width + h * HD + 2 * t;
#pragma unroll
    for (int c = 0; c < O_TILES; ++c) {
        if (row_lo < len) *reinterpret_cast<float2*>(out_lo + 8 * c) = make_float2(o[c][0] * inv_lo, o[c][1] * inv_lo);
        if (row_hi < len) *reinterpret_cast<float2*>(out_hi + 8 * c) = make_float2(o[c][2] * inv_hi, o[c][3] * inv_hi);
    }
}

extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS)
attention_v4_mma_bf16_hd64(const float* __restrict__ qkv, const int* __restrict__ starts, float* __restrict__ out,
                           AttentionShape a) {
    attention_mma<64>(qkv, starts, out, a);
}

extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS)
attention_v4_mma_bf16_hd128(const float* __restrict__ qkv, const int* __restrict__ starts, float* __restrict__ out,
                            AttentionShape a) {
    attention_mma<128>(qkv, starts, out, a);
}
