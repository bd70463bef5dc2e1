#!/usr/bin/env python3
"""Anchor for `mscope embed`: time sentence-transformers (PyTorch, CPU) encoding a corpus.

    tools/.venv/bin/python tools/anchors/embed_sentence_transformers.py \
        --model .cache/models/all-MiniLM-L6-v2 --input tools/demo-corpus/news.txt \
        --input tools/demo-corpus/reviews.jsonl --input tools/demo-corpus/multilingual.csv \
        --batch-size 32 --threads 2 --repeat 3

Inputs use mscope's text formats: .txt (one text per line, blank lines skipped), .jsonl (field
`text`, or --text-field), .csv/.tsv with a header (same field). `PATH=LABEL` is accepted and the
label ignored. Encodes once to warm up, then --repeat timed runs; prints one JSON line on stdout:
anchor, model, n_texts, n_tokens, batch_size, threads, median_s, texts_per_s, tokens_per_s,
torch_version, sentence_transformers_version (plus max_length, device, repeats_s, cpu_count,
loadavg_1m_before: the machine's 1-minute load average before the timed runs, to spot a busy host).
n_tokens counts tokens as the model sees them (special tokens included, after truncation,
padding excluded).
"""

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_texts(spec, text_field):
    path = spec
    if not Path(spec).exists() and "=" in spec:  # PATH=LABEL
        path = spec.rsplit("=", 1)[0]
    path = Path(path)
    ext = path.suffix.lower()
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        if ext == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if text_field not in row:
                    sys.exit(f"{path}:{n}: no field {text_field!r}")
                out.append(str(row[text_field]))
        elif ext in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            if text_field not in (reader.fieldnames or []):
                sys.exit(f"{path}: header has no column {text_field!r}")
            out.extend(row[text_field] for row in reader)
        else:
            out.extend(line.rstrip("\r\n") for line in f if line.strip())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="sentence-transformers model directory")
    ap.add_argument("--input", action="append", required=True, help="text file (repeatable)")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=None, help="default: the model's max_seq_length")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    texts = []
    for spec in args.input:
        texts.extend(read_texts(spec, args.text_field))
    if not texts:
        sys.exit("no texts in the inputs")

    model = SentenceTransformer(args.model, device=args.device)
    if args.max_length is not None:
        model.max_seq_length = args.max_length
    max_length = model.max_seq_length

    tokenize = model.preprocess if hasattr(model, "preprocess") else model.tokenize
    n_tokens = 0
    for i in range(0, len(texts), args.batch_size):
        n_tokens += int(tokenize(texts[i : i + args.batch_size])["attention_mask"].sum())

    def run():
        t0 = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run()  # warm-up
    load_before = os.getloadavg()[0]
    times = [run() for _ in range(max(1, args.repeat))]
    med = statistics.median(times)
    print(json.dumps({
        "anchor": "sentence-transformers",
        "model": Path(args.model).name,
        "n_texts": len(texts),
        "n_tokens": n_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "median_s": med,
        "texts_per_s": len(texts) / med,
        "tokens_per_s": n_tokens / med,
        "torch_version": torch.__version__,
        "sentence_transformers_version": sentence_transformers.__version__,
        "max_length": max_length,
        "device": args.device,
        "repeats_s": times,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
