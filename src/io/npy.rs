//! NumPy's `.npy` format (one array) and `.npz` (a zip archive of `.npy` members, stored or
//! deflated, as `np.savez` and `np.savez_compressed` write them).
//!
//! A `.npy` file is the magic `\x93NUMPY`, a version, a little-endian header length (u16 in
//! version 1, u32 after), a Python dict literal with `descr`, `fortran_order` and `shape`, then the
//! raw C-order data. Supported element types: little-endian (or byte-order-free) floats `f2 f4 f8`,
//! integers `i1 i2 i4 i8 u1 u2 u4 u8`, `b1`, and fixed-width unicode strings `U<n>` (label
//! columns), which is what numpy writes for embeddings and labels on every common platform.

use std::io::Read;
use std::path::Path;

use half::f16;

use crate::error::{Error, Result};

/// The element type of an array, from its `descr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NpyType {
    Float(usize),
    Int(usize),
    Uint(usize),
    Bool,
    /// UTF-32 strings of this many code points, NUL-padded.
    Unicode(usize),
}

impl NpyType {
    fn parse(descr: &str) -> Option<Self> {
        // By characters, not bytes: the header is any UTF-8 (a multi-byte first character
        // panicked a byte split; found by fuzzing).
        let mut chars = descr.chars();
        let (order, kind) = (chars.next()?, chars.next()?);
        let width: usize = chars.as_str().parse().ok()?;
        // `|` marks types without a byte order; `<` little-endian; `=` native (little here).
        let little = matches!(order, '<' | '=') || (order == '|' && width == 1);
        match kind {
            'f' if little && matches!(width, 2 | 4 | 8) => Some(NpyType::Float(width)),
            'i' if little && matches!(width, 1 | 2 | 4 | 8) => Some(NpyType::Int(width)),
            'u' if little && matches!(width, 1 | 2 | 4 | 8) => Some(NpyType::Uint(width)),
            'b' if little && width == 1 => Some(NpyType::Bool),
            // Four bytes a code point: a width whose byte size overflows is refused here.
            'U' if matches!(order, '<' | '=' | '|') && (1..=usize::MAX / 4).contains(&width) => {
                Some(NpyType::Unicode(width))
            }
            _ => None,
        }
    }

    /// Bytes per element.
    fn size(self) -> usize {
        match self {
            NpyType::Float(w) | NpyType::Int(w) | NpyType::Uint(w) => w,
            NpyType::Bool => 1,
            NpyType::Unicode(chars) => 4 * chars,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, NpyType::Unicode(_))
    }

    pub fn is_float(self) -> bool {
        matches!(self, NpyType::Float(_))
    }
}

/// One array: its shape, element type and raw little-endian C-order bytes.
#[derive(Clone, Debug)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub dtype: NpyType,
    data: Vec<u8>,
}

impl NpyArray {
    /// Parses `.npy` bytes; errors name `what` (the file, or `file:member` in an archive).
    pub fn parse(mut bytes: Vec<u8>, what: &str) -> Result<Self> {
        let bad = |msg: String| Error::input(format!("{what}: {msg}"));
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("not a .npy array (bad magic)".into()));
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
                12,
            ),
            v => return Err(bad(format!("unsupported .npy version {v}"))),
        };
        let header = bytes
            .get(start..start.saturating_add(header_len))
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| bad("truncated or non-UTF-8 header".into()))?;
        let field = |key: &str| {
            let at = header
                .find(&format!("'{key}'"))
                .ok_or_else(|| bad(format!("header lacks `{key}`")))?;
            Ok::<_, Error>(header[at + key.len() + 2..].trim_start_matches([':', ' ']))
        };
        let descr = field("descr")?;
        let descr = descr
            .get(1..)
            .and_then(|d| d.split('\'').next())
            .unwrap_or("");
        let dtype = NpyType::parse(descr).ok_or_else(|| {
            bad(format!(
                "dtype `{descr}` is not supported (little-endian floats, integers, bool, unicode \
                 strings)"
            ))
        })?;
        if field("fortran_order")?.starts_with("True") {
            return Err(bad(
                "Fortran-ordered arrays are not supported; save with C order".into(),
            ));
        }
        let shape_text = field("shape")?;
        let shape = shape_text
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| bad("malformed `shape`".into()))?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| bad("malformed `shape`".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let data_len = bytes.len() - (start + header_len);
        if data_len != expected {
            return Err(bad(format!(
                "{data_len} data bytes for shape {shape:?} of `{descr}`, expected {expected}"
            )));
        }
        bytes.drain(..start + header_len);
        Ok(NpyArray {
            shape,
            dtype,
            data: bytes,
        })
    }

    /// Reads a `.npy` file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(bytes, &path.display().to_string())
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element as f64 (exact for every numeric type but i8/u8 beyond 2⁵³); `None` for
    /// strings.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        let w = self.dtype.size();
        let chunks = self.data.chunks_exact(w.max(1));
        let le = |b: &[u8]| {
            let mut buf = [0u8; 8];
            buf[..b.len()].copy_from_slice(b);
            buf
        };
        Some(match self.dtype {
            NpyType::Float(2) => chunks
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            NpyType::Float(4) => chunks
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
                .collect(),
            NpyType::Float(_) => chunks
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            NpyType::Int(_) => chunks
                .map(|b| {
                    // Sign-extend from the element's width.
                    let shift = 64 - 8 * b.len() as u32;
                    ((i64::from_le_bytes(le(b)) << shift) >> shift) as f64
                })
                .collect(),
            NpyType::Uint(_) | NpyType::Bool => {
                chunks.map(|b| u64::from_le_bytes(le(b)) as f64).collect()
            }
            NpyType::Unicode(_) => return None,
        })
    }

    /// Every element as f32: f2/f4 exactly, wider types rounded; `None` for strings.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            NpyType::Float(4) => Some(
                self.data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect(),
            ),
            _ => Some(self.to_f64()?.into_iter().map(|v| v as f32).collect()),
        }
    }

    /// Every element of a unicode array, trailing NULs dropped; `None` for numbers or invalid
    /// code points.
    pub fn to_strings(&self) -> Option<Vec<String>> {
        let NpyType::Unicode(chars) = self.dtype else {
            return None;
        };
        self.data
            .chunks_exact(4 * chars)
            .map(|item| {
                item.chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .take_while(|&c| c != 0)
                    .map(char::from_u32)
                    .collect::<Option<String>>()
            })
            .collect()
    }
}

/// The arrays of a `.npz` archive, in archive order, by name without the `.npy` suffix.
///
/// A member's declared (inflated) size is the archive's claim, and a deflated member can inflate
/// a thousand times past its compressed bytes: the declared sizes, summed over the members, are
/// checked against the available memory before a member is read, and each member is inflated
/// only up to its declared size. A member that inflates to more or fewer bytes than declared is
/// an error (a crafted or damaged archive), never a read without bound.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::input(format!("{}: {msg}", path.display()));
    // Reserve at most the archive's length up front: the declared size may be a lie.
    let archive_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a .npz archive: {e}")))?;
    let mut arrays = Vec::with_capacity(archive.len());
    let mut declared_total = 0.0;
    for i in 0..archive.len() {
        let member = archive
            .by_index(i)
            .map_err(|e| bad(format!("member {i}: {e}")))?;
        let name = member.name().to_string();
        let Some(key) = name.strip_suffix(".npy") else {
            continue;
        };
        let declared = member.size();
        declared_total += declared as f64;
        crate::limits::check_memory(
            &format!(
                "{}: reading its arrays up to member {name} (declared {declared} bytes \
                 inflated)",
                path.display()
            ),
            declared_total,
        )?;
        let mut bytes = Vec::with_capacity(declared.min(archive_len) as usize);
        // One byte past the declared size tells a member that inflates further.
        member
            .take(declared.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("member {name}: {e}")))?;
        if bytes.len() as u64 != declared {
            let inflated = if bytes.len() as u64 > declared {
                "more".to_string()
            } else {
                format!("only {}", bytes.len())
            };
            return Err(bad(format!(
                "member {name} inflates to {inflated} bytes, but the archive declares \
                 {declared}: a damaged or crafted archive"
            )));
        }
        let array = NpyArray::parse(bytes, &format!("{}:{name}", path.display()))?;
        arrays.push((key.to_string(), array));
    }
    Ok(arrays)
}

/// Writes a little-endian f32 C-order `.npy` (version 1.0) of `shape`, as `np.save` does: the
/// header padded with spaces to a multiple of 64 bytes and ended by a newline.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    assert_eq!(
        shape.iter().product::<usize>(),
        values.len(),
        "shape and values disagree"
    );
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    // A one-element tuple needs its trailing comma.
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}").into_bytes();
    let unpadded = 10 + header.len() + 1;
    header.resize(
        header.len() + unpadded.next_multiple_of(64) - unpadded,
        b' ',
    );
    header.push(b'\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * values.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    super::write_atomic(path, &bytes)
}
