#!/usr/bin/env python3
"""PyTorch's CPU `F.linear` (MKL's sgemm) on the shapes of `mscope bench --suite kernels
--filter linear`: the rate our packed GEMM (variant 8) is held to on the same cores.

    tools/.venv/bin/python tools/anchors/torch_linear_cpu.py --threads 2

Each case is timed as bench times it — bias, activation and residual included, SwiGLU as two
products and the gating — and prints the median of the runs and its GFLOP/s (2·n·k·rows).
Run it alternating with `mscope bench` on a loaded machine.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# The bench's linear cases, as the GPU anchor times them (this script's folder is on sys.path).
from gpu_torch import LINEAR as CASES


def case_fn(n, k, m, act, residual):
    rows = 2 * m if act == "swiglu" else m
    x = torch.rand(n, k) * 2 - 1
    w = torch.rand(rows, k) * 2 - 1
    b = torch.rand(m)
    r = torch.rand(n, m)
    if act == "swiglu":
        return rows, lambda: F.silu(F.linear(x, w[:m])) * F.linear(x, w[m:])
    a = {"identity": lambda y: y, "gelu": F.gelu}[act]
    if residual:
        return rows, lambda: a(F.linear(x, w, b)) + r
    return rows, lambda: a(F.linear(x, w, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--filter", default="", help="only the cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, n, k, m, act, residual in CASES:
        if args.filter not in name:
            continue
        rows, f = case_fn(n, k, m, act, residual)
        for _ in range(3):
            f()
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        med, best = statistics.median(times), min(times)
        rate = 2 * n * k * rows / med / 1e9
        print(f"{name:36s} {n}x{k}x{rows} torch median {med * 1e3:8.3f} ms "
              f"min {best * 1e3:8.3f} ms {rate:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
