// The trim family (src/backend/mod.rs, `trim_search`): the segmented sort of the samples and the
// merged ECDF counts behind the trimmed comparison. Keys are the samples' values in the
// order-preserving u32 encoding of `trim::order_bits` (−0 and +0 one key), made on the host; the
// host reads the sorted rows and their counts back and runs the α̂ solve and the W2 selection in
// f64 with the CPU's code, so the results are the CPU's bit for bit.
//
// The sort is an LSD radix sort, 4 passes of 8-bit digits, over any number of segments of any
// length (one per model, or one for a reference or a leave-one-out pool) without padding. Why
// radix and not the bitonic sort of shaders/trim.wgsl: a pass streams the keys through DRAM three
// times (histogram read, scatter read and write), so 4 passes cost about 12 key reads and writes
// whatever the length, where a bitonic sort of a 10⁸-key pool (padded to 2²⁷) takes 136
// compare-exchange passes over global memory; on an H200 the sort is bandwidth-bound either way.
// Segments cost nothing extra: the digit counts of every tile are laid out in the order
// (segment, digit, tile), so one exclusive scan of all of them gives each tile, for each digit,
// where its first key of that digit goes, inside its own segment.
//
// One pass (`shift` 0, 8, 16, 24), keys `in` → `out`, over tiles of at most SORT_TILE keys that
// lie in one segment each (`SortTile`, built on the host, src/backend/cuda/trim.rs):
//   radix_histogram_v1 — per tile, the count of each digit (shared-memory atomics), stored at
//                        counts[count_base + digit · count_stride].
//   scan_tile_sums_v1  — the sum of each SCAN_TILE-long run of the counts,
//   scan_sums_v1       — those sums exclusive-scanned in place (one block),
//   scan_apply_v1      — each run exclusive-scanned in place from its sum's prefix: every count
//                        becomes its destination offset.
//   radix_scatter_v1   — each tile's keys moved to their offsets in order, a round of 256 keys at
//                        a time: a key's rank among the keys of its digit is its warp's offset for
//                        the digit (the warps' counts, from __match_any_sync, scanned per digit)
//                        plus its lane's rank among its peers. Stable, as LSD needs.
// Merged ECDF counts:
//   ecdf_counts_v1     — for every key of the sorted rows, the reference keys < and ≤ it, by
//                        binary search in the sorted reference (neighbouring threads search
//                        neighbouring keys, so the first levels of their searches share cache
//                        lines).
//
// One variant of each; positions are u32 (the host refuses 2³² keys or more), 256 threads a
// block. __match_any_sync needs sm_70.

#define RADIX_BITS 8
#define RADIX (1 << RADIX_BITS)
#define SORT_THREADS RADIX  // a thread per digit in the histogram and the per-digit scans
#define SORT_WARPS (SORT_THREADS / 32)
#define SORT_TILE (SORT_THREADS * 8)
#define SCAN_THREADS 256
#define SCAN_ITEMS 8
#define SCAN_TILE (SCAN_THREADS * SCAN_ITEMS)

// Must match `SortTile` in src/backend/cuda/trim.rs: keys start..end of one segment (at most
// SORT_TILE), and where the tile's count of digit d lives: count_base + d · count_stride.
struct SortTile {
    unsigned start, end, count_base, count_stride;
};

extern "C" __global__ void __launch_bounds__(SORT_THREADS)
radix_histogram_v1(const unsigned* __restrict__ keys, const SortTile* __restrict__ tiles,
                   unsigned* __restrict__ counts, int shift) {
    __shared__ unsigned histogram[RADIX];
    const SortTile tile = tiles[blockIdx.x];
    histogram[threadIdx.x] = 0;
    __syncthreads();
    for (unsigned i = threadIdx.x; i < tile.end - tile.start; i += SORT_THREADS)
        atomicAdd(&histogram[(keys[tile.start + i] >> shift) & (RADIX - 1)], 1u);
    __syncthreads();
    counts[tile.count_base + threadIdx.x * tile.count_stride] = histogram[threadIdx.x];
}

// Exclusive prefix of `v` over the block's threads in order (SCAN_THREADS of them); `*total`
// gets the sum of all. `warp_sums` holds one value per warp.
__device__ unsigned block_exclusive_scan(unsigned v, unsigned* warp_sums, unsigned* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned inclusive = v;
    for (int d = 1; d < 32; d <<= 1) {
        const unsigned below = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) inclusive += below;
    }
    __syncthreads();  // warp_sums may still be read by a previous call
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    unsigned before = 0, sum = 0;
    for (int w = 0; w < SCAN_THREADS / 32; ++w) {
        if (w < warp) before += warp_sums[w];
        sum += warp_sums[w];
    }
    *total = sum;
    return before + inclusive - v;
}

// Exclusive scan in place of data[start .. min(start + SCAN_TILE, len)], starting from `carry`;
// returns the run's sum (the same in every thread). Thread t holds SCAN_ITEMS consecutive values.
__device__ unsigned scan_tile(unsigned* data, size_t start, size_t len, unsigned carry,
                              unsigned* warp_sums) {
    const size_t first = start + (size_t)threadIdx.x * SCAN_ITEMS;
    unsigned v[SCAN_ITEMS], sum = 0;
#pragma unroll
    for (int k = 0; k < SCAN_ITEMS; ++k) {
        v[k] = first + k < len ? data[first + k] : 0;
        sum += v[k];
    }
    unsigned total;
    unsigned at = carry + block_exclusive_scan(sum, warp_sums, &total);
#pragma unroll
    for (int k = 0; k < SCAN_ITEMS; ++k) {
        if (first + k < len) data[first + k] = at;
        at += v[k];
    }
    return total;
}

extern "C" __global__ void __launch_bounds__(SCAN_THREADS)
scan_tile_sums_v1(const unsigned* __restrict__ counts, unsigned len, unsigned* __restrict__ sums) {
    __shared__ unsigned warp_sums[SCAN_THREADS / 32];
    const size_t start = (size_t)blockIdx.x * SCAN_TILE;
    unsigned sum = 0;
    for (size_t i = start + threadIdx.x; i < start + SCAN_TILE && i < len; i += SCAN_THREADS) sum += counts[i];
    unsigned total;
    block_exclusive_scan(sum, warp_sums, &total);
    if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// One block: `blocks` sums scanned a SCAN_TILE at a time, each run carrying the total before it.
extern "C" __global__ void __launch_bounds__(SCAN_THREADS) scan_sums_v1(unsigned* __restrict__ sums, unsigned blocks) {
    __shared__ unsigned warp_sums[SCAN_THREADS / 32];
    unsigned carry = 0;
    for (size_t start = 0; start < blocks; start += SCAN_TILE) carry += scan_tile(sums, start, blocks, carry, warp_sums);
}

extern "C" __global__ void __launch_bounds__(SCAN_THREADS)
scan_apply_v1(unsigned* __restrict__ counts, unsigned len, const unsigned* __restrict__ sums) {
    __shared__ unsigned warp_sums[SCAN_THREADS / 32];
    scan_tile(counts, (size_t)blockIdx.x * SCAN_TILE, len, sums[blockIdx.x], warp_sums);
}

// `offsets`: the scanned counts, where each tile's first key of each digit goes.
extern "C" __global__ void __launch_bounds__(SORT_THREADS)
radix_scatter_v1(const unsigned* __restrict__ in, unsigned* __restrict__ out, const SortTile* __restrict__ tiles,
                 const unsigned* __restrict__ offsets, int shift) {
    // Where each warp's first key of each digit goes in the current round.
    __shared__ unsigned warp_next[SORT_WARPS][RADIX];
    const SortTile tile = tiles[blockIdx.x];
    const unsigned len = tile.end - tile.start;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // Thread d: where the tile's next key of digit d goes.
    unsigned next = offsets[tile.count_base + threadIdx.x * tile.count_stride];
    // `len` is the same for the whole block, so every thread runs every round and barrier.
    for (unsigned round = 0; round < len; round += SORT_THREADS) {
        const unsigned i = round + threadIdx.x;
        const bool valid = i < len;
        const unsigned key = valid ? in[tile.start + i] : 0;
        // RADIX, no digit: the lanes past the end only match one another.
        const unsigned digit = valid ? (key >> shift) & (RADIX - 1) : RADIX;
        for (int w = 0; w < SORT_WARPS; ++w) warp_next[w][threadIdx.x] = 0;
        __syncthreads();
        const unsigned peers = __match_any_sync(0xffffffffu, digit);
        const unsigned peers_below = peers & ((1u << lane) - 1u);
        // The lowest lane of each digit stores how many keys of it its warp holds.
        if (valid && peers_below == 0) warp_next[warp][digit] = __popc(peers);
        __syncthreads();
        for (int w = 0; w < SORT_WARPS; ++w) {
            const unsigned count = warp_next[w][threadIdx.x];
            warp_next[w][threadIdx.x] = next;
            next += count;
        }
        __syncthreads();
        if (valid) out[warp_next[warp][digit] + __popc(peers_below)] = key;
        __syncthreads();  // before the next round clears warp_next
    }
}

// For keys[i] of the sorted rows (n keys), counts[2i] = reference keys < it and counts[2i + 1]
// = reference keys ≤ it, in the sorted reference of m keys.
extern "C" __global__ void __launch_bounds__(256)
ecdf_counts_v1(const unsigned* __restrict__ keys, unsigned n, const unsigned* __restrict__ reference,
               unsigned m, unsigned* __restrict__ counts) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned v = keys[i];
    // First reference key ≥ v, then first key > v, searching on from the first.
    unsigned lo = 0, hi = m;
    while (lo < hi) {
        const unsigned mid = lo + (hi - lo) / 2;
        if (reference[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    const unsigned below = lo;
    hi = m;
    while (lo < hi) {
        const unsigned mid = lo + (hi - lo) / 2;
        if (reference[mid] <= v) lo = mid + 1;
        else hi = mid;
    }
    counts[2 * i] = below;
    counts[2 * i + 1] = lo;
}
