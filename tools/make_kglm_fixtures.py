#!/usr/bin/env python3
"""scikit-learn / scipy / numpy references for `mscope kglm` and `mscope ntk-compare`
(tests/kglm.rs).

    tools/.venv/bin/python tools/make_kglm_fixtures.py

Writes under tests/fixtures/kglm/:

- train_kernel.safetensors, test_kernel.safetensors: an RBF kernel (γ = 0.5) in mscope's kernel
  format (README › Commands) on 60 train / 25 test points drawn from 3 overlapping
  Gaussian clusters in 4 dimensions: K_TT [60, 60] and K_ST [25, 60];
- reference.safetensors (F64 unless noted):
  - `y_train`, `y_test` (I64);
  - `coef` [3, 60], `intercept` [3], `proba` [25, 3]: LogisticRegression(C=0.5, tol=1e-10,
    max_iter=10000) (lbfgs, multinomial: scikit-learn ≥ 1.7 has no other multiclass mode) fitted
    on the rows of K_TT, probabilities of the rows of K_ST;
  - `tau_x`, `tau_y`, `tau`: two vectors with ties in each and scipy.stats.kendalltau (τ-b);
  - `r2_true`, `r2_pred`, `r2`: sklearn.metrics.r2_score(r2_true, r2_pred);
  - `cka_a`, `cka_b` (F32, square kernels over the same 40 points: RBF and a cubic polynomial
    kernel) and numpy's `cka`, `spectrum_l1`, `spectrum_l2`, `effective_rank` [2] and
    `relative_frobenius` for them, and `spectrum_a`, `spectrum_b` [40]: numpy.linalg.eigvalsh of
    each, descending, divided by their sum (what `ntk-compare --export-spectrum` writes).

The kernels are rounded to float32 first and every reference is computed from those float32
values in float64, as mscope reads them.
"""

from pathlib import Path

import numpy as np
import scipy
import sklearn
from safetensors.numpy import save_file
from scipy.stats import kendalltau
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kglm"
C = 0.5


def rbf(a, b, gamma):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * d2).astype(np.float32)


def write_kernel(path, k):
    save_file(
        {"kernel": np.ascontiguousarray(k, dtype=np.float32)},
        str(path),
        metadata={"kind": "rbf", "normalized": "false", "projection_dim": "0"},
    )


def clusters(rng, n, centres):
    y = rng.integers(0, len(centres), n)
    return centres[y] + rng.standard_normal((n, centres.shape[1])), y.astype(np.int64)


def cka(a, b):
    """The definition itself: H K H with H = I − 11ᵀ/n formed explicitly."""
    n = len(a)
    h = np.eye(n) - np.ones((n, n)) / n
    ca, cb = h @ a @ h, h @ b @ h
    return (ca * cb).sum() / (np.linalg.norm(ca) * np.linalg.norm(cb))


def spectrum(k):
    values = np.sort(np.linalg.eigvalsh((k + k.T) / 2))[::-1]
    return values / values.sum()


def effective_rank(p):
    p = p[p > 0]
    return np.exp(-(p * np.log(p)).sum())


def main():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((3, 4)) * 1.2
    x_train, y_train = clusters(rng, 60, centres)
    x_test, y_test = clusters(rng, 25, centres)
    k_train, k_test = rbf(x_train, x_train, 0.5), rbf(x_test, x_train, 0.5)
    write_kernel(OUT / "train_kernel.safetensors", k_train)
    write_kernel(OUT / "test_kernel.safetensors", k_test)

    model = LogisticRegression(C=C, tol=1e-10, max_iter=10000)
    model.fit(k_train.astype(np.float64), y_train)
    proba = model.predict_proba(k_test.astype(np.float64))

    tau_x = rng.integers(0, 6, 40).astype(np.float64)
    tau_y = tau_x + rng.integers(-3, 4, 40)
    tau = kendalltau(tau_x, tau_y).statistic  # variant="b" is the default

    r2_true = rng.standard_normal(30)
    r2_pred = r2_true + 0.4 * rng.standard_normal(30)

    points = rng.standard_normal((40, 3))
    cka_a = rbf(points, points, 0.3)
    cka_b = ((points @ points.T / 3 + 1) ** 3).astype(np.float32)
    a64, b64 = cka_a.astype(np.float64), cka_b.astype(np.float64)
    pa, pb = spectrum(a64), spectrum(b64)

    f64 = lambda v: np.ascontiguousarray(v, dtype=np.float64)
    save_file(
        {
            "y_train": y_train,
            "y_test": y_test,
            "coef": f64(model.coef_),
            "intercept": f64(model.intercept_),
            "proba": f64(proba),
            "tau_x": f64(tau_x),
            "tau_y": f64(tau_y),
            "tau": f64([tau]),
            "r2_true": f64(r2_true),
            "r2_pred": f64(r2_pred),
            "r2": f64([r2_score(r2_true, r2_pred)]),
            "cka_a": cka_a,
            "cka_b": cka_b,
            "cka": f64([cka(a64, b64)]),
            "spectrum_l1": f64([np.abs(pa - pb).sum()]),
            "spectrum_l2": f64([np.sqrt(((pa - pb) ** 2).sum())]),
            "effective_rank": f64([effective_rank(pa), effective_rank(pb)]),
            "relative_frobenius": f64([np.linalg.norm(a64 - b64) / np.linalg.norm(b64)]),
            "spectrum_a": f64(pa),
            "spectrum_b": f64(pb),
        },
        str(OUT / "reference.safetensors"),
        metadata={"sklearn": sklearn.__version__, "scipy": scipy.__version__},
    )
    print(f"n_iter {model.n_iter_}, tau {tau:.6f}, cka {cka(a64, b64):.6f}, classes {model.classes_}")


if __name__ == "__main__":
    main()
