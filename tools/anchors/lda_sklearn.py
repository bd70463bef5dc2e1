#!/usr/bin/env python3
"""Anchor for `mscope lda`: scikit-learn and mscope on the same computation, in one run.

    cargo build --release
    tools/.venv/bin/python tools/anchors/lda_sklearn.py --rows 10000 --dim 1024 --labels 4 \
        --splits 50 --sklearn-splits 2 --threads 2 --repeat 3

The computation: synthetic embeddings (Gaussian classes of equal size sharing an anisotropic
covariance, written in mscope's embeddings format under .cache/bench/), `--splits` stratified
80/20 splits, and per split LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto") fitted
on the train part and scored on the test part, for all labels together and for every pair of
labels on that pair's rows (`mscope lda --shrinkage auto --pairwise`).

mscope runs all `--splits` (median of `--repeat` runs of the release binary, file reading
included). scikit-learn's cost is the same for every split, so it runs `--sklearn-splits` of
them and its time is scaled to `--splits` (said so in the output). Prints one JSON line: sizes,
mscope_median_s, mscope_runs_s, mscope_accuracy_mean, sklearn_s_per_split, sklearn_total_s
(scaled), sklearn_accuracy_mean (over the splits it ran), ratio (sklearn_total_s /
mscope_median_s), versions, threads, cpu_count, loadavg_1m_before.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--labels", type=int, default=4)
    ap.add_argument("--splits", type=int, default=50)
    ap.add_argument("--sklearn-splits", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mscope", default=str(ROOT / "target/release/mscope"))
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import sklearn
    from make_sklearn_fixtures import synthetic, write_embeddings
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import StratifiedShuffleSplit
    from threadpoolctl import threadpool_limits

    counts = [args.rows // args.labels] * args.labels
    x, y = synthetic(np.random.default_rng(0), counts, args.dim, 3.0)
    data = ROOT / ".cache" / "bench" / f"lda_{len(y)}x{args.dim}x{args.labels}.safetensors"
    data.parent.mkdir(parents=True, exist_ok=True)
    write_embeddings(data, x, y, [f"source{k}" for k in range(args.labels)])
    load_before = os.getloadavg()[0]

    runs, report = [], None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lda.json"
        cmd = [args.mscope, "lda", "--input", str(data), "--splits", str(args.splits),
               "--shrinkage", "auto", "--pairwise", "--threads", str(args.threads), "--out", str(out)]
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            runs.append(time.perf_counter() - start)
        report = json.loads(out.read_text())

    x64 = x.astype(np.float64)
    splitter = StratifiedShuffleSplit(n_splits=args.sklearn_splits, test_size=0.2, random_state=0)
    pairs = list(itertools.combinations(range(args.labels), 2))
    accuracies = []
    with threadpool_limits(args.threads):
        start = time.perf_counter()
        for train, test in splitter.split(x64, y):
            lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")
            accuracies.append(np.mean(lda.fit(x64[train], y[train]).predict(x64[test]) == y[test]))
            for a, b in pairs:
                tr, te = train[np.isin(y[train], (a, b))], test[np.isin(y[test], (a, b))]
                pair = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x64[tr], y[tr])
                pair.predict(x64[te])
        per_split = (time.perf_counter() - start) / args.sklearn_splits

    mscope_s = statistics.median(runs)
    print(json.dumps({
        "anchor": "sklearn LinearDiscriminantAnalysis(solver=eigen, shrinkage=auto), all labels + every pair",
        "rows": len(y), "dim": args.dim, "labels": args.labels, "splits": args.splits,
        "mscope_median_s": round(mscope_s, 3), "mscope_runs_s": [round(r, 3) for r in runs],
        "mscope_accuracy_mean": report["accuracy_mean"],
        "sklearn_splits_run": args.sklearn_splits, "sklearn_s_per_split": round(per_split, 3),
        "sklearn_total_s": round(per_split * args.splits, 1),
        "sklearn_accuracy_mean": float(np.mean(accuracies)),
        "ratio": round(per_split * args.splits / mscope_s, 1),
        "sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
        "threads": args.threads, "cpu_count": os.cpu_count(), "loadavg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
