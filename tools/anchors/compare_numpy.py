#!/usr/bin/env python3
"""Anchor for `mscope compare`: a straightforward numpy implementation of the same definitions.

    tools/.venv/bin/python tools/anchors/compare_numpy.py --models 100 --points 10000 --repeat 3
    tools/.venv/bin/python tools/anchors/compare_numpy.py --models 1000 --points 100000 --timed-models 3

Scores come from the recipe of mscope's `synthetic_ensemble` (numpy's own generator, so the values
differ but sizes and shapes match): binary logits, labels 0/1, true logit ±(0.5 + |z|), per-model
N(0, 0.8²) noise, the last model scaled by 1.6. For every model, the way one would write it in
numpy: pool the other M − 1 models (concatenate + sort), ECDF counts by searchsorted, d(α) from
the closed form, α̂ by bisection to 1e-9 (as the issue states it), KS, trimmed W2 against the
pool's quantiles at the candidate's grid, accuracy, churn (mean, against the majority) and ECE.

Leave-one-out costs O(M²·N) this way; with --timed-models K only the first K models are timed and
the per-model time is extrapolated to all M (every model costs the same). Generation is not
timed. --save DIR writes the scores, labels and this implementation's report, so
`mscope compare --scores DIR/scores.npy --labels DIR/labels.npy --out R.json` can be checked
against it.
Prints one JSON line: anchor, models, points, timed_models, median_s (for all M models,
extrapolated when K < M), repeats_s, numpy_version, cpu_count, loadavg_1m_before.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np


def synthetic_ensemble(models, points, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, points)
    truth = (2 * labels - 1) * (0.5 + np.abs(rng.standard_normal(points)))
    scores = truth + 0.8 * rng.standard_normal((models, points))
    scores[-1] *= 1.6
    return scores.astype(np.float32), labels


def profile(candidate, reference):
    """(F, G) just before and at every distinct candidate value, then (1, 1)."""
    values = np.unique(candidate)
    n, m = len(candidate), len(reference)
    f = np.empty(2 * len(values) + 1)
    g = np.empty_like(f)
    f[0:-1:2] = np.searchsorted(candidate, values, "left") / n
    f[1:-1:2] = np.searchsorted(candidate, values, "right") / n
    g[0:-1:2] = np.searchsorted(reference, values, "left") / m
    g[1:-1:2] = np.searchsorted(reference, values, "right") / m
    f[-1] = g[-1] = 1.0
    return f, g


def distance(f, g, alpha):
    lam = 1.0 / (1.0 - alpha)
    d = g - lam * f
    a = max(d.max(), 0.0)
    b = max(((1.0 - g) - lam * (1.0 - f)).max(), 0.0)
    low = np.minimum.accumulate(np.concatenate(([0.0], d)))[:-1]
    c = max((d - low).max(), 0.0) / 2.0
    return max(a, b, c)


def alpha_hat(f, g, t):
    if distance(f, g, 0.0) <= t:
        return 0.0
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-9:
        mid = 0.5 * (lo + hi)
        if distance(f, g, mid) <= t:
            hi = mid
        else:
            lo = mid
    return hi if distance(f, g, min(hi, 1.0 - 1e-12)) <= t else 1.0


def trimmed_w2(candidate, quantiles, alpha):
    """Equal-length pieces (1/n each): keep the smallest (1 − α) share."""
    sq = np.sort((candidate.astype(np.float64) - quantiles) ** 2)
    n = len(sq)
    if alpha >= 1.0:
        return sq[0]
    keep = (1.0 - alpha) * n
    whole = int(np.floor(keep))
    cost = sq[:whole].sum() + (keep - whole) * (sq[whole] if whole < n else 0.0)
    return cost / keep


def ece(pred, conf, labels, bins=15):
    b = np.clip(np.ceil(conf * bins).astype(int), 1, bins) - 1
    correct = (pred == labels).astype(np.float64)
    total = 0.0
    for k in range(bins):
        mask = b == k
        if mask.any():
            total += abs(correct[mask].sum() - conf[mask].sum())
    return total / len(labels)


def shared(scores):
    """Predictions, confidences and votes, computed once for all models."""
    preds = (scores > 0).astype(np.int64)
    conf = 1.0 / (1.0 + np.exp(-np.abs(scores.astype(np.float64))))
    votes = preds.sum(axis=0)
    majority = (2 * votes > len(scores)).astype(np.int64)
    return preds, conf, votes, majority


def per_model(scores, labels, common, models, level=0.05):
    m_models, n = scores.shape
    preds, conf, votes, majority = common
    c = np.sqrt(-np.log(level / 2) / 2)
    out = []
    for k in models:
        candidate = np.sort(scores[k])
        reference = np.sort(np.concatenate([scores[j] for j in range(m_models) if j != k]))
        m = len(reference)
        t = c * np.sqrt((n + m) / (n * m))
        f, g = profile(candidate, reference)
        a_hat = alpha_hat(f, g, t)
        ks = distance(f, g, 0.0)
        idx = -(-(np.arange(1, n + 1) * m) // n) - 1  # ceil(i·m/n) − 1
        w2 = trimmed_w2(candidate, reference[idx].astype(np.float64), a_hat)
        same = np.where(preds[k] == 1, votes, m_models - votes)
        out.append({
            "index": k,
            "alpha_hat": a_hat,
            "ks": ks,
            "trimmed_w2": w2,
            "accuracy": float((preds[k] == labels).mean()),
            "churn_mean": float((m_models - same).sum() / (n * (m_models - 1))),
            "churn_vs_majority": float((preds[k] != majority).mean()),
            "ece": ece(preds[k], conf[k], labels),
        })
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--points", type=int, default=10000)
    parser.add_argument("--timed-models", type=int, default=None,
                        help="time only the first K models and extrapolate to all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--save", metavar="DIR",
                        help="also write scores.npy, labels.npy and the full numpy_report.json")
    args = parser.parse_args()
    scores, labels = synthetic_ensemble(args.models, args.points)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        np.save(os.path.join(args.save, "scores.npy"), scores)
        np.save(os.path.join(args.save, "labels.npy"), labels.astype(np.int64))
        report = per_model(scores, labels, shared(scores), range(args.models))
        with open(os.path.join(args.save, "numpy_report.json"), "w") as f:
            json.dump({"models": report}, f, indent=1)
    k = args.timed_models or args.models
    load = os.getloadavg()[0]
    runs = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        common = shared(scores)
        middle = time.perf_counter()
        per_model(scores, labels, common, range(k))
        end = time.perf_counter()
        runs.append((middle - start) + (end - middle) * args.models / k)
    print(json.dumps({
        "anchor": "numpy",
        "models": args.models,
        "points": args.points,
        "timed_models": k,
        "median_s": statistics.median(runs),
        "repeats_s": runs,
        "numpy_version": np.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before": load,
    }))


if __name__ == "__main__":
    main()
