#!/usr/bin/env python3
"""Anchor for `mscope kglm`: scikit-learn's LogisticRegression on precomputed kernel rows.

    tools/.venv/bin/python tools/anchors/kglm_sklearn.py --train-kernel K.safetensors \
        --train-data D.safetensors --l2 1 --threads 2 --repeat 3

The same fit `mscope kglm` makes: multinomial logistic regression on the rows of the train×train
kernel (`mscope ntk` format, F32 `kernel`), labels `y` of the dataset file, objective
Σ log-loss + λ/2·‖W‖² = LogisticRegression(C=1/λ) with lbfgs, scikit-learn's tolerance (its
lbfgs gtol applies to the gradient divided by the number of samples, like `mscope kglm --tol`).
Reading is not timed; the fit and the train-set probabilities are. Prints one JSON line: anchor,
n, classes, l2, median_s, repeats_s, n_iter, train_accuracy, sklearn_version, threads, cpu_count,
loadavg_1m_before.
"""

import argparse
import json
import os
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-kernel", required=True)
    ap.add_argument("--train-data", required=True, help="dataset file whose `y` labels the kernel rows")
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--max-iter", type=int, default=5000)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import sklearn
    from safetensors.numpy import load_file
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    k = load_file(args.train_kernel)["kernel"].astype(np.float64)
    y = load_file(args.train_data)["y"]
    load_before = os.getloadavg()[0]
    runs = []
    with threadpool_limits(args.threads):
        for _ in range(args.repeat):
            start = time.perf_counter()
            model = LogisticRegression(C=1.0 / args.l2, tol=args.tol, max_iter=args.max_iter).fit(k, y)
            proba = model.predict_proba(k)
            runs.append(time.perf_counter() - start)
    print(json.dumps({
        "anchor": "sklearn LogisticRegression(C=1/l2, lbfgs) on kernel rows, float64",
        "n": k.shape[0], "classes": int(len(model.classes_)), "l2": args.l2,
        "median_s": statistics.median(runs), "repeats_s": runs, "n_iter": int(model.n_iter_.max()),
        "train_accuracy": float(np.mean(model.classes_[proba.argmax(axis=1)] == y)),
        "sklearn_version": sklearn.__version__, "threads": args.threads,
        "cpu_count": os.cpu_count(), "loadavg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
