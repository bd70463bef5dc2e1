// Hopper GEMM (sm_90a only: wgmma and TMA are architecture-specific instructions, so NVRTC
// compiles this family for `sm_90a` and only on sm_90 devices, src/backend/cuda/nvrtc.rs):
//   out[n, m] = act(x[n, k] · w[m, k]ᵀ + bias[m]) + residual[n, m]
// with x and w in bf16 (the host converts f32 activations to bf16 with gemm.cu's to_bf16_v1
// before the launch, and f32 weights through their cached bf16 copy), f32 accumulation and the
// epilogue of every GEMM variant (common.cuh's `epilogue`), stored as f32.
//
// Variants (numbered as every backend numbers its GEMMs, src/backend/variants.rs):
//   10. gemm_v10_wgmma_bf16 — wgmma.mma_async m64n128k16 (bf16 × bf16 → f32) on operands that
//                             TMA (cp.async.bulk.tensor) stages in shared memory, a 4-stage
//                             mbarrier pipeline, one producer and two consumer warpgroups.
//
// Block tile 128 (rows of x) × 128 (rows of w, i.e. output columns), K in 64-deep slices.
//
// Warpgroup layout (384 threads = 3 warpgroups of 4 warps):
//   warpgroup 0 — producer: its thread 0 waits until a stage is free (`empty[s]`), announces the
//                 stage's bytes on `full[s]` (arrive.expect_tx) and issues two TMA loads into
//                 it: the 128×64 slice of x and the 128×64 slice of w. Its other threads exit.
//   warpgroups 1, 2 — consumers: warpgroup 1 owns tile rows 0–63, warpgroup 2 rows 64–127, each
//                 the full 128 columns, 64 f32 accumulators per thread. For each K slice it
//                 waits on `full[s]`, issues four wgmma (k = 16 each) reading A and B straight
//                 from shared memory through descriptors, commits them as one group, waits until
//                 at most that group is in flight, and then frees the previous slice's stage
//                 (every consumer thread arrives on `empty`, so its count is 256).
//
// Shared memory: STAGES × (A 128×64 bf16 = 16 KiB, B 128×64 bf16 = 16 KiB), each tile 1024-byte
// aligned and written by TMA with the 128-byte swizzle: one 64-element K row is 128 bytes,
// whose eight 16-byte chunks are permuted by XOR with (row mod 8). The wgmma descriptors name
// the same layout (128-byte swizzle, 8-row groups 1024 bytes apart); the k-th 16-deep step
// starts 32·k bytes into the rows, which the hardware swizzles like TMA did.
//
// Edges: TMA fills the parts of a box outside [n or m, k] with zeros, so partial tiles in any
// dimension accumulate zeros and the epilogue stores only in-range outputs. The tensor maps need
// row strides that are multiples of 16 bytes (k % 8 == 0) and 16-byte-aligned bases; the host
// runs variant 4 otherwise.
//
// Accumulator fragment of m64nNk16 (f32): warp w of the consumer warpgroup holds rows 16w…16w+15;
// register 4j + e of lane l is at row 16w + l/4 + 8·(e ≥ 2), column 8j + 2·(l mod 4) + (e mod 2).
#include "common.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "gemm_sm90.cu uses wgmma and TMA: compile it for sm_90a"
#endif

#define W90_BM 128
#define W90_BN 128
#define W90_BK 64
#define W90_STAGES 4
#define W90_THREADS 384
#define W90_CONSUMER_THREADS 256
#define W90_TILE_BYTES (W90_BM * W90_BK * 2)  // A and B tiles are the same size (BM == BN)
#define W90_STAGE_BYTES (2 * W90_TILE_BYTES)
// Dynamic shared memory the host passes: the stages plus room to align them to 1024 bytes.
#define W90_SHARED_BYTES (W90_STAGES * W90_STAGE_BYTES + 1024)

// CUtensorMap as the driver encodes it (cuTensorMapEncodeTiled on the host): 128 opaque bytes,
// passed by value as a __grid_constant__ parameter so TMA can read it in place.
struct __align__(64) TensorMap {
    unsigned long long opaque[16];
};

__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned address;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(address) : "l"(p));
    return address;
}

__device__ __forceinline__ void barrier_init(unsigned barrier, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(barrier), "r"(count) : "memory");
}

// The producer's arrival, announcing `bytes` that TMA will deliver to the same phase.
__device__ __forceinline__ void barrier_expect_bytes(unsigned barrier, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(barrier), "r"(bytes) : "memory");
}

__device__ __forceinline__ void barrier_arrive(unsigned barrier) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(barrier) : "memory");
}

// Waits until the phase of parity `parity` has completed. A fresh barrier is in phase 0, so
// waiting on parity 1 returns at once: the producer's first pass over the stages.
__device__ __forceinline__ void barrier_wait(unsigned barrier, unsigned parity) {
    unsigned done;
    do {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(barrier), "r"(parity)
            : "memory");
    } while (!done);
}

// TMA: the box at (inner, outer) = (k, row) of `map` into shared memory at `destination`,
// completing `bytes` on `barrier`.
__device__ __forceinline__ void tma_load(unsigned destination, const TensorMap* map, int inner, int outer,
                                         unsigned barrier) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
        ::"r"(destination), "l"(map), "r"(inner), "r"(outer), "r"(barrier)
        : "memory");
}

// wgmma descriptor of a K-major bf16 tile written by TMA with the 128-byte swizzle, starting at
// shared address `address` (1024-byte aligned, plus 32 bytes per 16-deep K step).
__device__ __forceinline__ unsigned long long tile_descriptor(unsigned address) {
    return (unsigned long long)((address & 0x3ffff) >> 4)  // start address, 16-byte units
           | (1ull << 16)   // leading-dimension offset: unused by swizzled K-major tiles
           | (64ull << 32)  // stride-dimension offset: 1024 bytes between 8-row groups
           | (1ull << 62);  // 128-byte swizzle
}

// Keeps the compiler from moving reads or writes of the accumulators across the asynchronous
// wgmma that owns them (the registers are operands of the wgmma asm only).
__device__ __forceinline__ void pin_accumulators(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d[64×128] += A[64×16] · B[16×128], both read from shared memory through descriptors (K-major,
// no transposition), f32 accumulators in the fragment layout described at the top.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], unsigned long long a, unsigned long long b) {
    asm volatile(
        "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, accumulate, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(a), "l"(b), "r"(1));
}

extern "C" __global__ void __launch_bounds__(W90_THREADS, 1)
gemm_v10_wgmma_bf16(const __grid_constant__ TensorMap x_map, const __grid_constant__ TensorMap w_map,
                    const float* __restrict__ bias, const float* __restrict__ residual, float* __restrict__ out,
                    int n, int m, int k, int act) {
    extern __shared__ unsigned char dynamic_shared[];
    __shared__ __align__(8) unsigned long long full[W90_STAGES], empty[W90_STAGES];
    const unsigned tiles = (shared_address(dynamic_shared) + 1023u) & ~1023u;
    const unsigned full0 = shared_address(full), empty0 = shared_address(empty);
    const int tid = threadIdx.x, warpgroup = tid / 128;
    const int row0 = blockIdx.y * W90_BM, col0 = blockIdx.x * W90_BN;
    const int k_slices = (k + W90_BK - 1) / W90_BK;

    if (tid == 0) {
        for (int s = 0; s < W90_STAGES; ++s) {
            barrier_init(full0 + 8 * s, 1);
            barrier_init(empty0 + 8 * s, W90_CONSUMER_THREADS);
        }
        // Makes the initialised barriers visible to the TMA unit (the async proxy).
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();

    if (warpgroup == 0) {
        if (tid == 0) {
            for (int slice = 0; slice < k_slices; ++slice) {
                const int s = slice % W90_STAGES;
                const unsigned full_s = full0 + 8 * s, stage = tiles + s * W90_STAGE_BYTES;
                barrier_wait(empty0 + 8 * s, ((slice / W90_STAGES) & 1) ^ 1);
                barrier_expect_bytes(full_s, W90_STAGE_BYTES);
                tma_load(stage, &x_map, slice * W90_BK, row0, full_s);
                tma_load(stage + W90_TILE_BYTES, &w_map, slice * W90_BK, col0, full_s);
            }
        }
        return;
    }

    const int consumer = warpgroup - 1;  // tile rows 64·consumer … 64·consumer + 63
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
    for (int slice = 0; slice < k_slices; ++slice) {
        const int s = slice % W90_STAGES;
        barrier_wait(full0 + 8 * s, (slice / W90_STAGES) & 1);
        __syncwarp();  // wgmma is .aligned: the whole warp leaves the wait loop together
        const unsigned a = tiles + s * W90_STAGE_BYTES + consumer * 64 * (W90_BK * 2);
        const unsigned b = tiles + s * W90_STAGE_BYTES + W90_TILE_BYTES;
        pin_accumulators(acc);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int step = 0; step < W90_BK / 16; ++step)
            wgmma_m64n128k16(acc, tile_descriptor(a + 32 * step), tile_descriptor(b + 32 * step));
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        // At most this slice's group still runs: the previous slice's stage is no longer read.
        asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
        pin_accumulators(acc);
        if (slice > 0) barrier_arrive(empty0 + 8 * ((slice - 1) % W90_STAGES));
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    pin_accumulators(acc);

    const int lane = tid % 32, warp = (tid % 128) / 32;
    const int row_top = row0 + consumer * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = row_top + (e >= 2 ? 8 : 0), col = col0 + 8 * j + 2 * (lane % 4) + (e & 1);
            if (row < n && col < m)
                out[(size_t)row * m + col] = epilogue(acc[4 * j + e], bias, residual, act, row, col, m);
        }
}
