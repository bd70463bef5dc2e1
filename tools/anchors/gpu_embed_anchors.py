#!/usr/bin/env python3
"""`mscope embed` end to end against transformers on the same device, on random-init
checkpoints of the real shapes written on the spot (the GPU machine has no network, and the real
weights are too large to carry), with the embeddings checked so a fast wrong answer is caught.

    python3 tools/anchors/gpu_embed_anchors.py --mscope target/release/mscope \
        --bert-tokenizer .cache/models/all-MiniLM-L6-v2/tokenizer.json \
        --long .cache/data/fortunes/long.txt --json embed_anchors.json
    # a CPU dry run of the same plumbing, small:
    python3 tools/anchors/gpu_embed_anchors.py ... --device cpu --backend cpu --layers 2 \
        --texts 16 --max-length 64 --repeat 1

Shapes (transformers' random init, seed 0, saved with save_pretrained as safetensors):
  minilm-l6       BERT as all-MiniLM-L6-v2: hidden 384, 6 layers, 12 heads, MLP 1536, vocab
                  30522; fp16; mean pooling over 256 tokens at most (its max_seq_length)
  e5-large        BERT-large as intfloat/e5-large: hidden 1024, 24 layers, 16 heads, MLP 4096;
                  fp16; mean pooling over 512 tokens at most
  smollm2-135m    Llama as SmolLM2-135M: hidden 576, 30 layers, 9 query / 3 KV heads of 64, MLP
                  1536, vocab 49152, RoPE base 1e5, tied embeddings; bf16; last-token pooling
  mistral-7b-4l   Mistral-7B-v0.1's shapes (tools/make_random_decoder.py's config) with 4 of its
                  32 layers; bf16; last-token pooling. Four layers are 2.0 GB of bf16 (each layer
                  0.44 GB, the embedding table 0.26 GB): written and loaded three times (torch
                  bf16, torch f32 reference, mscope) in seconds, where the whole 14.5 GB would
                  cost about a minute of the GPU session; the time is per layer, so the full
                  model's rate is about 4/32 of the one measured
Decoders are saved as the bare model (no LM head, which neither side reads). The encoders use
all-MiniLM-L6-v2's tokenizer.json (WordPiece, the vocabulary e5-large shares); the decoders
tools/make_random_decoder.py's byte-level one (one token per byte after <s>), so their token
counts run about four times a real BPE's on the same text.

Corpora: `demo` (tools/demo-corpus: news.txt, reviews.jsonl, multilingual.csv; 120 short texts)
and `long` (--long, one text per line: tools/anchors/long_texts.py's 600 fortunes of 500-2 500
characters); --texts N keeps the first N of each.

Each side does the same work: the same tokenizer.json (truncated to the model's max length,
specials included), texts sorted longest first into --batch-size batches padded to their
longest, the same pooling, embeddings copied to the host.
  mscope   `mscope embed --backend B` as a fresh process per run (MSCOPE_PHASES=1): the process
           wall time ("process s": start, CUDA context, kernels, weights, tokenising, forward
           passes, writing), and its own phases: load (backend, weights, tokenizer) and the embed
           loop (tokenise + forward passes). Median of --repeat runs.
  torch    transformers AutoModel.from_pretrained(dtype fp16 | bf16, attn_implementation="sdpa")
           on --device, tokenised with `tokenizers` from the same file (transformers' fast
           tokenizers are this library): load s (from_pretrained to the device), then one cold
           pass (first kernels picked and loaded) and the median of --repeat warm passes, each
           tokenise + forward passes + pooling + copy to the host, under inference_mode.
  speed-up torch s / mscope s (above 1: mscope faster). End to end: (torch load + cold pass) /
           mscope process, which leaves out the Python side's imports, CUDA context and first
           use of cuBLAS and SDPA (made before anything is timed), so it favours torch; warm:
           torch warm pass / mscope embed loop. Issue 19's target for the encoders is an end to
           end speed-up of 1.5; issue 15 asks for the decoders' throughput against transformers
           bf16 (SDPA) on the same machine, with no figure to meet.

Check: transformers in f32 (the same half-precision weights widened exactly, TF32 off) embeds the
first --reference-rows texts of each corpus; every one of mscope's rows there must be within 1e-2
of it in relative L2 error (the crate's bound for f16/bf16 paths, src/lib.rs "Numerics"; it
implies a cosine of at least 0.99995), and mscope's token count must equal the tokenizer's.
Beside it: the timed torch run's own error against the same reference, and the least row cosine
of mscope against the timed torch run over the whole corpus. A failed check or run exits 1,
after the table.

Prints a row per (shape, corpus) as it finishes and a Markdown table last; --json is rewritten
after every row, so a run cut short keeps what it measured. --budget-s stops starting new work
once spent, and no mscope run outlives it; SIGTERM (a time limit) prints the table so far.
Needs torch, transformers, tokenizers, safetensors and numpy (not sentence-transformers).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tools" / "anchors"))
from embed_sentence_transformers import read_texts  # noqa: E402
from make_random_decoder import CONFIG as MISTRAL_7B  # noqa: E402
from make_random_decoder import byte_level_tokenizer  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO = [ROOT / "tools/demo-corpus/news.txt", ROOT / "tools/demo-corpus/reviews.jsonl",
        ROOT / "tools/demo-corpus/multilingual.csv"]

# The relative-error bound of f16/bf16 paths (src/lib.rs, Numerics).
HALF_TOLERANCE = 1e-2

BERT = dict(model_type="bert", vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
            hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)


@dataclass
class Shape:
    name: str
    config: dict
    dtype: str  # torch dtype name of the checkpoint and of the timed torch run
    max_length: int
    pooling: str  # mscope --pooling: mean | last
    target: float | None  # end-to-end speed-up asked for, None where only reported
    issue: int

    @property
    def decoder(self):
        return self.config["model_type"] != "bert"


SHAPES = [
    Shape("minilm-l6", dict(BERT, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536),
          "float16", 256, "mean", 1.5, 19),
    Shape("e5-large", dict(BERT, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096),
          "float16", 512, "mean", 1.5, 19),
    Shape("smollm2-135m", dict(model_type="llama", vocab_size=49152, hidden_size=576,
                               intermediate_size=1536, num_hidden_layers=30,
                               num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                               hidden_act="silu", max_position_embeddings=8192,
                               rms_norm_eps=1e-5, rope_theta=1e5, tie_word_embeddings=True,
                               bos_token_id=1, eos_token_id=2),
          "bfloat16", 512, "last", None, 15),
    Shape("mistral-7b-4l", dict(MISTRAL_7B, num_hidden_layers=4),
          "bfloat16", 512, "last", None, 15),
]

# `embedded N texts (T tokens, ...` of mscope embed's summary line; `phase NAME: +D ms (T ms)` of
# MSCOPE_PHASES.
SUMMARY = re.compile(r"embedded (\d+) texts \((\d+) tokens")
PHASE = re.compile(r"^phase (.+): \+([0-9.]+) ms")
LOAD_PHASES = ("open backend", "load weights and tokenizer.json", "tokenizer")
LOOP_PHASES = ("tokenise", "forward passes")


class Stopped(BaseException):
    """SIGTERM (the stage's time limit): not a shape's failure, so `except Exception` lets it
    through to main, which prints what was measured."""


def stop(signum, frame):
    raise Stopped()


def token_limit(shape, args):
    """The shape's token limit, capped by --max-length."""
    return min(shape.max_length, args.max_length or shape.max_length)


def warm_up_libraries(device):
    """Initialises cuBLAS and the SDPA kernels in both half types before anything is timed, so no
    row's cold pass pays for the process's first use of them (mscope's process time does)."""
    import torch
    import torch.nn.functional as F

    for dtype in (torch.float16, torch.bfloat16):
        x = torch.ones(4, 2, 16, 64, device=device, dtype=dtype)
        F.scaled_dot_product_attention(x, x, x, attn_mask=torch.ones(16, 16, dtype=torch.bool,
                                                                     device=device))
        F.linear(x, x[0, 0])
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_checkpoint(shape, args, out, bert_tokenizer):
    """Random-init model of `shape` saved under `out` with its tokenizer.json; seconds taken."""
    import torch
    from transformers import AutoConfig, AutoModel

    start = time.perf_counter()
    config = dict(shape.config)
    if args.layers:
        config["num_hidden_layers"] = args.layers
    # Keys transformers writes itself (architectures, torch_dtype) are not constructor arguments.
    config = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModel.from_config(AutoConfig.for_model(model_type, **config),
                                      dtype=getattr(torch, shape.dtype))
    model.save_pretrained(out)
    del model
    if shape.decoder:
        with open(out / "tokenizer.json", "w") as f:
            json.dump(byte_level_tokenizer(), f, ensure_ascii=False)
    else:
        shutil.copy(bert_tokenizer, out / "tokenizer.json")
    return time.perf_counter() - start


def tokenizer_for(model_dir, max_length):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # all-MiniLM-L6-v2's file pads to 128 by itself: batches pad to their longest
    tok.enable_truncation(max_length)
    return tok


def embed_torch(model, tok, texts, args, pooling, pad_id):
    """Pooled float32 embeddings [len(texts), dim] on the host, in input order, and the token
    count: tokenised, sorted longest first, batched and padded as mscope does."""
    import torch

    ids = [e.ids for e in tok.encode_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    pooled = []
    with torch.inference_mode():
        for b in range(0, len(order), args.batch_size):
            rows = order[b:b + args.batch_size]
            lengths = [len(ids[i]) for i in rows]
            batch = np.full((len(rows), max(lengths)), pad_id, dtype=np.int64)
            mask = np.zeros_like(batch)
            for r, i in enumerate(rows):
                batch[r, :lengths[r]] = ids[i]
                mask[r, :lengths[r]] = 1
            batch = torch.from_numpy(batch).to(args.device)
            mask = torch.from_numpy(mask).to(args.device)
            hidden = model(input_ids=batch, attention_mask=mask).last_hidden_state.float()
            if pooling == "mean":
                m = mask.unsqueeze(-1).float()
                pooled.append((hidden * m).sum(1) / m.sum(1))
            else:
                pooled.append(hidden[torch.arange(len(rows), device=args.device),
                                     torch.tensor(lengths, device=args.device) - 1])
        out = torch.cat(pooled).cpu().numpy()
    embeddings = np.empty_like(out)
    embeddings[order] = out
    return embeddings, sum(len(i) for i in ids)


def load_torch(model_dir, dtype_name, args):
    import torch
    from transformers import AutoModel

    start = time.perf_counter()
    model = AutoModel.from_pretrained(model_dir, dtype=getattr(torch, dtype_name),
                                      attn_implementation="sdpa").to(args.device).eval()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return model, time.perf_counter() - start


def release_cached_memory():
    """Hands the caching allocator's free blocks back, so the mscope process that follows finds
    the device as torch found it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_torch(shape, model_dir, corpora, args):
    """Per corpus: the timed low-precision run and the f32 reference rows."""
    tok = tokenizer_for(model_dir, token_limit(shape, args))
    # Decoders: </s> pads (masked out either way); BERT: [PAD].
    pad_id = 2 if shape.decoder else 0
    results = {}
    model, load_s = load_torch(model_dir, shape.dtype, args)
    for name, (_, texts) in corpora.items():
        t0 = time.perf_counter()
        embedded, tokens = embed_torch(model, tok, texts, args, shape.pooling, pad_id)
        cold_s = time.perf_counter() - t0
        warm = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            embed_torch(model, tok, texts, args, shape.pooling, pad_id)
            warm.append(time.perf_counter() - t0)
        results[name] = dict(embeddings=embedded, tokens=tokens, load_s=load_s, cold_s=cold_s,
                             warm_s=statistics.median(warm), warm_runs_s=warm)
    del model
    release_cached_memory()
    reference, _ = load_torch(model_dir, "float32", args)
    for name, (_, texts) in corpora.items():
        rows = texts[:args.reference_rows]
        results[name]["reference"] = embed_torch(reference, tok, rows, args, shape.pooling,
                                                 pad_id)[0]
    del reference
    release_cached_memory()
    return results


def run_mscope(shape, model_dir, inputs, work, args, deadline):
    """mscope embed, --repeat fresh processes: (median process s, median load s, median loop s,
    runs, embeddings, token count), or an error string."""
    out = work / "embeddings.safetensors"
    cmd = [args.mscope, "embed", "--model", str(model_dir), "--out", str(out),
           "--backend", args.backend, "--batch-size", str(args.batch_size),
           "--max-length", str(token_limit(shape, args)),
           "--pooling", shape.pooling, "--normalize", "false"]
    for path in inputs:
        cmd += ["--input", str(path)]
    env = dict(os.environ, MSCOPE_PHASES="1")
    runs = []
    for _ in range(args.repeat):
        for stale in (out, work / "embeddings.safetensors.texts.jsonl"):
            stale.unlink(missing_ok=True)
        left = deadline - time.monotonic()
        if left < 1:
            return "budget spent"
        start = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            return f"timed out after {left:.0f} s (budget)"
        wall = time.perf_counter() - start
        if p.returncode != 0:
            return f"exit {p.returncode}: {p.stderr.strip()[-800:]}"
        summary = SUMMARY.search(p.stdout)
        if summary is None:
            return f"no summary line in: {p.stdout.strip()[-300:]}"
        phases = {}
        for line in p.stderr.splitlines():
            m = PHASE.match(line)
            if m:
                phases[m[1]] = float(m[2]) / 1e3
        runs.append(dict(process_s=wall, load_s=sum(phases.get(k, 0.0) for k in LOAD_PHASES),
                         loop_s=sum(phases.get(k, 0.0) for k in LOOP_PHASES), phases_s=phases,
                         rows=int(summary[1]), tokens=int(summary[2])))
    from safetensors.numpy import load_file

    embeddings = load_file(str(out))["embeddings"]
    med = {k: statistics.median(r[k] for r in runs) for k in ("process_s", "load_s", "loop_s")}
    return med, runs, embeddings, runs[-1]["tokens"]


def row_agreement(ours, theirs):
    """(largest relative L2 error, smallest cosine) over rows, float64."""
    a, b = ours.astype(np.float64), theirs.astype(np.float64)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    # NaN never passes: it propagates into max/min.
    return float(np.max(rel)), float(np.min(cos))


def measure(shape, corpora, args, work, deadline, bert_tokenizer):
    """The rows of one shape, one per corpus."""
    model_dir = work / shape.name
    rows = []
    try:
        made_s = write_checkpoint(shape, args, model_dir, bert_tokenizer)
        torch_side = run_torch(shape, model_dir, corpora, args)
        for name, (inputs, texts) in corpora.items():
            t = torch_side[name]
            row = dict(shape=shape.name, corpus=name, texts=len(texts), tokens=t["tokens"],
                       dtype=shape.dtype, layers=args.layers or shape.config["num_hidden_layers"],
                       max_length=token_limit(shape, args),
                       pooling=shape.pooling, checkpoint_s=made_s, torch_load_s=t["load_s"],
                       torch_cold_s=t["cold_s"], torch_warm_s=t["warm_s"],
                       torch_warm_runs_s=t["warm_runs_s"], target=shape.target, issue=shape.issue)
            got = run_mscope(shape, model_dir, inputs, work, args, deadline)
            if isinstance(got, str):
                row.update(ok=False, error=f"mscope: {got}")
                rows.append(row)
                continue
            med, runs, ours, tokens = got
            if ours.shape[0] != len(texts) or tokens != t["tokens"]:
                row.update(ok=False, error=f"mscope embedded {ours.shape[0]} texts, {tokens} "
                           f"tokens; the tokenizer gives {len(texts)}, {t['tokens']}")
                rows.append(row)
                continue
            ref = t["reference"]
            rel_ref, cos_ref = row_agreement(ours[:len(ref)], ref)
            torch_rel_ref, _ = row_agreement(t["embeddings"][:len(ref)], ref)
            _, cos_torch = row_agreement(ours, t["embeddings"])
            row.update(
                mscope_process_s=med["process_s"], mscope_load_s=med["load_s"],
                mscope_loop_s=med["loop_s"], mscope_runs=runs,
                speedup_end_to_end=(t["load_s"] + t["cold_s"]) / med["process_s"],
                speedup_warm=t["warm_s"] / med["loop_s"],
                mscope_tokens_per_s=t["tokens"] / med["loop_s"],
                torch_tokens_per_s=t["tokens"] / t["warm_s"],
                reference_rows=len(ref), max_rel_err_vs_f32=rel_ref, min_cos_vs_f32=cos_ref,
                torch_max_rel_err_vs_f32=torch_rel_ref, min_cos_vs_torch=cos_torch,
                ok=bool(rel_ref <= HALF_TOLERANCE))
            if not row["ok"]:
                row["error"] = (f"mscope is {rel_ref:.2e} from the f32 reference in relative "
                                f"L2 error (bound {HALF_TOLERANCE:g})")
            rows.append(row)
    except Exception as e:  # one shape failing must not hide the others
        rows.append(dict(shape=shape.name, corpus="*", ok=False, error=f"{type(e).__name__}: {e}"))
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return rows


def print_row(r):
    if "speedup_end_to_end" not in r:
        print(f"{r['shape']} / {r['corpus']}: FAILED: {r['error']}", flush=True)
        return
    print(f"{r['shape']} / {r['corpus']}: {r['texts']} texts, {r['tokens']} tokens; mscope "
          f"process {r['mscope_process_s']:.3f} s (load {r['mscope_load_s']:.3f}, loop "
          f"{r['mscope_loop_s']:.3f}); torch load {r['torch_load_s']:.3f} + cold "
          f"{r['torch_cold_s']:.3f}, warm {r['torch_warm_s']:.3f} s; speed-up end to end "
          f"{r['speedup_end_to_end']:.2f}, warm {r['speedup_warm']:.2f}; rel err vs f32 "
          f"{r['max_rel_err_vs_f32']:.1e} (torch {r['torch_max_rel_err_vs_f32']:.1e})"
          f"{'' if r['ok'] else ' FAILED: ' + r['error']}", flush=True)


def table(rows, header):
    lines = [header, "",
             "| shape | corpus | texts | tokens | mscope process s | mscope loop s "
             "| torch load+cold s | torch warm s | speed-up e2e | speed-up warm | mscope tok/s "
             "| torch tok/s | rel err vs f32 (torch's) | min cos vs torch | target | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "speedup_end_to_end" not in r:
            lines.append(f"| {r['shape']} | {r['corpus']} |" + " – |" * 13
                         + f" FAILED: {r['error'][:200]} |")
            continue
        if not r["ok"]:
            target = "not judged (check failed)"
        elif r["target"] is None:
            target = f"reported (#{r['issue']})"
        else:
            met = "met" if r["speedup_end_to_end"] >= r["target"] else "not met"
            target = f"≥ {r['target']:g}× e2e (#{r['issue']}): {met}"
        lines.append(
            f"| {r['shape']} ({r['layers']} layers, {r['dtype']}) | {r['corpus']} | {r['texts']} "
            f"| {r['tokens']} | {r['mscope_process_s']:.3f} | {r['mscope_loop_s']:.3f} "
            f"| {r['torch_load_s'] + r['torch_cold_s']:.3f} | {r['torch_warm_s']:.3f} "
            f"| {r['speedup_end_to_end']:.2f}× | {r['speedup_warm']:.2f}× "
            f"| {r['mscope_tokens_per_s']:.0f} | {r['torch_tokens_per_s']:.0f} "
            f"| {r['max_rel_err_vs_f32']:.1e} ({r['torch_max_rel_err_vs_f32']:.1e}) "
            f"| {r['min_cos_vs_torch']:.6f} | {target} | {'ok' if r['ok'] else 'FAILED'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mscope", default=str(ROOT / "target/release/mscope"))
    ap.add_argument("--backend", default="cuda", help="mscope --backend (default cuda)")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--bert-tokenizer", type=Path,
                    default=ROOT / ".cache/models/all-MiniLM-L6-v2/tokenizer.json",
                    help="tokenizer.json of the encoders (all-MiniLM-L6-v2's)")
    ap.add_argument("--long", type=Path, help="long texts, one per line (long_texts.py)")
    ap.add_argument("--texts", type=int, help="the first N texts of each corpus (a dry run)")
    ap.add_argument("--models", default=",".join(s.name for s in SHAPES),
                    help="comma-separated shapes (default: all)")
    ap.add_argument("--corpora", default="demo,long", help="comma-separated: demo, long")
    ap.add_argument("--layers", type=int, help="every shape with this many layers (a dry run)")
    ap.add_argument("--max-length", type=int,
                    help="cap on every shape's token limit (a dry run)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3,
                    help="mscope processes and warm torch passes per row (medians)")
    ap.add_argument("--reference-rows", type=int, default=64,
                    help="rows per corpus checked against transformers in f32")
    ap.add_argument("--budget-s", type=float, default=600,
                    help="start no new shape, and end any mscope run, after this many seconds")
    ap.add_argument("--work", type=Path, help="where checkpoints go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    deadline = time.monotonic() + args.budget_s
    signal.signal(signal.SIGTERM, stop)

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # save_pretrained's, in the stage log
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("no CUDA device visible to PyTorch")
        torch.backends.cuda.matmul.allow_tf32 = False  # the f32 reference stays f32
        torch.backends.cudnn.allow_tf32 = False
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or platform.machine()

    work = args.work or Path(tempfile.mkdtemp(prefix="embed-anchors-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora = {}
    for name in args.corpora.split(","):
        if name == "demo":
            inputs = DEMO
        elif name == "long":
            if args.long is None or not args.long.is_file():
                print(f"long corpus skipped: no --long file ({args.long})", flush=True)
                continue
            inputs = [args.long]
        else:
            sys.exit(f"unknown corpus {name!r} (demo, long)")
        texts = [t for p in inputs for t in read_texts(str(p), "text")]
        if args.texts and args.texts < len(texts):
            # Both sides read the first --texts, one per line (none of these texts holds a
            # line break).
            texts = texts[:args.texts]
            inputs = [work / f"{name}.txt"]
            inputs[0].write_text("\n".join(texts) + "\n", encoding="utf-8")
        corpora[name] = (inputs, texts)

    shapes = {s.name: s for s in SHAPES}
    chosen = []
    for name in args.models.split(","):
        if name not in shapes:
            sys.exit(f"unknown shape {name!r} ({', '.join(shapes)})")
        shape = shapes[name]
        if not shape.decoder and not args.bert_tokenizer.is_file():
            print(f"{name} skipped: no BERT tokenizer at {args.bert_tokenizer} "
                  "(tools/fetch-model.sh fetches all-MiniLM-L6-v2)", flush=True)
            continue
        chosen.append(shape)

    warm_up_libraries(args.device)
    report = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  device=device_name, torch=torch.__version__,
                  transformers=transformers.__version__, mscope=args.mscope,
                  backend=args.backend, torch_device=args.device, batch_size=args.batch_size,
                  repeat=args.repeat, loadavg_1m=os.getloadavg()[0], rows=[])
    header = (f"## mscope embed ({args.backend}) vs transformers {transformers.__version__} "
              f"(torch {torch.__version__}, {args.device}, SDPA) on {device_name}, batch "
              f"{args.batch_size}; speed-up = torch s / mscope s")
    try:
        for shape in chosen:
            if time.monotonic() >= deadline:
                report["rows"].append(dict(shape=shape.name, corpus="*", ok=False,
                                           error="skipped: --budget-s spent"))
                print_row(report["rows"][-1])
                continue
            for row in measure(shape, corpora, args, work, deadline, args.bert_tokenizer):
                report["rows"].append(row)
                print_row(row)
                if args.json:
                    args.json.write_text(json.dumps(report, indent=1))
    except Stopped:
        report["rows"].append(dict(shape="*", corpus="*", ok=False,
                                   error="stopped by SIGTERM (time limit)"))
    print()
    print(table(report["rows"], header))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if report["rows"] and all(r["ok"] for r in report["rows"]) else 1)


if __name__ == "__main__":
    main()
