//! The GGUF reader against the gguf Python package: a fixture file with one tensor per supported
//! ggml type and one metadata key per value type (tools/make_gguf_fixtures.py wrote it and the
//! gguf.quants.dequantize reference), crafted hostile files (each a clear error, never a panic),
//! and the real SmolLM2-135M-Instruct Q4_1 file.

mod common;

use std::path::{Path, PathBuf};

use half::f16;
use mscope::error::Error;
use mscope::tensor::{DType, HostData};
use mscope::weights::gguf::{GgmlType, Value};
use mscope::weights::{Gguf, Weights};
use serde_json::json;

const FIXTURES: &str = "tests/fixtures/gguf";
const SMOLLM2: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The message of the weights error `result` must be, after checking it names `facts`.
fn error_naming<T>(result: mscope::Result<T>, facts: &[&str]) -> String {
    let message = match result {
        Err(error @ Error::Weights { .. }) => error.to_string(),
        Err(other) => panic!("expected a weights error, got {other:?}"),
        Ok(_) => panic!("expected an error naming {facts:?}"),
    };
    for fact in facts {
        assert!(
            message.contains(fact),
            "`{message}` does not mention `{fact}`"
        );
    }
    message
}

fn manifest(name: &str) -> serde_json::Value {
    let path = common::repo_path(&format!("{FIXTURES}/{name}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// The values' bit patterns, for exact comparison (NaNs and signed zeros included).
fn bits(data: &HostData) -> Vec<u32> {
    match data {
        HostData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        HostData::F16(v) => v.iter().map(|x| u32::from(x.to_bits())).collect(),
        other => panic!("not a float tensor: {other:?}"),
    }
}

/// A value as the manifests write it: floats as their stored bits, arrays element-wise.
fn manifest_form(value: &Value) -> serde_json::Value {
    match value {
        Value::U8(v) => json!(v),
        Value::I8(v) => json!(v),
        Value::U16(v) => json!(v),
        Value::I16(v) => json!(v),
        Value::U32(v) => json!(v),
        Value::I32(v) => json!(v),
        Value::F32(v) => json!(v.to_bits()),
        Value::Bool(v) => json!(v),
        Value::String(v) => json!(v),
        Value::Array(items) => items.iter().map(manifest_form).collect(),
        Value::U64(v) => json!(v),
        Value::I64(v) => json!(v),
        Value::F64(v) => json!(v.to_bits()),
    }
}

/// Every key of the manifest's `metadata` is in the file with the type and value written.
fn assert_metadata(gguf: &Gguf, expected: &serde_json::Value) {
    let expected = expected.as_object().unwrap();
    for (key, entry) in expected {
        let value = gguf
            .get(key)
            .unwrap_or_else(|| panic!("no metadata `{key}`"));
        assert_eq!(value.type_name(), entry["type"], "type of `{key}`");
        if let (Value::Array(items), Some(element)) = (value, entry.get("element")) {
            for item in items {
                assert_eq!(item.type_name(), element, "element type of `{key}`");
            }
        }
        let stored = entry.get("bits").unwrap_or(&entry["value"]);
        assert_eq!(&manifest_form(value), stored, "value of `{key}`");
    }
}

#[test]
fn every_type_dequantises_bit_for_bit_like_gguf_py() {
    let gguf = Gguf::open(&common::repo_path(&format!("{FIXTURES}/types.gguf"))).unwrap();
    let reference = Weights::open(&common::repo_path(&format!(
        "{FIXTURES}/types_reference.safetensors"
    )))
    .unwrap();
    let expected = manifest("types.json");
    let tensors = expected["tensors"].as_object().unwrap();
    assert_eq!(gguf.tensors().len(), tensors.len());
    let mut types = Vec::new();
    for (name, spec) in tensors {
        let info = gguf.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type().name(), spec["type"], "{name}");
        let shape: Vec<usize> = serde_json::from_value(spec["shape"].clone()).unwrap();
        assert_eq!(info.shape(), shape, "{name}");
        let reversed: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(info.gguf_dims(), reversed, "{name}");
        assert_eq!(info.offset() % gguf.alignment() as u64, 0, "{name}");
        types.push(info.ggml_type());

        for (dtype, suffix) in [(DType::F32, "f32"), (DType::F16, "f16")] {
            let got = gguf.tensor(name, dtype).unwrap();
            assert_eq!((got.shape(), got.dtype()), (&shape[..], dtype), "{name}");
            let want = reference.host(&format!("{name}.{suffix}"), &shape).unwrap();
            assert_eq!(bits(got.data()), bits(want.data()), "{name} as {suffix}");
        }
    }
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(types.contains(&ty), "the fixture has no {ty} tensor");
    }
}

#[test]
fn dequantises_into_a_caller_buffer_of_the_right_length_only() {
    let gguf = Gguf::open(&common::repo_path(&format!("{FIXTURES}/types.gguf"))).unwrap();
    let name = "t.q4_k";
    let whole = gguf.tensor(name, DType::F32).unwrap().into_f32();
    let mut out = vec![f32::NAN; whole.len()];
    gguf.dequantize_f32_into(name, &mut out).unwrap();
    assert_eq!(out, whole);
    let mut short = vec![0f32; whole.len() - 1];
    let len = whole.len().to_string();
    error_naming(
        gguf.dequantize_f32_into(name, &mut short),
        &["t.q4_k", &len],
    );
    let mut halves = vec![f16::ZERO; whole.len() + 1];
    error_naming(
        gguf.dequantize_f16_into(name, &mut halves),
        &["t.q4_k", &len],
    );
    error_naming(gguf.tensor(name, DType::I64), &["t.q4_k", "I64"]);
    error_naming(
        gguf.tensor("missing", DType::F32),
        &["types.gguf", "no tensor `missing`"],
    );
}

#[test]
fn every_metadata_type_reads_back_with_typed_getters() {
    let gguf = Gguf::open(&common::repo_path(&format!("{FIXTURES}/types.gguf"))).unwrap();
    let expected = manifest("types.json");
    let meta = &expected["metadata"];
    assert_metadata(&gguf, meta);
    assert_eq!(gguf.metadata().count(), meta.as_object().unwrap().len());
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.alignment() as u64, meta["general.alignment"]["value"]);

    let value = |key: &str| meta[key]["value"].clone();
    assert_eq!(gguf.get_u32("test.u32").unwrap() as u64, value("test.u32"));
    assert_eq!(gguf.get_i32("test.i32").unwrap() as i64, value("test.i32"));
    assert_eq!(gguf.get_u64("test.u64").unwrap(), value("test.u64"));
    assert_eq!(gguf.get_bool("test.bool").unwrap(), value("test.bool"));
    assert_eq!(gguf.get_str("test.string").unwrap(), value("test.string"));
    assert_eq!(
        gguf.get_f32("test.f32").unwrap().to_bits() as u64,
        meta["test.f32"]["bits"]
    );
    assert_eq!(
        json!(gguf.get_str_array("test.array.string").unwrap()),
        value("test.array.string")
    );
    assert_eq!(
        json!(gguf.get_i32_array("test.array.i32").unwrap()),
        value("test.array.i32")
    );
    for (key, got) in [
        (
            "test.array.u32",
            json!(gguf.get_u32_array("test.array.u32").unwrap()),
        ),
        (
            "test.array.u64",
            json!(gguf.get_u64_array("test.array.u64").unwrap()),
        ),
        (
            "test.array.bool",
            json!(gguf.get_bool_array("test.array.bool").unwrap()),
        ),
    ] {
        assert_eq!(got, value(key), "{key}");
    }
    let bits: Vec<u32> = gguf
        .get_f32_array("test.array.f32")
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(json!(bits), meta["test.array.f32"]["bits"]);

    error_naming(
        gguf.get_u32("test.string"),
        &["types.gguf", "`test.string`", "string", "expected u32"],
    );
    error_naming(
        gguf.get_str_array("test.array.u8"),
        &["`test.array.u8`", "array of u8", "array of string"],
    );
    error_naming(
        gguf.get_f32("no.such.key"),
        &["no metadata key `no.such.key`"],
    );
}

// Crafted files: the fields of a GGUF file, little-endian, written by hand.

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend(s);
    out
}

fn pair(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    [
        string(key.as_bytes()),
        ty.to_le_bytes().to_vec(),
        value.to_vec(),
    ]
    .concat()
}

fn info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut out = string(name.as_bytes());
    out.extend((dims.len() as u32).to_le_bytes());
    dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
    out.extend(ty.to_le_bytes());
    out.extend(offset.to_le_bytes());
    out
}

fn header(version: u32, tensors: u64, pairs: u64) -> Vec<u8> {
    [b"GGUF".to_vec(), version.to_le_bytes().to_vec()]
        .into_iter()
        .chain([tensors.to_le_bytes().to_vec(), pairs.to_le_bytes().to_vec()])
        .collect::<Vec<_>>()
        .concat()
}

/// A v3 file: header, pairs, infos, zero padding to 32 bytes, then `data`.
fn file(pairs: &[Vec<u8>], infos: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
    let mut out = header(3, infos.len() as u64, pairs.len() as u64);
    pairs.iter().chain(infos).for_each(|part| out.extend(part));
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend(data);
    out
}

const F32: u32 = 0;
const Q5_0: u32 = 6;
const Q8_0: u32 = 8;
const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// A well-formed file: two pairs, an F32 tensor `a` [2, 3] and a Q5_0 tensor `b` (a type
/// the reader lists but does not dequantise), 32-byte aligned.
fn valid() -> (Vec<u8>, Vec<f32>) {
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let mut data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    data.resize(32, 0);
    data.extend([7u8; 22]);
    let pairs = [
        pair("general.architecture", STRING, &string(b"llama")),
        pair(
            "test.list",
            ARRAY,
            &[
                &4u32.to_le_bytes()[..],
                &2u64.to_le_bytes(),
                &[1, 0, 0, 0, 2, 0, 0, 0],
            ]
            .concat(),
        ),
    ];
    let infos = [info("a", &[3, 2], F32, 0), info("b", &[32], Q5_0, 32)];
    (file(&pairs, &infos, &data), values)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_crafted_file_opens_and_unsupported_types_fail_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, values) = valid();
    let gguf = Gguf::open(&write(dir.path(), "ok.gguf", &bytes)).unwrap();
    assert_eq!(gguf.alignment(), 32, "the default alignment");
    assert_eq!(gguf.get_str("general.architecture").unwrap(), "llama");
    let a = gguf.tensor("a", DType::F32).unwrap();
    assert_eq!(a.shape(), [2, 3]);
    assert_eq!(a.into_f32(), values, "F32 data round-trips exactly");
    assert_eq!(gguf.tensor_data("b").unwrap(), [7u8; 22]);
    assert_eq!(gguf.tensor_info("b").unwrap().ggml_type(), GgmlType::Q5_0);
    error_naming(
        gguf.tensor("b", DType::F32),
        &["ok.gguf", "tensor `b`", "Q5_0"],
    );

    // Version 2 has version 3's little-endian layout.
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let gguf = Gguf::open(&write(dir.path(), "v2.gguf", &v2)).unwrap();
    assert_eq!(gguf.version(), 2);
    assert_eq!(gguf.tensor("a", DType::F32).unwrap().into_f32(), values);
}

#[test]
fn every_truncation_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = valid();
    for len in 0..bytes.len() {
        let path = write(dir.path(), "cut.gguf", &bytes[..len]);
        let message = error_naming(Gguf::open(&path), &["cut.gguf"]);
        assert!(
            ["truncated", "cannot fit", "past the end"]
                .iter()
                .any(|fact| message.contains(fact)),
            "cut at {len}: {message}"
        );
    }
}

#[test]
fn hostile_files_are_clear_errors() {
    let u32b = |v: u32| v.to_le_bytes().to_vec();
    let u64b = |v: u64| v.to_le_bytes().to_vec();
    let data = [0u8; 64];
    let one_tensor = |info: Vec<u8>| file(&[], &[info], &data);
    let aligned = |value: Vec<u8>, ty: u32| {
        file(
            &[pair("general.alignment", ty, &value)],
            &[info("w", &[4], F32, 0)],
            &data,
        )
    };
    let mut nested = Vec::new();
    for _ in 0..20 {
        nested.extend([u32b(ARRAY), u64b(1)].concat());
    }
    nested.extend([u32b(0), u64b(1), vec![1]].concat());
    let mut bad_magic = valid().0;
    bad_magic[..4].copy_from_slice(b"GGML");
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("magic", bad_magic, vec!["not a GGUF file", "GGML"]),
        ("v1", header(1, 0, 0), vec!["version 1 is not supported"]),
        ("v9", header(9, 0, 0), vec!["unsupported GGUF version 9"]),
        (
            "big-endian",
            header(3u32.swap_bytes(), 0, 0),
            vec!["big-endian"],
        ),
        (
            "tensors",
            header(3, 1 << 60, 0),
            vec!["1152921504606846976 tensor infos cannot fit"],
        ),
        (
            "pairs",
            header(3, 0, 1 << 60),
            vec!["metadata pairs cannot fit"],
        ),
        (
            "key length",
            [header(3, 0, 1), u64b(1 << 40), vec![b'k'; 64]].concat(),
            vec!["metadata pair 0", "string bytes cannot fit"],
        ),
        (
            "string length",
            file(&[pair("k", STRING, &u64b(u64::MAX))], &[], &[]),
            vec!["metadata `k`", "string bytes cannot fit"],
        ),
        (
            "array count",
            file(
                &[pair("k", ARRAY, &[u32b(4), u64b(1 << 62)].concat())],
                &[],
                &[],
            ),
            vec!["metadata `k`", "array elements cannot fit"],
        ),
        (
            "value type",
            file(&[pair("k", 13, &[0; 8])], &[], &[]),
            vec!["metadata `k`", "unknown value type 13"],
        ),
        (
            "element type",
            file(&[pair("k", ARRAY, &[u32b(99), u64b(1)].concat())], &[], &[]),
            vec!["unknown array element type 99"],
        ),
        (
            "bool",
            file(&[pair("k", 7, &[2])], &[], &[]),
            vec!["metadata `k`", "bool byte is 2"],
        ),
        (
            "nesting",
            file(&[pair("k", ARRAY, &nested)], &[], &[]),
            vec!["metadata `k`", "nested deeper"],
        ),
        (
            "utf-8",
            [header(3, 0, 1), string(&[0xFF, 0xFE]), u32b(0), vec![0]].concat(),
            vec!["metadata pair 0", "not UTF-8"],
        ),
        (
            "duplicate key",
            file(&[pair("k", 0, &[1]), pair("k", 0, &[2])], &[], &[]),
            vec!["metadata `k`", "appears twice"],
        ),
        (
            "alignment 48",
            aligned(u32b(48), 4),
            vec!["general.alignment", "48, not a power of two"],
        ),
        (
            "alignment 0",
            aligned(u32b(0), 4),
            vec!["general.alignment", "0, not a power of two"],
        ),
        (
            "alignment type",
            aligned(string(b"32"), STRING),
            vec!["general.alignment", "expected u32"],
        ),
        (
            "ggml type",
            one_tensor(info("w", &[4], 99, 0)),
            vec!["tensor `w`", "unknown ggml type 99"],
        ),
        (
            "dims",
            one_tensor(info("w", &[1; 5], F32, 0)),
            vec!["tensor `w`", "5 dimensions"],
        ),
        (
            "overflow",
            one_tensor(info("w", &[1 << 32, 1 << 32, 2], F32, 0)),
            vec!["tensor `w`", "more elements than fit"],
        ),
        (
            // Found by fuzzing: no element, but the shape's product overflows in row-major order.
            "zero dim beside huge ones",
            one_tensor(info("w", &[0, 1 << 32, 1 << 32], F32, 0)),
            vec!["tensor `w`", "more elements than fit"],
        ),
        (
            "block",
            one_tensor(info("w", &[33, 2], Q8_0, 0)),
            vec!["tensor `w`", "row length 33", "Q8_0's block of 32"],
        ),
        (
            "misaligned",
            one_tensor(info("w", &[4], F32, 4)),
            vec![
                "tensor `w`",
                "offset 4 is not a multiple of the alignment 32",
            ],
        ),
        (
            "offset",
            one_tensor(info("w", &[4], F32, 1 << 40)),
            vec!["tensor `w`", "past the end of the file"],
        ),
        (
            "offset wraps",
            one_tensor(info("w", &[4], F32, u64::MAX - 31)),
            vec!["tensor `w`", "past the end of the file"],
        ),
        (
            "size",
            one_tensor(info("w", &[1 << 20], F32, 0)),
            vec!["tensor `w`", "past the end of the file"],
        ),
        (
            "size wraps",
            one_tensor(info("w", &[1 << 62], F32, 0)),
            vec!["tensor `w`", "past the end of the file"],
        ),
        (
            "duplicate tensor",
            file(
                &[],
                &[info("w", &[4], F32, 0), info("w", &[4], F32, 32)],
                &data,
            ),
            vec!["tensor `w` appears twice"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (label, bytes, facts) in cases {
        let path = write(dir.path(), &format!("{label}.gguf"), &bytes);
        let mut facts = facts;
        let file_name = format!("{label}.gguf");
        facts.push(&file_name);
        error_naming(Gguf::open(&path), &facts);
    }
}

// The real SmolLM2-135M-Instruct (Q4_1 with one Q8_0 and F32 norms), fetched by
// tools/fetch-smollm2.sh, against what gguf.GGUFReader and gguf.quants read from it.

fn smollm2() -> Gguf {
    let path = common::repo_path(SMOLLM2);
    assert!(
        path.is_file(),
        "{} is missing: run tools/fetch-smollm2.sh (tools/test.sh does)",
        path.display()
    );
    Gguf::open(&path).unwrap()
}

#[test]
fn smollm2_metadata_and_tensor_list_match_gguf_py() {
    let gguf = smollm2();
    let expected = manifest("smollm2.json");
    assert_metadata(&gguf, &expected["metadata"]);
    assert_eq!(gguf.get_str("general.architecture").unwrap(), "llama");
    let meta = &expected["metadata"];
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.vocab_size",
    ] {
        assert_eq!(
            gguf.get_u32(key).unwrap() as u64,
            meta[key]["value"],
            "{key}"
        );
    }
    let rope = gguf.get_f32("llama.rope.freq_base").unwrap();
    assert_eq!(rope.to_bits() as u64, meta["llama.rope.freq_base"]["bits"]);
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(
        tokens.len() as u32,
        gguf.get_u32("llama.vocab_size").unwrap()
    );

    let listed: Vec<serde_json::Value> = gguf
        .tensors()
        .iter()
        .map(|t| json!([t.name(), t.ggml_type().name(), t.shape()]))
        .collect();
    assert_eq!(json!(listed), expected["tensors"]);
}

#[test]
fn smollm2_dequantises_like_gguf_py_and_every_tensor_is_finite() {
    let gguf = smollm2();
    let reference = Weights::open(&common::repo_path(&format!(
        "{FIXTURES}/smollm2_reference.safetensors"
    )))
    .unwrap();
    let checked = reference.names();
    assert!(!checked.is_empty());
    for name in &checked {
        let shape = reference.shape(name).unwrap();
        let want = bits(reference.host(name, &shape).unwrap().data());
        let got = bits(gguf.tensor(name, DType::F32).unwrap().data());
        assert_eq!(got[..want.len()], want, "{name}");
    }
    for info in gguf.tensors() {
        let values = gguf.tensor(info.name(), DType::F32).unwrap().into_f32();
        assert_eq!(values.len(), info.len());
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{} has non-finite values",
            info.name()
        );
    }
}
