#!/usr/bin/env python3
"""References for `mscope align` (tests/align.rs), from numpy, scipy and scikit-learn.

    tools/.venv/bin/pip install numpy scipy scikit-learn
    tools/.venv/bin/python tools/make_align_fixtures.py

Writes tests/fixtures/align/{a,b,c}.npy: embeddings of the same 200 rows — `a` (16 dims) with a
few dominant directions; `b` (11 dims) a noisy nonlinear view of `a`; `c` (16 dims) unrelated — and
reference.json with, for each pair (a, b), (a, c), (b, c):
  cka                  linear CKA as the centred alignment of the linear kernels XXᵀ and YYᵀ
                       (n×n, the kernel definition)
  procrustes_residual  ‖ÂR − B̂‖_F with Â, B̂ centred, scaled to unit Frobenius norm, the narrower
                       zero-padded, R from scipy.linalg.orthogonal_procrustes
  cca                  SVCCA: sklearn PCA(5) scores of each side, then sklearn CCA(5) fitted on
                       them; the correlation of each pair of canonical scores, largest first
  mutual_knn           brute force: each row's 10 nearest rows by cosine similarity (itself
                       excluded, ties to the lower index), the mean share both sides agree on
"""

import json
from pathlib import Path

import numpy as np
import scipy
import sklearn
from scipy.linalg import orthogonal_procrustes
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "align"
K, CCA_DIMS = 10, 5


def centred(x):
    return x - x.mean(axis=0)


def cka(x, y):
    n = len(x)
    h = np.eye(n) - 1.0 / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


def procrustes_residual(x, y):
    a, b = centred(x), centred(y)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    d = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
    r, _ = orthogonal_procrustes(a, b)
    return float(np.linalg.norm(a @ r - b))


def svcca(x, y):
    zx = PCA(CCA_DIMS).fit_transform(x)
    zy = PCA(CCA_DIMS).fit_transform(y)
    cca = CCA(n_components=CCA_DIMS, scale=False, max_iter=100000, tol=1e-12).fit(zx, zy)
    sx, sy = cca.transform(zx, zy)
    corr = [abs(np.corrcoef(sx[:, i], sy[:, i])[0, 1]) for i in range(CCA_DIMS)]
    return sorted(map(float, corr), reverse=True)


def neighbours(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u.astype(np.float64) @ u.T.astype(np.float64)
    out = []
    for i in range(len(x)):
        order = [j for j in np.lexsort((np.arange(len(x)), -s[i])) if j != i]
        out.append(set(order[:K]))
    return out


def mutual_knn(x, y):
    nx, ny = neighbours(x), neighbours(y)
    return float(np.mean([len(a & b) / K for a, b in zip(nx, ny)]))


def main():
    rng = np.random.default_rng(7)
    n = 200
    a = rng.standard_normal((n, 16)) * np.geomspace(4.0, 0.2, 16)
    b = np.tanh(a @ rng.standard_normal((16, 11)) / 4.0) + 0.05 * rng.standard_normal((n, 11))
    c = rng.standard_normal((n, 16))
    data = {"a": a.astype(np.float32), "b": b.astype(np.float32), "c": c.astype(np.float32)}
    OUT.mkdir(parents=True, exist_ok=True)
    for name, x in data.items():
        np.save(OUT / f"{name}.npy", x)
    pairs = []
    for p, q in [("a", "b"), ("a", "c"), ("b", "c")]:
        # References from the stored f32 values, widened.
        x, y = data[p].astype(np.float64), data[q].astype(np.float64)
        pairs.append({
            "a": p, "b": q, "cka": cka(x, y), "procrustes_residual": procrustes_residual(x, y),
            "cca": svcca(x, y), "mutual_knn": mutual_knn(data[p], data[q]),
        })
    reference = {"k": K, "cca_dims": CCA_DIMS, "pairs": pairs, "numpy": np.__version__,
                 "scipy": scipy.__version__, "sklearn": sklearn.__version__}
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    for pair in pairs:
        print(pair)


if __name__ == "__main__":
    main()
