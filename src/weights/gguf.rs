//! GGUF files (llama.cpp's single-file checkpoints), memory-mapped: header, metadata, tensor
//! infos, and tensors dequantised on request.
//!
//! Layout (all little-endian): the magic `GGUF`, a u32 version (3; 2 differs only in allowing
//! nothing newer, 1 used 32-bit counts and is refused), u64 tensor count, u64 metadata count,
//! the metadata pairs (see `gguf_metadata`), then one info a tensor: name (a u64
//! length and UTF-8), u32 dimension count (at most 4), that many u64 dims, u32 ggml type, u64
//! offset into the data section. The data section starts at the next multiple of `general.alignment`
//! (a u32, default 32) after the infos; every tensor offset is a multiple of it too.
//!
//! Shapes: GGUF lists dims fastest-varying first (ggml's `ne[0]` is a row's length). This
//! reader reports them reversed, row-major as PyTorch/transformers see the tensor: a linear
//! layer's GGUF dims `[in, out]` become `[out, in]` = `[rows, cols]`, and the dequantised values
//! are in that row-major order. Quantisation blocks run along rows.
//!
//! Every size, count and offset read from the file is checked before use (checked arithmetic,
//! counts bounded by the bytes left), so a hostile file yields an [`Error::Weights`] naming the
//! file and the fault, never a panic or a huge allocation.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::gguf_metadata::read_value;
pub use super::gguf_metadata::Value;
pub use super::quant::GgmlType;
use super::quant::{dequantize, dequantize_rows};
use crate::error::{Error, Result};
use crate::tensor::{DType, HostData, HostTensor};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u32 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// The fewest bytes a metadata pair takes (key length, type, a one-byte value).
const MIN_PAIR: usize = 8 + 4 + 1;
/// The fewest bytes a tensor info takes (name length, dim count, type, offset).
const MIN_TENSOR_INFO: usize = 8 + 4 + 4 + 8;

/// An open GGUF file; tensor data stays in the map until dequantised.
pub struct Gguf {
    path: PathBuf,
    map: Mmap,
    version: u32,
    alignment: usize,
    pub(super) metadata: Vec<(String, Value)>,
    pub(super) keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

/// One tensor's description, validated against the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    shape: Vec<usize>,
    ggml_type: GgmlType,
    offset: u64,
    bytes: Range<usize>,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Row-major shape: GGUF's dims reversed (see the module docs).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Dims as the file lists them, fastest-varying first.
    pub fn gguf_dims(&self) -> &[u64] {
        &self.dims
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset into the data section, as stored.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A read position in the map, with what is being read for error messages.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// What the bytes at `pos` belong to ("header", "metadata `general.name`", …).
    context: String,
}

impl<'a> Cursor<'a> {
    pub(super) fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::weights(self.path, format!("{}: {message}", self.context))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
        {
            Some(end) => {
                let taken = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(taken)
            }
            None => Err(self.error(format!(
                "truncated: needs {n} bytes at offset {}, the file has {}",
                self.pos,
                self.bytes.len()
            ))),
        }
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(super) fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        self.check_count(len, 1, "string bytes")?;
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.error(format!("string is not UTF-8: {e}")))
    }

    /// Errors unless `count` items of at least `min_size` bytes each fit in what is left, so
    /// that `count` is safe to allocate for and to cast to usize.
    pub(super) fn check_count(&self, count: u64, min_size: usize, what: &str) -> Result<()> {
        let left = self.bytes.len() - self.pos;
        let fits = count
            .checked_mul(min_size as u64)
            .is_some_and(|needed| needed <= left as u64);
        if fits {
            Ok(())
        } else {
            Err(self.error(format!(
                "{count} {what} cannot fit in the {left} bytes left at offset {} \
                 (each takes at least {min_size})",
                self.pos
            )))
        }
    }
}

/// A tensor info as read, before validation against the data section.
struct RawInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
}

/// What precedes the data section.
struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    infos: Vec<RawInfo>,
    /// Where the tensor infos end (the data section starts at the next aligned offset).
    end: usize,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf> {
        let map = super::map(path)?;
        let header = read_header(&map, path)?;
        let mut gguf = Gguf {
            path: path.to_path_buf(),
            map,
            version: header.version,
            alignment: 0,
            metadata: header.metadata,
            keys: header.keys,
            tensors: Vec::with_capacity(header.infos.len()),
            by_name: HashMap::new(),
        };
        gguf.alignment = gguf.read_alignment()?;
        let data_start = header
            .end
            .checked_next_multiple_of(gguf.alignment)
            .ok_or_else(|| gguf.error("data section start overflows"))?;
        for raw in header.infos {
            let info = gguf.validate(raw, data_start)?;
            if gguf.by_name.contains_key(&info.name) {
                return Err(gguf.error(format!("tensor `{}` appears twice", info.name)));
            }
            gguf.by_name.insert(info.name.clone(), gguf.tensors.len());
            gguf.tensors.push(info);
        }
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment in bytes (`general.alignment`, 32 when absent).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Metadata pairs in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| self.error(format!("no tensor `{name}`")))
    }

    /// The tensor's stored bytes, borrowed from the map.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        Ok(&self.map[self.tensor_info(name)?.bytes.clone()])
    }

    /// Dequantises `name` into `out`, which must hold exactly its elements (row-major).
    pub fn dequantize_f32_into(&self, name: &str, out: &mut [f32]) -> Result<()> {
        self.dequantize_with(name, out, |x| x)
    }

    /// As [`Gguf::dequantize_f32_into`], each value rounded to the nearest f16 (ties to even;
    /// F16 tensors come back unchanged).
    pub fn dequantize_f16_into(&self, name: &str, out: &mut [f16]) -> Result<()> {
        self.dequantize_with(name, out, f16::from_f32)
    }

    /// The tensor dequantised to `dtype` (F32, F16 or BF16, each value rounded to nearest) with
    /// its row-major shape.
    pub fn tensor(&self, name: &str, dtype: DType) -> Result<HostTensor> {
        let info = self.tensor_info(name)?;
        let data = match dtype {
            DType::F32 => {
                let mut values = vec![0f32; info.len()];
                self.dequantize_f32_into(name, &mut values)?;
                HostData::F32(values)
            }
            DType::F16 => {
                let mut values = vec![f16::ZERO; info.len()];
                self.dequantize_f16_into(name, &mut values)?;
                HostData::F16(values)
            }
            DType::BF16 => {
                let mut values = vec![bf16::ZERO; info.len()];
                self.dequantize_with(name, &mut values, bf16::from_f32)?;
                HostData::BF16(values)
            }
            other => {
                return Err(self.error(format!(
                    "tensor `{name}` can be dequantised to F32, F16 or BF16, not {other:?}"
                )))
            }
        };
        HostTensor::new(info.shape.clone(), data)
    }

    /// Dequantises `name` into `out` (exactly its elements, row-major), each value converted
    /// with `convert`.
    pub fn dequantize_with<T: Send>(
        &self,
        name: &str,
        out: &mut [T],
        convert: impl Fn(f32) -> T + Sync,
    ) -> Result<()> {
        let info = self.checked_info(name, out.len())?;
        dequantize(info.ggml_type, &self.map[info.bytes.clone()], out, convert)
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }

    /// As [`Gguf::dequantize_f32_into`] with the rows (of the tensor's last row-major dim)
    /// reordered: row `r` of `out` holds stored row `source_row(r)`, which must be one of the
    /// tensor's rows. Each value is converted with `convert`.
    pub fn dequantize_rows_into<T: Send>(
        &self,
        name: &str,
        out: &mut [T],
        source_row: impl Fn(usize) -> usize + Sync,
        convert: impl Fn(f32) -> T + Sync,
    ) -> Result<()> {
        let info = self.checked_info(name, out.len())?;
        let row_len = info.dims.first().map_or(1, |&d| d as usize);
        dequantize_rows(
            info.ggml_type,
            &self.map[info.bytes.clone()],
            row_len,
            out,
            source_row,
            convert,
        )
        .map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }

    /// The info of tensor `name`, whose elements a buffer of `len` must hold exactly.
    fn checked_info(&self, name: &str, len: usize) -> Result<&TensorInfo> {
        let info = self.tensor_info(name)?;
        if len != info.len() {
            return Err(self.error(format!(
                "tensor `{name}` has {} elements, the buffer {len}",
                info.len()
            )));
        }
        Ok(info)
    }

    /// `general.alignment`: a power-of-two u32 when present.
    fn read_alignment(&self) -> Result<usize> {
        let alignment = match self.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some(_) => self.get_u32(ALIGNMENT_KEY)?,
        };
        if !alignment.is_power_of_two() {
            return Err(self.error(format!(
                "metadata `{ALIGNMENT_KEY}` is {alignment}, not a power of two"
            )));
        }
        Ok(alignment as usize)
    }

    /// Checks a tensor's dims, type and byte range against the data section at `data_start`.
    fn validate(&self, raw: RawInfo, data_start: usize) -> Result<TensorInfo> {
        let fail = |message: String| self.error(format!("tensor `{}`: {message}", raw.name));
        let ty = raw.ggml_type;
        // The product of the non-zero dims must fit too: then every partial product of the shape,
        // in any order, fits (dims [0, 2^40, 2^40] hold no element, yet 2^40 · 2^40 overflows).
        fn product(mut dims: impl Iterator<Item = u64>) -> Option<usize> {
            dims.try_fold(1u64, |n, d| n.checked_mul(d))
                .and_then(|n| usize::try_from(n).ok())
        }
        let elements = product(raw.dims.iter().copied())
            .filter(|_| product(raw.dims.iter().copied().filter(|&d| d > 0)).is_some())
            .ok_or_else(|| {
                fail(format!(
                    "dims {:?} hold more elements than fit in memory",
                    raw.dims
                ))
            })?;
        let row = raw.dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_size() as u64) {
            return Err(fail(format!(
                "row length {row} is not a multiple of {ty}'s block of {} elements",
                ty.block_size()
            )));
        }
        if !raw.offset.is_multiple_of(self.alignment as u64) {
            return Err(fail(format!(
                "data offset {} is not a multiple of the alignment {}",
                raw.offset, self.alignment
            )));
        }
        let len = self.map.len();
        let past_end = || {
            fail(format!(
                "data ({} {ty} elements at offset {} after the data section's start {data_start}) \
                 lies past the end of the file ({len} bytes)",
                elements, raw.offset
            ))
        };
        let size = (elements / ty.block_size())
            .checked_mul(ty.type_size())
            .ok_or_else(past_end)?;
        let start = usize::try_from(raw.offset)
            .ok()
            .and_then(|offset| offset.checked_add(data_start))
            .ok_or_else(past_end)?;
        let end = start
            .checked_add(size)
            .filter(|&end| end <= len)
            .ok_or_else(past_end)?;
        Ok(TensorInfo {
            shape: raw.dims.iter().rev().map(|&d| d as usize).collect(),
            name: raw.name,
            dims: raw.dims,
            ggml_type: ty,
            offset: raw.offset,
            bytes: start..end,
        })
    }

    pub(super) fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::weights(&self.path, message.to_string())
    }
}

/// The header up to the data section: magic, version, counts, metadata and tensor infos.
fn read_header(bytes: &[u8], path: &Path) -> Result<Header> {
    let mut cursor = Cursor {
        bytes,
        pos: 0,
        path,
        context: "header".into(),
    };
    let magic = cursor.array::<4>()?;
    if &magic != MAGIC {
        return Err(cursor.error(format!(
            "not a GGUF file: starts with \"{}\", not \"GGUF\"",
            magic.escape_ascii()
        )));
    }
    let version = match cursor.u32()? {
        version @ (2 | 3) => version,
        1 => return Err(cursor.error("GGUF version 1 is not supported (only 2 and 3)")),
        swapped if matches!(swapped.swap_bytes(), 1..=3) => {
            return Err(cursor.error("big-endian GGUF files are not supported"))
        }
        other => return Err(cursor.error(format!("unsupported GGUF version {other}"))),
    };
    let tensor_count = cursor.u64()?;
    let pair_count = cursor.u64()?;
    cursor.check_count(pair_count, MIN_PAIR, "metadata pairs")?;
    cursor.check_count(tensor_count, MIN_TENSOR_INFO, "tensor infos")?;

    let mut metadata = Vec::with_capacity(pair_count as usize);
    let mut keys = HashMap::new();
    for i in 0..pair_count {
        cursor.context = format!("metadata pair {i}");
        let key = cursor.string()?;
        cursor.context = format!("metadata `{key}`");
        if keys.contains_key(&key) {
            return Err(cursor.error("key appears twice"));
        }
        let ty = cursor.u32()?;
        let value = read_value(&mut cursor, ty, 0)?;
        keys.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let mut infos = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        cursor.context = format!("tensor info {i}");
        let name = cursor.string()?;
        cursor.context = format!("tensor `{name}`");
        let n_dims = cursor.u32()?;
        if n_dims > MAX_DIMS {
            return Err(cursor.error(format!(
                "{n_dims} dimensions (ggml allows at most {MAX_DIMS})"
            )));
        }
        let dims = (0..n_dims)
            .map(|_| cursor.u64())
            .collect::<Result<Vec<_>>>()?;
        let id = cursor.u32()?;
        let ggml_type =
            GgmlType::from_id(id).ok_or_else(|| cursor.error(format!("unknown ggml type {id}")))?;
        let offset = cursor.u64()?;
        infos.push(RawInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    Ok(Header {
        version,
        metadata,
        keys,
        infos,
        end: cursor.pos,
    })
}
