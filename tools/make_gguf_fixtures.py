#!/usr/bin/env python3
"""Generate the GGUF reader's fixtures (run by hand; outputs are committed).

Usage (from the repository root, in a venv holding the PyPI packages gguf and numpy, plus torch and
transformers for the SentencePiece-vocabulary files, which are skipped with a note without them):

    python3 -m venv tools/.venv && tools/.venv/bin/pip install gguf numpy torch transformers
    tools/.venv/bin/python tools/make_gguf_fixtures.py [SMOLLM2_GGUF]

SMOLLM2_GGUF defaults to .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (tools/fetch-smollm2.sh);
the real-file references are skipped with a note when it is absent.

Writes to tests/fixtures/gguf/:
  types.gguf                 one tensor per supported ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
                             Q4_K, Q5_K, Q6_K) plus a 3-D Q8_0 one, and one metadata key per GGUF
                             value type (scalars, arrays of each, a nested array); alignment 64
  types_reference.safetensors  per tensor `NAME.f32`: gguf.quants.dequantize of its bytes, and
                             `NAME.f16`: that cast with numpy's astype(float16), in numpy's
                             (row-major, GGUF dims reversed) shape
  types.json                 the metadata written ({key: {type, value}}, plus `element` for
                             arrays and `bits` for floats) and each tensor's ggml type and
                             numpy shape
  smollm2.json               the real file as gguf.GGUFReader reads it: every tensor's
                             [name, ggml type, numpy shape] in file order, and its scalar metadata
  smollm2_reference.safetensors  gguf.quants.dequantize of the first rows of two real tensors
  tiny-llama-spm.gguf        a random-init llama model (2 layers, hidden 64, 4 query / 2 KV heads;
                             F32 norms and embeddings, F16 attention, Q8_0 feed-forward, Q/K rows
                             permuted as llama.cpp stores them) with a SentencePiece-style BPE
                             vocabulary (`tokenizer.ggml.model` llama: tokens, scores, token types,
                             byte-fallback tokens <0x00>..<0xFF>, no merges) learned by a small BPE
                             trainer below on a multilingual corpus; add_bos_token true
  tiny-llama-spm-eos.gguf    the same vocabulary, no tensors, add_bos_token false, add_eos_token
                             true, add_space_prefix false
  tiny_llama_spm_reference.safetensors  as transformers builds and runs them from the files
                             (AutoTokenizer / AutoModel with gguf_file=, float32): `ids/I` and
                             `eos_ids/I` (I64) the token ids of text I from each file, `last` and
                             `mean` (F32 [texts, 64]) the last-token and mean-pooled
                             last_hidden_state of each non-empty text; metadata `texts` (JSON)

Quantised types that gguf.quants can quantise (Q8_0, Q4_0, Q4_1, BF16) are made from seeded random
values; for the K-quants, which it can only dequantise, the blocks are seeded random bytes with
finite, moderate half-precision super-block scales. The script is deterministic.
"""

import json
import re
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
SMOLLM2 = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIGNMENT = 64
REAL_ROWS = {"blk.0.attn_q.weight": 8, "token_embd.weight": 4}

rng = np.random.default_rng(20240611)


def write_safetensors(path, arrays):
    """A safetensors file from numpy arrays, written by hand (numpy is the only dependency)."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    header, offset, blobs = {}, 0, []
    for name in sorted(arrays):
        data = np.ascontiguousarray(arrays[name])
        blob = data.astype(data.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[data.dtype], "shape": list(data.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def k_quant_blocks(qtype, rows, cols):
    """Random K-quant blocks whose f16 super-block scales are finite and moderate."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    scale = lambda n: rng.uniform(1e-4, 1e-2, size=(len(blocks), n)).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:  # ql, qh, int8 scales, then d
        blocks[:, size - 2:] = scale(1)
    else:  # d and dmin lead the block
        blocks[:, :4] = scale(2)
    return blocks.reshape(rows, cols // block * size)


def tensors():
    """(name, ggml type, numpy shape, stored array) for every fixture tensor."""
    specials = np.array([0.0, -0.0, 1e-7, -65504.0, 3.0e38, 1.0 / 3.0], dtype=np.float32)
    f32 = rng.standard_normal((3, 37)).astype(np.float32)
    f32.flat[: len(specials)] = specials
    f16 = rng.standard_normal((5, 19)).astype(np.float32)
    f16.flat[:4] = [0.0, -0.0, 6e-8, 1e-5]  # zeros and subnormal halves
    out = [
        ("t.f32", Q.F32, f32.shape, f32),
        ("t.f16", Q.F16, f16.shape, gguf.quants.quantize(f16, Q.F16)),
    ]
    for name, qtype, shape in [
        ("t.bf16", Q.BF16, (4, 23)),
        ("t.q8_0", Q.Q8_0, (3, 96)),
        ("t.q8_0_3d", Q.Q8_0, (2, 3, 32)),
        ("t.q4_0", Q.Q4_0, (5, 64)),
        ("t.q4_1", Q.Q4_1, (3, 160)),
    ]:
        values = (rng.standard_normal(shape) * rng.uniform(0.01, 3.0)).astype(np.float32)
        out.append((name, qtype, shape, gguf.quants.quantize(values, qtype)))
    for name, qtype, shape in [("t.q4_k", Q.Q4_K, (2, 512)), ("t.q5_k", Q.Q5_K, (3, 256)), ("t.q6_k", Q.Q6_K, (2, 256))]:
        out.append((name, qtype, shape, k_quant_blocks(qtype, *shape)))
    return out


# One key per value type, then an array of each element type and a nested array.
SCALARS = [
    ("test.u8", V.UINT8, 200), ("test.i8", V.INT8, -100), ("test.u16", V.UINT16, 60000),
    ("test.i16", V.INT16, -30000), ("test.u32", V.UINT32, 4000000000), ("test.i32", V.INT32, -2000000000),
    ("test.f32", V.FLOAT32, 0.1), ("test.bool", V.BOOL, True), ("test.string", V.STRING, "héllo, GGUF ✓"),
    ("test.u64", V.UINT64, 2**63 + 12345), ("test.i64", V.INT64, -(2**62) - 7), ("test.f64", V.FLOAT64, 2.0 / 3.0),
]
ARRAYS = [
    ("test.array.u8", V.UINT8, [0, 1, 255]), ("test.array.i8", V.INT8, [-128, 0, 127]),
    ("test.array.u16", V.UINT16, [1, 65535]), ("test.array.i16", V.INT16, [-32768, 32767]),
    ("test.array.u32", V.UINT32, [7, 4294967295]), ("test.array.i32", V.INT32, [-5, 2147483647]),
    ("test.array.f32", V.FLOAT32, [1.5, -0.1, 1e-30]), ("test.array.bool", V.BOOL, [True, False, True]),
    ("test.array.string", V.STRING, ["a", "", "ünïcode"]), ("test.array.u64", V.UINT64, [2**64 - 1]),
    ("test.array.i64", V.INT64, [-(2**63), 2**63 - 1]), ("test.array.f64", V.FLOAT64, [1e300, -2.5]),
]
NESTED = ("test.array.nested", [[1, 2], [3], [4, 5, 6]])  # the writer types inner ints as i32


def entry(type_name, value, element=None):
    """A metadata value for the JSON manifests; floats also as their stored bits (`bits`), which
    a reader can compare exactly whatever its JSON float parsing."""
    out = {"type": type_name, "value": value}
    if element is not None:
        out["element"] = element
    kind = element or type_name
    if kind in ("f32", "f64"):
        dtype, bits = (np.float32, np.uint32) if kind == "f32" else (np.float64, np.uint64)
        stored = np.array(value, dtype=dtype)
        out["value"] = stored.tolist()
        out["bits"] = stored.view(bits).tolist()
    return out


VALUE_NAMES = {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32", V.INT32: "i32",
               V.FLOAT32: "f32", V.BOOL: "bool", V.STRING: "string", V.UINT64: "u64", V.INT64: "i64", V.FLOAT64: "f64"}


def make_types():
    writer = gguf.GGUFWriter(OUT / "types.gguf", "test")
    writer.add_custom_alignment(ALIGNMENT)
    meta = {"general.architecture": entry("string", "test"), "general.alignment": entry("u32", ALIGNMENT)}
    for key, vtype, value in SCALARS:
        writer.add_key_value(key, value, vtype)
        meta[key] = entry(VALUE_NAMES[vtype], value)
    for key, vtype, values in ARRAYS:
        writer.add_key_value(key, values, V.ARRAY, sub_type=vtype)
        meta[key] = entry("array", values, element=VALUE_NAMES[vtype])
    writer.add_array(*NESTED)
    meta[NESTED[0]] = entry("array", NESTED[1], element="array")

    reference, shapes = {}, {}
    for name, qtype, shape, stored in tensors():
        writer.add_tensor(name, stored, raw_dtype=qtype)
        values = gguf.quants.dequantize(stored, qtype).reshape(shape)
        reference[f"{name}.f32"] = values
        with np.errstate(over="ignore"):  # values past f16's range round to infinity, on purpose
            reference[f"{name}.f16"] = values.astype(np.float16)
        shapes[name] = {"type": qtype.name, "shape": list(shape)}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_safetensors(OUT / "types_reference.safetensors", reference)
    (OUT / "types.json").write_text(json.dumps({"metadata": meta, "tensors": shapes}, indent=1, ensure_ascii=False) + "\n")


def make_smollm2(path):
    reader = gguf.GGUFReader(path)
    metadata = {
        key: entry(VALUE_NAMES[field.types[0]], field.contents())
        for key, field in reader.fields.items()
        if len(field.types) == 1 and not key.startswith("GGUF.")
    }
    # t.shape is GGUF's dims; the element shape a reader reports is them reversed.
    tensors = [[t.name, t.tensor_type.name, [int(d) for d in reversed(t.shape)]] for t in reader.tensors]
    reference = {
        t.name: gguf.quants.dequantize(np.asarray(t.data)[: REAL_ROWS[t.name]], t.tensor_type)
        for t in reader.tensors
        if t.name in REAL_ROWS
    }
    write_safetensors(OUT / "smollm2_reference.safetensors", reference)
    lines = ",\n".join(json.dumps(t) for t in tensors)
    text = '{"metadata": ' + json.dumps(metadata, indent=1) + ',\n"tensors": [\n' + lines + "\n]}\n"
    (OUT / "smollm2.json").write_text(text)


# SentencePiece-style vocabulary: llama.cpp's token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
SPM_MERGES = 420
SPM_CORPUS = [
    "the quick brown fox jumps over the lazy dog and the cat sat on the mat",
    "language models represent text as sequences of tokens learned from data",
    "the embedding of a sentence is the hidden state of its last token",
    "Grüße aus Zürich: ça va très bien, merci beaucoup pour la réponse",
    "das Wetter ist heute schön und wir gehen über die Brücke",
    "Привет, мир! Как дела? Сегодня хорошая погода, и мы идём гулять",
    "Γειά σου κόσμε, η γλώσσα είναι ωραία",
    "مرحبا بالعالم، كيف حالك اليوم",
    "東京は日本の首都です。北京是中国的首都。",
    "def f(x): return x ** 2 + 3.14159 * (y - 1) / 2, [0, 1, 2]",
    "numbers 1234567890 and symbols !?;:'\"()<>{}#@&%$-_=+|~`^",
]


def train_spm_bpe(corpus, merges):
    """SentencePiece BPE in miniature: text with spaces as ▁ and a ▁ prepended, split before each
    ▁ into words, and the most frequent adjacent pair of symbols merged `merges` times (ties to the
    smaller pair). Returns the merged pieces in learning order and the characters by frequency."""
    words = Counter()
    for line in corpus:
        for word in re.findall("▁[^▁]*|[^▁]+", "▁" + line.replace(" ", "▁")):
            words[tuple(word)] += 1
    chars = Counter()
    for word, n in words.items():
        for c in word:
            chars[c] += n
    pieces = []
    for _ in range(merges):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        pieces.append(best[0] + best[1])
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return pieces, sorted(chars, key=lambda c: (-chars[c], c))


def spm_vocab():
    """(tokens, scores, types) laid out as a llama vocabulary: <unk>, <s>, </s>, the 256 byte
    tokens, learned pieces scored -rank (with runs of ▁ as Llama has them), the characters scored
    below every piece, and one user-defined token."""
    pieces, chars = train_spm_bpe(SPM_CORPUS, SPM_MERGES)
    for run in ["▁▁", "▁▁▁▁", "▁▁▁"]:  # code indentation, as in Llama's vocabulary
        if run not in pieces:
            pieces.insert(len(pieces) // 3, run)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    learned = pieces + [c for c in chars if c not in pieces]
    tokens += learned
    scores += [-float(i) for i in range(len(learned))]
    types += [NORMAL] * len(learned)
    tokens.append("<|sep|>")
    scores.append(0.0)
    types.append(USER_DEFINED)
    assert len(set(tokens)) == len(tokens)
    return tokens, scores, types


# A paragraph repeated with a counter, long enough to pass 1 000 tokens.
SPM_LONG = " ".join(
    f"Section {i}: the quick brown fox jumps over the lazy dog, then rests by the river." for i in range(40)
)
SPM_TEXTS = [
    "The cat sat on the mat.",
    "Grüße aus Zürich — ça va très bien, merci!",
    "東京は日本の首都です。北京是中国的首都。ソウルは韓国の首都です。",
    "Привет, мир! Как дела? مرحبا بالعالم Γειά σου",
    "Emoji: 🚀🔥👍🏽 and a family 👨‍👩‍👧‍👦 plus a flag 🇫🇷.",
    "   leading spaces,\ttabs\t\tand\n\n\nnewlines    between     words   ",
    "def f(x):\n    return x ** 2  # 3.14159, 1234567890",
    " one leading space and one trailing ",
    "<s>specials in the text</s> <unk> and <|sep|>, ▁ a metaspace already",
    "",
    SPM_LONG,
]


def write_spm_gguf(path, tokens, scores, types, add_bos, add_eos, model=None):
    """A llama GGUF holding the vocabulary and, when `model` (a LlamaModel) is given, its config
    and weights as llama.cpp's converter writes them."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if model is None:
        writer.add_add_space_prefix(False)
    else:
        cfg = model.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)

        def permute(w, heads):  # transformers' row h·d/2 + i stored as row 2i + h, per head
            return w.reshape(heads, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(w.shape)

        state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        writer.add_tensor("token_embd.weight", state["embed_tokens.weight"])
        writer.add_tensor("output_norm.weight", state["norm.weight"])
        for layer in range(cfg.num_hidden_layers):
            get = lambda name: state[f"layers.{layer}.{name}.weight"]
            blk = f"blk.{layer}"
            writer.add_tensor(f"{blk}.attn_norm.weight", get("input_layernorm"))
            writer.add_tensor(f"{blk}.ffn_norm.weight", get("post_attention_layernorm"))
            attention = {
                "attn_q": permute(get("self_attn.q_proj"), cfg.num_attention_heads),
                "attn_k": permute(get("self_attn.k_proj"), cfg.num_key_value_heads),
                "attn_v": get("self_attn.v_proj"),
                "attn_output": get("self_attn.o_proj"),
            }
            for name, w in attention.items():
                writer.add_tensor(f"{blk}.{name}.weight", w.astype(np.float16))
            for name, hf in [("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")]:
                w = get(f"mlp.{hf}")
                writer.add_tensor(f"{blk}.{name}.weight", gguf.quants.quantize(w, Q.Q8_0), raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_tiny_llama_spm():
    try:
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaModel
    except ImportError:
        print("torch and transformers are absent: the SentencePiece GGUF fixtures are skipped", file=sys.stderr)
        return
    tokens, scores, types = spm_vocab()
    torch.manual_seed(15)
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
    )
    model = LlamaModel(config).eval()
    for p in model.parameters():  # norms away from 1, so a misread one shows
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    write_spm_gguf(OUT / "tiny-llama-spm.gguf", tokens, scores, types, True, False, model)
    write_spm_gguf(OUT / "tiny-llama-spm-eos.gguf", tokens, scores, types, False, True)

    tokenizer = AutoTokenizer.from_pretrained(OUT, gguf_file="tiny-llama-spm.gguf")
    eos_tokenizer = AutoTokenizer.from_pretrained(OUT, gguf_file="tiny-llama-spm-eos.gguf")
    reference = AutoModel.from_pretrained(OUT, gguf_file="tiny-llama-spm.gguf", dtype=torch.float32).eval()
    arrays, lasts, means = {}, [], []
    for i, text in enumerate(SPM_TEXTS):
        ids = tokenizer(text)["input_ids"]
        arrays[f"ids/{i}"] = np.array(ids, dtype=np.int64)
        arrays[f"eos_ids/{i}"] = np.array(eos_tokenizer(text)["input_ids"], dtype=np.int64)
        if text:
            with torch.no_grad():
                hidden = reference(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
            lasts.append(hidden[-1])
            means.append(hidden.mean(axis=0))
        print(f"text {i}: {len(ids)} tokens", file=sys.stderr)
    assert len(arrays[f"ids/{len(SPM_TEXTS) - 1}"]) > 1000
    arrays["last"] = np.stack(lasts).astype(np.float32)
    arrays["mean"] = np.stack(means).astype(np.float32)
    from safetensors.numpy import save_file

    save_file(
        arrays,
        OUT / "tiny_llama_spm_reference.safetensors",
        metadata={
            "texts": json.dumps(SPM_TEXTS, ensure_ascii=False),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
        },
    )


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    make_types()
    make_tiny_llama_spm()
    real = Path(sys.argv[1]) if len(sys.argv) > 1 else SMOLLM2
    if real.is_file():
        make_smollm2(real)
    else:
        print(f"{real} is absent: run tools/fetch-smollm2.sh for the real-file references", file=sys.stderr)
