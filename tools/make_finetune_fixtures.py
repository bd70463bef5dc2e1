#!/usr/bin/env python3
"""Cross-entropy loss gradients of the tiny fixture classifiers, for mscope's fine-tuning tests.

    tools/.venv/bin/python tools/make_finetune_fixtures.py

Reads the classifiers that tools/make_classifier_fixtures.py wrote (tests/fixtures/classifiers/
tiny-bert-cls, tiny-xlmr-cls) and its texts.jsonl, and leaves them untouched. Writes
tests/fixtures/classifiers/{bert,xlmr}_loss_reference.safetensors, all F64 except the I64 labels,
from the float32 weights in float64 (dropout off, eager attention), on the padded batch of the four
texts:
    labels [N] I64              each text's `label` through the config's label2id;
    loss []                     torch.nn.functional.cross_entropy(logits, labels) (the mean);
    grad.{name} [*shape]        its gradient for every parameter (name as in model.safetensors),
                                by autograd.

and tests/fixtures/classifiers/bert_adamw_reference.safetensors: three steps of
torch.optim.AdamW (betas 0.9/0.999, eps 1e-8) under transformers' get_linear_schedule_with_warmup,
float64 from the float32 weights of tiny-bert-cls, each step on the mean cross-entropy of two texts:
    hparams [4]                 lr, weight_decay, warmup steps, total steps of the schedule;
    batches [3, 2] I64          the texts (rows of texts.jsonl) of each step;
    losses [3]                  each step's loss, before its update;
    after.{name} [*shape]       every parameter after the third step.

A bare encoder and a classifier made from it (`mscope train --model ENCODER_DIR`):
tests/fixtures/classifiers/tiny-bert-encoder/ is tiny-bert-cls's encoder saved alone as transformers'
`BertModel` (tensors without `bert.`, pooler included) with its tokenizer;
tests/fixtures/classifiers/bert_encoder_adamw_reference.safetensors is the AdamW run above from
`BertForSequenceClassification.from_pretrained(tiny-bert-encoder, num_labels=2)` (labels negative,
positive: the texts' own), its new classifier set to weights drawn here:
    init.classifier.weight [2, h], init.classifier.bias [2]
                                the new head (normal(0, 0.02) from torch's generator, bias 0);
    labels, hparams, batches, losses, after.{name}   as in the AdamW reference above.
and tests/fixtures/classifiers/bert_encoder_written_reference.safetensors checks the directory
mscope writes: the script runs `target/release/mscope train --model tiny-bert-encoder` (build it
first; arguments in the file's metadata `mscope_args`), loads the result with transformers (no
missing or unexpected tensors allowed) and records, in float64 from its float32 weights:
    logits [N, 2]               the written classifier's logits on the four texts;
    init_logits [N, 2]          those of the directory written with --epochs 0 (the new head only).
tests/fixtures/classifiers/xlmr_encoder_written_reference.safetensors: the same from the bare
XLM-R encoder tests/fixtures/tiny-xlmr (mscope gives it the RoBERTa head, dense + tanh +
out_proj), loaded as XLMRobertaForSequenceClassification. `make_finetune_fixtures.py
xlmr-encoder` writes only this file.

tests/fixtures/classifiers/{bert,xlmr}_dropout_adamw_reference.safetensors: the AdamW run of
bert_adamw_reference (same hparams and batches) on tiny-bert-cls and tiny-xlmr-cls with dropout on,
as transformers applies it in train mode (embeddings after their LayerNorm, attention
probabilities, attention and FFN output projections before the residual add, and the head:
BERT's pooled output; RoBERTa's head before dense and before out_proj), every dropout module and
the attention's dropout replaced by mscope's masks for optimizer steps 0, 1, 2 (the counter hash
of src/backend/dropout.rs and src/models/dropout.rs, reimplemented here in numpy, on the packed
row of each token), float64; `make_finetune_fixtures.py dropout` writes only these files:
    dropout [5]                 seed, step of the first batch, hidden, attention and head
                                probabilities (distinct, so that a mask at the wrong site shows);
    labels, hparams, batches, losses   as in the AdamW reference above;
    after.{name} [*shape] F32   every parameter after the third step (rounded to float32 to
                                keep the file small; the test's tolerance is 1e-5).
"""

import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers import BertForSequenceClassification, XLMRobertaForSequenceClassification  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "classifiers"

torch.set_num_threads(1)


def labelled_texts():
    rows = [json.loads(line) for line in (OUT / "texts.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def loss_reference(model_dir, model_class):
    model = model_class.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    model = model.to(torch.float64)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts, names = labelled_texts()
    labels = torch.tensor([model.config.label2id[n] for n in names], dtype=torch.int64)
    enc = tok(texts, padding=True, return_tensors="pt")
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(**enc).logits, labels)
    loss.backward()
    ref = {"labels": labels, "loss": loss.detach().double()}
    for name, p in model.named_parameters():
        ref[f"grad.{name}"] = p.grad.detach().double().contiguous()
    meta = {"texts": "tests/fixtures/classifiers/texts.jsonl", "transformers_version":
            transformers.__version__, "torch_version": torch.__version__}
    print(f"  {model_dir.name}: loss {loss.item():.6f}, {len(ref) - 2} gradient tensors")
    return ref, meta


ADAMW = {"lr": 1e-3, "weight_decay": 0.1, "warmup": 1, "total": 4}
ADAMW_BATCHES = [[0, 1], [2, 3], [3, 0]]


def adamw_steps(model, tokenizer_dir, masked=False):
    """Runs ADAMW_BATCHES through PyTorch's AdamW with the linear warm-up schedule, in place;
    `masked`: with mscope's dropout masks of each step (install_masks). Returns the labels of the
    texts and the loss of each step."""
    from transformers import get_linear_schedule_with_warmup

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    texts, names = labelled_texts()
    labels = [model.config.label2id[n] for n in names]
    opt = torch.optim.AdamW(model.parameters(), lr=ADAMW["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=ADAMW["weight_decay"])
    sched = get_linear_schedule_with_warmup(opt, ADAMW["warmup"], ADAMW["total"])
    losses = []
    for step, rows in enumerate(ADAMW_BATCHES, start=DROPOUT["first_step"]):
        enc = tok([texts[i] for i in rows], padding=True, return_tensors="pt")
        if masked:
            MASKS["step"] = StepMasks(step, enc["attention_mask"].sum(dim=1).numpy())
        y = torch.tensor([labels[i] for i in rows], dtype=torch.int64)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
        if masked:
            # Every replaced module ran once, RoBERTa's head module twice.
            calls = sorted(MASKS["step"].calls.values())
            assert calls == [1] * (1 + 2 * model.config.num_hidden_layers) + [
                1 if hasattr(model, "bert") else 2], calls
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return labels, losses


def adamw_record(model, losses, dtype=torch.float64):
    """The hyper-parameters, batches and losses of an AdamW reference, and every parameter of
    `model` after the steps (`after.NAME`, in `dtype`)."""
    record = {
        "hparams": torch.tensor([ADAMW["lr"], ADAMW["weight_decay"], ADAMW["warmup"],
                                 ADAMW["total"]], dtype=torch.float64),
        "batches": torch.tensor(ADAMW_BATCHES, dtype=torch.int64),
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    for name, p in model.named_parameters():
        record[f"after.{name}"] = p.detach().to(dtype).contiguous()
    return record


def adamw_reference(model_dir, model_class):
    model = model_class.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    model = model.to(torch.float64)
    _, losses = adamw_steps(model, model_dir)
    ref = adamw_record(model, losses)
    meta = {"texts": "tests/fixtures/classifiers/texts.jsonl", "transformers_version":
            transformers.__version__, "torch_version": torch.__version__}
    print(f"  {model_dir.name}: AdamW losses {losses}")
    return ref, meta


ENCODER_DIR = OUT / "tiny-bert-encoder"
# A bare XLM-R encoder (sentence-transformers directory, no pooler) of tools/make_fixtures.py.
XLMR_ENCODER_DIR = ROOT / "tests" / "fixtures" / "tiny-xlmr"
ENCODER_LABELS = ["negative", "positive"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# `mscope train` arguments of the written-directory reference (with --model, --data, --out and
# --epochs 2, or 0 for the untrained head, added).
WRITTEN_ARGS = ["--batch-size", "2", "--lr", "1e-3", "--warmup", "1",
                "--weight-decay", "0.01", "--seed", "7"]


def make_encoder():
    """tiny-bert-cls's encoder (pooler included) saved alone, as a bare `BertModel`."""
    from transformers import BertModel

    encoder = BertModel.from_pretrained(str(OUT / "tiny-bert-cls"))
    if ENCODER_DIR.exists():
        shutil.rmtree(ENCODER_DIR)
    encoder.save_pretrained(str(ENCODER_DIR), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(OUT / "tiny-bert-cls" / name, ENCODER_DIR / name)


def encoder_classifier():
    """`from_pretrained` of the bare encoder with a new 2-label head, as mscope makes it."""
    model, info = BertForSequenceClassification.from_pretrained(
        str(ENCODER_DIR), num_labels=len(ENCODER_LABELS), attn_implementation="eager",
        id2label=dict(enumerate(ENCODER_LABELS)),
        label2id={name: i for i, name in enumerate(ENCODER_LABELS)},
        output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"], info
    assert not info["unexpected_keys"], info
    return model


def encoder_adamw_reference():
    """The AdamW reference from the bare encoder, with the new head's weights recorded."""
    model = encoder_classifier().eval()
    generator = torch.Generator().manual_seed(17)
    weight = torch.empty_like(model.classifier.weight).normal_(0.0, 0.02, generator=generator)
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.zero_()
    init = {"init.classifier.weight": model.classifier.weight.detach().clone(),
            "init.classifier.bias": model.classifier.bias.detach().clone()}
    model = model.to(torch.float64)
    labels, losses = adamw_steps(model, ENCODER_DIR)
    ref = dict(init)
    ref["labels"] = torch.tensor(labels, dtype=torch.int64)
    ref.update(adamw_record(model, losses))
    meta = {"texts": "tests/fixtures/classifiers/texts.jsonl", "transformers_version":
            transformers.__version__, "torch_version": torch.__version__}
    print(f"  tiny-bert-encoder: AdamW losses {losses}")
    return ref, meta


def written_reference(encoder_dir, model_class):
    """Logits, by transformers' `model_class`, of the classifier directories `mscope train`
    writes from the bare encoder `encoder_dir` (trained, and with --epochs 0)."""
    import subprocess
    import tempfile

    mscope = ROOT / "target" / "release" / "mscope"
    if not mscope.is_file():
        sys.exit(f"{mscope} is missing: run `cargo build --release` first")
    texts, _ = labelled_texts()
    ref = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, epochs in [("logits", "2"), ("init_logits", "0")]:
            out = Path(tmp) / key
            args = [str(mscope), "train", "--model", str(encoder_dir), "--data",
                    str(OUT / "texts.jsonl"), "--out", str(out), "--epochs", epochs] + WRITTEN_ARGS
            run = subprocess.run(args, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{' '.join(args)} failed:\n{run.stderr}")
            model, info = model_class.from_pretrained(
                str(out), attn_implementation="eager", output_loading_info=True)
            assert not any(info[k] for k in ("missing_keys", "unexpected_keys",
                                             "mismatched_keys")), info
            assert model.config.id2label == dict(enumerate(ENCODER_LABELS)), model.config
            model = model.eval().to(torch.float64)
            tok = AutoTokenizer.from_pretrained(str(out))
            with torch.no_grad():
                ref[key] = model(**tok(texts, padding=True, return_tensors="pt")).logits
    meta = {"mscope_args": " ".join(WRITTEN_ARGS), "transformers_version":
            transformers.__version__, "torch_version": torch.__version__}
    print(f"  mscope-written classifier from {encoder_dir.name}: logits {ref['logits'].tolist()}")
    return ref, meta


# mscope's counter-based dropout masks (src/random.rs, src/backend/dropout.rs,
# src/models/dropout.rs), in numpy's wrapping uint64 arithmetic.
DROPOUT = {"seed": 7, "first_step": 0, "hidden": 0.2, "attention": 0.3, "head": 0.4}
DROPOUT_STREAM = 0x44524F50
HEAD_INPUT_SITE, HEAD_HIDDEN_SITE = 1 << 32, (1 << 32) + 1


def mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_hash(seed, row, col):
    with np.errstate(over="ignore"):
        seed, row, col = (np.asarray(v, dtype=np.uint64) for v in (seed, row, col))
        h = mix(seed ^ np.uint64(0x243F6A8885A308D3))
        h = mix(h ^ (row * np.uint64(0x9E3779B97F4A7C15)))
        return mix(h ^ (col * np.uint64(0xD1B54A32D192ED03)))


def mask_factors(key, p, rows, cols):
    """1/(1-p) where entry (row, col) of the mask `key` is kept, else 0 (broadcast shapes)."""
    threshold = np.uint64(math.ceil(p * 2.0**53))
    kept = (counter_hash(key, rows, cols) >> np.uint64(11)) >= threshold
    return torch.from_numpy(kept.astype(np.float64) / (1.0 - p))


class StepMasks:
    """The masks of one optimizer step on one padded batch: token rows are their packed rows in
    mscope (the batch's texts one after another, no padding)."""

    def __init__(self, step, lengths):
        self.key = counter_hash(DROPOUT["seed"], DROPOUT_STREAM, step)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64)
        self.calls = {}

    def site_key(self, site):
        return counter_hash(self.key, site, 0)

    def tokens(self, site, p, shape):
        """[B, L, d] factors: row = the token's packed row, col = the feature."""
        b, length, d = shape
        rows = self.offsets[:, None, None] + np.arange(length, dtype=np.uint64)[None, :, None]
        return mask_factors(self.site_key(site), p, rows, np.arange(d, dtype=np.uint64)[None, None, :])

    def attention(self, layer, shape):
        """[B, H, L, L] factors: row = packed query row · heads + head, col = key position."""
        b, heads, length, _ = shape
        queries = self.offsets[:, None, None, None] + np.arange(length, dtype=np.uint64)[None, None, :, None]
        rows = queries * np.uint64(heads) + np.arange(heads, dtype=np.uint64)[None, :, None, None]
        cols = np.arange(length, dtype=np.uint64)[None, None, None, :]
        return mask_factors(self.site_key(1 + 3 * layer), DROPOUT["attention"], rows, cols)

    def head(self, site, shape):
        """[B, d] factors: row = the text's place in the batch."""
        b, d = shape
        rows = np.arange(b, dtype=np.uint64)[:, None]
        return mask_factors(self.site_key(site), DROPOUT["head"], rows, np.arange(d, dtype=np.uint64)[None, :])


MASKS = {"step": None}


class MaskedDropout(torch.nn.Module):
    """A dropout module replaced by mscope's mask of `sites[k]` at its k-th call in a forward
    (RoBERTa's head calls its one dropout module twice)."""

    def __init__(self, sites, kind):
        super().__init__()
        self.sites, self.kind = sites, kind

    def forward(self, x):
        masks = MASKS["step"]
        k = masks.calls.get(id(self), 0)
        masks.calls[id(self)] = k + 1
        site = self.sites[k]
        if self.kind == "head":
            return x * masks.head(site, x.shape)
        return x * masks.tokens(site, DROPOUT["hidden"], x.shape)


def masked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with the probabilities dropped by mscope's mask of the module's layer."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)
    weights = weights * MASKS["step"].attention(module.mscope_layer, weights.shape)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def install_masks(model):
    """Replaces every dropout of `model` (a BERT or XLM-R sequence classifier) by mscope's."""
    from transformers.models.bert import modeling_bert
    from transformers.models.xlm_roberta import modeling_xlm_roberta

    modeling_bert.eager_attention_forward = masked_attention
    modeling_xlm_roberta.eager_attention_forward = masked_attention
    encoder = model.bert if hasattr(model, "bert") else model.roberta
    encoder.embeddings.dropout = MaskedDropout([0], "tokens")
    for l, layer in enumerate(encoder.encoder.layer):
        layer.attention.self.mscope_layer = l
        layer.attention.output.dropout = MaskedDropout([2 + 3 * l], "tokens")
        layer.output.dropout = MaskedDropout([3 + 3 * l], "tokens")
    if hasattr(model, "bert"):
        model.dropout = MaskedDropout([HEAD_HIDDEN_SITE], "head")
    else:
        model.classifier.dropout = MaskedDropout([HEAD_INPUT_SITE, HEAD_HIDDEN_SITE], "head")
    # The attention's own dropout module only lends its p to the attention function.
    left = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)
            and not n.endswith("attention.self.dropout")]
    assert not left, left


def dropout_adamw_reference(model_dir, model_class):
    """The AdamW reference with dropout on at mscope's masks (module docstring)."""
    model = model_class.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    model = model.to(torch.float64)
    install_masks(model)
    labels, losses = adamw_steps(model, model_dir, masked=True)
    ref = {
        "dropout": torch.tensor([DROPOUT[k] for k in ("seed", "first_step", "hidden", "attention",
                                                       "head")], dtype=torch.float64),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    ref.update(adamw_record(model, losses, torch.float32))
    meta = {"texts": "tests/fixtures/classifiers/texts.jsonl", "transformers_version":
            transformers.__version__, "torch_version": torch.__version__}
    print(f"  {model_dir.name}: AdamW losses with dropout {losses}")
    return ref, meta


def write_dropout_references():
    for model_dir, model_class, out in [
        ("tiny-bert-cls", BertForSequenceClassification, "bert_dropout_adamw_reference.safetensors"),
        ("tiny-xlmr-cls", XLMRobertaForSequenceClassification,
         "xlmr_dropout_adamw_reference.safetensors"),
    ]:
        ref, meta = dropout_adamw_reference(OUT / model_dir, model_class)
        save_file(ref, str(OUT / out), metadata=meta)


def main():
    if sys.argv[1:] == ["dropout"]:
        write_dropout_references()
        return
    if sys.argv[1:] == ["xlmr-encoder"]:
        # Only the XLM-R written-directory reference (the other files untouched).
        ref, meta = written_reference(XLMR_ENCODER_DIR, XLMRobertaForSequenceClassification)
        save_file(ref, str(OUT / "xlmr_encoder_written_reference.safetensors"), metadata=meta)
        return
    for model_dir, model_class, out in [
        ("tiny-bert-cls", BertForSequenceClassification, "bert_loss_reference.safetensors"),
        ("tiny-xlmr-cls", XLMRobertaForSequenceClassification, "xlmr_loss_reference.safetensors"),
    ]:
        ref, meta = loss_reference(OUT / model_dir, model_class)
        save_file(ref, str(OUT / out), metadata=meta)
    ref, meta = adamw_reference(OUT / "tiny-bert-cls", BertForSequenceClassification)
    save_file(ref, str(OUT / "bert_adamw_reference.safetensors"), metadata=meta)
    make_encoder()
    ref, meta = encoder_adamw_reference()
    save_file(ref, str(OUT / "bert_encoder_adamw_reference.safetensors"), metadata=meta)
    ref, meta = written_reference(ENCODER_DIR, BertForSequenceClassification)
    save_file(ref, str(OUT / "bert_encoder_written_reference.safetensors"), metadata=meta)
    ref, meta = written_reference(XLMR_ENCODER_DIR, XLMRobertaForSequenceClassification)
    save_file(ref, str(OUT / "xlmr_encoder_written_reference.safetensors"), metadata=meta)
    write_dropout_references()


if __name__ == "__main__":
    main()
