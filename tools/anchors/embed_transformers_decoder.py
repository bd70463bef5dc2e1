#!/usr/bin/env python3
"""Anchor for `mscope embed` on a decoder: time transformers (PyTorch, CPU, fp32) embedding a
corpus with a Llama-family model from a GGUF file, as mscope does: last-token pooling of the final
hidden state, texts sorted by length into batches, right padding with an attention mask.

    tools/.venv/bin/python tools/anchors/embed_transformers_decoder.py \
        --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --input tools/demo-corpus/news.txt \
        --batch-size 32 --threads 2 --repeat 3

transformers dequantises the GGUF tensors to f32 (its GGUF loader needs the `gguf` package) and
builds the tokenizer from the same file. Inputs use mscope's text formats (see
embed_sentence_transformers.py). Embeds once to warm up, then --repeat timed runs of tokenising,
the forward passes and pooling; prints one JSON line on stdout: anchor, model, n_texts, n_tokens,
batch_size, threads, median_s, texts_per_s, tokens_per_s, torch_version, transformers_version,
repeats_s, cpu_count, loadavg_1m_before.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from embed_sentence_transformers import read_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a .gguf file (llama or qwen2)")
    ap.add_argument("--input", action="append", required=True, help="text file (repeatable)")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

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

    path = Path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModel.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"

    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])

    def run():
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in range(0, len(order), args.batch_size):
                batch = [texts[i] for i in order[b : b + args.batch_size]]
                enc = tokenizer(batch, padding=True, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                last = enc["attention_mask"].sum(dim=1) - 1
                hidden[torch.arange(hidden.shape[0]), last].numpy()
        return time.perf_counter() - t0

    run()  # warm-up
    load_before = os.getloadavg()[0]
    times = [run() for _ in range(max(1, args.repeat))]
    med = statistics.median(times)
    n_tokens = sum(lengths)
    print(json.dumps({
        "anchor": "transformers",
        "model": path.name,
        "n_texts": len(texts),
        "n_tokens": n_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "median_s": med,
        "texts_per_s": len(texts) / med,
        "tokens_per_s": n_tokens / med,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "repeats_s": times,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before": load_before,
    }))


if __name__ == "__main__":
    main()
