//! GGUF metadata: the typed key/value pairs between a GGUF header and its tensor infos, and
//! their parsing.
//!
//! A pair is a string key (u64 byte length, UTF-8 bytes, no terminator), a u32 value type and
//! the value: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (one byte, 0 or 1),
//! 8 string, 9 array (u32 element type, u64 count, the elements back to back), 10 u64,
//! 11 i64, 12 f64; all little-endian.
//!
//! The typed getters are strict, as llama.cpp's are: a u32 key read with `get_u64` is an error
//! naming the key, the type found and the type asked for.

use std::fmt;

use super::gguf::{Cursor, Gguf};
use crate::error::Result;

/// Arrays nest at most this deep: real files use one level; the bound keeps hostile nesting
/// from exhausting the stack.
const MAX_NESTING: usize = 8;

/// One metadata value, as stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements all of one type (arrays of arrays may differ in length).
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The type's name as errors and the fixtures spell it (`u32`, `string`, `array`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
            Value::Array(v) => write!(f, "[{} elements]", v.len()),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

/// The fewest bytes one element of value type `ty` can take, for bounding counts before
/// allocating; `None` for a type GGUF does not define.
fn min_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Reads one value of type `ty` (of the key the cursor's context names).
pub(super) fn read_value(cursor: &mut Cursor<'_>, ty: u32, depth: usize) -> Result<Value> {
    Ok(match ty {
        0 => Value::U8(cursor.array::<1>()?[0]),
        1 => Value::I8(cursor.array::<1>()?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(cursor.array()?)),
        3 => Value::I16(i16::from_le_bytes(cursor.array()?)),
        4 => Value::U32(cursor.u32()?),
        5 => Value::I32(i32::from_le_bytes(cursor.array()?)),
        6 => Value::F32(f32::from_le_bytes(cursor.array()?)),
        7 => match cursor.array::<1>()?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => return Err(cursor.error(format!("bool byte is {other}, not 0 or 1"))),
        },
        8 => Value::String(cursor.string()?),
        9 => {
            if depth >= MAX_NESTING {
                return Err(cursor.error(format!("arrays nested deeper than {MAX_NESTING}")));
            }
            let element = cursor.u32()?;
            let count = cursor.u64()?;
            let size = min_size(element)
                .ok_or_else(|| cursor.error(format!("unknown array element type {element}")))?;
            cursor.check_count(count, size, "array elements")?;
            let mut values = Vec::with_capacity(count as usize);
            for _ in 0..count {
                values.push(read_value(cursor, element, depth + 1)?);
            }
            Value::Array(values)
        }
        10 => Value::U64(cursor.u64()?),
        11 => Value::I64(i64::from_le_bytes(cursor.array()?)),
        12 => Value::F64(f64::from_le_bytes(cursor.array()?)),
        other => return Err(cursor.error(format!("unknown value type {other}"))),
    })
}

/// Getters for one scalar variant, and for arrays of it.
macro_rules! getters {
    ($($scalar:ident, $array:ident: $variant:ident => $ty:ty, $label:literal;)*) => {
        impl Gguf {
            $(
                pub fn $scalar(&self, key: &str) -> Result<$ty> {
                    self.typed(key, $label, |v| match v {
                        Value::$variant(x) => Some(x.clone()),
                        _ => None,
                    })
                }

                pub fn $array(&self, key: &str) -> Result<Vec<$ty>> {
                    self.typed(key, concat!("an array of ", $label), |v| match v {
                        Value::Array(items) => items
                            .iter()
                            .map(|item| match item {
                                Value::$variant(x) => Some(x.clone()),
                                _ => None,
                            })
                            .collect(),
                        _ => None,
                    })
                }
            )*
        }
    };
}

getters! {
    get_u32, get_u32_array: U32 => u32, "u32";
    get_i32, get_i32_array: I32 => i32, "i32";
    get_u64, get_u64_array: U64 => u64, "u64";
    get_f32, get_f32_array: F32 => f32, "f32";
    get_bool, get_bool_array: Bool => bool, "bool";
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "string", |v| match v {
            Value::String(x) => Some(x.as_str()),
            _ => None,
        })
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, "an array of string", |v| match v {
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(x) => Some(x.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        })
    }

    /// The value of `key` if `pick` accepts it; else an error naming the key, what it holds
    /// and `expected`.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        pick: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T> {
        let value = self
            .get(key)
            .ok_or_else(|| self.error(format!("no metadata key `{key}`")))?;
        pick(value).ok_or_else(|| {
            self.error(format!(
                "metadata `{key}` is {}, expected {expected}",
                describe(value)
            ))
        })
    }
}

/// How a value reads in a type-mismatch error: its type, and an array's element type.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(items) => match items.first() {
            Some(first) => format!("an array of {}", first.type_name()),
            None => "an empty array".into(),
        },
        other => format!("{} {other}", other.type_name()),
    }
}
