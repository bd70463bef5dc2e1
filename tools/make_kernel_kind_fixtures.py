#!/usr/bin/env python3
"""References of the gradient-cosine and embedding kernels of the tiny classifier fixtures.

    tools/.venv/bin/python tools/make_kernel_kind_fixtures.py

Reads the classifiers and texts that tools/make_classifier_fixtures.py wrote under
tests/fixtures/classifiers/ (tiny-bert-cls, tiny-xlmr-cls, texts.jsonl) and writes
{bert,xlmr}_kinds_reference.safetensors beside them, F64, computed in float64 from the stored
float32 weights (dropout off, eager attention), each text run on its own (no padding):

    gradcos [N, N]    the cosine of the per-sample gradients of the cross-entropy loss at the
                      text's label, g(x) = ∇θ −log softmax(f(x))[y] over every parameter:
                      ⟨g(x), g(z)⟩ / (‖g(x)‖‖g(z)‖) (torch.func.vmap(grad) over functional_call);
    embedding [N, N]  the cosine of the concatenated hidden states (transformers'
                      `output_hidden_states`: the embedding output and every encoder layer's
                      output), token positions aligned: E(x, z) = Σ_l Σ_{t < min(T_x, T_z)}
                      ⟨h_l,t(x), h_l,t(z)⟩, divided by √(E(x, x)·E(z, z)).

The script has no randomness and runs single-threaded.
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
from torch.func import functional_call, grad  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "classifiers"

torch.set_num_threads(1)


def cosine(k):
    norms = torch.diagonal(k).sqrt()
    return k / (norms[:, None] * norms[None, :])


def reference(model_dir, model_class):
    model = model_class.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    model = model.to(torch.float64)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    rows = [json.loads(line) for line in open(OUT / "texts.jsonl", encoding="utf-8")]
    labels = [model.config.label2id[r["label"]] for r in rows]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    # Per-sample loss gradients, one text at a time (no padding, so no mask to build).
    flat = []
    for r, y in zip(rows, labels):
        enc = tok([r["text"]], return_tensors="pt")

        def loss(p, enc=enc, y=y):
            logits = functional_call(model, p, args=(), kwargs=dict(enc)).logits
            return torch.nn.functional.cross_entropy(logits, torch.tensor([y]))

        g = grad(loss)(params)
        flat.append(torch.cat([v.reshape(-1) for v in g.values()]))
    g = torch.stack(flat)
    gradcos = cosine(g @ g.T)

    states = []
    with torch.no_grad():
        for r in rows:
            enc = tok([r["text"]], return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            # [T, (L+1)·h]: every layer's hidden state of each token side by side.
            states.append(torch.cat([h[0] for h in out.hidden_states], dim=1))
    n = len(rows)
    emb = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            t = min(states[i].shape[0], states[j].shape[0])
            emb[i, j] = (states[i][:t] * states[j][:t]).sum()
    ref = {"gradcos": gradcos.contiguous(), "embedding": cosine(emb).contiguous()}
    meta = {"texts": "tests/fixtures/classifiers/texts.jsonl", "labels": json.dumps(labels),
            "transformers_version": transformers.__version__, "torch_version": torch.__version__}
    print(f"  {model_dir.name}: labels {labels}, gradcos off-diagonal "
          f"{gradcos[~torch.eye(n, dtype=torch.bool)].min():.3f}.., embedding "
          f"{ref['embedding'][~torch.eye(n, dtype=torch.bool)].min():.3f}..")
    return ref, meta


def main():
    from transformers import BertForSequenceClassification, XLMRobertaForSequenceClassification

    for name, cls, out in [("tiny-bert-cls", BertForSequenceClassification, "bert"),
                           ("tiny-xlmr-cls", XLMRobertaForSequenceClassification, "xlmr")]:
        ref, meta = reference(OUT / name, cls)
        save_file(ref, str(OUT / f"{out}_kinds_reference.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
