//! Writes to many output streams at once through cache-line-sized staging blocks (software write
//! combining), for the scatters of the trim search: a value goes into its stream's block in
//! cache, and a block the writer owns whole goes out with non-temporal stores. A store straight
//! to each of thousands of streams reads every destination line from DRAM before writing it
//! (read for ownership); the staged block skips that read, halving the scatter's DRAM traffic.

/// Values per staging block: a whole number of 64-byte cache lines for values of 4, 8, 12… bytes.
const BLOCK: usize = 16;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block<T>([T; BLOCK]);

/// One writer's streams: stream `s` writes the consecutive positions from `starts[s]` on, and no
/// other writer writes them.
pub(super) struct StagedStreams<T> {
    blocks: Vec<Block<T>>,
    next: Vec<usize>,
    first: Vec<usize>,
}

impl<T: Copy + bytemuck::Zeroable> StagedStreams<T> {
    /// Whole blocks leave with 16-byte non-temporal stores.
    const WHOLE_LINES: () = assert!(std::mem::size_of::<[T; BLOCK]>().is_multiple_of(64));

    pub(super) fn new() -> Self {
        let () = Self::WHOLE_LINES;
        StagedStreams {
            blocks: Vec::new(),
            next: Vec::new(),
            first: Vec::new(),
        }
    }

    /// Starts the streams anew at the positions `starts`.
    pub(super) fn start(&mut self, starts: impl IntoIterator<Item = usize>) {
        self.next.clear();
        self.next.extend(starts);
        self.first.clear();
        self.first.extend_from_slice(&self.next);
        self.blocks
            .resize(self.next.len(), Block([T::zeroed(); BLOCK]));
    }

    /// Appends `value` to stream `stream`.
    ///
    /// # Safety
    /// `out` is 64-byte aligned and valid for the positions every stream reaches, which no other
    /// writer writes or reads until [`StagedStreams::finish`] returns.
    #[inline(always)]
    pub(super) unsafe fn push(&mut self, out: *mut T, stream: usize, value: T) {
        let at = self.next[stream];
        let slot = at % BLOCK;
        let block = &mut self.blocks[stream];
        block.0[slot] = value;
        self.next[stream] = at + 1;
        if slot == BLOCK - 1 {
            let block_start = at + 1 - BLOCK;
            let first = self.first[stream];
            if first <= block_start {
                // SAFETY: the caller's contract; `block_start` is a multiple of `BLOCK`, so the
                // destination is 64-byte aligned.
                unsafe { stream_block(out.add(block_start), block) };
            } else {
                // SAFETY: as above; positions from `first` on are this writer's.
                unsafe { copy_slots(out, block, first, at + 1) };
            }
        }
    }

    /// Writes what is left in the blocks and orders the non-temporal stores before whatever
    /// the caller does next (another thread may read them after it).
    ///
    /// # Safety
    /// As for [`StagedStreams::push`].
    pub(super) unsafe fn finish(&mut self, out: *mut T) {
        for ((block, &next), &first) in self.blocks.iter().zip(&self.next).zip(&self.first) {
            let from = first.max(next - next % BLOCK);
            // SAFETY: the caller's contract.
            unsafe { copy_slots(out, block, from, next) };
        }
        fence();
    }
}

/// Positions `from..to` (inside one block) from `block` to `out`, with plain stores: another
/// writer may own the rest of the line.
///
/// # Safety
/// `out` is valid for `from..to`.
unsafe fn copy_slots<T: Copy>(out: *mut T, block: &Block<T>, from: usize, to: usize) {
    for at in from..to {
        // SAFETY: the caller's contract.
        unsafe { out.add(at).write(block.0[at % BLOCK]) };
    }
}

/// # Safety
/// `to` is 64-byte aligned and valid for a block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stream_block<T>(to: *mut T, block: &Block<T>) {
    use std::arch::x86_64::{__m128i, _mm_load_si128, _mm_stream_si128};
    let (from, to) = (block.0.as_ptr().cast::<__m128i>(), to.cast::<__m128i>());
    for c in 0..std::mem::size_of::<[T; BLOCK]>() / 16 {
        // SAFETY: both 16-byte aligned (the block to 64), both hold the block's bytes; SSE2 is
        // part of x86-64.
        unsafe { _mm_stream_si128(to.add(c), _mm_load_si128(from.add(c))) };
    }
}

/// # Safety
/// `to` is valid for a block.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
unsafe fn stream_block<T>(to: *mut T, block: &Block<T>) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(block.0.as_ptr(), to, BLOCK) };
}

fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three writers share one output, each stream's range starting and ending anywhere in a
    /// block (head and tail lines shared with the neighbours): the output is each stream's values
    /// in order, and positions nobody owns stay untouched.
    #[test]
    fn staged_streams_write_each_stream_in_order() {
        let mut out = vec![Block([u32::MAX; BLOCK]); 40];
        let base = out.as_mut_ptr().cast::<u32>();
        let lens = [0usize, 1, 15, 16, 17, 33, 47, 5, 64, 2];
        let mut writers: Vec<(Vec<usize>, StagedStreams<u32>)> = Vec::new();
        let mut at = 3;
        for writer in 0..3 {
            let starts: Vec<usize> = lens
                .iter()
                .map(|&len| {
                    let start = at;
                    at += len + writer;
                    start
                })
                .collect();
            let mut streams = StagedStreams::new();
            streams.start(starts.iter().copied());
            writers.push((starts, streams));
        }
        for (writer, (_, streams)) in writers.iter_mut().enumerate() {
            for i in 0..70 {
                for (s, &len) in lens.iter().enumerate() {
                    if i < len + writer {
                        // SAFETY: each stream stays inside its own range of `out`.
                        unsafe { streams.push(base, s, (writer * 1000 + s * 100 + i) as u32) };
                    }
                }
            }
            // SAFETY: as above.
            unsafe { streams.finish(base) };
        }
        let mut want = vec![u32::MAX; 40 * BLOCK];
        for (writer, (starts, _)) in writers.iter().enumerate() {
            for (s, (&start, &len)) in starts.iter().zip(&lens).enumerate() {
                for i in 0..len + writer {
                    want[start + i] = (writer * 1000 + s * 100 + i) as u32;
                }
            }
        }
        let got: Vec<u32> = out.iter().flat_map(|b| b.0).collect();
        assert_eq!(got, want);
    }
}
