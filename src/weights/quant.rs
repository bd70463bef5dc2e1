//! ggml element types and their dequantisation, block by block, as ggml defines them.
//!
//! A ggml tensor is a run of blocks along its fastest-varying axis; each block packs
//! `block_size` elements into `type_size` bytes, little-endian. The types decoded here:
//! - F32, F16, BF16: one element a "block" (BF16 is the top half of an f32).
//! - Q8_0 (32 elements, 34 bytes): f16 scale `d`, then 32 i8 `q`; x = q·d.
//! - Q4_0 (32, 18): f16 `d`, then 16 bytes whose low nibbles are elements 0–15 and high
//!   nibbles 16–31; x = (q − 8)·d.
//! - Q4_1 (32, 20): f16 `d`, f16 `m`, nibbles as Q4_0; x = q·d + m.
//! - Q4_K (256, 144): f16 `d`, f16 `dmin`, 12 bytes packing eight 6-bit scales and mins, then
//!   128 bytes of nibbles: byte run i (32 bytes) holds sub-block 2i in its low nibbles and
//!   2i+1 in its high ones; x = (d·scale)·q − dmin·min per 32-element sub-block.
//! - Q5_K (256, 176): as Q4_K with 32 bytes of fifth bits between the scales and the nibbles
//!   (bit j of byte l is element l of sub-block j).
//! - Q6_K (256, 210): 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 i8 scales (one
//!   per 16 elements), then f16 `d`; x = (d·scale)·(q − 32).
//!
//! Products and sums are single f32 operations in the order written, never fused, so results
//! match ggml's reference code bit for bit.

use std::fmt;

use half::{bf16, f16};
use rayon::prelude::*;

/// Decodes a run of whole blocks into their elements.
type Decoder = fn(&[u8], &mut [f32]);

/// Elements a parallel task decodes at least (a multiple of every block size): big enough that
/// rayon's dispatch is a small part of the work, small enough that a piece's f32 values stay
/// in L1 between decoding and converting.
const PIECE: usize = 4096;

macro_rules! ggml_types {
    ($($name:ident = $id:literal, $block:literal, $size:expr;)*) => {
        /// A ggml element type, numbered as GGUF tensor infos store it.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $($name,)*
        }

        impl GgmlType {
            /// The type GGUF numbers `id`, if ggml defines one.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$name),)*
                    _ => None,
                }
            }

            /// Its name as ggml spells it (`Q4_K`).
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$name => stringify!($name),)*
                }
            }

            /// (elements a block, bytes a block).
            fn layout(self) -> (usize, usize) {
                match self {
                    $(GgmlType::$name => ($block, $size),)*
                }
            }
        }
    };
}

// Every type ggml defines (not only those decoded), so files holding others still open and
// list their tensors with the right byte sizes.
ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 40;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    IQ2_XXS = 16, 256, 66;
    IQ2_XS = 17, 256, 74;
    IQ3_XXS = 18, 256, 98;
    IQ1_S = 19, 256, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, 256, 110;
    IQ2_S = 22, 256, 82;
    IQ4_XS = 23, 256, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 54;
    TQ2_0 = 35, 256, 66;
    MXFP4 = 39, 32, 17;
}

impl GgmlType {
    /// Elements a block: a row's length must be a multiple of it.
    pub fn block_size(self) -> usize {
        self.layout().0
    }

    /// Bytes a block.
    pub fn type_size(self) -> usize {
        self.layout().1
    }

    fn decoder(self) -> Option<Decoder> {
        Some(match self {
            GgmlType::F32 => |b, out| {
                blocks(b, out, |x: &[u8; 4], o: &mut [f32; 1]| {
                    o[0] = f32::from_le_bytes(*x)
                })
            },
            GgmlType::F16 => |b, out| {
                blocks(b, out, |x: &[u8; 2], o: &mut [f32; 1]| {
                    o[0] = f16::from_le_bytes(*x).to_f32()
                })
            },
            GgmlType::BF16 => |b, out| {
                blocks(b, out, |x: &[u8; 2], o: &mut [f32; 1]| {
                    o[0] = bf16::from_le_bytes(*x).to_f32()
                })
            },
            GgmlType::Q8_0 => |b, out| blocks(b, out, q8_0),
            GgmlType::Q4_0 => |b, out| blocks(b, out, q4_0),
            GgmlType::Q4_1 => |b, out| blocks(b, out, q4_1),
            GgmlType::Q4_K => |b, out| blocks(b, out, q4_k),
            GgmlType::Q5_K => |b, out| blocks(b, out, q5_k),
            GgmlType::Q6_K => |b, out| blocks(b, out, q6_k),
            _ => return None,
        })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes cannot be dequantised; the caller adds which tensor of which file.
#[derive(Debug, PartialEq, Eq)]
pub enum DequantError {
    Unsupported(GgmlType),
    Length {
        ty: GgmlType,
        bytes: usize,
        elements: usize,
    },
}

impl fmt::Display for DequantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DequantError::Unsupported(ty) => write!(
                f,
                "ggml type {ty} cannot be dequantised (supported: F32, F16, BF16, Q8_0, Q4_0, \
                 Q4_1, Q4_K, Q5_K, Q6_K)"
            ),
            DequantError::Length {
                ty,
                bytes,
                elements,
            } => write!(
                f,
                "{bytes} bytes of {ty} do not hold the {elements} elements asked for"
            ),
        }
    }
}

/// Decodes `bytes` (whole blocks of `ty`) into `out`, converting each f32 with `convert`; `out`
/// must have exactly the elements the blocks hold. Pieces of the tensor are decoded on rayon's
/// threads.
pub fn dequantize<T: Send>(
    ty: GgmlType,
    bytes: &[u8],
    out: &mut [T],
    convert: impl Fn(f32) -> T + Sync,
) -> Result<(), DequantError> {
    let decode = checked_decoder(ty, bytes, out.len())?;
    decode_pieces(ty, decode, bytes, out, PIECE, |p| p, convert);
    Ok(())
}

/// As [`dequantize`] for a tensor of rows of `row_len` elements (a multiple of the block), row
/// `r` of `out` decoded from stored row `source_row(r)`, which must be one of the tensor's rows:
/// a reordering of rows costs no copy.
pub fn dequantize_rows<T: Send>(
    ty: GgmlType,
    bytes: &[u8],
    row_len: usize,
    out: &mut [T],
    source_row: impl Fn(usize) -> usize + Sync,
    convert: impl Fn(f32) -> T + Sync,
) -> Result<(), DequantError> {
    let decode = checked_decoder(ty, bytes, out.len())?;
    if row_len == 0
        || !row_len.is_multiple_of(ty.block_size())
        || !out.len().is_multiple_of(row_len)
    {
        return Err(DequantError::Length {
            ty,
            bytes: bytes.len(),
            elements: out.len(),
        });
    }
    decode_pieces(ty, decode, bytes, out, row_len, source_row, convert);
    Ok(())
}

/// `ty`'s decoder, once `bytes` are known to be whole blocks holding `elements` elements.
fn checked_decoder(ty: GgmlType, bytes: &[u8], elements: usize) -> Result<Decoder, DequantError> {
    let decode = ty.decoder().ok_or(DequantError::Unsupported(ty))?;
    let (block, size) = ty.layout();
    if !bytes.len().is_multiple_of(size) || bytes.len() / size * block != elements {
        return Err(DequantError::Length {
            ty,
            bytes: bytes.len(),
            elements,
        });
    }
    Ok(decode)
}

/// Decodes `out` in pieces of `piece` elements (a multiple of the block; the last may be
/// shorter) in parallel, piece `p` from the blocks of stored piece `source(p)`. Each task decodes
/// into a buffer of its own and converts from there.
fn decode_pieces<T: Send>(
    ty: GgmlType,
    decode: Decoder,
    bytes: &[u8],
    out: &mut [T],
    piece: usize,
    source: impl Fn(usize) -> usize + Sync,
    convert: impl Fn(f32) -> T + Sync,
) {
    let (block, size) = ty.layout();
    let piece_bytes = piece / block * size;
    out.par_chunks_mut(piece)
        .enumerate()
        .with_min_len(PIECE.div_ceil(piece))
        .for_each_init(
            || vec![0f32; piece],
            |values, (p, dst)| {
                let start = source(p) * piece_bytes;
                let src = &bytes[start..start + dst.len() / block * size];
                let values = &mut values[..dst.len()];
                decode(src, values);
                for (d, &v) in dst.iter_mut().zip(values.iter()) {
                    *d = convert(v);
                }
            },
        );
}

/// Runs `decode` on each block of `bytes` (`SIZE` bytes a block) and its `BLOCK` elements of
/// `out`: fixed-size arrays, so the compiler unrolls and vectorises each block's loop.
fn blocks<const SIZE: usize, const BLOCK: usize>(
    bytes: &[u8],
    out: &mut [f32],
    decode: impl Fn(&[u8; SIZE], &mut [f32; BLOCK]),
) {
    for (b, o) in bytes.chunks_exact(SIZE).zip(out.chunks_exact_mut(BLOCK)) {
        decode(
            b.try_into().expect("chunks of SIZE bytes"),
            o.try_into().expect("chunks of BLOCK elements"),
        );
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn q8_0(b: &[u8; 34], out: &mut [f32; 32]) {
    let d = half_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Low nibbles are the block's first half, high nibbles its second.
fn nibbles(qs: &[u8; 16], out: &mut [f32; 32], value: impl Fn(u8) -> f32) {
    let (low, high) = out.split_at_mut(16);
    for ((l, h), &q) in low.iter_mut().zip(high).zip(qs) {
        *l = value(q & 0x0F);
        *h = value(q >> 4);
    }
}

fn q4_0(b: &[u8; 18], out: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let qs = b[2..18].try_into().expect("16 bytes");
    nibbles(qs, out, |q| d * f32::from(q as i8 - 8));
}

fn q4_1(b: &[u8; 20], out: &mut [f32; 32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qs = b[4..20].try_into().expect("16 bytes");
    nibbles(qs, out, |q| d * f32::from(q) + m);
}

/// Sub-block `j`'s 6-bit scale and min from the K-quants' 12 packed bytes: the first four
/// sub-blocks use the low 6 bits of bytes 0–3 (scales) and 4–7 (mins); the last four combine
/// a nibble of bytes 8–11 with the top 2 bits of those same bytes.
fn scale_min(scales: &[u8], j: usize) -> (f32, f32) {
    let (scale, min) = if j < 4 {
        (scales[j] & 0x3F, scales[j + 4] & 0x3F)
    } else {
        let packed = scales[j + 4];
        (
            (packed & 0x0F) | ((scales[j - 4] >> 2) & 0x30),
            (packed >> 4) | ((scales[j] >> 2) & 0x30),
        )
    };
    (f32::from(scale), f32::from(min))
}

/// Q4_K and Q5_K: eight 32-element sub-blocks, q = nibble | fifth bit (when `high` is given).
fn k_quant_4_5(b: &[u8], high: Option<&[u8]>, qs: &[u8], out: &mut [f32; 256]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    for (j, sub) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = scale_min(scales, j);
        let (ds, ms) = (d * scale, dmin * min);
        let run = &qs[32 * (j / 2)..32 * (j / 2 + 1)];
        let shift = 4 * (j % 2);
        for (l, o) in sub.iter_mut().enumerate() {
            let mut q = (run[l] >> shift) & 0x0F;
            if let Some(high) = high {
                q |= ((high[l] >> j) & 1) << 4;
            }
            *o = ds * f32::from(q) - ms;
        }
    }
}

fn q4_k(b: &[u8; 144], out: &mut [f32; 256]) {
    k_quant_4_5(b, None, &b[16..144], out);
}

fn q5_k(b: &[u8; 176], out: &mut [f32; 256]) {
    k_quant_4_5(b, Some(&b[16..48]), &b[48..176], out);
}

fn q6_k(b: &[u8; 210], out: &mut [f32; 256]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half_at(b, 208);
    for (e, o) in out.iter_mut().enumerate() {
        // Each 128-element half reads 64 bytes of nibbles (low then high) and 32 bytes of
        // 2-bit parts (four shifts).
        let (half, r) = (e / 128, e % 128);
        let low = (ql[64 * half + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[32 * half + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = (low | (high << 4)) as i8 - 32;
        *o = d * f32::from(scales[e / 16] as i8) * f32::from(q);
    }
}
