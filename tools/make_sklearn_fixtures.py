#!/usr/bin/env python3
"""scikit-learn references for `mscope pca` and `mscope lda` (tests/pca.rs, tests/lda.rs).

    tools/.venv/bin/pip install scikit-learn
    tools/.venv/bin/python tools/make_sklearn_fixtures.py

Writes synthetic embeddings in mscope's format (README › Commands) and what scikit-learn
computes on them, all under tests/fixtures/sklearn_*.safetensors:

- sklearn_embeddings: 300 rows × 24 dims, 4 labels of unequal size sharing an anisotropic
  covariance (classes overlap, so accuracy is well below 100%);
- sklearn_wide_embeddings: 36 rows × 48 dims, 3 labels: more dims than rows, so the within-class
  scatter is singular (the svd solver's rank rule, Ledoit–Wolf's reason to exist);
- sklearn_reference: PCA(svd_solver="full") explained variance, ratio and components; for each
  data set the test indices of StratifiedShuffleSplit(test_size=0.2, random_state=0) and the test
  predictions and accuracies of LinearDiscriminantAnalysis with solver="svd", with
  solver="eigen", shrinkage="auto", and with solver="eigen", shrinkage=0.3, fitted on the train
  part; the svd fit's explained_variance_ratio_ on every row. The same for two label selections
  of sklearn_embeddings (prefix `only`: the rows of alpha, gamma and delta, as `--only
  alpha,gamma,delta`; prefix `grouped`: alpha+beta against gamma+delta, as `--group
  ab=alpha,beta --group gd=gamma,delta`), class codes in the order mscope numbers the classes.
  `detector_{svd,eigen_auto}_proba`: predict_proba of each solver fitted on every row of
  sklearn_embeddings, on every row (what `mscope lda --save` then `mscope classify` give).

And sklearn_embeddings' rows as numpy writes them, for the readers of outside embeddings:
sklearn_embeddings.npy (the float32 matrix), sklearn_labels.npy (the label names, a unicode
array), sklearn_embeddings.npz (np.savez_compressed: `embeddings`, `label` the names) and
sklearn_labels.csv (columns `id`, `source`: the names).

Several label factors per row, as the seeds' translation experiment (language × subject ×
translated), for `--factor` (tests/pca.rs, tests/lda.rs, tests/embedding_inputs.rs):
sklearn_factors.npz (`embeddings` 222 × 16 float32 and one unicode array per factor: `language`
de/es, `subject` economics/politics/sports, `translated` no/yes), the same factors as sklearn_factors.csv (columns `language`, `subject`,
`translated`) and sklearn_factors.parquet (pyarrow: `embedding` list<float32> and the three
string columns). sklearn_factors_reference.safetensors: per factor F, LDA's references as above
under prefix `factor_F` (class codes in sorted order, as mscope numbers string labels); and the
first 3 components of PCA(svd_solver="full") scored on every row, with for every level L of
every factor `pca_F_L_mean` (mean score per component) and `pca_F_L_auc` (roc_auc_score of
"is L" against the score, per component).

Inputs are cast to float64 before fitting (scikit-learn would otherwise compute in float32).
"""

from pathlib import Path

import numpy as np
import sklearn
from safetensors.numpy import save_file
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SPLITS = 5


def synthetic(rng, counts, dim, spread):
    """Gaussian classes with a shared random anisotropic covariance; the class means lie
    `spread` apart in Mahalanobis units, so `spread` sets how much the classes overlap."""
    mix = rng.standard_normal((dim, dim)) * np.geomspace(3.0, 0.1, dim)
    means = rng.standard_normal((len(counts), dim)) * (spread / np.sqrt(dim)) @ mix.T
    x = np.concatenate([rng.standard_normal((n, dim)) @ mix.T + means[k] for k, n in enumerate(counts)])
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order].astype(np.int64)


def write_embeddings(path, x, y, labels):
    """Writes rows `x` with label indices `y` in the format `mscope embed` writes."""
    save_file(
        {"embeddings": np.ascontiguousarray(x), "labels": y},
        str(path),
        metadata={
            "labels": "[" + ",".join(f'"{l}"' for l in labels) + "]",
            "model": "synthetic",
            "pooling": "none",
            "normalized": "false",
            "max_length": "0",
        },
    )


def lda_references(prefix, x, y):
    x64 = x.astype(np.float64)
    splitter = StratifiedShuffleSplit(n_splits=SPLITS, test_size=0.2, random_state=0)
    models = {
        "svd": lambda: LinearDiscriminantAnalysis(solver="svd"),
        "eigen_auto": lambda: LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto"),
        "eigen_0.3": lambda: LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.3),
    }
    out = {f"{prefix}_test_index": [], **{f"{prefix}_{m}_pred": [] for m in models}}
    acc = {m: [] for m in models}
    for train, test in splitter.split(x64, y):
        out[f"{prefix}_test_index"].append(test)
        for m, make in models.items():
            pred = make().fit(x64[train], y[train]).predict(x64[test])
            out[f"{prefix}_{m}_pred"].append(pred)
            acc[m].append(np.mean(pred == y[test]))
    tensors = {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
    tensors.update({f"{prefix}_{m}_accuracy": np.asarray(a, dtype=np.float32) for m, a in acc.items()})
    full = LinearDiscriminantAnalysis(solver="svd").fit(x64, y)
    tensors[f"{prefix}_explained_variance_ratio"] = full.explained_variance_ratio_.astype(np.float32)
    return tensors


FACTORS = {
    "language": ["de", "es"],
    "subject": ["economics", "politics", "sports"],
    "translated": ["no", "yes"],
}


def factor_fixtures(rng):
    """Rows whose embedding is the sum of one offset per factor level (language strongest,
    translation weakest) plus shared anisotropic noise; 12 combinations of levels, of unequal sizes."""
    dim = 16
    mix = rng.standard_normal((dim, dim)) * np.geomspace(2.0, 0.2, dim)
    strength = {"language": 3.0, "subject": 2.0, "translated": 1.0}
    offsets = {f: rng.standard_normal((len(levels), dim)) * strength[f] / np.sqrt(dim) @ mix.T
               for f, levels in FACTORS.items()}
    rows, codes = [], {f: [] for f in FACTORS}
    for cell, (lang, subj, tr) in enumerate(np.ndindex(2, 3, 2)):
        n = 14 + 3 * (cell % 4)
        codes["language"] += [lang] * n
        codes["subject"] += [subj] * n
        codes["translated"] += [tr] * n
        centre = offsets["language"][lang] + offsets["subject"][subj] + offsets["translated"][tr]
        rows.append(rng.standard_normal((n, dim)) @ mix.T + centre)
    order = rng.permutation(sum(len(r) for r in rows))
    x = np.concatenate(rows)[order].astype(np.float32)
    y = {f: np.asarray(c, dtype=np.int64)[order] for f, c in codes.items()}
    names = {f: np.array(FACTORS[f])[y[f]] for f in FACTORS}

    np.savez_compressed(OUT / "sklearn_factors.npz", embeddings=x, **names)
    with open(OUT / "sklearn_factors.csv", "w", encoding="utf-8") as f:
        f.write(",".join(FACTORS) + "\n")
        f.writelines(",".join(names[k][i] for k in FACTORS) + "\n" for i in range(len(x)))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"embedding": pa.array(list(x), type=pa.list_(pa.float32())),
                             **{f: pa.array(names[f]) for f in FACTORS}}),
                   OUT / "sklearn_factors.parquet")

    ref = {}
    for f in FACTORS:
        ref.update(lda_references(f"factor_{f}", x, y[f]))
    scores = PCA(n_components=3, svd_solver="full").fit(x.astype(np.float64)).transform(x.astype(np.float64))
    for f, levels in FACTORS.items():
        for code, level in enumerate(levels):
            mine = y[f] == code
            ref[f"pca_{f}_{level}_mean"] = scores[mine].mean(axis=0)
            ref[f"pca_{f}_{level}_auc"] = np.array([roc_auc_score(mine, scores[:, c]) for c in range(3)])
    save_file(ref, str(OUT / "sklearn_factors_reference.safetensors"), metadata={"sklearn": sklearn.__version__})


def main():
    rng = np.random.default_rng(20240601)
    x, y = synthetic(rng, [100, 80, 70, 50], 24, 2.0)
    write_embeddings(OUT / "sklearn_embeddings.safetensors", x, y, ["alpha", "beta", "gamma", "delta"])
    wx, wy = synthetic(rng, [12, 12, 12], 48, 6.0)
    write_embeddings(OUT / "sklearn_wide_embeddings.safetensors", wx, wy, ["left", "middle", "right"])

    pca = PCA(svd_solver="full").fit(x.astype(np.float64))
    ref = {
        "pca_explained_variance": pca.explained_variance_.astype(np.float32),
        "pca_explained_variance_ratio": pca.explained_variance_ratio_.astype(np.float32),
        "pca_components": np.ascontiguousarray(pca.components_, dtype=np.float32),
    }
    ref.update(lda_references("lda", x, y))
    ref.update(lda_references("wide", wx, wy))
    keep = y != 1
    ref.update(lda_references("only", x[keep], np.array([0, -1, 1, 2])[y[keep]]))
    ref.update(lda_references("grouped", x, np.array([0, 0, 1, 1])[y]))

    x64 = x.astype(np.float64)
    for name, lda in [("svd", LinearDiscriminantAnalysis(solver="svd")),
                      ("eigen_auto", LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto"))]:
        ref[f"detector_{name}_proba"] = lda.fit(x64, y).predict_proba(x64)

    names = np.array(["alpha", "beta", "gamma", "delta"])[y]
    np.save(OUT / "sklearn_embeddings.npy", x)
    np.save(OUT / "sklearn_labels.npy", names)
    np.savez_compressed(OUT / "sklearn_embeddings.npz", embeddings=x, label=names)
    with open(OUT / "sklearn_labels.csv", "w", encoding="utf-8") as f:
        f.write("id,source\n")
        f.writelines(f"{i},{n}\n" for i, n in enumerate(names))
    save_file(ref, str(OUT / "sklearn_reference.safetensors"), metadata={"sklearn": sklearn.__version__})
    factor_fixtures(np.random.default_rng(20240602))
    for k in sorted(ref):
        if k.endswith("accuracy"):
            print(k, np.round(ref[k], 3))


if __name__ == "__main__":
    main()
