#!/usr/bin/env python3
"""Tiny transformer classifiers and their torch.func per-sample gradients, for mscope's tests.

    tools/.venv/bin/python tools/make_classifier_fixtures.py [MINILM_DIR]

MINILM_DIR (default .cache/models/all-MiniLM-L6-v2, fetched by tools/fetch-model.sh) supplies the
BERT tokenizer: MiniLM's own tokenizer.json (BERT normaliser and pre-tokeniser, WordPiece,
[CLS] $A [SEP]) with its vocabulary cut to the pieces it produces on tests/fixtures/texts.jsonl and
the texts below plus every single character and `##` character of its vocabulary in ASCII, renumbered
in MiniLM's id order. WordPiece's greedy longest match gives the same pieces on those texts with
the cut vocabulary as with the full one (every piece it chose is still there and nothing longer
was added), which the script checks. The XLM-R tokenizer is tests/fixtures/tiny-xlmr's (a
Unigram tokenizer trained by tools/make_fixtures.py), copied as is.

Writes under tests/fixtures/classifiers/:

- tiny-bert-cls/: a random-init `BertForSequenceClassification` (hidden 16, 2 layers, 2 heads,
  intermediate 32, 32 positions, 3 labels) saved by transformers, with the tokenizer above.
- tiny-xlmr-cls/: a random-init `XLMRobertaForSequenceClassification` (hidden 16, 2 layers, 2
  heads, intermediate 32, 32 + 2 positions, 2 labels), with tiny-xlmr's tokenizer.
- texts.jsonl: the four texts (`text`, `label` fields) the references are computed on, of
  different lengths so a packed batch has sequences of 4 to ~30 tokens.
- {bert,xlmr}_reference.safetensors, all F64 except the I64 ids, from the float32 weights stored
  in the directory, computed in float64 (dropout off, eager attention):
    input_ids [N, T_max] I64      the tokenizer's ids, -1 past each text's end;
    token_counts [N] I64;
    logits [N, C]                 model(**batch).logits;
    gram.{name} [N·C, N·C]        per parameter tensor (its name in model.safetensors), the Gram
                                  matrix of the per-sample per-class gradients g_{i,c} = ∇ f_c(x_i)
                                  restricted to that tensor, rows and columns ordered (i, c) (the
                                  key biases' gradients are zero up to rounding: softmax ignores
                                  the q·b they add to every score of a query);
    grad.{name} [N, C, *shape]    the per-sample per-class gradients themselves, for the head,
                                  the last encoder layer's output LayerNorm and bias;
    trntk0, trntk, pntk [N, N]    over every parameter: trNTK0(x, z) = Σ_c ⟨g_c(x), g_c(z)⟩,
                                  trNTK = trNTK0 / (‖g(x)‖‖g(z)‖), ‖g(x)‖² = Σ_c ‖g_c(x)‖²,
                                  pNTK = (1/C)⟨∇Σ_c f_c(x), ∇Σ_c f_c(z)⟩ (as for MLPs).

Per-sample gradients: torch.func.vmap(torch.func.jacrev(...)) over torch.func.functional_call on
the padded batch (attention mask), checked for one sample against plain autograd on the unpadded
text. Weights are drawn wider than transformers' init (N(0, 0.2²) matrices and biases, LayerNorm
γ = 1 + N(0, 0.2²), β ~ N(0, 0.2²)) so attention is far from uniform and GELU from linear. The
script is seeded and single-threaded: rerunning it rewrites the same tensors.
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from torch.func import functional_call, jacrev, vmap  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "classifiers"
XLMR_TOKENIZER = FIXTURES / "tiny-xlmr"

TEXTS = [
    ("Hi!", "positive"),
    ("The quick brown fox jumps over the lazy dog.", "negative"),
    ("A cat sat quietly on the warm windowsill, watching the rain.", "negative"),
    ("Embeddings map sentences to points where similar meanings lie close.", "positive"),
]
BERT_LABELS = ["negative", "neutral", "positive"]
XLMR_LABELS = ["negative", "positive"]
MAX_TOKENS = 32
# The head, the last layer's output LayerNorm and FFN bias: full gradients, not only Grams.
FULL_GRADIENTS = ("classifier.", "bert.pooler.dense.bias", "encoder.layer.1.output.LayerNorm.",
                  "encoder.layer.1.output.dense.bias")

torch.set_num_threads(1)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def corpus_texts():
    """The texts whose MiniLM pieces the cut vocabulary keeps."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_fixtures import read_texts  # the fixture generators' shared reader

    return read_texts(FIXTURES / "texts.jsonl") + [t for t, _ in TEXTS]


def bert_tokenizer(minilm_dir, out_dir):
    """MiniLM's tokenizer.json with the vocabulary cut (module docstring)."""
    full = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    raw = Tokenizer.from_str(json.dumps(full))
    raw.no_padding()
    raw.no_truncation()
    vocab = full["model"]["vocab"]
    keep = {t["id"] for t in full["added_tokens"]}
    texts = corpus_texts()
    for t in texts:
        keep.update(raw.encode(t).ids)
    for token, i in vocab.items():
        base = token[2:] if token.startswith("##") else token
        if len(base) == 1 and base.isascii() and base.isprintable():
            keep.add(i)
    old_ids = sorted(keep)
    new_id = {old: new for new, old in enumerate(old_ids)}
    by_old = {i: t for t, i in vocab.items()}
    cut = json.loads(json.dumps(full))
    cut["model"]["vocab"] = {by_old[old]: new_id[old] for old in old_ids}
    for t in cut["added_tokens"]:
        t["id"] = new_id[t["id"]]
    for special in cut["post_processor"]["special_tokens"].values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    cut["truncation"] = None
    cut["padding"] = None
    (out_dir / "tokenizer.json").write_text(json.dumps(cut, ensure_ascii=False), encoding="utf-8")
    small = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    for t in texts:
        want = [new_id[i] for i in raw.encode(t).ids]
        assert small.encode(t).ids == want, t
    write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "do_lower_case": True,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]",
        "model_max_length": MAX_TOKENS,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    })
    write_json(out_dir / "special_tokens_map.json", {
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]"})
    return len(old_ids), new_id[0]


def xlmr_tokenizer(out_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(XLMR_TOKENIZER / name, out_dir / name)
    config = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["model_max_length"] = MAX_TOKENS
    write_json(out_dir / "tokenizer_config.json", config)
    return Tokenizer.from_file(str(out_dir / "tokenizer.json")).get_vocab_size(True)


def widen(model, seed):
    """The wider random weights of the module docstring, in float32."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.2
            p.copy_(1.0 + noise if name.endswith("LayerNorm.weight") else noise)


def batch_of(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    assert int(enc["attention_mask"].sum(1).max()) <= MAX_TOKENS
    return enc


def per_sample_gradients(model, params, enc):
    """name -> [N, C, *shape] float64: vmap(jacrev) over the padded batch."""
    # The padding mask goes in additive and 4-D ([1, 1, 1, T] per sample, as eager attention adds
    # it): transformers' own mask builder branches on the mask's values, which vmap refuses.
    inputs = dict(enc)
    mask = inputs.pop("attention_mask").to(torch.float64)
    inputs["attention_mask"] = ((1.0 - mask) * torch.finfo(torch.float64).min)[:, None, None, :]
    keys = list(inputs.keys())

    def logits(p, *row):
        one = {k: v.unsqueeze(0) for k, v in zip(keys, row)}
        return functional_call(model, p, args=(), kwargs=one).logits.squeeze(0)

    rows = [inputs[k] for k in keys]
    return vmap(jacrev(logits), in_dims=(None,) + (0,) * len(rows))(params, *rows)


def check_one_sample(model, params, tok, text, jac, i):
    """Sample i's Jacobian against plain autograd on the unpadded text."""
    enc = tok([text], return_tensors="pt")
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = functional_call(model, leaves, args=(), kwargs=dict(enc)).logits.squeeze(0)
    names = list(leaves)
    for c in range(out.shape[0]):
        grads = torch.autograd.grad(out[c], [leaves[n] for n in names], retain_graph=True)
        for n, g in zip(names, grads):
            assert torch.allclose(g, jac[n][i, c], rtol=1e-10, atol=1e-13), (n, c)


def reference(model_dir, model_class, tok, labels):
    model32 = model_class.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    texts = [t for t, _ in TEXTS]
    enc = batch_of(tok, texts)
    with torch.no_grad():
        logits32 = model32(**enc).logits
    model = model32.to(torch.float64)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        logits = model(**enc).logits
    rel = float((logits32.double() - logits).norm() / logits.norm())
    assert rel < 1e-5, rel
    jac = per_sample_gradients(model, params, enc)
    check_one_sample(model, params, tok, texts[-1], jac, len(texts) - 1)
    n, c = logits.shape
    assert c == len(labels)
    ref, total = {}, 0
    for name, g in jac.items():
        flat = g.reshape(n * c, -1)
        # A key bias adds q·b to every score of a query, which softmax ignores: its gradient is
        # rounding only. Every other parameter must be live.
        live = float((flat * flat).sum()) > 1e-20
        assert live != name.endswith("attention.self.key.bias"), (name, float(flat.abs().max()))
        ref[f"gram.{name}"] = flat @ flat.T
        total = total + ref[f"gram.{name}"]
        if any(part in name for part in FULL_GRADIENTS):
            ref[f"grad.{name}"] = g
    blocks = total.reshape(n, c, n, c)
    trntk0 = torch.einsum("icjc->ij", blocks)
    norms = torch.diagonal(trntk0).sqrt()
    ref["trntk0"] = trntk0
    ref["trntk"] = trntk0 / (norms[:, None] * norms[None, :])
    ref["pntk"] = blocks.sum(dim=(1, 3)) / c
    ref["logits"] = logits
    mask = enc["attention_mask"]
    ref["input_ids"] = torch.where(mask.bool(), enc["input_ids"], -1).to(torch.int64)
    ref["token_counts"] = mask.sum(1).to(torch.int64)
    ref = {k: v.detach().contiguous() if v.dtype == torch.int64 else v.detach().double().contiguous()
           for k, v in ref.items()}
    meta = {"texts": "tests/fixtures/classifiers/texts.jsonl", "transformers_version":
            transformers.__version__, "torch_version": torch.__version__}
    print(f"  {model_dir.name}: tokens {ref['token_counts'].tolist()}, "
          f"{sum(p.numel() for p in params.values())} parameters, "
          f"trNTK off-diagonal {ref['trntk'][~torch.eye(n, dtype=torch.bool)].min():.3f}..")
    return ref, meta


def make_bert(minilm_dir):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = OUT / "tiny-bert-cls"
    out.mkdir(parents=True)
    vocab_size, pad_id = bert_tokenizer(minilm_dir, out)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, hidden_act="gelu", max_position_embeddings=MAX_TOKENS,
        type_vocab_size=2, pad_token_id=pad_id, layer_norm_eps=1e-12,
        num_labels=len(BERT_LABELS), id2label=dict(enumerate(BERT_LABELS)),
        label2id={n: i for i, n in enumerate(BERT_LABELS)},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    widen(model, 1)
    model.save_pretrained(str(out), safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(str(out))
    ref, meta = reference(out, BertForSequenceClassification, tok, BERT_LABELS)
    save_file(ref, str(OUT / "bert_reference.safetensors"), metadata=meta)


def make_xlmr():
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    out = OUT / "tiny-xlmr-cls"
    out.mkdir(parents=True)
    vocab_size = xlmr_tokenizer(out)
    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, hidden_act="gelu", max_position_embeddings=MAX_TOKENS + 2,
        type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
        num_labels=len(XLMR_LABELS), id2label=dict(enumerate(XLMR_LABELS)),
        label2id={n: i for i, n in enumerate(XLMR_LABELS)},
    )
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(config).eval()
    widen(model, 2)
    model.save_pretrained(str(out), safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(str(out))
    ref, meta = reference(out, XLMRobertaForSequenceClassification, tok, XLMR_LABELS)
    save_file(ref, str(OUT / "xlmr_reference.safetensors"), metadata=meta)


def main():
    minilm_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".cache/models/all-MiniLM-L6-v2"
    for stale in ("tiny-bert-cls", "tiny-xlmr-cls"):
        if (OUT / stale).exists():
            shutil.rmtree(OUT / stale)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "texts.jsonl", "w", encoding="utf-8") as f:
        for text, label in TEXTS:
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    make_bert(minilm_dir)
    make_xlmr()
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
