#!/usr/bin/env python3
"""scikit-learn references for `mscope cluster` (tests/cluster.rs).

    tools/.venv/bin/pip install numpy scikit-learn
    tools/.venv/bin/python tools/make_cluster_fixtures.py

Reads tests/fixtures/sklearn_embeddings.npy and sklearn_labels.npy (tools/make_sklearn_fixtures.py:
300 rows × 24 dims, 4 overlapping labels) and writes tests/fixtures/cluster_reference.json:
  kmeans   for k = 4 and k = 7: the lowest inertia of KMeans(k, init="k-means++", n_init=10,
           random_state=0) on the float64 rows (`inertia`), and its labels (`labels`)
  by_seed  for each k, the lowest inertia of the same KMeans at random_state 0-4
           (`inertia_by_seed`): the best of 10 restarts is a draw, so the test compares the
           medians over five seeds on both sides
  metrics  for each k: adjusted_rand_score, normalized_mutual_info_score (arithmetic) and purity
           of those labels against the true ones (codes in sorted label order, as mscope numbers
           labels read from numpy)
"""

import json
from pathlib import Path

import numpy as np
import sklearn
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main():
    x = np.load(FIXTURES / "sklearn_embeddings.npy").astype(np.float64)
    names = np.load(FIXTURES / "sklearn_labels.npy")
    truth = np.searchsorted(np.unique(names), names)
    out = {"sklearn": sklearn.__version__, "truth": truth.tolist(), "runs": []}
    for k in (4, 7):
        km = KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=0).fit(x)
        table = contingency_matrix(truth, km.labels_)
        out["runs"].append({
            "k": k, "inertia": float(km.inertia_), "labels": km.labels_.tolist(),
            "inertia_by_seed": [
                float(KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=s)
                      .fit(x).inertia_)
                for s in range(5)
            ],
            "ari": adjusted_rand_score(truth, km.labels_),
            "nmi": normalized_mutual_info_score(truth, km.labels_),
            "purity": float(table.max(axis=0).sum() / table.sum()),
        })
        print(k, km.inertia_, out["runs"][-1]["ari"], out["runs"][-1]["nmi"])
    (FIXTURES / "cluster_reference.json").write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
