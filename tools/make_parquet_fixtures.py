#!/usr/bin/env python3
"""Parquet fixtures for tests/parquet.rs, written by pyarrow as pandas and Hugging Face datasets
write embeddings tables.

From the scikit-learn fixtures (tests/fixtures/sklearn_embeddings.npy and sklearn_labels.npy,
tools/make_sklearn_fixtures.py), into tests/fixtures/parquet/:

- list_f32.parquet: `id` int64, `embedding` list<float32>, `label` string — pyarrow's defaults
  (nullable list and elements, Snappy), 64 rows per row group, so five row groups.
- list_f32_gzip.parquet, list_f32_zstd.parquet: the same table compressed with gzip and with
  zstd (pyarrow's other common codecs).
- hf_fixed_f64.parquet: `embedding` fixed_size_list<float64, 24> (the float32 values widened, so
  they round back exactly), `label` int64 class codes, and the `huggingface` metadata that
  `datasets` writes, naming the classes (a ClassLabel feature), in one row group.
- small.parquet: three rows, labels "b", null, "a" (a null label leaves a row unlabelled), and a
  `text` column.
- Bad input: null_embedding.parquet (row 2's list is null), null_element.parquet (row 1 holds a
  null), empty_embedding.parquet (row 1 is an empty list), ragged.parquet (row 3 is shorter),
  two_lists.parquet (two float-list columns: which holds the embeddings is ambiguous),
  no_list.parquet (no float-list column).

`--check FILE` instead reads a Parquet file that `mscope embed --format parquet` wrote, with
pyarrow, and prints its schema, row count and metadata; `--check FILE.npy` loads an .npy with
numpy. Run from the repository root: tools/.venv/bin/python tools/make_parquet_fixtures.py
"""
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIXTURES = Path("tests/fixtures")
OUT = FIXTURES / "parquet"


def small_table(embedding, **columns):
    return pa.table({"embedding": embedding, **columns})


def main():
    x = np.load(FIXTURES / "sklearn_embeddings.npy")
    names = np.load(FIXTURES / "sklearn_labels.npy")
    assert x.dtype == np.float32 and x.shape == (300, 24)
    OUT.mkdir(exist_ok=True)

    table = pa.table(
        {
            "id": pa.array(np.arange(len(x), dtype=np.int64)),
            "embedding": pa.array(list(x), type=pa.list_(pa.float32())),
            "label": pa.array([str(n) for n in names], type=pa.string()),
        }
    )
    pq.write_table(table, OUT / "list_f32.parquet", row_group_size=64)
    assert pq.ParquetFile(OUT / "list_f32.parquet").num_row_groups == 5
    for codec in ["gzip", "zstd"]:
        pq.write_table(table, OUT / f"list_f32_{codec}.parquet", row_group_size=64, compression=codec)

    classes = sorted(set(str(n) for n in names))
    codes = np.array([classes.index(str(n)) for n in names], dtype=np.int64)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float64).ravel()), x.shape[1])
    features = {
        "embedding": {
            "feature": {"dtype": "float64", "_type": "Value"},
            "length": x.shape[1],
            "_type": "Sequence",
        },
        "label": {"names": classes, "_type": "ClassLabel"},
    }
    table = pa.table({"embedding": fixed, "label": pa.array(codes)}).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    pq.write_table(table, OUT / "hf_fixed_f64.parquet")

    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.5]]
    pq.write_table(
        small_table(
            pa.array(rows, type=pa.list_(pa.float32())),
            label=pa.array(["b", None, "a"]),
            text=pa.array(["first", "second", "third"]),
        ),
        OUT / "small.parquet",
    )

    def bad(name, embedding, **columns):
        rows = len(embedding)
        columns.setdefault("label", pa.array(["a", "b"] * (rows // 2) + ["a"] * (rows % 2)))
        pq.write_table(small_table(embedding, **columns), OUT / name)

    floats = pa.list_(pa.float32())
    bad("null_embedding.parquet", pa.array([[1, 2], [3, 4], None, [7, 8]], type=floats))
    bad("null_element.parquet", pa.array([[1, 2], [3, None], [5, 6]], type=floats))
    bad("empty_embedding.parquet", pa.array([[1, 2], [], [5, 6]], type=floats))
    bad("ragged.parquet", pa.array([[1, 2], [3, 4], [5, 6], [7]], type=floats))
    bad(
        "two_lists.parquet",
        pa.array([[1, 2], [3, 4]], type=floats),
        other=pa.array([[1.0], [2.0]], type=pa.list_(pa.float64())),
    )
    pq.write_table(
        pa.table({"x": pa.array([1.0, 2.0]), "label": pa.array(["a", "b"])}),
        OUT / "no_list.parquet",
    )


def check(path):
    """Reads a file mscope wrote, as a user would, and prints what pyarrow or numpy sees."""
    path = Path(path)
    if path.suffix == ".npy":
        x = np.load(path)
        print(f"{path}: {x.dtype} {x.shape}")
        return
    table = pq.read_table(path)
    print(table.schema)
    print(f"{table.num_rows} rows; metadata:", json.loads(table.schema.metadata[b"mscope"]))
    embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    print(f"embeddings {embeddings.dtype} {embeddings.shape}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        main()
