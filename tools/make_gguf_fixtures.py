#!/usr/bin/env python3
"""Generate the GGUF reader's fixtures (run by hand; outputs are committed).

Usage (from the repository root, in a venv holding only the PyPI packages gguf and numpy):

    python3 -m venv tools/.venv && tools/.venv/bin/pip install gguf numpy
    tools/.venv/bin/python tools/make_gguf_fixtures.py [SMOLLM2_GGUF]

SMOLLM2_GGUF defaults to .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (tools/fetch-smollm2.sh);
the real-file references are skipped with a note when it is absent.

Writes to tests/fixtures/gguf/:
  types.gguf                 one tensor per supported ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
                             Q4_K, Q5_K, Q6_K) plus a 3-D Q8_0 one, and one metadata key per GGUF
                             value type (scalars, arrays of each, a nested array); alignment 64
  types_reference.safetensors  per tensor `NAME.f32`: gguf.quants.dequantize of its bytes, and
                             `NAME.f16`: that cast with numpy's astype(float16), in numpy's
                             (row-major, GGUF dims reversed) shape
  types.json                 the metadata written ({key: {type, value}}, plus `element` for
                             arrays and `bits` for floats) and each tensor's ggml type and
                             numpy shape
  smollm2.json               the real file as gguf.GGUFReader reads it: every tensor's
                             [name, ggml type, numpy shape] in file order, and its scalar metadata
  smollm2_reference.safetensors  gguf.quants.dequantize of the first rows of two real tensors

Quantised types that gguf.quants can quantise (Q8_0, Q4_0, Q4_1, BF16) are made from seeded random
values; for the K-quants, which it can only dequantise, the blocks are seeded random bytes with
finite, moderate half-precision super-block scales. The script is deterministic.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
SMOLLM2 = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIGNMENT = 64
REAL_ROWS = {"blk.0.attn_q.weight": 8, "token_embd.weight": 4}

rng = np.random.default_rng(20240611)


def write_safetensors(path, arrays):
    """A safetensors file from numpy arrays, written by hand (numpy is the only dependency)."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    header, offset, blobs = {}, 0, []
    for name in sorted(arrays):
        data = np.ascontiguousarray(arrays[name])
        blob = data.astype(data.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[data.dtype], "shape": list(data.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def k_quant_blocks(qtype, rows, cols):
    """Random K-quant blocks whose f16 super-block scales are finite and moderate."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    scale = lambda n: rng.uniform(1e-4, 1e-2, size=(len(blocks), n)).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:  # ql, qh, int8 scales, then d
        blocks[:, size - 2:] = scale(1)
    else:  # d and dmin lead the block
        blocks[:, :4] = scale(2)
    return blocks.reshape(rows, cols // block * size)


def tensors():
    """(name, ggml type, numpy shape, stored array) for every fixture tensor."""
    specials = np.array([0.0, -0.0, 1e-7, -65504.0, 3.0e38, 1.0 / 3.0], dtype=np.float32)
    f32 = rng.standard_normal((3, 37)).astype(np.float32)
    f32.flat[: len(specials)] = specials
    f16 = rng.standard_normal((5, 19)).astype(np.float32)
    f16.flat[:4] = [0.0, -0.0, 6e-8, 1e-5]  # zeros and subnormal halves
    out = [
        ("t.f32", Q.F32, f32.shape, f32),
        ("t.f16", Q.F16, f16.shape, gguf.quants.quantize(f16, Q.F16)),
    ]
    for name, qtype, shape in [
        ("t.bf16", Q.BF16, (4, 23)),
        ("t.q8_0", Q.Q8_0, (3, 96)),
        ("t.q8_0_3d", Q.Q8_0, (2, 3, 32)),
        ("t.q4_0", Q.Q4_0, (5, 64)),
        ("t.q4_1", Q.Q4_1, (3, 160)),
    ]:
        values = (rng.standard_normal(shape) * rng.uniform(0.01, 3.0)).astype(np.float32)
        out.append((name, qtype, shape, gguf.quants.quantize(values, qtype)))
    for name, qtype, shape in [("t.q4_k", Q.Q4_K, (2, 512)), ("t.q5_k", Q.Q5_K, (3, 256)), ("t.q6_k", Q.Q6_K, (2, 256))]:
        out.append((name, qtype, shape, k_quant_blocks(qtype, *shape)))
    return out


# One key per value type, then an array of each element type and a nested array.
SCALARS = [
    ("test.u8", V.UINT8, 200), ("test.i8", V.INT8, -100), ("test.u16", V.UINT16, 60000),
    ("test.i16", V.INT16, -30000), ("test.u32", V.UINT32, 4000000000), ("test.i32", V.INT32, -2000000000),
    ("test.f32", V.FLOAT32, 0.1), ("test.bool", V.BOOL, True), ("test.string", V.STRING, "héllo, GGUF ✓"),
    ("test.u64", V.UINT64, 2**63 + 12345), ("test.i64", V.INT64, -(2**62) - 7), ("test.f64", V.FLOAT64, 2.0 / 3.0),
]
ARRAYS = [
    ("test.array.u8", V.UINT8, [0, 1, 255]), ("test.array.i8", V.INT8, [-128, 0, 127]),
    ("test.array.u16", V.UINT16, [1, 65535]), ("test.array.i16", V.INT16, [-32768, 32767]),
    ("test.array.u32", V.UINT32, [7, 4294967295]), ("test.array.i32", V.INT32, [-5, 2147483647]),
    ("test.array.f32", V.FLOAT32, [1.5, -0.1, 1e-30]), ("test.array.bool", V.BOOL, [True, False, True]),
    ("test.array.string", V.STRING, ["a", "", "ünïcode"]), ("test.array.u64", V.UINT64, [2**64 - 1]),
    ("test.array.i64", V.INT64, [-(2**63), 2**63 - 1]), ("test.array.f64", V.FLOAT64, [1e300, -2.5]),
]
NESTED = ("test.array.nested", [[1, 2], [3], [4, 5, 6]])  # the writer types inner ints as i32


def entry(type_name, value, element=None):
    """A metadata value for the JSON manifests; floats also as their stored bits (`bits`), which
    a reader can compare exactly whatever its JSON float parsing."""
    out = {"type": type_name, "value": value}
    if element is not None:
        out["element"] = element
    kind = element or type_name
    if kind in ("f32", "f64"):
        dtype, bits = (np.float32, np.uint32) if kind == "f32" else (np.float64, np.uint64)
        stored = np.array(value, dtype=dtype)
        out["value"] = stored.tolist()
        out["bits"] = stored.view(bits).tolist()
    return out


VALUE_NAMES = {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32", V.INT32: "i32",
               V.FLOAT32: "f32", V.BOOL: "bool", V.STRING: "string", V.UINT64: "u64", V.INT64: "i64", V.FLOAT64: "f64"}


def make_types():
    writer = gguf.GGUFWriter(OUT / "types.gguf", "test")
    writer.add_custom_alignment(ALIGNMENT)
    meta = {"general.architecture": entry("string", "test"), "general.alignment": entry("u32", ALIGNMENT)}
    for key, vtype, value in SCALARS:
        writer.add_key_value(key, value, vtype)
        meta[key] = entry(VALUE_NAMES[vtype], value)
    for key, vtype, values in ARRAYS:
        writer.add_key_value(key, values, V.ARRAY, sub_type=vtype)
        meta[key] = entry("array", values, element=VALUE_NAMES[vtype])
    writer.add_array(*NESTED)
    meta[NESTED[0]] = entry("array", NESTED[1], element="array")

    reference, shapes = {}, {}
    for name, qtype, shape, stored in tensors():
        writer.add_tensor(name, stored, raw_dtype=qtype)
        values = gguf.quants.dequantize(stored, qtype).reshape(shape)
        reference[f"{name}.f32"] = values
        with np.errstate(over="ignore"):  # values past f16's range round to infinity, on purpose
            reference[f"{name}.f16"] = values.astype(np.float16)
        shapes[name] = {"type": qtype.name, "shape": list(shape)}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_safetensors(OUT / "types_reference.safetensors", reference)
    (OUT / "types.json").write_text(json.dumps({"metadata": meta, "tensors": shapes}, indent=1, ensure_ascii=False) + "\n")


def make_smollm2(path):
    reader = gguf.GGUFReader(path)
    metadata = {
        key: entry(VALUE_NAMES[field.types[0]], field.contents())
        for key, field in reader.fields.items()
        if len(field.types) == 1 and not key.startswith("GGUF.")
    }
    # t.shape is GGUF's dims; the element shape a reader reports is them reversed.
    tensors = [[t.name, t.tensor_type.name, [int(d) for d in reversed(t.shape)]] for t in reader.tensors]
    reference = {
        t.name: gguf.quants.dequantize(np.asarray(t.data)[: REAL_ROWS[t.name]], t.tensor_type)
        for t in reader.tensors
        if t.name in REAL_ROWS
    }
    write_safetensors(OUT / "smollm2_reference.safetensors", reference)
    lines = ",\n".join(json.dumps(t) for t in tensors)
    text = '{"metadata": ' + json.dumps(metadata, indent=1) + ',\n"tensors": [\n' + lines + "\n]}\n"
    (OUT / "smollm2.json").write_text(text)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    make_types()
    real = Path(sys.argv[1]) if len(sys.argv) > 1 else SMOLLM2
    if real.is_file():
        make_smollm2(real)
    else:
        print(f"{real} is absent: run tools/fetch-smollm2.sh for the real-file references", file=sys.stderr)
