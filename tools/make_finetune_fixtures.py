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
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"

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


def adamw_reference(model_dir, model_class):
    from transformers import get_linear_schedule_with_warmup

    model = model_class.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    model = model.to(torch.float64)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts, names = labelled_texts()
    labels = [model.config.label2id[n] for n in names]
    opt = torch.optim.AdamW(model.parameters(), lr=ADAMW["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=ADAMW["weight_decay"])
    sched = get_linear_schedule_with_warmup(opt, ADAMW["warmup"], ADAMW["total"])
    losses = []
    for rows in ADAMW_BATCHES:
        enc = tok([texts[i] for i in rows], padding=True, return_tensors="pt")
        y = torch.tensor([labels[i] for i in rows], dtype=torch.int64)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    ref = {
        "hparams": torch.tensor([ADAMW["lr"], ADAMW["weight_decay"], ADAMW["warmup"],
                                 ADAMW["total"]], dtype=torch.float64),
        "batches": torch.tensor(ADAMW_BATCHES, dtype=torch.int64),
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    for name, p in model.named_parameters():
        ref[f"after.{name}"] = p.detach().double().contiguous()
    meta = {"texts": "tests/fixtures/classifiers/texts.jsonl", "transformers_version":
            transformers.__version__, "torch_version": torch.__version__}
    print(f"  {model_dir.name}: AdamW losses {losses}")
    return ref, meta


def main():
    for model_dir, model_class, out in [
        ("tiny-bert-cls", BertForSequenceClassification, "bert_loss_reference.safetensors"),
        ("tiny-xlmr-cls", XLMRobertaForSequenceClassification, "xlmr_loss_reference.safetensors"),
    ]:
        ref, meta = loss_reference(OUT / model_dir, model_class)
        save_file(ref, str(OUT / out), metadata=meta)
    ref, meta = adamw_reference(OUT / "tiny-bert-cls", BertForSequenceClassification)
    save_file(ref, str(OUT / "bert_adamw_reference.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
