//! Weights against crafted safetensors files: exact round trips, zero-copy, shards, prefixes,
//! and a clear error (never a panic) for every kind of bad file.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use mscope::error::Error;
use mscope::tensor::{DType, HostData, HostTensor};
use mscope::weights::{Weights, WeightsDtype};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A safetensors file written by the safetensors crate itself.
fn serialized(tensors: &[(&str, Dtype, &[usize], Vec<u8>)]) -> Vec<u8> {
    let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
        (
            *name,
            TensorView::new(*dtype, shape.to_vec(), bytes).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

/// A file with a hand-written header, for layouts the serializer would never produce.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The error's full message, after checking it is a weights error.
fn weights_error<T>(result: mscope::Result<T>) -> String {
    match result {
        Err(error @ Error::Weights { .. }) => error.to_string(),
        Err(other) => panic!("expected a weights error, got {other:?}"),
        Ok(_) => panic!("expected an error"),
    }
}

fn assert_mentions(message: &str, facts: &[&str]) {
    for fact in facts {
        assert!(
            message.contains(fact),
            "`{message}` does not mention `{fact}`"
        );
    }
}

const VALUES: [f32; 6] = [1.0, -0.0, std::f32::consts::PI, 1e-40, f32::MAX, -3.25];

#[test]
fn weights_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Weights>();
}

#[test]
fn f32_round_trip_is_exact_and_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = serialized(&[
        ("w", Dtype::F32, &[2, 3], f32_bytes(&VALUES)),
        (
            "ids",
            Dtype::I64,
            &[3],
            [5i64, -1, 7].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ]);
    write(dir.path(), "model.safetensors", &bytes);
    let weights = Weights::open(dir.path()).unwrap();

    assert_eq!(weights.names(), ["ids", "w"]);
    assert!(weights.contains("w") && !weights.contains("v"));
    assert_eq!(weights.shape("w").unwrap(), [2, 3]);
    assert_eq!(weights.dtype("w").unwrap(), DType::F32);
    assert_eq!(weights.dtype("ids").unwrap(), DType::I64);

    let values = weights.f32("w", &[2, 3]).unwrap();
    assert!(
        matches!(values, Cow::Borrowed(_)),
        "aligned F32 must be borrowed from the map"
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&values), bits(&VALUES));

    assert_eq!(
        weights.host("w", &[2, 3]).unwrap(),
        HostTensor::from_f32(vec![2, 3], VALUES.to_vec()).unwrap()
    );
    assert_eq!(
        weights.host("ids", &[3]).unwrap().data(),
        &HostData::I64(vec![5, -1, 7])
    );
}

#[test]
fn misaligned_f32_is_copied_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"F32","shape":[6],"data_offsets":[1,25]}}"#;
    let mut data = vec![0u8];
    data.extend(f32_bytes(&VALUES));
    let path = write(dir.path(), "odd.safetensors", &raw(header, &data));
    let weights = Weights::open(&path).unwrap();
    let values = weights.f32("w", &[6]).unwrap();
    assert!(matches!(values, Cow::Owned(_)));
    assert_eq!(
        values.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        VALUES.map(f32::to_bits)
    );
}

#[test]
fn half_precision_converts_like_half() {
    let dir = tempfile::tempdir().unwrap();
    let halves: Vec<f16> = VALUES.iter().map(|&v| f16::from_f32(v)).collect();
    let brains: Vec<bf16> = VALUES.iter().map(|&v| bf16::from_f32(v)).collect();
    let bytes = serialized(&[
        (
            "h",
            Dtype::F16,
            &[6],
            halves.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "b",
            Dtype::BF16,
            &[3, 2],
            brains.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ]);
    let path = write(dir.path(), "half.safetensors", &bytes);
    let weights = Weights::open(&path).unwrap();

    assert_eq!(weights.dtype("h").unwrap(), DType::F16);
    assert_eq!(weights.dtype("b").unwrap(), DType::BF16);
    let expect_h: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
    let expect_b: Vec<f32> = brains.iter().map(|v| v.to_f32()).collect();
    assert_eq!(*weights.f32("h", &[6]).unwrap(), expect_h[..]);
    assert_eq!(*weights.f32("b", &[3, 2]).unwrap(), expect_b[..]);
    assert_eq!(
        weights.host("h", &[6]).unwrap().data(),
        &HostData::F16(halves)
    );
    assert_eq!(
        weights.host("b", &[3, 2]).unwrap().data(),
        &HostData::BF16(brains)
    );
}

/// `stacked` stacks along the first axis in the dtype `WeightsDtype` picks: `Auto` keeps a
/// dtype every tensor shares if it is half precision, `F16` rounds, `F32` widens.
#[test]
fn stacked_tensors_take_the_requested_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let h: Vec<f16> = VALUES.iter().map(|&v| f16::from_f32(v)).collect();
    let b: Vec<bf16> = VALUES.iter().map(|&v| bf16::from_f32(v)).collect();
    let bytes = serialized(&[
        (
            "h0",
            Dtype::F16,
            &[3, 2],
            h.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "h1",
            Dtype::F16,
            &[3, 2],
            h.iter().rev().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "b",
            Dtype::BF16,
            &[3, 2],
            b.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ("f", Dtype::F32, &[3, 2], f32_bytes(&VALUES)),
        ("y", Dtype::I64, &[3, 2], vec![0; 48]),
    ]);
    let path = write(dir.path(), "stack.safetensors", &bytes);
    let weights = Weights::open(&path).unwrap();
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let stack = |list: &[&str], dtype| weights.stacked(&names(list), &[3, 2], dtype).unwrap();

    let both = stack(&["h0", "h1"], WeightsDtype::Auto);
    assert_eq!(both.shape(), [6, 2]);
    let reversed: Vec<f16> = h.iter().rev().copied().collect();
    assert_eq!(both.data(), &HostData::F16([h.clone(), reversed].concat()));
    assert_eq!(
        stack(&["b"], WeightsDtype::Auto).data(),
        &HostData::BF16(b.clone())
    );
    let wide_h: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
    let wide_b: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    // Mixed dtypes, or f32 ones, stay f32 under Auto.
    assert_eq!(
        stack(&["h0", "b"], WeightsDtype::Auto).data(),
        &HostData::F32([wide_h.clone(), wide_b].concat())
    );
    assert_eq!(
        stack(&["f"], WeightsDtype::Auto).data(),
        &HostData::F32(VALUES.to_vec())
    );
    assert_eq!(
        stack(&["f"], WeightsDtype::F16).data(),
        &HostData::F16(h.clone())
    );
    assert_eq!(
        stack(&["h0"], WeightsDtype::F32).data(),
        &HostData::F32(wide_h)
    );

    let message = weights_error(weights.stacked(&names(&["y"]), &[3, 2], WeightsDtype::F16));
    assert_mentions(&message, &["stack.safetensors", "`y`", "I64"]);
}

#[test]
fn sharded_checkpoint_reads_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let first = serialized(&[("a", Dtype::F32, &[2], f32_bytes(&[1.0, 2.0]))]);
    let second = serialized(&[
        ("b", Dtype::F32, &[1], f32_bytes(&[3.0])),
        ("c", Dtype::F32, &[3], f32_bytes(&[4.0, 5.0, 6.0])),
    ]);
    write(dir.path(), "model-00001-of-00002.safetensors", &first);
    write(dir.path(), "model-00002-of-00002.safetensors", &second);
    let index = r#"{"metadata": {"total_size": 24}, "weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}"#;
    let index_path = write(dir.path(), "model.safetensors.index.json", index.as_bytes());

    for weights in [
        Weights::open(dir.path()).unwrap(),
        Weights::open(&index_path).unwrap(),
    ] {
        assert_eq!(weights.names(), ["a", "b", "c"]);
        assert_eq!(*weights.f32("a", &[2]).unwrap(), [1.0, 2.0]);
        assert_eq!(*weights.f32("b", &[1]).unwrap(), [3.0]);
        assert_eq!(*weights.f32("c", &[3]).unwrap(), [4.0, 5.0, 6.0]);
    }
}

#[test]
fn prefix_resolution() {
    let anchor = "embeddings.word_embeddings.weight";
    let candidates = ["", "bert.", "roberta."];
    for prefix in candidates {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{prefix}{anchor}");
        write(
            dir.path(),
            "model.safetensors",
            &serialized(&[(&name, Dtype::F32, &[1, 2], f32_bytes(&[7.0, 8.0]))]),
        );
        let mut weights = Weights::open(dir.path()).unwrap();
        assert_eq!(weights.resolve_prefix(anchor, &candidates).unwrap(), prefix);
        assert_eq!(weights.prefix(), prefix);
        assert!(weights.contains(anchor));
        assert_eq!(weights.names(), [name]);
        assert_eq!(*weights.f32(anchor, &[1, 2]).unwrap(), [7.0, 8.0]);
    }

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "gpt.safetensors",
        &serialized(&[("wte.weight", Dtype::F32, &[1], f32_bytes(&[1.0]))]),
    );
    let mut weights = Weights::open(&dir.path().join("gpt.safetensors")).unwrap();
    let message = weights_error(weights.resolve_prefix(anchor, &candidates));
    assert_mentions(&message, &["gpt.safetensors", anchor, "bert.", "roberta."]);
}

#[test]
fn missing_wrong_and_unsupported_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = serialized(&[
        ("bert.w", Dtype::F32, &[2, 3], f32_bytes(&VALUES)),
        ("bert.f64", Dtype::F64, &[1], vec![0; 8]),
        ("bert.u8", Dtype::U8, &[2], vec![0; 2]),
        ("bert.i32", Dtype::I32, &[1], vec![0; 4]),
    ]);
    write(dir.path(), "model.safetensors", &bytes);
    let mut weights = Weights::open(dir.path()).unwrap();
    weights.resolve_prefix("w", &["", "bert."]).unwrap();

    let message = weights_error(weights.f32("missing", &[1]));
    assert_mentions(
        &message,
        &["model.safetensors", "bert.missing", "prefix `bert.`"],
    );
    assert!(weights.shape("missing").is_err() && weights.dtype("missing").is_err());

    let message = weights_error(weights.f32("w", &[3, 2]));
    assert_mentions(
        &message,
        &[
            "model.safetensors",
            "bert.w",
            "has shape [2, 3], expected [3, 2]",
        ],
    );
    assert!(weights.host("w", &[6]).is_err());

    for (name, dtype) in [("f64", "F64"), ("u8", "U8"), ("i32", "I32")] {
        let shape = weights.shape(name).unwrap();
        for message in [
            weights_error(weights.dtype(name)),
            weights_error(weights.f32(name, &shape)),
            weights_error(weights.host(name, &shape)),
        ] {
            assert_mentions(
                &message,
                &[
                    "model.safetensors",
                    name,
                    &format!("unsupported dtype {dtype}"),
                ],
            );
        }
    }
}

#[test]
fn integer_tensors_are_not_read_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = serialized(&[("y", Dtype::I64, &[1], 3i64.to_le_bytes().to_vec())]);
    let path = write(dir.path(), "data.safetensors", &bytes);
    let message = weights_error(Weights::open(&path).unwrap().f32("y", &[1]));
    assert_mentions(&message, &["data.safetensors", "`y`", "I64"]);
}

#[test]
fn corrupt_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = serialized(&[("w", Dtype::F32, &[2, 3], f32_bytes(&VALUES))]);

    let truncated = &good[..good.len() - 4];
    let mut long_header = good.clone();
    long_header[..8].copy_from_slice(&(good.len() as u64 + 100).to_le_bytes());
    let bad_json = raw(
        r#"{"w": {"dtype": "F32", "shape": [1], "data_offs"#,
        &[0; 4],
    );
    let overlapping = raw(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    );
    let out_of_bounds = raw(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0; 4],
    );

    let cases: [(&str, &[u8], &str); 6] = [
        ("truncated.safetensors", truncated, "truncated"),
        ("long_header.safetensors", &long_header, "header length"),
        ("bad_json.safetensors", &bad_json, "JSON"),
        ("empty.safetensors", &[], "empty"),
        (
            "overlapping.safetensors",
            &overlapping,
            "invalid data offsets",
        ),
        ("out_of_bounds.safetensors", &out_of_bounds, "truncated"),
    ];
    for (name, bytes, fact) in cases {
        let path = write(dir.path(), name, bytes);
        assert_mentions(&weights_error(Weights::open(&path)), &[name, fact]);
    }
}

#[test]
fn missing_files_and_bad_indexes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let message = weights_error(Weights::open(&dir.path().join("nowhere.safetensors")));
    assert_mentions(&message, &["nowhere.safetensors"]);
    let message = weights_error(Weights::open(dir.path()));
    assert_mentions(&message, &["model.safetensors.index.json"]);

    let shard = serialized(&[("a", Dtype::F32, &[1], f32_bytes(&[1.0]))]);
    write(dir.path(), "model-00001-of-00002.safetensors", &shard);
    let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    write(dir.path(), "model.safetensors.index.json", index.as_bytes());
    let message = weights_error(Weights::open(dir.path()));
    assert_mentions(
        &message,
        &[
            "model.safetensors.index.json",
            "model-00002-of-00002.safetensors",
            "does not exist",
        ],
    );

    let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}"#;
    write(dir.path(), "model.safetensors.index.json", index.as_bytes());
    let message = weights_error(Weights::open(dir.path()));
    assert_mentions(
        &message,
        &["model.safetensors.index.json", "`b`", "does not hold it"],
    );

    write(
        dir.path(),
        "model.safetensors.index.json",
        b"{\"weight_map\": [",
    );
    let message = weights_error(Weights::open(dir.path()));
    assert_mentions(
        &message,
        &["model.safetensors.index.json", "invalid index JSON"],
    );
}
