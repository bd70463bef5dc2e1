#!/usr/bin/env python3
"""Anchor for `mscope align`: numpy / scipy and mscope on the same two views, alternating.

    cargo build --release
    tools/.venv/bin/python tools/anchors/align_numpy.py --rows 100000 --dim 1024 --threads 2 \
        --repeat 1 --data /work/big

The rows: `x` and `y` of tools/anchors/embedding_views.py (float32 .npy under --data, generated
once). numpy (float32 throughout, the way a numpy user writes it; thread pools limited to
--threads; reading the files is not timed), the definitions of `mscope align`:
  cka                  linear CKA in feature space, ‖AᵀB‖²_F / (‖AᵀA‖_F ‖BᵀB‖_F), A and B centred
  procrustes_residual  ‖ÂR − B̂‖_F, Â and B̂ centred and scaled to unit Frobenius norm (the
                       narrower one zero-padded), R from scipy.linalg.orthogonal_procrustes
  cca                  SVCCA: each side's top --cca-dims principal components (eigh of AᵀA), the
                       scores orthonormalised by QR, the singular values of QₐᵀQ_b
  mutual_knn           each row's --k cosine nearest neighbours (itself excluded): unit rows,
                       similarities of a chunk of --chunk rows to all rows by one GEMM, top k by
                       argpartition; the mean share of neighbours both sides agree on
mscope: `mscope align x.npy y.npy --k K --cca-dims C --threads N --json` (the whole process,
reading the files included). Prints one JSON line: sizes, numpy_median_s, numpy_runs_s,
numpy_parts_s (per measure, last run), mscope_median_s, mscope_runs_s, ratio, both sides'
values and their largest differences, versions, threads, cpu_count, loadavg_1m_before.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.linalg import orthogonal_procrustes
from threadpoolctl import threadpool_limits

from embedding_views import write_views

ROOT = Path(__file__).resolve().parents[2]


def centred(x):
    return x - x.mean(axis=0)


def cka(a, b):
    return float(np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def procrustes_residual(a, b):
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    d = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
    r, _ = orthogonal_procrustes(a, b)
    return float(np.linalg.norm(a @ r - b))


def svcca(a, b, dims):
    def basis(x):
        _, vectors = np.linalg.eigh(x.T @ x)
        return np.linalg.qr(x @ vectors[:, ::-1][:, :dims])[0]

    return sorted(map(float, np.linalg.svd(basis(a).T @ basis(b), compute_uv=False)), reverse=True)


def neighbours(x, k, chunk):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        s = u[start:start + chunk] @ u.T
        rows = np.arange(len(s))
        s[rows, start + rows] = -np.inf
        out[start:start + chunk] = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return out


def mutual_knn(x, y, k, chunk):
    nx, ny = neighbours(x, k, chunk), neighbours(y, k, chunk)
    return float((nx[:, :, None] == ny[:, None, :]).sum() / nx.size)


def measure(x, y, args):
    parts = {}
    start = time.perf_counter()
    a, b = centred(x), centred(y)
    values = {"cka": cka(a, b)}
    parts["cka_s"] = time.perf_counter() - start
    start = time.perf_counter()
    values["procrustes_residual"] = procrustes_residual(a, b)
    parts["procrustes_s"] = time.perf_counter() - start
    start = time.perf_counter()
    values["cca"] = svcca(a, b, args.cca_dims)
    parts["svcca_s"] = time.perf_counter() - start
    start = time.perf_counter()
    values["mutual_knn"] = mutual_knn(x, y, args.k, args.chunk)
    parts["mutual_knn_s"] = time.perf_counter() - start
    return values, parts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--cca-dims", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=1024, help="rows per similarity GEMM")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--data", default="/work/big", help="folder for the generated .npy files")
    ap.add_argument("--mscope", default=str(ROOT / "target/release/mscope"))
    args = ap.parse_args()
    paths = write_views(args.data, args.rows, args.dim)
    x, y = np.load(paths["x"]), np.load(paths["y"])
    load_before = os.getloadavg()[0]
    np_runs, ms_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "align.json"
        for _ in range(args.repeat):
            with threadpool_limits(args.threads):
                start = time.perf_counter()
                values, parts = measure(x, y, args)
                np_runs.append(time.perf_counter() - start)
            report_path.unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run([args.mscope, "align", str(paths["x"]), str(paths["y"]),
                            "--k", str(args.k), "--cca-dims", str(args.cca_dims),
                            "--threads", str(args.threads), "--json", str(report_path)],
                           check=True, stdout=subprocess.DEVNULL)
            ms_runs.append(time.perf_counter() - start)
            pair = json.loads(report_path.read_text())["pairs"][0]
    mscope_values = {key: pair[key] for key in values}
    differences = {key: float(np.max(np.abs(np.subtract(values[key], mscope_values[key]))))
                   for key in values}
    np_median, ms_median = statistics.median(np_runs), statistics.median(ms_runs)
    print(json.dumps({
        "anchor": "numpy/scipy float32: feature-space CKA, orthogonal_procrustes, SVCCA, "
                  "chunked GEMM + argpartition mutual k-NN",
        "n": args.rows, "dim": args.dim, "k": args.k, "cca_dims": args.cca_dims,
        "numpy_median_s": np_median, "numpy_runs_s": np_runs, "numpy_parts_s": parts,
        "mscope_median_s": ms_median, "mscope_runs_s": ms_runs, "ratio": np_median / ms_median,
        "numpy_values": values, "mscope_values": mscope_values, "largest_differences": differences,
        "numpy_version": np.__version__, "scipy_version": scipy.__version__,
        "threads": args.threads, "cpu_count": os.cpu_count(), "loadavg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
