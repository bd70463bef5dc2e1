#!/usr/bin/env python3
"""PyTorch's CPU `F.linear` (MKL's sgemm) on the shapes of `mscope bench --suite kernels
--filter linear`: the rate our packed GEMM (variant 8) is held to on the same cores.

    tools/.venv/bin/python tools/anchors/torch_linear_cpu.py --threads 2

Each case is timed as bench times it — bias, activation and residual included, SwiGLU as two
products and the gating — and prints the median of the runs and its GFLOP/s (2·n·k·rows).
Run it alternating with `mscope bench` on a loaded machine.

`--dtype bf16` runs every tensor in bf16 (oneDNN's AMX kernels where the CPU has them): the
anchor of GEMM variant 11 (`mscope bench --variant 11`, bf16 operands with f32 sums).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# The bench's linear cases, as the GPU anchor times them (this script's folder is on sys.path).
from gpu_torch import LINEAR as CASES


def case_fn(n, k, m, act, residual, dtype):
    rows = 2 * m if act == "swiglu" else m
    x = (torch.rand(n, k) * 2 - 1).to(dtype)
    w = (torch.rand(rows, k) * 2 - 1).to(dtype)
    b = torch.rand(m).to(dtype)
    r = torch.rand(n, m).to(dtype)
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
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    args = parser.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(args.threads)
    for name, n, k, m, act, residual in CASES:
        if args.filter not in name:
            continue
        rows, f = case_fn(n, k, m, act, residual, dtype)
        for _ in range(3):
            f()
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        med, best = statistics.median(times), min(times)
        rate = 2 * n * k * rows / med / 1e9
        print(f"{name:36s} {n}x{k}x{rows} torch {args.dtype} median {med * 1e3:8.3f} ms "
              f"min {best * 1e3:8.3f} ms {rate:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
