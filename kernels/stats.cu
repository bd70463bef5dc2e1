// The stats family (src/backend/mod.rs, `scatter` and `symmetric_eigen`), in f64: these are sums
// over many rows and feed eigen solves and inverses.
//
// Kernels (variant numbers per kernel):
//   group_sum_v2         — column sums of one split of a group's rows (indices `rows`) of x[n, d]:
//                          a thread per column, blockIdx.y the split, f64 sums.
//   group_mean_v2        — the splits' sums added in split order, over the group's size.
//   group_scatter_v2     — centred scatter Σ (x − μ)(x − μ)ᵀ of one split of the group's rows,
//                          SYRK-shaped: one 32×32 output tile per block, lower-triangle tiles
//                          only (the host mirrors), blockIdx.z the split, rows staged 32 at a
//                          time in shared memory, centred in f64.
//   sum_lower_splits_v2  — the splits' lower triangles added in split order.
//   Splitting a group's rows across blocks keeps every SM busy where the output has few columns
//   or tiles (a 384-wide scatter has 78 lower tiles; v1 gave each a block over every row); the
//   host picks the splits and the second kernel of each pair adds them in a fixed order, so a
//   result does not depend on scheduling.
//   jacobi_eigen_v1      — batched cyclic Jacobi for symmetric matrices up to JACOBI_MAX × JACOBI_MAX:
//                          one block per matrix held in shared memory, round-robin ordering so
//                          each round rotates d/2 disjoint pairs in parallel; eigenvectors
//                          accumulated in global memory. Unsorted values on the diagonal.
#include "common.cuh"

// partial[split · d + c] = Σ x[rows[r], c] over the split's rows
// [split · rows_per_split, min(count, (split + 1) · rows_per_split)).
extern "C" __global__ void group_sum_v2(const float* __restrict__ x, const unsigned* __restrict__ rows,
                                        double* __restrict__ partial, int count, int d, int rows_per_split) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    const int begin = blockIdx.y * rows_per_split, end = min(count, begin + rows_per_split);
    double sum = 0.0;
    for (int r = begin; r < end; ++r) sum += (double)x[(size_t)rows[r] * d + c];
    partial[(size_t)blockIdx.y * d + c] = sum;
}

extern "C" __global__ void group_mean_v2(const double* __restrict__ partial, double* __restrict__ mean,
                                         int splits, int count, int d) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    double sum = 0.0;
    for (int s = 0; s < splits; ++s) sum += partial[(size_t)s * d + c];
    mean[c] = sum / count;
}

#define SCATTER_TILE 32
#define SCATTER_ROWS 32

// 256 threads: 32 columns × 8 row groups, each thread owning 4 outputs of one column. The split's
// d × d lower triangle goes to `scatter + split · d · d`; rows_per_split is a multiple of
// SCATTER_ROWS.
extern "C" __global__ void __launch_bounds__(256)
group_scatter_v2(const float* __restrict__ x, const unsigned* __restrict__ rows, const double* __restrict__ mean,
                 double* __restrict__ scatter, int count, int d, int rows_per_split) {
    const int ti = blockIdx.y, tj = blockIdx.x;
    if (tj > ti) return;  // whole block: upper-triangle tiles are the mirror of lower ones
    __shared__ double xi[SCATTER_ROWS][SCATTER_TILE];
    __shared__ double xj[SCATTER_ROWS][SCATTER_TILE];
    const int i0 = ti * SCATTER_TILE, j0 = tj * SCATTER_TILE;
    const int col = threadIdx.x % 32, row_group = threadIdx.x / 32;
    const int begin = blockIdx.z * rows_per_split, end = min(count, begin + rows_per_split);
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int r0 = begin; r0 < end; r0 += SCATTER_ROWS) {
        for (int e = threadIdx.x; e < SCATTER_ROWS * SCATTER_TILE; e += blockDim.x) {
            const int rr = e / SCATTER_TILE, cc = e % SCATTER_TILE, r = r0 + rr;
            const size_t base = r < end ? (size_t)rows[r] * d : 0;
            const int ci = i0 + cc, cj = j0 + cc;
            xi[rr][cc] = (r < end && ci < d) ? (double)x[base + ci] - mean[ci] : 0.0;
            xj[rr][cc] = (r < end && cj < d) ? (double)x[base + cj] - mean[cj] : 0.0;
        }
        __syncthreads();
        for (int rr = 0; rr < SCATTER_ROWS; ++rr) {
            const double b = xj[rr][col];
#pragma unroll
            for (int t = 0; t < 4; ++t) acc[t] += xi[rr][row_group * 4 + t] * b;
        }
        __syncthreads();
    }
    double* out = scatter + (size_t)blockIdx.z * d * d;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const int i = i0 + row_group * 4 + t, j = j0 + col;
        if (i < d && j < d && j <= i) out[(size_t)i * d + j] = acc[t];
    }
}

// out[i · d + j] = Σ_s partial[s · d · d + i · d + j] for j ≤ i, the splits in order.
extern "C" __global__ void sum_lower_splits_v2(const double* __restrict__ partial, double* __restrict__ out,
                                               int splits, int d) {
    const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x, size = (size_t)d * d;
    if (e >= size || e % d > e / d) return;
    double sum = 0.0;
    for (int s = 0; s < splits; ++s) sum += partial[s * size + e];
    out[e] = sum;
}

#define JACOBI_MAX 64
#define JACOBI_SWEEPS 40

__device__ double block_sum_f64(double v, double* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}

// Partner of slot `k` in round `round` of the round-robin tournament on m (even) players:
// slot m−1 stays fixed, the others rotate.
__device__ __forceinline__ void round_pair(int round, int k, int m, int* p, int* q) {
    const int a = k == 0 ? m - 1 : (round + k) % (m - 1);
    const int b = (round - k + (m - 1)) % (m - 1);
    *p = min(a, b);
    *q = max(a, b);
}

// `a`: `batch` matrices of d×d, row-major f64 (overwritten with the diagonalised matrices);
// `v`: the eigenvectors, column j for diagonal entry j. 256 threads per block.
extern "C" __global__ void __launch_bounds__(256)
jacobi_eigen_v1(double* __restrict__ a_all, double* __restrict__ v_all, int d, double tolerance) {
    __shared__ double a[JACOBI_MAX][JACOBI_MAX + 1];  // +1: column walks hit distinct banks
    __shared__ double cs[JACOBI_MAX / 2][2];
    __shared__ int pairs[JACOBI_MAX / 2][2];
    __shared__ double scratch[32];
    double* g = a_all + (size_t)blockIdx.x * d * d;
    double* v = v_all + (size_t)blockIdx.x * d * d;
    for (int e = threadIdx.x; e < d * d; e += blockDim.x) {
        a[e / d][e % d] = g[e];
        v[e] = e / d == e % d ? 1.0 : 0.0;
    }
    const int m = d + (d & 1), half = m / 2;  // odd d: one dummy player, its pairs are skipped
    for (int sweep = 0; sweep < JACOBI_SWEEPS; ++sweep) {
        double off = 0.0, total = 0.0;
        __syncthreads();
        for (int e = threadIdx.x; e < d * d; e += blockDim.x) {
            const double x = a[e / d][e % d];
            total += x * x;
            if (e / d != e % d) off += x * x;
        }
        off = block_sum_f64(off, scratch);
        total = block_sum_f64(total, scratch);
        if (off <= tolerance * tolerance * total) break;
        for (int round = 0; round < m - 1; ++round) {
            // Angles of the round's disjoint pairs, all from the matrix before the round
            // (each pair's 2×2 block is touched by its own rotation only).
            for (int k = threadIdx.x; k < half; k += blockDim.x) {
                int p, q;
                round_pair(round, k, m, &p, &q);
                double c = 1.0, s = 0.0;
                if (q < d && a[p][q] != 0.0) {
                    const double tau = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                    const double t = (tau >= 0.0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
                    c = rsqrt(1.0 + t * t);
                    s = t * c;
                }
                pairs[k][0] = p;
                pairs[k][1] = q;
                cs[k][0] = c;
                cs[k][1] = s;
            }
            __syncthreads();
            // A ← A·J and V ← V·J: columns p, q of every row.
            for (int e = threadIdx.x; e < half * d; e += blockDim.x) {
                const int k = e / d, r = e % d, p = pairs[k][0], q = pairs[k][1];
                if (q >= d) continue;
                const double c = cs[k][0], s = cs[k][1];
                const double ap = a[r][p], aq = a[r][q];
                a[r][p] = c * ap - s * aq;
                a[r][q] = s * ap + c * aq;
                const double vp = v[(size_t)r * d + p], vq = v[(size_t)r * d + q];
                v[(size_t)r * d + p] = c * vp - s * vq;
                v[(size_t)r * d + q] = s * vp + c * vq;
            }
            __syncthreads();
            // A ← Jᵀ·A: rows p, q of every column.
            for (int e = threadIdx.x; e < half * d; e += blockDim.x) {
                const int k = e / d, col = e % d, p = pairs[k][0], q = pairs[k][1];
                if (q >= d) continue;
                const double c = cs[k][0], s = cs[k][1];
                const double ap = a[p][col], aq = a[q][col];
                a[p][col] = c * ap - s * aq;
                a[q][col] = s * ap + c * aq;
            }
            __syncthreads();
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < d * d; e += blockDim.x) g[e] = a[e / d][e % d];
}
