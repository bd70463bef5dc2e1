//! PyTorch checkpoints written by `torch.save` (`pytorch_model.bin`, open_clip's
//! `open_clip_pytorch_model.bin`), read by a restricted unpickler that executes no code.
//!
//! Since PyTorch 1.6 such a file is a zip archive: `PREFIX/data.pkl` pickles the state dict, and
//! each tensor storage's raw little-endian bytes are the member `PREFIX/data/KEY`. The pickle
//! builds tensors by calling `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`
//! on storages it names through persistent ids `('storage', torch.FloatStorage, KEY, device,
//! numel)`. A pickle may name any importable function, which `pickle.load` calls, so loading an
//! untrusted checkpoint with plain pickle runs whatever it says; here the opcodes are interpreted
//! on a value stack and only these globals exist: `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`, `collections.OrderedDict`, and the storage types
//! `torch.FloatStorage`, `HalfStorage`, `BFloat16Storage`, `LongStorage`. Any other global is
//! refused by name before anything is built; nothing is ever called but those four rebuilds, which
//! this file implements itself.
//!
//! The legacy (pre-1.6) format, a bare pickle stream, is refused with the command that converts
//! it to safetensors.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use safetensors::Dtype;

use crate::error::{Error, Result};

/// One tensor of a checkpoint, contiguous (row-major) little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct PickledTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The globals a checkpoint of tensors needs; every other one is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    RebuildTensor,
    RebuildParameter,
    OrderedDict,
    Storage(Dtype),
}

const ALLOWED: &str = "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, \
                       collections.OrderedDict, torch.FloatStorage, torch.HalfStorage, \
                       torch.BFloat16Storage, torch.LongStorage";

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch", "FloatStorage") => Global::Storage(Dtype::F32),
            ("torch", "HalfStorage") => Global::Storage(Dtype::F16),
            ("torch", "BFloat16Storage") => Global::Storage(Dtype::BF16),
            ("torch", "LongStorage") => Global::Storage(Dtype::I64),
            _ => return None,
        })
    }
}

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Clone, Debug, PartialEq)]
struct TensorView {
    storage: String,
    dtype: Dtype,
    numel: usize,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage {
        key: String,
        dtype: Dtype,
        numel: usize,
    },
    Tensor(TensorView),
}

/// The most values [`unpickle`] copies out of the memo (a state dict copies a few per tensor).
const MAX_COPIED_NODES: usize = 1 << 24;

impl Value {
    /// The number of values in this one, itself included.
    fn nodes(&self) -> usize {
        1 + match self {
            Value::Tuple(items) | Value::List(items) => items.iter().map(Value::nodes).sum(),
            Value::Dict(items) => items.iter().map(|(k, v)| k.nodes() + v.nodes()).sum(),
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Storage { .. } => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// Reads every tensor of a `torch.save` zip checkpoint, in the pickle's order.
pub fn read_torch_checkpoint(path: &Path) -> Result<Vec<(String, PickledTensor)>> {
    let bad = |message: String| Error::weights(path, message);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Members are read into buffers reserved for their declared size, which the archive states
    // and may lie about: no more than the archive's own length is reserved up front (torch.save
    // stores members uncompressed, so a real member never exceeds it).
    let archive_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut archive = match zip::ZipArchive::new(file) {
        Ok(archive) => archive,
        Err(_) => {
            return Err(bad(format!(
                "not a zip-format PyTorch checkpoint (the legacy format before PyTorch 1.6 is \
                 not read); convert it once with\n  python -c \"import torch, safetensors.torch \
                 as st; sd = torch.load('{}', map_location='cpu', weights_only=True); \
                 st.save_file({{k: v.contiguous() for k, v in sd.items()}}, '{}')\"",
                path.display(),
                safetensors_name(path).display()
            )))
        }
    };
    let pickle_name = archive
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_owned)
        .ok_or_else(|| {
            bad("a zip archive without PREFIX/data.pkl: not a torch.save file".into())
        })?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
    let mut member = |name: &str| -> Result<Vec<u8>> {
        let mut entry = archive
            .by_name(name)
            .map_err(|e| bad(format!("member {name}: {e}")))?;
        let mut bytes = Vec::with_capacity(entry.size().min(archive_len) as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("member {name}: {e}")))?;
        Ok(bytes)
    };
    if let Ok(order) = member(&format!("{prefix}byteorder")) {
        if order.trim_ascii() != b"little" {
            return Err(bad(format!(
                "storages are {}-endian; only little-endian checkpoints are read",
                String::from_utf8_lossy(order.trim_ascii())
            )));
        }
    }
    let pickle = member(&pickle_name)?;
    let root = unpickle(&pickle).map_err(|e| bad(format!("{pickle_name}: {e}")))?;
    let entries = match root {
        Value::Dict(entries) => entries,
        other => {
            return Err(bad(format!(
                "the checkpoint is {}, not a dict of tensors (a state dict)",
                other.kind()
            )))
        }
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let name = match key {
            Value::Str(name) => name,
            other => return Err(bad(format!("a state-dict key is {}", other.kind()))),
        };
        let view = match value {
            Value::Tensor(view) => view,
            other => {
                return Err(bad(format!(
                    "`{name}` is {}, not a tensor (a state dict holds tensors only)",
                    other.kind()
                )))
            }
        };
        if !storages.contains_key(&view.storage) {
            let bytes = member(&format!("{prefix}data/{}", view.storage))?;
            storages.insert(view.storage.clone(), bytes);
        }
        let tensor = materialize(&view, &storages[&view.storage])
            .map_err(|e| bad(format!("`{name}`: {e}")))?;
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

/// Where the safetensors conversion of `path` belongs: `…pytorch_model.bin` becomes
/// `…model.safetensors` (Hugging Face's and open_clip's names), anything else `STEM.safetensors`.
fn safetensors_name(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let converted = match name.strip_suffix("pytorch_model.bin") {
        Some(head) => format!("{head}model.safetensors"),
        None => format!(
            "{}.safetensors",
            path.file_stem().unwrap_or_default().to_string_lossy()
        ),
    };
    path.with_file_name(converted)
}

/// The contiguous bytes of `view`, every index checked against its storage.
fn materialize(view: &TensorView, storage: &[u8]) -> std::result::Result<PickledTensor, String> {
    let size = view.dtype.bitsize() / 8;
    let available = storage.len() / size;
    if available < view.numel {
        return Err(format!(
            "storage {} holds {available} elements, the pickle says {}",
            view.storage, view.numel
        ));
    }
    let count = view
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("the shape overflows")?;
    if count > 0 {
        // The furthest element the view reaches.
        let last = view
            .shape
            .iter()
            .zip(&view.stride)
            .try_fold(view.offset, |at, (&d, &s)| {
                at.checked_add((d - 1).checked_mul(s)?)
            })
            .ok_or("the strides overflow")?;
        if last >= view.numel {
            return Err(format!(
                "shape {:?}, strides {:?} and offset {} reach element {last} of a storage of {}",
                view.shape, view.stride, view.offset, view.numel
            ));
        }
    }
    let mut bytes = Vec::with_capacity(count * size);
    let mut index = vec![0usize; view.shape.len()];
    for _ in 0..count {
        let at = view.offset
            + index
                .iter()
                .zip(&view.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        bytes.extend_from_slice(&storage[at * size..(at + 1) * size]);
        // Next index in row-major order.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < view.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(PickledTensor {
        dtype: view.dtype,
        shape: view.shape.clone(),
        bytes,
    })
}

/// Interprets a pickle (protocols 2–5, the opcodes `torch.save` emits and a few more of the
/// same kind) without calling anything but the allowed rebuilds.
fn unpickle(bytes: &[u8]) -> std::result::Result<Value, String> {
    let mut reader = Reader { bytes, at: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    // Values copied out of the memo, in nodes: a hostile pickle that fetches a list into itself
    // over and over would double its size each time.
    let mut copied = 0usize;
    let underflow = |at: usize| format!("malformed pickle: stack underflow at byte {at}");
    loop {
        let op_at = reader.at;
        let op = reader.u8()?;
        let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| underflow(op_at));
        let pop_mark = |stack: &mut Vec<Value>, marks: &mut Vec<usize>| {
            let mark = marks.pop().ok_or_else(|| underflow(op_at))?;
            if mark > stack.len() {
                return Err(underflow(op_at));
            }
            Ok(stack.split_off(mark))
        };
        match op {
            0x80 => {
                reader.u8()?; // PROTO
            }
            0x95 => {
                reader.take(8)?; // FRAME: a length hint
            }
            b'.' => return pop(&mut stack), // STOP
            b'(' => marks.push(stack.len()),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(i64::from(reader.u8()?))),
            b'M' => stack.push(Value::Int(i64::from(u16::from_le_bytes(reader.array()?)))),
            b'J' => stack.push(Value::Int(i64::from(i32::from_le_bytes(reader.array()?)))),
            0x8a => {
                // LONG1: a little-endian two's-complement integer of n bytes.
                let n = usize::from(reader.u8()?);
                let raw = reader.take(n)?;
                if n > 8 {
                    return Err(format!("an integer of {n} bytes at byte {op_at}"));
                }
                let mut buf = if raw.last().is_some_and(|&b| b & 0x80 != 0) {
                    [0xFF; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(raw);
                stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(reader.array()?))),
            b'X' => {
                let n = u32::from_le_bytes(reader.array()?) as usize;
                stack.push(Value::Str(reader.utf8(n)?));
            }
            0x8c => {
                let n = usize::from(reader.u8()?);
                stack.push(Value::Str(reader.utf8(n)?));
            }
            0x8d => {
                let n = usize::try_from(u64::from_le_bytes(reader.array()?))
                    .map_err(|_| "a string longer than memory".to_string())?;
                stack.push(Value::Str(reader.utf8(n)?));
            }
            // BINSTRING / SHORT_BINSTRING (protocol 2 `str` of Python 2): Latin-1.
            b'T' | b'U' => {
                let n = if op == b'T' {
                    u32::from_le_bytes(reader.array()?) as usize
                } else {
                    usize::from(reader.u8()?)
                };
                let raw = reader.take(n)?;
                stack.push(Value::Str(raw.iter().map(|&b| char::from(b)).collect()));
            }
            b't' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err(underflow(op_at));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                stack.push(Value::Dict(pairs(items, op_at)?));
            }
            b'a' => {
                let item = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(list)) => list.push(item),
                    _ => return Err(format!("APPEND to a non-list at byte {op_at}")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                match stack.last_mut() {
                    Some(Value::List(list)) => list.extend(items),
                    _ => return Err(format!("APPENDS to a non-list at byte {op_at}")),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let value = pop(&mut stack)?;
                    let key = pop(&mut stack)?;
                    vec![key, value]
                } else {
                    pop_mark(&mut stack, &mut marks)?
                };
                match stack.last_mut() {
                    Some(Value::Dict(dict)) => dict.extend(pairs(items, op_at)?),
                    _ => return Err(format!("SETITEM on a non-dict at byte {op_at}")),
                }
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => u64::from(reader.u8()?),
                    b'r' => u64::from(u32::from_le_bytes(reader.array()?)),
                    _ => memo.len() as u64, // MEMOIZE
                };
                let top = stack.last().ok_or_else(|| underflow(op_at))?.clone();
                memo.insert(key, top);
            }
            b'h' | b'j' => {
                let key = if op == b'h' {
                    u64::from(reader.u8()?)
                } else {
                    u64::from(u32::from_le_bytes(reader.array()?))
                };
                let value = memo
                    .get(&key)
                    .ok_or_else(|| format!("memo entry {key} read before written"))?;
                copied += value.nodes();
                if copied > MAX_COPIED_NODES {
                    return Err(format!(
                        "the pickle copies more than {MAX_COPIED_NODES} values out of its memo; \
                         not a checkpoint"
                    ));
                }
                stack.push(value.clone());
            }
            b'c' => {
                let module = reader.line()?;
                let name = reader.line()?;
                stack.push(Value::Global(global(&module, &name)?));
            }
            0x93 => {
                // STACK_GLOBAL: module and name from the stack.
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => {
                        stack.push(Value::Global(global(&module, &name)?))
                    }
                    _ => return Err(format!("STACK_GLOBAL without names at byte {op_at}")),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent_storage(pid)?);
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(reduce(callable, args)?);
            }
            b'b' => {
                // BUILD: a state dict's `_metadata` attribute (per-module versions) set on the
                // OrderedDict; the tensors do not depend on it, so it is dropped.
                let _state = pop(&mut stack)?;
                match stack.last() {
                    Some(Value::Dict(_)) => {}
                    _ => return Err(format!("BUILD on something other than a dict at {op_at}")),
                }
            }
            other => {
                return Err(format!(
                    "pickle opcode 0x{other:02x} at byte {op_at} is not one a checkpoint of \
                     tensors uses"
                ))
            }
        }
    }
}

fn global(module: &str, name: &str) -> std::result::Result<Global, String> {
    Global::resolve(module, name).ok_or_else(|| {
        format!(
            "the pickle refers to `{module}.{name}`, which a checkpoint of tensors does not need; \
             refused without running anything (allowed: {ALLOWED})"
        )
    })
}

/// Key-value pairs from a flat list `k₁ v₁ k₂ v₂ …`.
fn pairs(items: Vec<Value>, at: usize) -> std::result::Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("an odd number of dict items at byte {at}"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn index(value: &Value, what: &str) -> std::result::Result<usize, String> {
    match value {
        Value::Int(n) => usize::try_from(*n).map_err(|_| format!("{what} {n} is negative")),
        other => Err(format!("{what} is {}, not an int", other.kind())),
    }
}

fn indices(value: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    match value {
        Value::Tuple(items) => items.iter().map(|v| index(v, what)).collect(),
        other => Err(format!("{what} is {}, not a tuple", other.kind())),
    }
}

/// `('storage', STORAGE_TYPE, KEY, DEVICE, NUMEL)`.
fn persistent_storage(pid: Value) -> std::result::Result<Value, String> {
    if let Value::Tuple(items) = &pid {
        if let [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), _, numel] =
            items.as_slice()
        {
            if tag == "storage" {
                return Ok(Value::Storage {
                    key: key.clone(),
                    dtype: *dtype,
                    numel: index(numel, "a storage's size")?,
                });
            }
        }
    }
    Err(format!("persistent id {pid:?} is not a storage reference"))
}

/// Calls one of the allowed globals on `args`.
fn reduce(callable: Value, args: Value) -> std::result::Result<Value, String> {
    let args = match args {
        Value::Tuple(args) => args,
        other => return Err(format!("REDUCE arguments are {}", other.kind())),
    };
    match callable {
        Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new())),
        Value::Global(Global::RebuildTensor) if (6..=7).contains(&args.len()) => {
            let (key, dtype, numel) = match &args[0] {
                Value::Storage { key, dtype, numel } => (key.clone(), *dtype, *numel),
                other => return Err(format!("a tensor's storage is {}", other.kind())),
            };
            let shape = indices(&args[2], "a tensor's size")?;
            let stride = indices(&args[3], "a tensor's stride")?;
            if shape.len() != stride.len() {
                return Err(format!(
                    "size {shape:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Value::Tensor(TensorView {
                storage: key,
                dtype,
                numel,
                offset: index(&args[1], "a tensor's storage offset")?,
                shape,
                stride,
            }))
        }
        Value::Global(Global::RebuildParameter) if args.len() == 3 => match &args[0] {
            Value::Tensor(_) => Ok(args.into_iter().next().expect("three arguments")),
            other => Err(format!("a parameter's data is {}", other.kind())),
        },
        other => Err(format!(
            "calling {} with {} arguments is not something a checkpoint of tensors does",
            match other {
                Value::Global(g) => format!("{g:?}"),
                v => v.kind().to_string(),
            },
            args.len()
        )),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("the pickle ends inside an opcode at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn utf8(&mut self, n: usize) -> std::result::Result<String, String> {
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| format!("a string at byte {at} is not UTF-8"))
    }

    /// A newline-terminated ASCII argument (GLOBAL's module and name).
    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends inside a GLOBAL")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix of a small valid pickle fails cleanly (or, for the whole, succeeds).
    #[test]
    fn truncated_pickles_fail_without_panicking() {
        // {'a': (1, 'x')} in protocol 2.
        let pickle = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00x\x86q\x02s.";
        let want = Value::Dict(vec![(
            Value::Str("a".into()),
            Value::Tuple(vec![Value::Int(1), Value::Str("x".into())]),
        )]);
        assert_eq!(unpickle(pickle), Ok(want));
        for end in 0..pickle.len() {
            assert!(unpickle(&pickle[..end]).is_err(), "prefix of {end} bytes");
        }
    }

    #[test]
    fn a_view_past_its_storage_is_refused() {
        let view = TensorView {
            storage: "0".into(),
            dtype: Dtype::F32,
            numel: 4,
            offset: 1,
            shape: vec![2, 2],
            stride: vec![2, 1],
        };
        let err = materialize(&view, &[0u8; 16]).unwrap_err();
        assert!(err.contains("reach element 4"), "{err}");
        let short = materialize(&TensorView { offset: 0, ..view }, &[0u8; 12]).unwrap_err();
        assert!(short.contains("holds 3 elements"), "{short}");
    }
}
