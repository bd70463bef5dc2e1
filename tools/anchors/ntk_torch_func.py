#!/usr/bin/env python3
"""Anchor for `mscope ntk`: exact trNTK of an MLP or a transformer classifier with torch.func,
timed on this CPU.

    tools/.venv/bin/python tools/anchors/ntk_torch_func.py --n 10000 --max-seconds 300 --threads 2
    tools/.venv/bin/python tools/anchors/ntk_torch_func.py --n 10000 --write-only \
        --write-model .cache/bench/ntk_mlp.safetensors --write-data .cache/bench/ntk_x10000.safetensors
    tools/.venv/bin/python tools/anchors/ntk_torch_func.py --classifier DIR --texts texts.jsonl \
        --n 2000 --max-seconds 600 --vmap-rows 4

With --classifier (a Hugging Face sequence-classification directory, e.g. one `mscope train
--model` wrote) and --texts (.jsonl with a "text" field) the work is that model's exact trNTK over
the first N texts instead: the same algorithm, each vmap chunk padded to its longest text with
the attention mask covering the padding (what a torch.func user does with a tokenizer batch).

The work: a 784-100-100-100-10 ReLU MLP (torch.nn.Linear's default init, seed 0) and N points
x ~ N(0, 1)^784 (seed 1, labels uniform in 0..10); the exact normalised trace NTK over all N×N
pairs, trNTK(x, z) = Σ_c ⟨g_c(x), g_c(z)⟩ / (‖g(x)‖ ‖g(z)‖), g_c = ∇θ f_c (definitions as in
tools/make_ntk_fixtures.py), in float32 like mscope on CPU. The way a torch.func user writes it:
per-sample Jacobians from vmap(jacrev(...)) over functional_call (in sub-chunks of --vmap-rows
rows, flattened into one [rows, C·P] buffer) and the kernel from einsum("icp,jcp->ij").

Memory: one Jacobian row is C·P·4 bytes (≈ 4 MB here; 40 GB for all 10000 points), so the
Jacobians are held in blocks sized to --memory-gib. When all N rows fit, they are computed once
and the kernel is one einsum; otherwise the kernel is accumulated block by block over the upper
triangle (the row block's Jacobians kept, each column block's recomputed, then mirrored).

Timing: a short calibration projects the full run. If it fits --max-seconds the whole N×N
kernel is computed and timed ("extrapolated": false). Otherwise the full algorithm runs on the
first N' points (N' the largest that fits the time and memory, or --n-measured) with its
Jacobian and einsum parts timed separately, and the time for N is extrapolated from them:
Jacobian seconds per row × the rows the algorithm would differentiate at N (N when single-pass,
more when blocks are recomputed) + einsum seconds per kernel entry × the entries it would
compute at N (N² single-pass, the upper block triangle otherwise). Both the measured and the
extrapolated figures are printed; nothing is hidden in one number.

Prints one JSON object on stdout; progress on stderr. --write-model / --write-data write the same
model and data in mscope's formats (README › Commands) so `mscope ntk` can be timed on
the same work; --write-kernel writes the measured trNTK in mscope's kernel format.
"""

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

SIZES = [784, 100, 100, 100, 10]
ANCHOR = "torch.func vmap(jacrev)+einsum"


class Work:
    """What the kernel is taken of: a model, its float32 parameters by name, the per-sample
    inputs (tensors with the sample on the first axis) and f(params, *one_sample) -> logits."""

    def __init__(self, model, inputs, forward, description, trim=None):
        self.model, self.inputs, self.forward, self.description = model, inputs, forward, description
        self.trim = trim  # shortens a chunk of padded inputs to its longest sample

    def rows(self, r0, r1):
        chunk = tuple(t[r0:r1] for t in self.inputs)
        return self.trim(chunk) if self.trim else chunk


def build_mlp(n):
    """The MLP work: default init under seed 0, n points (seed 1); also returns x and labels."""
    import torch

    torch.manual_seed(0)
    layers = {}
    for i in range(len(SIZES) - 1):
        layers[f"fc{i}"] = torch.nn.Linear(SIZES[i], SIZES[i + 1])

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in layers.items():
                setattr(self, k, v)

        def forward(self, x):
            for i in range(len(SIZES) - 1):
                x = getattr(self, f"fc{i}")(x)
                if i + 2 < len(SIZES):
                    x = torch.relu(x)
            return x

    from torch.func import functional_call

    model = MLP().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, SIZES[0], generator=gen, dtype=torch.float32)
    y = torch.randint(0, SIZES[-1], (n,), generator=gen, dtype=torch.int64)

    def forward(params, xi):
        return functional_call(model, params, (xi.unsqueeze(0),)).squeeze(0)

    work = Work(model, (x,), forward, "-".join(map(str, SIZES)) + " relu MLP")
    return work, x, y


def build_classifier(directory, texts_path, n):
    """A sequence classifier's work over the first n texts of a .jsonl file."""
    import torch
    from torch.func import functional_call
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = [json.loads(line)["text"] for line in open(texts_path, encoding="utf-8") if line.strip()]
    if len(texts) < n:
        sys.exit(f"{texts_path} has {len(texts)} texts, fewer than --n {n}")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager")
    model = model.eval()
    batch = tokenizer(texts[:n], padding=True, truncation=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def forward(params, ids_i, mask_i):
        # An additive mask built here: transformers' own mask builder branches on the mask's
        # values, which vmap refuses.
        additive = ((1.0 - mask_i.float()) * torch.finfo(torch.float32).min)[None, None, None, :]
        out = functional_call(model, params, (), {"input_ids": ids_i.unsqueeze(0),
                                                 "attention_mask": additive})
        return out.logits.squeeze(0)

    def trim(chunk):
        longest = int(chunk[1].sum(dim=1).max())
        return tuple(t[:, :longest] for t in chunk)

    lengths = mask.sum(dim=1).float()
    description = (f"{model.config.model_type} classifier ({model.config.num_labels} labels), "
                   f"{lengths.mean():.1f} tokens on average")
    return Work(model, (ids, mask), forward, description, trim)


def write_files(model, x, y, model_path, data_path):
    from safetensors.torch import save_file

    if model_path:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, model_path, metadata={"activation": "relu"})
        print(f"wrote model {model_path}", file=sys.stderr)
    if data_path:
        Path(data_path).parent.mkdir(parents=True, exist_ok=True)
        save_file({"x": x.contiguous(), "y": y.contiguous()}, data_path)
        print(f"wrote data {data_path} ({len(y)} rows)", file=sys.stderr)


class Ntk:
    """torch.func Jacobians and the trNTK built from them, with per-part timers."""

    def __init__(self, work, vmap_rows):
        import torch
        from torch.func import jacrev, vmap

        self.torch = torch
        self.work = work
        self.params = {k: v.detach() for k, v in work.model.named_parameters()}
        self.names = list(self.params)
        self.sizes = [self.params[k].numel() for k in self.names]
        self.p = sum(self.sizes)
        with torch.no_grad():
            self.c = work.forward(self.params, *(t[0] for t in work.rows(0, 1))).shape[0]
        self.vmap_rows = vmap_rows
        in_dims = (None,) + (0,) * len(work.inputs)
        self.per_sample_jac = vmap(jacrev(work.forward), in_dims=in_dims)
        self.jac_seconds = 0.0
        self.jac_rows = 0
        self.einsum_seconds = 0.0
        self.einsum_entries = 0

    def row_bytes(self):
        return self.c * self.p * 4

    def jacobian(self, r0, r1):
        """[rows, C, P] float32 of samples r0..r1, parameters flattened in named_parameters order."""
        torch = self.torch
        t0 = time.perf_counter()
        out = torch.empty(r1 - r0, self.c, self.p, dtype=torch.float32)
        with torch.no_grad():
            for c0 in range(r0, r1, self.vmap_rows):
                c1 = min(c0 + self.vmap_rows, r1)
                jac = self.per_sample_jac(self.params, *self.work.rows(c0, c1))
                off = 0
                for name, size in zip(self.names, self.sizes):
                    out[c0 - r0 : c1 - r0, :, off : off + size] = jac[name].reshape(c1 - c0, self.c, size)
                    off += size
                del jac
        self.jac_seconds += time.perf_counter() - t0
        self.jac_rows += r1 - r0
        return out

    def gram(self, ja, jb, out):
        t0 = time.perf_counter()
        out.copy_(self.torch.einsum("icp,jcp->ij", ja, jb))
        self.einsum_seconds += time.perf_counter() - t0
        self.einsum_entries += ja.shape[0] * jb.shape[0]

    def trntk(self, n, block_rows):
        """The full normalised kernel of the first n samples, single-pass or block by block."""
        torch = self.torch
        k = torch.empty(n, n, dtype=torch.float32)
        if n <= 2 * block_rows:
            j = self.jacobian(0, n)
            self.gram(j, j, k)
            del j
        else:
            starts = list(range(0, n, block_rows))
            for bi, i0 in enumerate(starts):
                i1 = min(i0 + block_rows, n)
                ji = self.jacobian(i0, i1)
                self.gram(ji, ji, k[i0:i1, i0:i1])
                for j0 in starts[bi + 1 :]:
                    j1 = min(j0 + block_rows, n)
                    jj = self.jacobian(j0, j1)
                    self.gram(ji, jj, k[i0:i1, j0:j1])
                    k[j0:j1, i0:i1] = k[i0:i1, j0:j1].T
                    del jj
                del ji
                print(f"  row block {bi + 1}/{len(starts)}", file=sys.stderr)
        norm = torch.diagonal(k).sqrt()
        k /= norm[:, None]
        k /= norm[None, :]
        return k


def plan(n, block_rows):
    """(Jacobian rows differentiated, kernel entries computed) by Ntk.trntk at n."""
    if n <= 2 * block_rows:
        return n, n * n
    b = [min(block_rows, n - s) for s in range(0, n, block_rows)]
    rows = sum(b[i] + sum(b[i + 1 :]) for i in range(len(b)))
    entries = sum(b[i] * b[i] + sum(b[i] * bj for bj in b[i + 1 :]) for i in range(len(b)))
    return rows, entries


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="points (the kernel is N×N)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time budget of the measured run")
    ap.add_argument("--n-measured", type=int, default=0, help="force the measured subset size N'")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--memory-gib", type=float, default=8.0, help="budget for Jacobian blocks + kernel")
    ap.add_argument("--vmap-rows", type=int, default=32, help="rows per vmap(jacrev) call")
    ap.add_argument("--classifier", help="a sequence-classification directory instead of the MLP")
    ap.add_argument("--texts", help="the classifier's texts (.jsonl, a \"text\" field)")
    ap.add_argument("--write-model", help="write the MLP here (mscope MLP format)")
    ap.add_argument("--write-data", help="write the N points here (mscope dataset format)")
    ap.add_argument("--write-only", action="store_true", help="write the files and skip timing")
    ap.add_argument("--write-kernel", help="write the measured trNTK here (mscope kernel format)")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    if args.classifier:
        if not args.texts or args.write_model or args.write_data or args.write_only:
            sys.exit("--classifier takes --texts and none of --write-model/--write-data/--write-only")
        work = build_classifier(args.classifier, args.texts, args.n)
    else:
        work, x, y = build_mlp(args.n)
        write_files(work.model, x, y, args.write_model, args.write_data)
        if args.write_only:
            return

    ntk = Ntk(work, args.vmap_rows)
    budget = args.memory_gib * 2**30
    # Two Jacobian blocks, the kernel, and ~1 GiB for vmap intermediates and the rest.
    block_rows = int((budget - args.n * args.n * 4 - 2**30) / (2 * ntk.row_bytes()))
    if block_rows < args.vmap_rows:
        sys.exit(f"--memory-gib {args.memory_gib} leaves room for {block_rows} Jacobian rows per block")

    # Calibration (warm-up included): Jacobian seconds per row, einsum seconds per entry.
    cal = min(8 * args.vmap_rows, args.n, 2 * block_rows)
    ntk.jacobian(0, min(args.vmap_rows, args.n))
    ntk.jac_seconds, ntk.jac_rows = 0.0, 0
    jc = ntk.jacobian(0, cal)
    kc = torch.empty(cal, cal)
    ntk.gram(jc, jc, kc)
    del jc, kc
    jac_rate, ein_rate = ntk.jac_seconds / ntk.jac_rows, ntk.einsum_seconds / ntk.einsum_entries

    def projected(m, rows_per_block):
        rows, entries = plan(m, rows_per_block)
        return jac_rate * rows + ein_rate * entries

    full_projection = projected(args.n, block_rows)
    print(
        f"calibration on {cal} rows: {jac_rate * 1e3:.2f} ms/row Jacobian, "
        f"{ein_rate * 1e6:.2f} µs/entry einsum; projected {full_projection:.0f} s for N={args.n}",
        file=sys.stderr,
    )
    if args.n_measured:
        n_meas = min(args.n_measured, args.n)
    elif full_projection <= args.max_seconds:
        n_meas = args.n
    else:
        # Largest single-pass N' whose projection fits the budget (with 20% slack).
        n_meas = min(args.n, 2 * block_rows)
        while n_meas > 64 and projected(n_meas, block_rows) > 0.8 * args.max_seconds:
            n_meas = int(n_meas * 0.9)
        n_meas = max(n_meas, min(64, args.n))

    ntk.jac_seconds = ntk.einsum_seconds = 0.0
    ntk.jac_rows = ntk.einsum_entries = 0
    print(f"measuring the full kernel on {n_meas} points (block rows {block_rows})", file=sys.stderr)
    t0 = time.perf_counter()
    k = ntk.trntk(n_meas, block_rows)
    seconds = time.perf_counter() - t0
    diag_err = float((torch.diagonal(k) - 1).abs().max())
    assert diag_err < 1e-4 and bool(torch.isfinite(k).all()), ("trNTK diagonal", diag_err)
    if args.write_kernel:
        from safetensors.torch import save_file

        Path(args.write_kernel).parent.mkdir(parents=True, exist_ok=True)
        save_file({"kernel": k.contiguous()}, args.write_kernel,
                  metadata={"kind": "trntk", "normalized": "true", "projection_dim": "0"})
        print(f"wrote kernel {args.write_kernel}", file=sys.stderr)

    extrapolated = n_meas != args.n
    rows_n, entries_n = plan(args.n, block_rows)
    jac_per_row = ntk.jac_seconds / ntk.jac_rows
    ein_per_entry = ntk.einsum_seconds / ntk.einsum_entries
    other = seconds - ntk.jac_seconds - ntk.einsum_seconds  # normalisation, mirroring
    if extrapolated:
        seconds_n = jac_per_row * rows_n + ein_per_entry * entries_n + other * (args.n / n_meas) ** 2
    else:
        seconds_n = seconds
    out = {
        "anchor": ANCHOR,
        "n": args.n,
        "n_measured": n_meas,
        "seconds_measured": round(seconds, 3),
        "seconds_for_n": round(seconds_n, 1 if extrapolated else 3),
        "extrapolated": extrapolated,
        "torch": torch.__version__,
        "threads": args.threads,
        "model": work.description,
        "params": ntk.p,
        "dtype": "float32",
        "jacobian_seconds_measured": round(ntk.jac_seconds, 3),
        "einsum_seconds_measured": round(ntk.einsum_seconds, 3),
        "jacobian_rows_measured": ntk.jac_rows,
        "jacobian_ms_per_row": round(jac_per_row * 1e3, 4),
        "einsum_gflops": round(2 * ntk.c * ntk.p * ntk.einsum_entries / ntk.einsum_seconds / 1e9, 2),
        "jacobian_rows_for_n": rows_n,
        "kernel_entries_for_n": entries_n,
        "block_rows": block_rows,
        "single_pass_for_n": args.n <= 2 * block_rows,
        "memory_gib": args.memory_gib,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "projected_seconds_for_n_at_calibration": round(full_projection, 1),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2),
    }
    if extrapolated:
        out["note"] = (
            f"measured the full {n_meas}x{n_meas} kernel; seconds_for_n = Jacobian s/row x {rows_n} rows "
            f"+ einsum s/entry x {entries_n} entries (+ the rest scaled by N^2)"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
