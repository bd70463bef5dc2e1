#!/usr/bin/env python3
"""Anchor for `mscope cluster`: scikit-learn's KMeans and mscope on the same rows, alternating.

    cargo build --release
    tools/.venv/bin/python tools/anchors/cluster_sklearn.py --rows 100000 --dim 1024 --k 10 \
        --threads 2 --repeat 2 --data /work/big

The rows: `x` of tools/anchors/embedding_views.py (float32 .npy under --data, generated once).
scikit-learn: `KMeans(k, init="k-means++", n_init=--restarts, max_iter=--max-iter, tol=--tol,
algorithm="lloyd")` on the float32 rows (what a scikit-learn user runs: no copy to float64),
its thread pools limited to --threads; reading the file is not timed. mscope: `mscope cluster
--input x.npy --k K --restarts R --max-iter I --tol T --threads N --json` (the whole process,
reading the file included). The two run in turn, --repeat times each. Prints one JSON line:
sizes, sklearn_median_s, sklearn_runs_s, sklearn_inertia (best over its restarts),
sklearn_iterations, mscope_median_s, mscope_runs_s, mscope_inertia, mscope_iterations,
inertia_relative_difference, ratio (sklearn median / mscope median), versions, threads,
cpu_count, loadavg_1m_before.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--data", default="/work/big", help="folder for the generated .npy files")
    ap.add_argument("--mscope", default=str(ROOT / "target/release/mscope"))
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import sklearn
    from embedding_views import write_views
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    path = write_views(args.data, args.rows, args.dim, labels=args.k)["x"]
    x = np.load(path)
    load_before = os.getloadavg()[0]
    sk_runs, ms_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "cluster.json"
        for _ in range(args.repeat):
            with threadpool_limits(args.threads):
                start = time.perf_counter()
                km = KMeans(n_clusters=args.k, init="k-means++", n_init=args.restarts,
                            max_iter=args.max_iter, tol=args.tol, algorithm="lloyd",
                            random_state=0).fit(x)
                sk_runs.append(time.perf_counter() - start)
            report_path.unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run([args.mscope, "cluster", "--input", str(path), "--k", str(args.k),
                            "--restarts", str(args.restarts), "--max-iter", str(args.max_iter),
                            "--tol", str(args.tol), "--threads", str(args.threads),
                            "--json", str(report_path)],
                           check=True, stdout=subprocess.DEVNULL)
            ms_runs.append(time.perf_counter() - start)
            report = json.loads(report_path.read_text())
    sk_median, ms_median = statistics.median(sk_runs), statistics.median(ms_runs)
    print(json.dumps({
        "anchor": "sklearn KMeans(k-means++, lloyd), float32",
        "n": args.rows, "dim": args.dim, "k": args.k, "restarts": args.restarts,
        "max_iter": args.max_iter, "tol": args.tol,
        "sklearn_median_s": sk_median, "sklearn_runs_s": sk_runs,
        "sklearn_inertia": float(km.inertia_), "sklearn_iterations": int(km.n_iter_),
        "mscope_median_s": ms_median, "mscope_runs_s": ms_runs,
        "mscope_inertia": report["inertia"], "mscope_iterations": report["iterations"],
        "inertia_relative_difference": (report["inertia"] - km.inertia_) / km.inertia_,
        "ratio": sk_median / ms_median,
        "sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
        "threads": args.threads, "cpu_count": os.cpu_count(), "loadavg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
