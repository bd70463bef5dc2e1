//! Memory-mapped safetensors checkpoints (single file or sharded through an index).
//!
//! Headers are parsed and validated once at `open` (safetensors checks that the tensors' byte
//! ranges are contiguous, in bounds and cover the data section exactly); tensors are then read
//! straight from the maps. Data is little-endian, as the safetensors format specifies; F32
//! tensors are borrowed zero-copy only on little-endian hosts when 4-byte aligned.
//!
//! Single-file GGUF checkpoints (llama.cpp's, quantised or not) are read by [`gguf`], which
//! shares the mapping helper here. PyTorch's zip checkpoints (`.bin` written by `torch.save`) are
//! read by the restricted unpickler of [`torch_pickle`] into an anonymous map laid out as a
//! safetensors data section would be.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{Error, Result};
use crate::tensor::{DType, HostData, HostTensor, SharedBytes};

pub mod gguf;
mod gguf_metadata;
mod quant;
pub mod torch_pickle;

pub use gguf::Gguf;

/// Element type of a model's GEMM weights and embedding tables on the device (`mscope embed
/// --weights-dtype`). Biases and norm parameters are always f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsDtype {
    /// The checkpoint's, as sentence-transformers runs it: F16 and BF16 weights stay half
    /// precision on backends whose kernels read them (the CPU reads both in place from the map,
    /// [`crate::backend::Backend::upload_half`]; wgpu keeps f16), F32 weights stay f32.
    #[default]
    Auto,
    /// f32 whatever the checkpoint stores (half-precision values widen exactly).
    F32,
    /// f16 whatever the checkpoint stores (F32 and BF16 values rounded to nearest), on backends
    /// whose kernels read f16; the others widen them back to f32.
    F16,
    /// bf16 whatever the checkpoint stores (F32 and F16 values rounded to nearest, ties to even;
    /// a BF16 checkpoint stays in place). Each backend then uploads bf16 as it always does
    /// ([`crate::backend::Backend::upload_bf16`]): the CPU keeps it (its packed half-precision
    /// GEMM widens one panel at a time), wgpu, which has no bf16 type, converts it to f16 where
    /// it keeps f16 and the values fit, CUDA keeps it bf16 (its kernels widen it as they load it).
    Bf16,
}

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// A checkpoint's tensors, kept mapped for the lifetime of the value.
pub struct Weights {
    /// What was opened (a .safetensors file or the index); named in checkpoint-wide errors.
    origin: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, Entry>,
    prefix: String,
}

struct MappedFile {
    path: PathBuf,
    /// Shared with the half-precision matrices that borrow from it ([`Weights::half`]).
    map: Arc<Mmap>,
    /// Offset of the data section: the 8-byte header length plus the JSON header.
    data_start: usize,
}

/// Where one tensor lives: file index, stored dtype, shape and absolute byte range in the map.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// The `weight_map` of a Hugging Face `model.safetensors.index.json` (tensor name → shard file).
#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl Weights {
    /// `path` is a model directory (uses model.safetensors, or model.safetensors.index.json
    /// with its shards `model-0000x-of-0000y.safetensors`), an index file, or a single
    /// .safetensors file.
    pub fn open(path: &Path) -> Result<Weights> {
        if path.is_dir() {
            let single = path.join(SINGLE_FILE);
            let index = path.join(INDEX_FILE);
            if single.is_file() {
                Self::open_single(&single)
            } else if index.is_file() {
                Self::open_index(&index)
            } else {
                Err(Error::weights(
                    path,
                    format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
                ))
            }
        } else if path.to_string_lossy().ends_with(".index.json") {
            Self::open_index(path)
        } else if path.extension().is_some_and(|e| e == "bin") {
            Self::open_torch(path)
        } else {
            Self::open_single(path)
        }
    }

    fn open_single(path: &Path) -> Result<Weights> {
        let (file, header) = map_file(path)?;
        let tensors = header
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, entry(0, &file, info)))
            .collect();
        let mut weights = Weights::empty(path);
        weights.files.push(file);
        weights.tensors = tensors;
        Ok(weights)
    }

    /// Each shard is mapped once, when the weight map first names it. The index is
    /// authoritative: every tensor it names must be in the shard it names, and tensors it does
    /// not name are ignored.
    fn open_index(index_path: &Path) -> Result<Weights> {
        let text = std::fs::read_to_string(index_path)
            .map_err(|e| Error::weights(index_path, format!("cannot read index: {e}")))?;
        let index: Index = serde_json::from_str(&text)
            .map_err(|e| Error::weights(index_path, format!("invalid index JSON: {e}")))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut weights = Weights::empty(index_path);
        let mut headers = Vec::new();
        let mut shard_of = HashMap::new();
        for (name, shard) in &index.weight_map {
            let file = match shard_of.get(shard) {
                Some(&i) => i,
                None => {
                    let shard_path = dir.join(shard);
                    if !shard_path.is_file() {
                        return Err(Error::weights(
                            index_path,
                            format!(
                                "shard {} (holding `{name}`) does not exist",
                                shard_path.display()
                            ),
                        ));
                    }
                    let (mapped, header) = map_file(&shard_path)?;
                    weights.files.push(mapped);
                    headers.push(header);
                    shard_of.insert(shard, headers.len() - 1);
                    headers.len() - 1
                }
            };
            let header = &headers[file];
            let info = header.info(name).ok_or_else(|| {
                Error::weights(
                    index_path,
                    format!("index puts `{name}` in shard {shard}, which does not hold it"),
                )
            })?;
            let entry = entry(file, &weights.files[file], info);
            weights.tensors.insert(name.clone(), entry);
        }
        Ok(weights)
    }

    /// A `torch.save` checkpoint: its tensors copied, contiguous and 8-byte aligned, into one
    /// anonymous map, so every reader below works on it as on a safetensors file.
    fn open_torch(path: &Path) -> Result<Weights> {
        let tensors = torch_pickle::read_torch_checkpoint(path)?;
        Self::anonymous(
            path,
            tensors
                .into_iter()
                .map(|(name, t)| (name, t.dtype, t.shape, Cow::Owned(t.bytes))),
        )
    }

    /// F32 tensors held in memory (name, shape, values), e.g. a model's parameters between two
    /// optimizer steps, copied into an anonymous map as [`Weights::open`] would find them in a
    /// safetensors file; `origin` is what errors name.
    pub fn from_f32<'a>(
        origin: &Path,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    ) -> Result<Weights> {
        Self::anonymous(
            origin,
            tensors.into_iter().map(|(name, shape, values)| {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (
                    name.to_string(),
                    Dtype::F32,
                    shape.to_vec(),
                    Cow::Owned(bytes),
                )
            }),
        )
    }

    /// Tensors (name, dtype, shape, little-endian bytes) copied, contiguous and 8-byte aligned,
    /// into one anonymous map.
    fn anonymous<'a>(
        origin: &Path,
        tensors: impl Iterator<Item = (String, Dtype, Vec<usize>, Cow<'a, [u8]>)>,
    ) -> Result<Weights> {
        let tensors: Vec<_> = tensors.collect();
        let align = |n: usize| n.div_ceil(8) * 8;
        let total: usize = tensors.iter().map(|(.., bytes)| align(bytes.len())).sum();
        let mut map = memmap2::MmapOptions::new()
            .len(total.max(1))
            .map_anon()
            .map_err(|e| Error::weights(origin, format!("cannot allocate {total} bytes: {e}")))?;
        let mut weights = Weights::empty(origin);
        let mut at = 0;
        for (name, dtype, shape, bytes) in tensors {
            let expected = (shape.iter().product::<usize>() * dtype.bitsize()).div_ceil(8);
            if bytes.len() != expected {
                return Err(Error::weights(
                    origin,
                    format!(
                        "tensor `{name}` of shape {shape:?} has {} bytes, expected {expected}",
                        bytes.len()
                    ),
                ));
            }
            let end = at + bytes.len();
            map[at..end].copy_from_slice(&bytes);
            let entry = Entry {
                file: 0,
                dtype,
                shape,
                bytes: at..end,
            };
            if weights.tensors.insert(name.clone(), entry).is_some() {
                return Err(Error::weights(
                    origin,
                    format!("tensor `{name}` appears twice"),
                ));
            }
            at = align(end);
        }
        let map = map
            .make_read_only()
            .map_err(|e| Error::weights(origin, format!("cannot map: {e}")))?;
        weights.files.push(MappedFile {
            path: origin.to_path_buf(),
            map: Arc::new(map),
            data_start: 0,
        });
        Ok(weights)
    }

    fn empty(origin: &Path) -> Weights {
        Weights {
            origin: origin.to_path_buf(),
            files: Vec::new(),
            tensors: HashMap::new(),
            prefix: String::new(),
        }
    }

    /// Picks the first prefix in `candidates` (e.g. ["", "bert.", "roberta."]) for which
    /// `anchor` (e.g. "embeddings.word_embeddings.weight") exists, so one loader serves
    /// checkpoints saved with and without a task head; errors name the file, the anchor and
    /// the prefixes tried.
    pub fn resolve_prefix(&mut self, anchor: &str, candidates: &[&str]) -> Result<&str> {
        match candidates
            .iter()
            .find(|p| self.tensors.contains_key(&format!("{p}{anchor}")))
        {
            Some(p) => {
                self.prefix = p.to_string();
                Ok(&self.prefix)
            }
            None => Err(Error::weights(
                &self.origin,
                format!("no tensor `{anchor}` under any of the prefixes {candidates:?}"),
            )),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` is without the prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.full_name(name))
    }

    /// Full names (with any prefix), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.entry(name)?.1.shape.clone())
    }

    pub fn dtype(&self, name: &str) -> Result<DType> {
        let (full, entry) = self.entry(name)?;
        self.supported(&full, entry)
    }

    /// f32 values of `name`, checked against `shape`. Borrowed (zero-copy from the map) when
    /// the tensor is F32 and 4-byte aligned; copied when misaligned, converted from F16/BF16.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [f32]>> {
        let (full, entry, bytes) = self.checked(name, shape)?;
        match self.supported(&full, entry)? {
            DType::F32 => Ok(match bytemuck::try_cast_slice(bytes) {
                Ok(values) if cfg!(target_endian = "little") => Cow::Borrowed(values),
                _ => Cow::Owned(decode(bytes, f32::from_le_bytes)),
            }),
            DType::F16 => Ok(Cow::Owned(decode(bytes, |b| {
                f16::from_le_bytes(b).to_f32()
            }))),
            DType::BF16 => Ok(Cow::Owned(decode(bytes, |b| {
                bf16::from_le_bytes(b).to_f32()
            }))),
            DType::I64 => Err(Error::weights(
                &self.files[entry.file].path,
                format!("tensor `{full}` has dtype I64, expected a float dtype (F32, F16, BF16)"),
            )),
        }
    }

    /// The tensor in its stored dtype (F32/F16/BF16/I64) as a HostTensor, shape-checked.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (full, entry, bytes) = self.checked(name, shape)?;
        let data = match self.supported(&full, entry)? {
            DType::F32 => HostData::F32(decode(bytes, f32::from_le_bytes)),
            DType::F16 => HostData::F16(decode(bytes, f16::from_le_bytes)),
            DType::BF16 => HostData::BF16(decode(bytes, bf16::from_le_bytes)),
            DType::I64 => HostData::I64(decode(bytes, i64::from_le_bytes)),
        };
        HostTensor::new(entry.shape.clone(), data)
    }

    /// The bytes of `name`, shape-checked, with its dtype, where it is F16 or BF16: borrowed from
    /// the map (which they keep alive), so a backend that reads half precision needs no copy.
    /// `None` for other dtypes.
    pub fn half(&self, name: &str, shape: &[usize]) -> Result<Option<(DType, SharedBytes)>> {
        let (dtype, bytes) = self.shared(name, shape)?;
        Ok(matches!(dtype, DType::F16 | DType::BF16).then_some((dtype, bytes)))
    }

    /// The bytes of `name`, shape-checked, where it is F32 and they can be read in place
    /// ([`SharedBytes::as_f32`]): borrowed from the map, as [`Weights::half`]'s.
    pub fn mapped_f32(&self, name: &str, shape: &[usize]) -> Result<Option<SharedBytes>> {
        let (dtype, bytes) = self.shared(name, shape)?;
        Ok((dtype == DType::F32 && bytes.as_f32().is_some()).then_some(bytes))
    }

    /// The stored dtype and bytes of `name`, shape-checked, shared with the map.
    fn shared(&self, name: &str, shape: &[usize]) -> Result<(DType, SharedBytes)> {
        let (full, entry, _) = self.checked(name, shape)?;
        let dtype = self.supported(&full, entry)?;
        let map: Arc<dyn AsRef<[u8]> + Send + Sync> = self.files[entry.file].map.clone();
        Ok((dtype, SharedBytes::new(map, entry.bytes.clone())?))
    }

    /// The element type `dtype` picks for tensors `names`: with `Auto` the stored one when every
    /// tensor is F16 (or every one BF16), else F32.
    pub fn stacked_dtype(&self, names: &[String], dtype: WeightsDtype) -> Result<DType> {
        let stored = names
            .iter()
            .map(|n| self.dtype(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(match (dtype, stored.first()) {
            (WeightsDtype::F16, _) => DType::F16,
            (WeightsDtype::Bf16, _) => DType::BF16,
            (WeightsDtype::Auto, Some(&first))
                if matches!(first, DType::F16 | DType::BF16)
                    && stored.iter().all(|&d| d == first) =>
            {
                first
            }
            _ => DType::F32,
        })
    }

    /// Tensors `names`, each of `shape`, stacked along the first axis in the element type
    /// [`Weights::stacked_dtype`] picks.
    pub fn stacked(
        &self,
        names: &[String],
        shape: &[usize],
        dtype: WeightsDtype,
    ) -> Result<HostTensor> {
        let target = self.stacked_dtype(names, dtype)?;
        let mut stacked_shape = shape.to_vec();
        stacked_shape[0] *= names.len();
        let data = match target {
            DType::F16 => {
                let mut values = Vec::with_capacity(names.len() * shape.iter().product::<usize>());
                for name in names {
                    match self.host(name, shape)?.into_data() {
                        HostData::F16(v) => values.extend(v),
                        _ => {
                            values.extend(self.f32(name, shape)?.iter().map(|&v| f16::from_f32(v)))
                        }
                    }
                }
                HostData::F16(values)
            }
            DType::BF16 => {
                let mut values = Vec::with_capacity(names.len() * shape.iter().product::<usize>());
                for name in names {
                    match self.host(name, shape)?.into_data() {
                        HostData::BF16(v) => values.extend(v),
                        _ => {
                            values.extend(self.f32(name, shape)?.iter().map(|&v| bf16::from_f32(v)))
                        }
                    }
                }
                HostData::BF16(values)
            }
            _ => {
                let mut values = Vec::new();
                for name in names {
                    values.extend_from_slice(&self.f32(name, shape)?);
                }
                HostData::F32(values)
            }
        };
        HostTensor::new(stacked_shape, data)
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn entry(&self, name: &str) -> Result<(String, &Entry)> {
        let full = self.full_name(name);
        match self.tensors.get(&full) {
            Some(entry) => Ok((full, entry)),
            None => {
                let prefix = if self.prefix.is_empty() {
                    "none".to_string()
                } else {
                    format!("`{}`", self.prefix)
                };
                Err(Error::weights(
                    &self.origin,
                    format!("no tensor `{full}` (name `{name}`, prefix {prefix})"),
                ))
            }
        }
    }

    /// The entry and its bytes, after checking the stored shape against the expected one.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<(String, &Entry, &[u8])> {
        let (full, entry) = self.entry(name)?;
        let file = &self.files[entry.file];
        if entry.shape != shape {
            return Err(Error::weights(
                &file.path,
                format!(
                    "tensor `{full}` has shape {:?}, expected {shape:?}",
                    entry.shape
                ),
            ));
        }
        // `open` validated the range against the map; `get` keeps that a checked fact here.
        let bytes = file.map.get(entry.bytes.clone()).ok_or_else(|| {
            Error::weights(&file.path, format!("tensor `{full}` lies outside the file"))
        })?;
        Ok((full, entry, bytes))
    }

    fn supported(&self, full: &str, entry: &Entry) -> Result<DType> {
        match entry.dtype {
            Dtype::F32 => Ok(DType::F32),
            Dtype::F16 => Ok(DType::F16),
            Dtype::BF16 => Ok(DType::BF16),
            Dtype::I64 => Ok(DType::I64),
            other => Err(Error::weights(
                &self.files[entry.file].path,
                format!(
                    "tensor `{full}` has unsupported dtype {other} (want F32, F16, BF16 or I64)"
                ),
            )),
        }
    }
}

/// Maps `path` and parses (and validates) its header.
fn map_file(path: &Path) -> Result<(MappedFile, Metadata)> {
    let map = map(path)?;
    let (header_len, header) =
        SafeTensors::read_metadata(&map).map_err(|e| Error::weights(path, describe(&e, &map)))?;
    Ok((
        MappedFile {
            path: path.to_path_buf(),
            map: Arc::new(map),
            data_start: 8 + header_len,
        },
        header,
    ))
}

/// Maps `path` read-only (safetensors and GGUF files alike).
fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::weights(path, format!("cannot open: {e}")))?;
    // SAFETY: weights files are treated as read-only and must not be modified while mapped
    // (the usual contract for memory-mapped checkpoints); we never write through the map.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::weights(path, format!("cannot map: {e}")))
}

fn entry(file: usize, mapped: &MappedFile, info: &TensorInfo) -> Entry {
    let (start, end) = info.data_offsets;
    let base = mapped.data_start;
    Entry {
        file,
        dtype: info.dtype,
        shape: info.shape.clone(),
        bytes: base + start..base + end,
    }
}

/// Turns safetensors' header errors into messages that say what is wrong with the file.
fn describe(error: &SafeTensorError, bytes: &[u8]) -> String {
    let declared = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    match error {
        SafeTensorError::HeaderTooSmall if bytes.is_empty() => "file is empty".into(),
        SafeTensorError::HeaderTooSmall => {
            format!(
                "file is {} bytes, too short for a safetensors header",
                bytes.len()
            )
        }
        SafeTensorError::InvalidHeaderLength => format!(
            "header length {declared} is larger than the file ({} bytes)",
            bytes.len()
        ),
        SafeTensorError::HeaderTooLarge => {
            format!("header length {declared} exceeds safetensors' 100 MB limit")
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "data section is {} bytes, not what the header's tensors need (truncated file?)",
            bytes
                .len()
                .saturating_sub(8)
                .saturating_sub(declared as usize)
        ),
        SafeTensorError::InvalidOffset(name) => {
            format!(
                "tensor `{name}` has invalid data offsets (out of bounds, overlapping or gapped)"
            )
        }
        other => format!("invalid safetensors header: {other}"),
    }
}

/// Decodes little-endian elements of `N` bytes; works at any alignment.
fn decode<const N: usize, T>(bytes: &[u8], from_le: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut array = [0u8; N];
            array.copy_from_slice(chunk);
            from_le(array)
        })
        .collect()
}
