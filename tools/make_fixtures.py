#!/usr/bin/env python3
"""Generate golden embedding fixtures for mscope's tests (run by hand; outputs are committed).

Usage (from the repository root):

    tools/.venv/bin/python tools/make_fixtures.py [MINILM_DIR]

MINILM_DIR defaults to .cache/models/all-MiniLM-L6-v2 (fetched by tools/fetch-model.sh).

Writes:
  tests/fixtures/minilm_reference.safetensors
  tests/fixtures/tiny-xlmr/                      (tiny random-init XLM-RoBERTa, sentence-transformers layout)
  tests/fixtures/tiny_xlmr_reference.safetensors

Each reference file holds, for the texts of tests/fixtures/texts.jsonl in file order:
  embeddings                    F32 [N, D]  SentenceTransformer(dir).encode(texts, batch_size=8)
                                            (the model's own pooling and normalisation)
  embeddings_mean_unnormalized  F32 [N, D]  same Transformer module + mean pooling, no Normalize
  token_counts                  I64 [N]     tokens after sentence-transformers' tokenisation
                                            (incl. special tokens, truncated at max_seq_length)
and string metadata: model, sentence_transformers_version, transformers_version, torch_version,
max_seq_length, pooling, normalized, texts.

The script is deterministic (seeded, single-threaded); running it twice gives identical files.
"""

import os

# Offline and deterministic before any HF / tokenizers import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import csv  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import sentence_transformers  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer import modules as models
except ImportError:  # older releases
    from sentence_transformers import models
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors  # noqa: E402
from tokenizers.models import Unigram  # noqa: E402
from tokenizers.trainers import UnigramTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TEXTS = FIXTURES / "texts.jsonl"
DEMO = ROOT / "tools" / "demo-corpus"
TINY_DIR = FIXTURES / "tiny-xlmr"

BATCH_SIZE = 8
TINY_VOCAB = 640
TINY_MAX_SEQ = 128
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, RoBERTa order
MASK = "<mask>"  # appended last, as in XLM-R


def read_texts(path):
    """Texts (and labels) of a .txt / .jsonl / .csv / .tsv file, in file order."""
    path = Path(path)
    ext = path.suffix.lower()
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        if ext == ".jsonl":
            for line in f:
                if line.strip():
                    out.append(json.loads(line)["text"])
        elif ext in (".csv", ".tsv"):
            for row in csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","):
                out.append(row["text"])
        else:
            out.extend(line.rstrip("\r\n") for line in f if line.strip())
    return out


def save_safetensors(tensors, path, metadata):
    """Byte-reproducible safetensors writer (safetensors.save_file orders the metadata by hash):
    header keys sorted, tensors laid out in name order, header padded to 8 bytes."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    h += b" " * (-len(h) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    back = load_file(str(tmp))
    assert sorted(back) == sorted(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and np.array_equal(back[k], tensors[k]), k
    os.replace(tmp, path)


def fixture_texts():
    texts = []
    with open(TEXTS, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
    return texts


def token_counts(st, texts):
    """Tokens per text exactly as sentence-transformers feeds them to the model."""
    tokenize = st.preprocess if hasattr(st, "preprocess") else st.tokenize
    counts = []
    for i in range(0, len(texts), BATCH_SIZE):
        feats = tokenize(texts[i : i + BATCH_SIZE])
        counts.extend(int(c) for c in feats["attention_mask"].sum(dim=1))
    return np.asarray(counts, dtype=np.int64)


def pooling_name(pool):
    mode = getattr(pool, "pooling_mode", None)  # sentence-transformers >= 6
    if mode is None:
        return pool.get_pooling_mode_str()
    return mode if isinstance(mode, str) else "+".join(mode)


def embedding_dim(module):
    if hasattr(module, "get_embedding_dimension"):
        return module.get_embedding_dimension()
    return module.get_word_embedding_dimension()


def independent_check(model_dir, texts, max_len, pooling, emb, emb_mean, counts):
    """Recompute with plain transformers, one text at a time (no padding): guards the fixture
    against sentence-transformers surprises (stripping, truncation, pooling, padding)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    worst_cos, worst_rel = 1.0, 0.0
    with torch.no_grad():
        for i, t in enumerate(texts):
            enc = tok(t, truncation=True, max_length=max_len, return_tensors="pt")
            mask = enc["attention_mask"][0].bool()
            assert int(mask.sum()) == counts[i], (i, int(mask.sum()), counts[i])
            h = model(**enc).last_hidden_state[0][mask]
            mean = h.mean(dim=0)
            pooled = h[0] if pooling == "cls" else mean
            ref = torch.nn.functional.normalize(pooled, dim=0).numpy()
            cos = float(np.dot(ref, emb[i]) / np.linalg.norm(emb[i]))
            rel = float(np.linalg.norm(mean.numpy() - emb_mean[i]) / np.linalg.norm(mean.numpy()))
            worst_cos, worst_rel = min(worst_cos, cos), max(worst_rel, rel)
    assert worst_cos > 0.99999 and worst_rel < 1e-4, (worst_cos, worst_rel)
    print(f"  independent transformers check: min cosine {worst_cos:.7f}, "
          f"max rel err (mean, unnormalized) {worst_rel:.2e}")


def write_reference(st, name, model_dir, out_path, texts):
    """Encode `texts` with `st` and with (st's Transformer + mean pooling, no Normalize)."""
    emb = st.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)
    emb = np.ascontiguousarray(emb, dtype=np.float32)

    transformer = st[0]
    dim = embedding_dim(transformer)
    mean_st = SentenceTransformer(
        modules=[transformer, models.Pooling(dim, pooling_mode="mean")], device="cpu"
    )
    emb_mean = mean_st.encode(
        texts, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False
    )
    emb_mean = np.ascontiguousarray(emb_mean, dtype=np.float32)

    counts = token_counts(st, texts)
    pool = next(m for m in st if isinstance(m, models.Pooling))
    normalized = any(isinstance(m, models.Normalize) for m in st)

    assert emb.shape == (len(texts), dim) and emb_mean.shape == emb.shape
    assert np.isfinite(emb).all() and np.isfinite(emb_mean).all()
    if normalized:
        norms = np.linalg.norm(emb, axis=1)
        assert np.allclose(norms, 1.0, atol=1e-5), norms

    meta = {
        "model": name,
        "sentence_transformers_version": sentence_transformers.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "max_seq_length": str(st.max_seq_length),
        "pooling": pooling_name(pool),
        "normalized": "true" if normalized else "false",
        "pooling_mean_unnormalized": "mean",
        "batch_size": str(BATCH_SIZE),
        "texts": "tests/fixtures/texts.jsonl",
    }
    save_safetensors(
        {"embeddings": emb, "embeddings_mean_unnormalized": emb_mean, "token_counts": counts},
        out_path,
        meta,
    )
    print(f"wrote {out_path.relative_to(ROOT)}: embeddings {list(emb.shape)} F32, "
          f"embeddings_mean_unnormalized {list(emb_mean.shape)} F32, token_counts [{len(counts)}] I64")
    print(f"  metadata {json.dumps(meta)}")
    print(f"  token_counts {counts.tolist()}")
    independent_check(model_dir, texts, st.max_seq_length, meta["pooling"], emb, emb_mean, counts)
    return emb, counts, meta


# ----------------------------------------------------------------------------- MiniLM


def make_minilm(minilm_dir, texts):
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    assert st.max_seq_length == 256, st.max_seq_length
    _, counts, meta = write_reference(
        st, "sentence-transformers/all-MiniLM-L6-v2", minilm_dir,
        FIXTURES / "minilm_reference.safetensors", texts,
    )
    assert meta["pooling"] == "mean" and meta["normalized"] == "true", meta
    n128 = int((counts > 128).sum())
    n256 = int((counts >= 256).sum())
    print(f"  MiniLM: {n128} texts longer than 128 tokens, {n256} truncated at 256")
    assert n128 >= 3 and n256 >= 2, "fixture texts must exercise truncation at 128 and 256"


# ----------------------------------------------------------------------------- tiny XLM-R


def _tokenizer_shell(model):
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def train_tiny_tokenizer(corpus):
    trainer = UnigramTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIALS,
        unk_token="<unk>",
        show_progress=False,
        max_piece_length=8,
    )
    trained = _tokenizer_shell(Unigram())
    trained.train_from_iterator(corpus, trainer=trainer)

    # The trainer finds the same pieces every run, but their order (= ids) and the last ~1e-11 of
    # their scores depend on hash-map iteration order, and so does which required character gets
    # which score in the tail it appends (min_score - 0.0001 * k). Canonicalise: specials first,
    # then pieces by descending score rounded to 6 decimals, ties broken by the piece text; the
    # trailing run of scores spaced <= 0.0001 apart (that tail) keeps its scores, but they are
    # handed out in the order of the pieces' text.
    vocab = json.loads(trained.to_str())["model"]["vocab"]
    assert [p for p, _ in vocab[: len(SPECIALS)]] == SPECIALS, vocab[:6]
    rest = sorted(((p, round(sc, 6)) for p, sc in vocab[len(SPECIALS):]), key=lambda x: (-x[1], x[0]))
    start = len(rest) - 1
    while start > 0 and -1e-9 <= rest[start - 1][1] - rest[start][1] <= 1.5e-4:
        start -= 1
    tail_pieces = sorted(p for p, _ in rest[start:])
    tail_scores = [sc for _, sc in rest[start:]]
    rest = rest[:start] + list(zip(tail_pieces, tail_scores))
    canon = [(p, 0.0) for p in SPECIALS] + rest
    tok = _tokenizer_shell(Unigram(canon, unk_id=SPECIALS.index("<unk>"), byte_fallback=False))
    tok.add_special_tokens(SPECIALS + [MASK])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    assert tok.token_to_id(MASK) == len(canon), tok.token_to_id(MASK)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    tok.no_padding()
    tok.no_truncation()
    return tok


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def make_tiny_xlmr(texts):
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    corpus = [t for t in texts if t]
    for p in sorted(DEMO.iterdir()):
        if p.suffix.lower() in (".txt", ".jsonl", ".csv", ".tsv"):
            corpus.extend(read_texts(p))
    tok = train_tiny_tokenizer(corpus)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    if TINY_DIR.exists():
        shutil.rmtree(TINY_DIR)
    (TINY_DIR / "1_Pooling").mkdir(parents=True)

    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=TINY_MAX_SEQ + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    torch.manual_seed(0)
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(str(TINY_DIR), safe_serialization=True)

    tok.save(str(TINY_DIR / "tokenizer.json"))
    write_json(
        TINY_DIR / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "cls_token": "<s>",
            "sep_token": "</s>",
            "mask_token": "<mask>",
            "model_max_length": TINY_MAX_SEQ,
            "model_input_names": ["input_ids", "attention_mask"],
            "clean_up_tokenization_spaces": False,
        },
    )
    write_json(
        TINY_DIR / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
         "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"},
    )
    write_json(TINY_DIR / "sentence_bert_config.json",
               {"max_seq_length": TINY_MAX_SEQ, "do_lower_case": False})
    write_json(
        TINY_DIR / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(
        TINY_DIR / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": config.hidden_size,
            "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    write_json(
        TINY_DIR / "config_sentence_transformers.json",
        {"__version__": {"sentence_transformers": sentence_transformers.__version__,
                         "transformers": transformers.__version__,
                         "pytorch": torch.__version__},
         "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )

    # --- the saved tokenizer must round-trip through AutoTokenizer unchanged
    hf_tok = AutoTokenizer.from_pretrained(str(TINY_DIR))
    raw = Tokenizer.from_file(str(TINY_DIR / "tokenizer.json"))
    for t in texts:
        a = hf_tok(t.strip())["input_ids"]
        b = raw.encode(t.strip()).ids
        assert a == b, (t, a, b)
    assert hf_tok.pad_token_id == 1 and hf_tok.bos_token_id == 0 and hf_tok.eos_token_id == 2
    assert hf_tok.model_max_length == TINY_MAX_SEQ

    # --- a wrong position offset (0 instead of padding_idx+1 = 2) must visibly change outputs
    reloaded = XLMRobertaModel.from_pretrained(str(TINY_DIR)).eval()
    max_cos = -1.0
    with torch.no_grad():
        for t in texts:
            ids = raw.encode(t.strip()).ids[:TINY_MAX_SEQ]
            if len(ids) < 3:
                continue
            x = torch.tensor([ids])
            pos = torch.arange(len(ids)).unsqueeze(0)
            good = reloaded(input_ids=x, position_ids=pos + 2).last_hidden_state[0]
            default = reloaded(input_ids=x).last_hidden_state[0]
            assert torch.allclose(good, default, atol=1e-6), "default position ids should start at 2"
            bad = reloaded(input_ids=x, position_ids=pos).last_hidden_state[0]
            cos = torch.nn.functional.cosine_similarity(good.flatten(), bad.flatten(), dim=0).item()
            max_cos = max(max_cos, cos)
            assert cos < 0.999, f"position shift hardly changes output (cos={cos}) for {t[:40]!r}"
    print(f"  tiny-xlmr: positions shifted by 2 -> cosine(hidden states) <= {max_cos:.4f} "
          "(asserted < 0.999 per text)")

    st = SentenceTransformer(str(TINY_DIR), device="cpu")
    assert st.max_seq_length == TINY_MAX_SEQ, st.max_seq_length
    _, counts, meta = write_reference(
        st, "tests/fixtures/tiny-xlmr", TINY_DIR, FIXTURES / "tiny_xlmr_reference.safetensors", texts
    )
    assert meta["pooling"] == "cls" and meta["normalized"] == "true", meta
    assert (counts >= TINY_MAX_SEQ).sum() >= 2, "fixture texts must exercise truncation at 128"

    from safetensors import safe_open

    with safe_open(str(TINY_DIR / "model.safetensors"), "np") as f:
        names = sorted(f.keys())
    total = sum(p.stat().st_size for p in TINY_DIR.rglob("*") if p.is_file())
    assert total < 1 << 20, total
    print(f"wrote {TINY_DIR.relative_to(ROOT)}/ ({total} bytes): "
          + ", ".join(sorted(str(p.relative_to(TINY_DIR)) for p in TINY_DIR.rglob("*") if p.is_file())))
    print(f"  tokenizer: Unigram, NFKC + Metaspace, vocab {vocab_size} (incl. <mask>={tok.token_to_id(MASK)}), "
          f"specials <s>=0 <pad>=1 </s>=2 <unk>=3, post-processor '<s> $A </s>'")
    print(f"  model.safetensors tensors ({len(names)}): {names}")


def main():
    minilm_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".cache/models/all-MiniLM-L6-v2")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    texts = fixture_texts()
    print(f"{len(texts)} fixture texts from {TEXTS.relative_to(ROOT)}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"sentence-transformers {sentence_transformers.__version__}")
    make_minilm(minilm_dir, texts)
    make_tiny_xlmr(texts)


if __name__ == "__main__":
    main()
