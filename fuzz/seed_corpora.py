#!/usr/bin/env python3
"""Seed the fuzz corpora from the repository's own small fixtures, plus a few small files of the
formats no fixture holds in a small size (a gpt2-tokenizer GGUF, .npy/.npz of each dtype, an mscope
shard). Run once from the repository root before the first fuzzing run; the fuzzer then grows and
`cargo fuzz cmin` minimises the corpora, which are committed.

    tools/.venv/bin/python fuzz/seed_corpora.py [MSCOPE_BINARY]

MSCOPE_BINARY (default target/release/mscope) writes the shard seed. Needs numpy and gguf (the
shared venv has both). Deterministic.
"""

import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(data)


def copy(target, *paths, prefix=b""):
    for p in paths:
        p = FIX / p
        put(target, p.parent.name + "_" + p.name, prefix + p.read_bytes())


def safetensors():
    copy("safetensors", "ntk/test.safetensors", "ntk/mlp_gelu.safetensors",
         "images/pickle/tensors.safetensors", "kglm/test_kernel.safetensors",
         "sklearn_wide_embeddings.safetensors")


def index():
    shard = "model-00001-of-00001.safetensors"
    put("safetensors_index", "both.json", json.dumps({
        "metadata": {"total_size": 48},
        "weight_map": {"embeddings.weight": shard, "encoder.bias": shard}}).encode())
    put("safetensors_index", "missing_shard.json", json.dumps({
        "weight_map": {"embeddings.weight": "model-00002-of-00002.safetensors"}}).encode())


def gguf_seeds():
    copy("gguf", "gguf/types.gguf")
    # A two-layer llama with a five-token byte-level BPE: the decoder config and the GGUF
    # tokenizer builder both get past their first checks.
    path = Path(tempfile.mkdtemp()) / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(2)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["h", "e", "he", "Ġ", "<|endoftext|>"])
    w.add_token_types([1, 1, 1, 1, 3])
    w.add_token_merges(["h e"])
    w.add_bos_token_id(4)
    w.add_eos_token_id(4)
    rng = np.random.default_rng(20)
    w.add_tensor("token_embd.weight", rng.standard_normal((5, 8)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    put("gguf", "tiny_llama_gpt2.gguf", path.read_bytes())
    shutil.rmtree(path.parent)


def configs():
    copy("model_config", "tiny-llama3/config.json", "tiny-qwen2/config.json",
         "tiny-mistral/config.json", "tiny-xlmr/config.json", "tiny-xlmr/modules.json",
         "tiny-xlmr/sentence_bert_config.json", "tiny-xlmr/1_Pooling/config.json",
         "classifiers/tiny-bert-cls/config.json", "clip/hf-tiny/config.json",
         "clip/hf-tiny/preprocessor_config.json", "clip/open_clip-tiny/open_clip_config.json",
         "clip/open_clip-squash/open_clip_config.json")


def tokenizers():
    copy("tokenizer", "tiny-llama3/tokenizer.json", "classifiers/tiny-bert-cls/tokenizer.json")
    # A three-word WordLevel tokenizer: small, so mutations of its structure are cheap.
    put("tokenizer", "wordlevel.json", json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2},
                  "unk_token": "[UNK]"}}).encode())


def texts():
    # First byte: 0 .txt, 1 .jsonl, 2 .csv, 3 .tsv.
    put("texts", "plain.txt", b"\x00first text\n\nsecond text\n  third  \n")
    put("texts", "numbers.txt", b"\x00# scores\n0.5\n-1e-3\n\n2\n")
    copy("texts", "texts.jsonl", "classifiers/texts.jsonl", prefix=b"\x01")
    put("texts", "images.jsonl", b'\x01{"image": "a.png", "label": "cat"}\n{"image": "b.jpg", "label": 3}\n')
    copy("texts", "sklearn_labels.csv", prefix=b"\x02")
    put("texts", "quoted.csv", b'\x02text,label\n"a, ""quoted"" text",x\nplain,\n"multi\nline",y\n')
    put("texts", "rows.tsv", b"\x03label\ttext\npos\tgood film\nneg\tbad film\n")


def npy():
    def save(name, array):
        buf = io.BytesIO()
        np.save(buf, array)
        put("npy", name, buf.getvalue())
    save("f4_2x3.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    save("f8_scalar.npy", np.array(1.5))
    save("i8.npy", np.array([0, 1, 1, 2], dtype=np.int64))
    save("i4.npy", np.array([3, -1], dtype=np.int32))
    save("bool.npy", np.array([True, False]))
    save("unicode.npy", np.array(["cat", "dog", ""]))
    save("f2_empty.npy", np.zeros((0, 4), dtype=np.float16))
    copy("npy", "sklearn_labels.npy")


def npz():
    def save(name, compressed, **arrays):
        buf = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buf, **arrays)
        put("npz", name, buf.getvalue())
    e = np.arange(12, dtype=np.float32).reshape(4, 3)
    save("stored.npz", False, embeddings=e, labels=np.array(["a", "b", "a", "c"]))
    save("deflated.npz", True, embeddings=e.astype(np.float64), labels=np.array([0, 1, 0, 1]))
    save("no_labels.npz", False, x=e)


def images():
    copy("image", *(f"images/formats/{n}" for n in [
        "alpha.webp", "lossy.webp", "lossless.webp", "animated.gif", "palette.gif", "bilevel.png",
        "grey_alpha.png", "palette_trns.png", "rgb16.png", "grey.tif", "lzw.tif"]),
         "images/orientation/o6.jpg", "images/orientation/o6.png", "images/orientation/o5.tif",
         "images/orientation/o8.webp", "clip/bad/cmyk.jpg", "images/bad/grey16.tif")


def torch_pickles():
    copy("torch_pickle", "images/pickle/tensors.bin", "images/pickle/os_system.bin", prefix=b"\x00")
    for p in ["tensors.bin", "os_system.bin"]:
        with zipfile.ZipFile(FIX / "images" / "pickle" / p) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            put("torch_pickle", p.replace(".bin", ".pkl"), b"\x01" + z.read(pkl))


def shard(binary):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "k.safetensors"
        ntk = FIX / "ntk"
        subprocess.run([binary, "ntk", "--model", ntk / "mlp_tanh.safetensors",
                        "--data", ntk / "test.safetensors", "--out", out, "--threads", "1",
                        "--backend", "cpu", "--shard", "0/1"], check=True, capture_output=True)
        put("shards", "ntk_shard.safetensors", (Path(tmp) / "k.shard-0-of-1.safetensors").read_bytes())


if __name__ == "__main__":
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "release" / "mscope")
    safetensors()
    index()
    gguf_seeds()
    configs()
    tokenizers()
    texts()
    npy()
    npz()
    images()
    torch_pickles()
    shard(binary)
