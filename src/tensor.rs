//! Host tensors: a shape, a dtype and contiguous row-major storage.

use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
}

impl HostData {
    /// Index of the first NaN or infinite value, if any: the load-time check of model weights,
    /// one pass over the values as stored (half-precision ones by their exponent bits, so that
    /// a memory-mapped bf16 checkpoint is read once and never widened for it).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            HostData::F32(v) => first_non_finite(v),
            HostData::F16(v) => first_non_finite_half(DType::F16, bytemuck::cast_slice(v)),
            HostData::BF16(v) => first_non_finite_half(DType::BF16, bytemuck::cast_slice(v)),
            HostData::I64(_) => None,
        }
    }
}

/// Values per block of the finiteness checks below.
const FINITE_BLOCK: usize = 4096;

/// Blocks from which [`first_in_blocks`] runs on every core (1 MiB of f32 values).
const PARALLEL_CHECK_BLOCKS: usize = 64;

/// The first index `first_in` finds, given each block of `items` with the block's index. From
/// [`PARALLEL_CHECK_BLOCKS`] blocks up the blocks are checked on every core (the load-time check
/// of a model's embedding table and FFN weights, read through the checkpoint's memory map, is on
/// the critical path of a short run's start-up); below, on this thread, where handing the work to
/// the pool would cost more than it saves.
fn first_in_blocks<T: Sync>(
    items: &[T],
    block: usize,
    first_in: impl Fn((usize, &[T])) -> Option<usize> + Sync + Send,
) -> Option<usize> {
    use rayon::prelude::*;
    if items.len() < PARALLEL_CHECK_BLOCKS * block {
        items.chunks(block).enumerate().find_map(first_in)
    } else {
        items.par_chunks(block).enumerate().find_map_first(first_in)
    }
}

/// Index of the first NaN or infinite value of `values`. Runs in branch-free blocks (the common
/// all-finite case vectorises) and looks for the index only inside a failing block.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    first_in_blocks(values, FINITE_BLOCK, |(b, block)| {
        let finite = block.iter().fold(true, |ok, v| ok & v.is_finite());
        (!finite).then(|| b * FINITE_BLOCK + block.iter().position(|v| !v.is_finite()).unwrap_or(0))
    })
}

/// Index of the first NaN or infinite value of little-endian F16 or BF16 `bytes` (any
/// alignment: views into a memory map): a value whose exponent field is all ones.
pub fn first_non_finite_half(dtype: DType, bytes: &[u8]) -> Option<usize> {
    let mask: u16 = match dtype {
        DType::F16 => 0x7C00,
        DType::BF16 => 0x7F80,
        _ => return None,
    };
    let bad = |pair: &[u8]| u16::from_le_bytes([pair[0], pair[1]]) & mask == mask;
    first_in_blocks(bytes, 2 * FINITE_BLOCK, |(b, block)| {
        let finite = block.chunks_exact(2).fold(true, |ok, pair| ok & !bad(pair));
        (!finite).then(|| b * FINITE_BLOCK + block.chunks_exact(2).position(bad).unwrap_or(0))
    })
}

/// A contiguous row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: HostData,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: HostData) -> Result<Self> {
        let len = match &data {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::I64(v) => v.len(),
        };
        let expected: usize = shape.iter().product();
        if len != expected {
            return Err(Error::input(format!(
                "tensor of shape {shape:?} needs {expected} elements, got {len}"
            )));
        }
        Ok(HostTensor { shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::new(shape, HostData::F32(data))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::I64(_) => DType::I64,
        }
    }

    pub fn data(&self) -> &HostData {
        &self.data
    }

    pub fn into_data(self) -> HostData {
        self.data
    }

    /// The values as f32, converting half precision (f32 data is borrowed, not copied).
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        use std::borrow::Cow;
        match &self.data {
            HostData::F32(v) => Cow::Borrowed(v),
            HostData::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            HostData::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            HostData::I64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
        }
    }

    pub fn into_f32(self) -> Vec<f32> {
        match self.data {
            HostData::F32(v) => v,
            other => HostTensor {
                shape: self.shape,
                data: other,
            }
            .to_f32()
            .into_owned(),
        }
    }
}

/// Bytes owned by someone else (a checkpoint's memory map, or a vector), shared: cloning is
/// cheap, and the owner lives as long as any clone.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl SharedBytes {
    /// `range` of `owner`'s bytes; an error if it lies outside them.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Result<Self> {
        let len = (*owner).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(Error::input(format!(
                "byte range {range:?} lies outside the {len} bytes it borrows from"
            )));
        }
        Ok(SharedBytes { owner, range })
    }

    /// All of `bytes`, owned by the new value.
    pub fn owned(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        SharedBytes {
            owner: Arc::new(bytes),
            range,
        }
    }

    /// `len` f32 values that `fill` writes into fresh anonymous memory, read-only afterwards: how
    /// a source that makes its values (dequantising a GGUF file) lends them as a checkpoint's
    /// memory map lends stored ones, with no second copy. (Advising transparent huge pages made
    /// loading SmolLM2 slower on the development VM: most of the time went to zeroing 2 MiB
    /// pages.)
    pub fn filled_f32(len: usize, fill: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<Self> {
        let cannot = |e: String| Error::input(format!("cannot allocate {len} f32 values: {e}"));
        let size = len
            .checked_mul(std::mem::size_of::<f32>())
            .ok_or_else(|| cannot("too many".into()))?;
        if size == 0 {
            return Ok(SharedBytes::owned(Vec::new()));
        }
        let mut map = memmap2::MmapMut::map_anon(size).map_err(|e| cannot(e.to_string()))?;
        fill(bytemuck::cast_slice_mut(&mut map[..]))?;
        let map = map.make_read_only().map_err(|e| cannot(e.to_string()))?;
        Ok(SharedBytes {
            owner: Arc::new(map),
            range: 0..size,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }

    /// The bytes as little-endian f32 values, read in place: `None` unless they are 4-byte
    /// aligned, a whole number of values, on a little-endian machine.
    pub fn as_f32(&self) -> Option<&[f32]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes()).ok()
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.range.len())
    }
}

/// A row-major `[rows, cols]` matrix of f16 or bf16 values (little-endian, any alignment) kept
/// where they already are: a stack of parts, each a run of whole rows borrowed from a memory
/// map (the fused Q/K/V and gate/up weights of a decoder are several checkpoint tensors). Kernels
/// that read half precision widen the rows they touch; nothing widens the whole matrix.
#[derive(Clone, Debug)]
pub struct HalfMatrix {
    dtype: DType,
    cols: usize,
    /// Each part's bytes and the index of its first row.
    parts: Vec<(SharedBytes, usize)>,
    rows: usize,
}

impl HalfMatrix {
    /// Parts of `cols` columns stacked in order; `dtype` is F16 or BF16, and each part holds
    /// whole rows of it.
    pub fn new(dtype: DType, cols: usize, parts: Vec<SharedBytes>) -> Result<Self> {
        if !matches!(dtype, DType::F16 | DType::BF16) {
            return Err(Error::input(format!(
                "a half-precision matrix holds F16 or BF16 values, not {dtype:?}"
            )));
        }
        let row_bytes = 2 * cols;
        let mut rows = 0;
        let mut stacked = Vec::with_capacity(parts.len());
        for part in parts {
            let len = part.bytes().len();
            if row_bytes == 0 || !len.is_multiple_of(row_bytes) {
                return Err(Error::input(format!(
                    "a part of {len} bytes is not whole rows of {cols} {dtype:?} values"
                )));
            }
            stacked.push((part, rows));
            rows += len / row_bytes;
        }
        Ok(HalfMatrix {
            dtype,
            cols,
            parts: stacked,
            rows,
        })
    }

    /// `values` as one owned part of `[rows, cols]`.
    pub fn from_f16(shape: &[usize], values: &[f16]) -> Result<Self> {
        Self::owned(shape, DType::F16, bytemuck::cast_slice(values))
    }

    /// `values` as one owned part of `[rows, cols]`.
    pub fn from_bf16(shape: &[usize], values: &[bf16]) -> Result<Self> {
        Self::owned(shape, DType::BF16, bytemuck::cast_slice(values))
    }

    fn owned(shape: &[usize], dtype: DType, native: &[u16]) -> Result<Self> {
        let [rows, cols] = shape[..] else {
            return Err(Error::input(format!(
                "a half-precision matrix has two dimensions, not shape {shape:?}"
            )));
        };
        if native.len() != rows * cols {
            return Err(Error::input(format!(
                "tensor of shape {shape:?} needs {} elements, got {}",
                rows * cols,
                native.len()
            )));
        }
        let bytes = native.iter().flat_map(|v| v.to_le_bytes()).collect();
        let matrix = Self::new(dtype, cols, vec![SharedBytes::owned(bytes)])?;
        // A [0, cols] matrix has no part rows to count.
        Ok(HalfMatrix { rows, ..matrix })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Each part's little-endian bytes (whole rows, any alignment), in row order.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(|(part, _)| part.bytes())
    }

    /// The `2·cols` little-endian bytes of row `row` (< [`HalfMatrix::rows`]).
    pub fn row_bytes(&self, row: usize) -> &[u8] {
        let at = self.parts.partition_point(|(_, first)| *first <= row) - 1;
        let (part, first) = &self.parts[at];
        let start = (row - first) * 2 * self.cols;
        &part.bytes()[start..start + 2 * self.cols]
    }

    /// Widens `row[start..start + out.len()]` into `out`.
    pub fn widen_row(&self, row: usize, start: usize, out: &mut [f32]) {
        let bytes = &self.row_bytes(row)[2 * start..2 * (start + out.len())];
        widen_half(self.dtype, bytes, out);
    }

    /// The values as a host tensor of the same element type (a copy).
    pub fn to_host(&self) -> Result<HostTensor> {
        let halves = (0..self.rows).flat_map(|r| {
            self.row_bytes(r)
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        });
        let data = match self.dtype {
            DType::F16 => HostData::F16(halves.map(f16::from_bits).collect()),
            _ => HostData::BF16(halves.map(bf16::from_bits).collect()),
        };
        HostTensor::new(vec![self.rows, self.cols], data)
    }
}

/// Widens little-endian f16 or bf16 `bytes` (any alignment) into `out`: bf16 is the top half of
/// an f32, f16 goes through `half`'s slice conversion (F16C where the CPU has it). Aligned bytes
/// on a little-endian host are read in place; others through a small aligned buffer.
pub fn widen_half(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let widen = |halves: &[u16], out: &mut [f32]| {
        if dtype == DType::BF16 {
            out.iter_mut()
                .zip(halves)
                .for_each(|(o, &h)| *o = f32::from_bits((h as u32) << 16));
        } else {
            let halves: &[f16] = bytemuck::cast_slice(halves);
            halves.convert_to_f32_slice(&mut out[..halves.len()]);
        }
    };
    match bytemuck::try_cast_slice::<u8, u16>(bytes) {
        Ok(halves) if cfg!(target_endian = "little") => widen(halves, out),
        _ => {
            let mut buffer = [0u16; 64];
            for (chunk, out) in bytes
                .chunks(2 * buffer.len())
                .zip(out.chunks_mut(buffer.len()))
            {
                let buffer = &mut buffer[..out.len()];
                buffer
                    .iter_mut()
                    .zip(chunk.chunks_exact(2))
                    .for_each(|(b, c)| *b = u16::from_le_bytes([c[0], c[1]]));
                widen(buffer, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Widening gives the same values from aligned bytes (read in place) and misaligned ones
    /// (through the buffer), over more values than one buffer holds, for both half types.
    #[test]
    fn widen_half_reads_any_alignment() {
        let values: Vec<f32> = (0..150).map(|i| (i as f32 - 75.0) * 0.37).collect();
        for dtype in [DType::F16, DType::BF16] {
            let bits: Vec<u16> = values
                .iter()
                .map(|&v| match dtype {
                    DType::F16 => f16::from_f32(v).to_bits(),
                    _ => bf16::from_f32(v).to_bits(),
                })
                .collect();
            let want: Vec<f32> = bits
                .iter()
                .map(|&b| match dtype {
                    DType::F16 => f16::from_bits(b).to_f32(),
                    _ => bf16::from_bits(b).to_f32(),
                })
                .collect();
            let data: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            let mut buffers = [vec![0u8; data.len() + 1], vec![0u8; data.len() + 1]];
            // Data copied where its first byte is even, then odd: read in place, then buffered.
            let [even, odd] = &mut buffers;
            let place = |buffer: &mut Vec<u8>, parity: usize| -> std::ops::Range<usize> {
                let start = usize::from(buffer.as_ptr() as usize % 2 != parity);
                buffer[start..start + data.len()].copy_from_slice(&data);
                start..start + data.len()
            };
            let (even_at, odd_at) = (place(even, 0), place(odd, 1));
            for (what, bytes) in [("aligned", &even[even_at]), ("misaligned", &odd[odd_at])] {
                assert_eq!(bytes.as_ptr() as usize % 2 == 1, what == "misaligned");
                let mut got = vec![f32::NAN; values.len()];
                widen_half(dtype, bytes, &mut got);
                assert_eq!(got, want, "{dtype:?}, {what}");
            }
        }
    }

    #[test]
    fn non_finite_values_are_found_in_every_storage_at_any_alignment() {
        let mut values = vec![0.5f32; 10_000];
        assert_eq!(first_non_finite(&values), None);
        values[9_000] = f32::INFINITY;
        values[9_500] = f32::NAN;
        assert_eq!(first_non_finite(&values), Some(9_000));
        for dtype in [DType::F16, DType::BF16] {
            let bits: Vec<u16> = values
                .iter()
                .map(|&v| match dtype {
                    DType::F16 => f16::from_f32(v).to_bits(),
                    _ => bf16::from_f32(v).to_bits(),
                })
                .collect();
            // One byte of offset: a view into a memory map need not be 2-byte aligned.
            let mut bytes = vec![0u8];
            bytes.extend(bits.iter().flat_map(|b| b.to_le_bytes()));
            assert_eq!(
                first_non_finite_half(dtype, &bytes[1..]),
                Some(9_000),
                "{dtype:?}"
            );
            assert_eq!(
                first_non_finite_half(dtype, &bytes[1..2 * 9_000 + 1]),
                None,
                "{dtype:?}: the finite prefix"
            );
        }
        // f16's largest finite value is finite; bf16's 65504 too.
        let max = f16::MAX.to_bits().to_le_bytes();
        assert_eq!(first_non_finite_half(DType::F16, &max), None);
    }

    /// Bad values put in from the back: each check must then report the one just put in, on
    /// this thread (short tensors) and on every core (long ones, bad values in several blocks).
    #[test]
    fn finds_the_first_non_finite_value() {
        for len in [10, 5000, (PARALLEL_CHECK_BLOCKS + 3) * FINITE_BLOCK] {
            let mut values = vec![1.0f32; len];
            let mut f16s: Vec<u8> = values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect();
            let mut bf16s: Vec<u8> = values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect();
            assert_eq!(first_non_finite(&values), None);
            assert_eq!(first_non_finite_half(DType::F16, &f16s), None);
            assert_eq!(first_non_finite_half(DType::BF16, &bf16s), None);
            for (k, at) in [len - 1, len / 2 + 1, len / 2, 3].into_iter().enumerate() {
                let bad = if k % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                };
                values[at] = bad;
                f16s[2 * at..2 * at + 2].copy_from_slice(&f16::from_f32(bad).to_le_bytes());
                bf16s[2 * at..2 * at + 2].copy_from_slice(&bf16::from_f32(bad).to_le_bytes());
                assert_eq!(first_non_finite(&values), Some(at), "f32, {len} values");
                assert_eq!(
                    first_non_finite_half(DType::F16, &f16s),
                    Some(at),
                    "f16, {len} values"
                );
                assert_eq!(
                    first_non_finite_half(DType::BF16, &bf16s),
                    Some(at),
                    "bf16, {len} values"
                );
            }
        }
    }
}
