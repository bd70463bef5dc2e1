#!/usr/bin/env python3
"""Every mscope instrument against the tool a user would otherwise pick, on the same work, on this
machine, in one run. Run through tools/compare-anchors.sh, which builds mscope and fetches the
model first.

    tools/.venv/bin/python tools/anchors/compare_anchors.py [--quick] [--threads T] [--repeat R]
        [--backend cpu] [--out .cache/bench/anchors.json]

Rows (the anchor scripts beside this file document each side's work):
  embed    mscope embed            vs sentence-transformers encode (embed_sentence_transformers.py)
  embed-long  the same on 600 long fortune-file texts (long_texts.py; not in the default rows)
  decoder  mscope embed, SmolLM2   vs transformers fp32 on the same GGUF (embed_transformers_decoder.py)
  pca      mscope pca              vs sklearn PCA(svd_solver="full") (pca_sklearn.py)
  lda      mscope lda --pairwise   vs sklearn LinearDiscriminantAnalysis per split (lda_sklearn.py)
  ntk      mscope ntk (exact)      vs torch.func vmap(jacrev) + einsum (ntk_torch_func.py)
  ntk-classifier  the same, exact trNTK of all-MiniLM-L6-v2 with a 2-label head (seed 0) on
           CoLA-length texts (demo-corpus clauses of 4-8 words, cycled to N)
  kglm     mscope kglm             vs sklearn LogisticRegression on the same kernel (kglm_sklearn.py)
  compare  mscope compare          vs a numpy implementation of the same definitions (compare_numpy.py)

The mscope side is the release binary's wall-clock time for the whole command, median of --repeat
runs: process start, file reading, model loading and writing included. The anchor side is each
script's own median, which leaves out reading and model loading (and, where a script says so, is
extrapolated from a measured part). So the ratio anchor_s / mscope_s understates mscope where
start-up matters. Prints a Markdown table last and writes every figure, with the anchors' full
JSON, to --out.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANCHORS = ROOT / "tools" / "anchors"
BENCH = ROOT / ".cache" / "bench"
sys.path.insert(0, str(ROOT / "tools"))

SIZES = {
    # instrument: (quick, full)
    "pca": ({"rows": 2000, "dim": 384}, {"rows": 10000, "dim": 768}),
    "lda": ({"rows": 2000, "dim": 256, "splits": 10, "sklearn_splits": 1},
            {"rows": 10000, "dim": 1024, "splits": 50, "sklearn_splits": 2}),
    "ntk": ({"n": 500, "max_seconds": 60}, {"n": 4000, "max_seconds": 300}),
    "ntk-classifier": ({"n": 200, "n_measured": 16}, {"n": 2000, "n_measured": 32}),
    "compare": ({"models": 20, "points": 2000, "timed_models": 20},
                {"models": 100, "points": 10000, "timed_models": 10}),
}


def run_anchor(script, *args):
    """Runs an anchor script in this interpreter's environment; returns its JSON line."""
    out = subprocess.run([sys.executable, str(ANCHORS / script), *map(str, args)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_mscope(opts, *args):
    """Median wall-clock seconds of `mscope ARGS`, and every run."""
    cmd = [opts.mscope, *map(str, args)]
    runs = []
    for _ in range(opts.repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def row(instrument, work, mscope, anchor_name, anchor_s, anchor_json, note=""):
    mscope_s, runs = mscope
    return {"instrument": instrument, "work": work, "mscope_s": mscope_s, "mscope_runs_s": runs,
            "anchor": anchor_name, "anchor_s": anchor_s, "ratio": anchor_s / mscope_s,
            "note": note, "anchor_report": anchor_json}


DEMO_CORPUS = ["tools/demo-corpus/news.txt", "tools/demo-corpus/reviews.jsonl",
               "tools/demo-corpus/multilingual.csv"]
DEMO_INPUTS = [flag for path in DEMO_CORPUS for flag in ("--input", ROOT / path)]


def precision_note(opts):
    """What the work column says when mscope's matmuls take bf16 operands."""
    return "; mscope --matmul-precision medium (bf16 operands)" if opts.matmul_precision == "medium" else ""


def embed(opts, tmp, inputs=DEMO_INPUTS, name="embed"):
    model = ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"
    mscope = time_mscope(opts, "embed", "--model", model, *inputs, "--batch-size", 32,
                         "--threads", opts.threads, "--backend", opts.backend, "--out", tmp / "e.safetensors",
                         "--matmul-precision", opts.matmul_precision)
    anchor = run_anchor("embed_sentence_transformers.py", "--model", model, *inputs, "--batch-size", 32,
                        "--threads", opts.threads, "--repeat", opts.repeat)
    work = (f"all-MiniLM-L6-v2, {anchor['n_texts']} texts / {anchor['n_tokens']} tokens, batch 32"
            f"{precision_note(opts)}")
    return row(name, work, mscope, "sentence-transformers " + anchor["sentence_transformers_version"],
               anchor["median_s"], anchor, "anchor excludes model loading")


def embed_long(opts, tmp):
    """`embed`'s row on 600 long texts (most over 128 tokens; long_texts.py)."""
    path = subprocess.run([sys.executable, str(ANCHORS / "long_texts.py")], check=True,
                          stdout=subprocess.PIPE, text=True).stdout.strip()
    return embed(opts, tmp, ["--input", path], "embed-long")


def decoder(opts, tmp):
    model = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    mscope = time_mscope(opts, "embed", "--model", model, *DEMO_INPUTS, "--batch-size", 32,
                         "--threads", opts.threads, "--backend", opts.backend, "--out", tmp / "d.safetensors",
                         "--matmul-precision", opts.matmul_precision)
    anchor = run_anchor("embed_transformers_decoder.py", "--model", model, *DEMO_INPUTS,
                        "--batch-size", 32, "--threads", opts.threads, "--repeat", opts.repeat)
    compute = "f32 compute" if opts.matmul_precision == "highest" else "bf16 matmul operands"
    work = (f"SmolLM2-135M (GGUF Q4_1, {compute}), last-token pooling, {anchor['n_texts']} texts / "
            f"{anchor['n_tokens']} tokens, batch 32{precision_note(opts)}")
    return row("decoder", work, mscope, "transformers " + anchor["transformers_version"],
               anchor["median_s"], anchor, "anchor excludes model loading and dequantisation")


def pca(opts, tmp, size):
    import numpy as np
    from make_sklearn_fixtures import synthetic, write_embeddings

    counts = [size["rows"] // 4] * 4
    x, y = synthetic(np.random.default_rng(0), counts, size["dim"], 3.0)
    data = BENCH / f"pca_{len(y)}x{size['dim']}.safetensors"
    write_embeddings(data, x, y, [f"source{k}" for k in range(4)])
    mscope = time_mscope(opts, "pca", "--input", data, "--components", 10, "--threads", opts.threads,
                         "--backend", opts.backend, "--out", tmp / "pca.json")
    anchor = run_anchor("pca_sklearn.py", "--input", data, "--components", 10,
                        "--threads", opts.threads, "--repeat", opts.repeat)
    return row("pca", f"{len(y)}×{size['dim']} embeddings, 10 components", mscope,
               "sklearn " + anchor["sklearn_version"], anchor["median_s"], anchor,
               "anchor excludes reading the file")


def lda(opts, size):
    # lda_sklearn.py times both sides itself (the mscope side as here: the whole command).
    anchor = run_anchor("lda_sklearn.py", "--rows", size["rows"], "--dim", size["dim"], "--labels", 4,
                        "--splits", size["splits"], "--sklearn-splits", size["sklearn_splits"],
                        "--threads", opts.threads, "--repeat", opts.repeat, "--mscope", opts.mscope)
    mscope = (anchor["mscope_median_s"], anchor["mscope_runs_s"])
    note = f"anchor ran {anchor['sklearn_splits_run']} of {size['splits']} splits, scaled"
    return row("lda", f"{size['rows']}×{size['dim']}, 4 labels, {size['splits']} splits, pairwise",
               mscope, "sklearn " + anchor["sklearn_version"], anchor["sklearn_total_s"], anchor, note)


def ntk_and_kglm(opts, tmp, size):
    n = size["n"]
    model, data = BENCH / "ntk_mlp.safetensors", BENCH / f"ntk_x{n}.safetensors"
    anchor = run_anchor("ntk_torch_func.py", "--n", n, "--max-seconds", size["max_seconds"],
                        "--threads", opts.threads, "--write-model", model, "--write-data", data)
    kernel = tmp / "k.safetensors"
    mscope = time_mscope(opts, "ntk", "--model", model, "--data", data, "--threads", opts.threads,
                         "--backend", opts.backend, "--out", kernel)
    note = (f"anchor measured {anchor['n_measured']} points, extrapolated to {n}"
            if anchor["extrapolated"] else "")
    ntk_row = row("ntk", f"exact trNTK, {anchor['model']}, {n}×{n}", mscope,
                  "torch.func " + anchor["torch"], anchor["seconds_for_n"], anchor, note)

    kglm_mscope = time_mscope(opts, "kglm", "--train-kernel", kernel, "--train-labels", data,
                              "--test-kernel", kernel, "--test-labels", data, "--threads", opts.threads,
                              "--out", tmp / "kglm.json")
    kglm_anchor = run_anchor("kglm_sklearn.py", "--train-kernel", kernel, "--train-data", data,
                             "--threads", opts.threads, "--repeat", opts.repeat)
    report = json.loads((tmp / "kglm.json").read_text())
    kglm_row = row("kglm", f"logistic regression on the {n}×{n} trNTK, λ = 1", kglm_mscope,
                   "sklearn " + kglm_anchor["sklearn_version"], kglm_anchor["median_s"], kglm_anchor,
                   f"iterations: mscope {report.get('iterations', '?')}, sklearn {kglm_anchor['n_iter']}")
    return [ntk_row, kglm_row]


def classifier_work(n):
    """A MiniLM sequence classifier (head drawn under seed 0) and n CoLA-length texts for it."""
    import re

    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    encoder = ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"
    directory = BENCH / "minilm-classifier"
    if not (directory / "model.safetensors").exists():
        torch.manual_seed(0)
        BertForSequenceClassification.from_pretrained(encoder, num_labels=2).save_pretrained(directory)
        AutoTokenizer.from_pretrained(encoder).save_pretrained(directory)
    texts = [json.loads(line)["text"] for line in open(ROOT / "tools/demo-corpus/reviews.jsonl")]
    texts += [line.strip() for line in open(ROOT / "tools/demo-corpus/news.txt") if line.strip()]
    clauses = []
    for text in texts:
        for part in re.split(r"(?<=[.!?;,])\s+", text):
            words = part.split()
            clauses += [" ".join(words[i:i + 8]) for i in range(0, len(words), 8) if len(words[i:i + 8]) >= 4]
    data = BENCH / f"ntk_texts{n}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": clauses[i % len(clauses)], "label": i % 2}) + "\n")
    return directory, data


def ntk_classifier(opts, tmp, size):
    n = size["n"]
    model, data = classifier_work(n)
    # The anchor differentiates ~1-2 s per text here: it is always extrapolated from a measured
    # N' (the Jacobian rows its memory-bounded blocks would recompute at N, and the einsum entries).
    anchor = run_anchor("ntk_torch_func.py", "--classifier", model, "--texts", data, "--n", n,
                        "--n-measured", size["n_measured"], "--vmap-rows", 4, "--memory-gib", 8,
                        "--threads", opts.threads)
    mscope = time_mscope(opts, "ntk", "--model", model, "--data", data, "--threads", opts.threads,
                         "--backend", opts.backend, "--out", tmp / "kc.safetensors")
    note = f"anchor measured {anchor['n_measured']} texts, extrapolated to {n}"
    return row("ntk-classifier", f"exact trNTK, {anchor['model']}, {n}×{n}", mscope,
               "torch.func " + anchor["torch"], anchor["seconds_for_n"], anchor, note)


def compare(opts, tmp, size):
    scores = tmp / "ensemble"
    anchor = run_anchor("compare_numpy.py", "--models", size["models"], "--points", size["points"],
                        "--timed-models", size["timed_models"], "--repeat", opts.repeat, "--save", scores)
    # The numpy anchor compares quantiles on the candidate's grid: the same work is --w2-grid candidate.
    mscope = time_mscope(opts, "compare", "--scores", scores / "scores.npy", "--labels", scores / "labels.npy",
                         "--w2-grid", "candidate", "--threads", opts.threads, "--backend", opts.backend,
                         "--out", tmp / "compare.json")
    note = (f"anchor timed {size['timed_models']} models, scaled" if size["timed_models"] < size["models"]
            else "")
    return row("compare", f"{size['models']} models × {size['points']} points, leave-one-out", mscope,
               "numpy " + anchor["numpy_version"], anchor["median_s"], anchor, note)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes in all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="cpu", help="mscope's --backend for the instruments that take it")
    ap.add_argument("--only", action="append", help="run only these rows (repeatable)")
    ap.add_argument("--mscope", default=str(ROOT / "target" / "release" / "mscope"))
    ap.add_argument("--matmul-precision", default="highest", choices=["highest", "medium"],
                    help="mscope embed's --matmul-precision for the embed and decoder rows "
                         "(medium: bf16 operands on AMX; the anchors stay fp32)")
    ap.add_argument("--out", default=str(BENCH / "anchors.json"))
    opts = ap.parse_args()
    BENCH.mkdir(parents=True, exist_ok=True)
    pick = 0 if opts.quick else 1
    wanted = set(opts.only or ["embed", "decoder", "pca", "lda", "ntk", "ntk-classifier", "compare"])
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = [
            ("embed", lambda: [embed(opts, tmp)]),
            ("embed-long", lambda: [embed_long(opts, tmp)]),
            ("decoder", lambda: [decoder(opts, tmp)]),
            ("pca", lambda: [pca(opts, tmp, SIZES["pca"][pick])]),
            ("lda", lambda: [lda(opts, SIZES["lda"][pick])]),
            ("ntk", lambda: ntk_and_kglm(opts, tmp, SIZES["ntk"][pick])),
            ("ntk-classifier", lambda: [ntk_classifier(opts, tmp, SIZES["ntk-classifier"][pick])]),
            ("compare", lambda: [compare(opts, tmp, SIZES["compare"][pick])]),
        ]
        for name, step in steps:
            if name in wanted:
                print(f"== {name}", file=sys.stderr, flush=True)
                rows.extend(step())

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    summary = {
        "date": datetime.date.today().isoformat(), "machine": cpu, "cpu_count": os.cpu_count(),
        "threads": opts.threads, "backend": opts.backend, "quick": opts.quick, "repeat": opts.repeat,
        "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0], "rows": rows,
    }
    Path(opts.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n# {summary['date']} · {cpu} · {opts.threads} threads · mscope --backend {opts.backend} · "
          f"load {load_before:.2f} → {summary['loadavg_1m_after']:.2f} · figures in {opts.out}\n")
    print("| instrument | work | mscope (s) | anchor | anchor (s) | anchor / mscope | note |")
    print("|---|---|---:|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['instrument']} | {r['work']} | {r['mscope_s']:.3f} | {r['anchor']} | "
              f"{r['anchor_s']:.3f} | {r['ratio']:.1f}× | {r['note']} |")


if __name__ == "__main__":
    main()
