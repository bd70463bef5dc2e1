#!/usr/bin/env python3
"""Anchor for `mscope pca`: scikit-learn's PCA fitted on an embeddings file, timed on this CPU.

    tools/.venv/bin/python tools/anchors/pca_sklearn.py --input E.safetensors --components 10 \
        --threads 2 --repeat 3

Reads `embeddings` from a file in mscope's embeddings format (reading is not timed), then times
`PCA(n_components=K, svd_solver="full").fit(x)` in float64 — what a scikit-learn user runs, and
the reference the PCA tests compare with. Prints one JSON line: anchor, n, dim, components,
median_s, repeats_s, explained_variance_ratio (the first components), sklearn_version, threads,
cpu_count, loadavg_1m_before.
"""

import argparse
import json
import os
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--components", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import sklearn
    from safetensors.numpy import load_file
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    x = load_file(args.input)["embeddings"].astype(np.float64)
    load_before = os.getloadavg()[0]
    runs = []
    with threadpool_limits(args.threads):
        for _ in range(args.repeat):
            start = time.perf_counter()
            pca = PCA(n_components=args.components, svd_solver="full").fit(x)
            runs.append(time.perf_counter() - start)
    print(json.dumps({
        "anchor": 'sklearn PCA(svd_solver="full"), float64',
        "n": x.shape[0], "dim": x.shape[1], "components": args.components,
        "median_s": statistics.median(runs), "repeats_s": runs,
        "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_[:5]],
        "sklearn_version": sklearn.__version__, "threads": args.threads,
        "cpu_count": os.cpu_count(), "loadavg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
