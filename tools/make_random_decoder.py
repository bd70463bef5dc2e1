#!/usr/bin/env python3
"""Writes a random-init decoder checkpoint shaped like Mistral-7B-v0.1 for the CPU memory and
throughput benchmark of a 7B model (BENCHMARKS.md): config.json, two bf16 safetensors shards with
model.safetensors.index.json, and a small byte-level BPE tokenizer.json (one token per byte, so
any text tokenizes). Not part of CI: the checkpoint is about 14.5 GB.

    tools/.venv/bin/python tools/make_random_decoder.py /work/big/mistral-7b-random
    tools/.venv/bin/python tools/make_random_decoder.py DIR --layers 2   # a quick, small check

Needs numpy and safetensors only. numpy has no bfloat16, so each shard is written here, tensor by
tensor (a header of JSON, then the little-endian bytes), keeping one tensor in memory at a time;
safetensors then reads every shard back to check its header. Weights are N(0, 0.02²) as
transformers initialises them, rounded to nearest-even bf16; norm weights are ones.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
from safetensors import safe_open

CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


def tensor_shapes(config):
    """(name, shape) of every tensor, in transformers' order and naming."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    yield "model.embed_tokens.weight", (v, h)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        yield f"{p}.self_attn.q_proj.weight", (q, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q)
        yield f"{p}.mlp.gate_proj.weight", (i, h)
        yield f"{p}.mlp.up_proj.weight", (i, h)
        yield f"{p}.mlp.down_proj.weight", (h, i)
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def bf16_bits(values):
    """float32 array -> uint16 bf16 bit patterns, rounded to nearest even."""
    bits = values.astype(np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))
    return ((bits + rounding) >> 16).astype("<u2")


def random_tensor(rng, name, shape):
    """The tensor's bf16 bytes: ones for norms, N(0, 0.02²) otherwise, made in row blocks."""
    if len(shape) == 1:
        return bf16_bits(np.ones(shape, np.float32)).tobytes()
    rows, cols = shape
    out = bytearray()
    block = max(1, (1 << 24) // cols)
    for start in range(0, rows, block):
        n = min(block, rows - start)
        values = rng.standard_normal((n, cols), dtype=np.float32)
        values *= np.float32(0.02)
        out += bf16_bits(values).tobytes()
    return bytes(out)


def write_shard(path, tensors, rng):
    """Writes `tensors` [(name, shape)] as one bf16 safetensors file, one tensor at a time."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors pads it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape in tensors:
            f.write(random_tensor(rng, name, shape))
            print(f"  {name} {list(shape)}", file=sys.stderr, flush=True)
    return offset


def byte_level_tokenizer():
    """A byte-level BPE with <unk>, <s>, </s> and one token per byte (GPT-2's byte alphabet), no
    merges; the template prepends <s> as Mistral's tokenizer does."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    special = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(special)}
    for b in range(256):
        vocab[chars[b]] = len(vocab)
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(special)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory to write (created; existing files are replaced)")
    parser.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"],
                        help="decoder layers (default: Mistral-7B's 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.layers < 2:
        parser.error("--layers must be at least 2 (one per shard)")

    config = dict(CONFIG, num_hidden_layers=args.layers)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    tensors = list(tensor_shapes(config))
    # Shard 1: the embedding and the first half of the layers, as transformers splits Mistral-7B.
    half = f"model.layers.{args.layers // 2}."
    split = next(i for i, (name, _) in enumerate(tensors) if name.startswith(half))
    shards = [tensors[:split], tensors[split:]]
    weight_map, total = {}, 0
    for s, shard in enumerate(shards):
        file = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        print(f"{file}:", file=sys.stderr)
        total += write_shard(os.path.join(args.out, file), shard, rng)
        weight_map.update({name: file for name, _ in shard})
        with safe_open(os.path.join(args.out, file), framework="numpy") as f:
            assert sorted(f.keys()) == sorted(name for name, _ in shard), file
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(args.out, "tokenizer.json"), "w") as f:
        json.dump(byte_level_tokenizer(), f, ensure_ascii=False)
    print(f"wrote {args.out}: {total / 1e9:.2f} GB of bf16 weights", file=sys.stderr)


if __name__ == "__main__":
    main()
