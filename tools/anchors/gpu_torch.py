#!/usr/bin/env python3
"""GPU anchors for `mscope bench --backend cuda|wgpu`: the same work in PyTorch on the same GPU.

    python3 tools/anchors/gpu_torch.py [--bench mscope-bench.json] [--json out.json]

- GEMM: F.linear with bias and the case's activation (and the residual add where the case has
  one) on the shapes of src/bench/kernels.rs's `linear/*` cases (full scale); for the
  `linear_gated/*` (SwiGLU) case, transformers' MLP: silu(F.linear(x, gate)) * F.linear(x, up),
  no bias, m output columns from 2m weight rows. cuBLAS in f32
  (TF32 off, the accuracy mscope's f32 kernels keep) and in bf16 (tensor cores).
- Attention: scaled_dot_product_attention on the `attention/*` cases' shapes (padded batches of
  equal-length sequences, so no packing is needed), f32 and bf16; the Mistral case with its
  causal sliding-window mask (grouped-query heads expanded, as SDPA's math needs).
- NTK: exact trace NTK of the 784-100-100-100-10 ReLU MLP on 1000 points (the `pipeline/ntk`
  case) with torch.func vmap(jacrev) + einsum, as tools/anchors/ntk_torch_func.py writes it.

Each timing is the median of --repeat runs after --warmup, between CUDA events. With --bench,
each anchor is set beside mscope's median for the case of the same name, as mscope / torch
(below 1: mscope faster). Prints a Markdown table; --json also writes the numbers.
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

# (case, n, k, m, activation, residual) — src/bench/kernels.rs at Scale::Full; "swiglu": m gated
# output columns.
LINEAR = [
    ("linear/minilm-qkv", 2048, 384, 1152, "identity", False),
    ("linear/minilm-ffn-up", 2048, 384, 1536, "gelu", False),
    ("linear/minilm-ffn-down", 2048, 1536, 384, "identity", True),
    ("linear/bert-base-ffn-up", 2048, 768, 3072, "gelu", False),
    ("linear/e5-large-ffn-up", 2048, 1024, 4096, "gelu", False),
    ("linear_gated/mistral-7b-mlp-gate-up", 256, 4096, 14336, "swiglu", False),
    ("linear/smollm2-qkv", 512, 576, 960, "identity", False),
    ("linear/smollm2-o", 512, 576, 576, "identity", True),
    ("linear_gated/smollm2-mlp-gate-up", 512, 576, 1536, "swiglu", False),
    ("linear/smollm2-mlp-down", 512, 1536, 576, "identity", True),
    ("linear/clip-vit-h-mlp-up", 8 * 257, 1280, 5120, "gelu", False),
]

# (case, sequences, length, heads, kv_heads, head_dim, causal, window)
ATTENTION = [
    ("attention/minilm", 32, 128, 12, 12, 32, False, None),
    ("attention/bert-base", 16, 256, 12, 12, 64, False, None),
    ("attention/mistral-7b-gqa-window", 1, 1024, 32, 8, 128, True, 512),
]

ACT = {"identity": lambda x: x, "gelu": F.gelu, "silu": F.silu}


def timed(fn, warmup, repeat):
    """Median seconds of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def linear_cases(args):
    out = []
    for name, n, k, m, act, residual in LINEAR:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cuda").manual_seed(0)
            gated = act == "swiglu"
            rows = 2 * m if gated else m
            x = torch.rand(n, k, device="cuda", dtype=dtype, generator=g) * 2 - 1
            w = torch.rand(rows, k, device="cuda", dtype=dtype, generator=g) * 2 - 1
            b = torch.rand(m, device="cuda", dtype=dtype, generator=g)
            r = torch.rand(n, m, device="cuda", dtype=dtype, generator=g) if residual else None

            if gated:
                gate, up = w[:m], w[m:]

                def run():
                    return F.silu(F.linear(x, gate)) * F.linear(x, up)
            else:
                f = ACT[act]

                def run():
                    y = f(F.linear(x, w, b))
                    return y + r if r is not None else y

            s = timed(run, args.warmup, args.repeat)
            out.append(dict(name=name, torch=f"F.linear {str(dtype)[6:]}", seconds=s,
                            rate=2 * n * k * rows / s / 1e9, unit="GFLOP/s"))
    return out


def attention_cases(args):
    out = []
    for name, seqs, length, heads, kv_heads, hd, causal, window in ATTENTION:
        i = torch.arange(length, device="cuda")
        allowed = torch.ones(length, length, dtype=torch.bool, device="cuda")
        if causal:
            allowed &= i[None, :] <= i[:, None]
        if window is not None:
            allowed &= (i[:, None] - i[None, :]).abs() < window
        pairs = int(allowed.sum()) * seqs * heads
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cuda").manual_seed(0)
            q = torch.rand(seqs, heads, length, hd, device="cuda", dtype=dtype, generator=g)
            k = torch.rand(seqs, kv_heads, length, hd, device="cuda", dtype=dtype, generator=g)
            v = torch.rand(seqs, kv_heads, length, hd, device="cuda", dtype=dtype, generator=g)
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
            mask = None if (window is None and not causal) else allowed

            def run():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            s = timed(run, args.warmup, args.repeat)
            out.append(dict(name=name, torch=f"SDPA {str(dtype)[6:]}", seconds=s,
                            rate=4 * hd * pairs / s / 1e9, unit="GFLOP/s"))
    return out


def ntk_case(args):
    from torch.func import functional_call, jacrev, vmap

    torch.manual_seed(0)
    widths = [784, 100, 100, 100, 10]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).cuda()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(1000, 784, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))

    def f(p, xi):
        return functional_call(model, p, (xi[None],))[0]

    def run():
        jac = vmap(jacrev(f), (None, 0))(params, x)
        flat = torch.cat([j.reshape(x.shape[0], 10, -1) for j in jac.values()], dim=2)
        k = torch.einsum("icp,jcp->ij", flat, flat)
        norm = k.diagonal().sqrt()
        return k / norm[:, None] / norm[None, :]

    s = timed(run, 1, max(3, args.repeat // 4))
    return [dict(name="pipeline/ntk", torch="torch.func vmap(jacrev)+einsum f32", seconds=s,
                 rate=1000 * 1000 / s / 1e6, unit="M pairs/s")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", help="mscope bench --json output to set the anchors against")
    p.add_argument("--json", help="write the anchors here")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    rows = []
    for part in (linear_cases, attention_cases, ntk_case):
        try:
            rows += part(args)
        except Exception as e:  # one failing family must not hide the others
            print(f"{part.__name__} failed: {e}", file=sys.stderr)

    mscope = {}
    if args.bench:
        with open(args.bench) as fh:
            for r in json.load(fh).get("results", []):
                label = f"{r.get('backend', '?')} {r.get('variant_name') or '-'}"
                mscope.setdefault(r["name"], []).append((label, r["median_s"]))

    print(f"## PyTorch {torch.__version__} anchors on {torch.cuda.get_device_name()}\n")
    print("| case | torch | torch median | torch rate | mscope (backend variant): median, mscope/torch |")
    print("|---|---|---|---|---|")
    for r in rows:
        ours = "; ".join(f"{label}: {s * 1e3:.3f} ms, {s / r['seconds']:.2f}×"
                         for label, s in mscope.get(r["name"], [])) or "–"
        print(f"| {r['name']} | {r['torch']} | {r['seconds'] * 1e3:.3f} ms | "
              f"{r['rate']:.1f} {r['unit']} | {ours} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(),
                       "anchors": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
