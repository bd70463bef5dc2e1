"""Synthetic embeddings for the `cluster` and `align` anchors: two views of the same rows.

`x` (rows × dim): `labels` overlapping Gaussian classes in a 64-dimensional latent space (class
centres N(0, 1.5²), unit within-class noise), lifted to `dim` dimensions by a random linear map,
plus isotropic N(0, 0.5²) noise: clusters that k-means has to iterate on. `y` (rows × dim): a
noisy nonlinear view of the same rows, `tanh(x M / 8) + N(0, 0.1²)` with `M` random N(0, 1/dim):
related but not a rotation of `x`, what two embedders of the same texts give. float32, written
once as .npy files (x.npy, y.npy, labels.npy) under `directory` (100 000 × 1 024 is 410 MB per
file: keep it out of the repository) and reused when already there.
"""

from pathlib import Path

import numpy as np

LATENT = 64


def write_views(directory, rows, dim, labels=10, seed=0):
    """Paths of x.npy, y.npy and labels.npy for these sizes, generating them if absent."""
    out = Path(directory) / f"views_{rows}x{dim}_{labels}_{seed}"
    paths = {name: out / f"{name}.npy" for name in ("x", "y", "labels")}
    if all(p.exists() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, labels, rows)
    centres = 1.5 * rng.standard_normal((labels, LATENT))
    latent = centres[classes] + rng.standard_normal((rows, LATENT))
    lift = rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)
    x = (latent @ lift).astype(np.float32)
    x += 0.5 * rng.standard_normal((rows, dim), dtype=np.float32)
    mix = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    y = np.tanh(x @ mix / 8.0)
    y += 0.1 * rng.standard_normal((rows, dim), dtype=np.float32)
    np.save(paths["x"], x)
    np.save(paths["y"], y.astype(np.float32))
    np.save(paths["labels"], classes.astype(np.int64))
    return paths
