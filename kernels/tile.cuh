// The 64×64 block tile of a product X·Yᵀ (both operands row-major with the contracted index
// last, like x[n, k] and PyTorch's w[m, k]) shared by every tiled f32 kernel: GEMM variant 2,
// the fused NTK contraction and the JL projection, whose Y operand is generated, not read.
// 256 threads in a 16×16 grid, each owning a 4×4 block of outputs in registers; K advances in
// 16-deep slices staged in shared memory, K-major so the inner loop reads 4 consecutive rows.
#pragma once
// Include after common.cuh, whose `widen` reads half-precision operands.

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define TILE_THREADS 256

// acc[i][j] += Σ_p X(row0 + ty·4 + i, p) · Y(col0 + tx·4 + j, p) over p < k, where
// (ty, tx) = (threadIdx.x / 16, threadIdx.x % 16). `load_x(r, p)` and `load_y(c, p)` return the
// operand entry, or 0 outside the matrix (rows, columns and k need not be tile multiples).
// Every thread of the block must call it (it synchronises).
template <class LoadX, class LoadY>
__device__ __forceinline__ void tile_product(float (&acc)[4][4], int row0, int col0, int k, LoadX load_x,
                                             LoadY load_y) {
    __shared__ float xs[TILE_K][TILE_M];
    __shared__ float ys[TILE_K][TILE_N];
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    for (int k0 = 0; k0 < k; k0 += TILE_K) {
        // Consecutive threads take consecutive p of one row: coalesced reads of row-major data.
        for (int e = tid; e < TILE_M * TILE_K; e += TILE_THREADS) {
            const int r = e / TILE_K, kk = e % TILE_K;
            xs[kk][r] = load_x(row0 + r, k0 + kk);
            ys[kk][r] = load_y(col0 + r, k0 + kk);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = xs[kk][ty * 4 + i];
                b[i] = ys[kk][tx * 4 + i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
}

// A row-major [rows, k] operand read with bounds checks, for tile_product; half-precision
// elements (Bf16, F16 of common.cuh) are widened to f32 as they are loaded.
template <class T>
struct RowMajorOf {
    const T* data;
    int rows, k;
    __device__ __forceinline__ float operator()(int r, int p) const {
        return (r < rows && p < k) ? widen(data[(size_t)r * k + p]) : 0.0f;
    }
};
typedef RowMajorOf<float> RowMajor;
