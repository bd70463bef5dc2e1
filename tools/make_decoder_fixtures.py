#!/usr/bin/env python3
"""Generate the decoder-embedder fixtures for mscope's tests (run by hand; outputs are committed).

Usage (from the repository root):

    python3 -m venv tools/.venv
    tools/.venv/bin/pip install torch transformers safetensors numpy tokenizers
    tools/.venv/bin/python tools/make_decoder_fixtures.py

Writes tiny random-init checkpoints with transformers' save_pretrained(safe_serialization=True),
each with a byte-level BPE tokenizer.json trained here:
  tests/fixtures/tiny-mistral/       MistralForCausalLM (tied head), f32: hidden 64, 2 layers,
                                     4 query / 2 KV heads of 16, intermediate 128, window 8
  tests/fixtures/tiny-mistral-bf16/  the same weights saved as bf16
  tests/fixtures/tiny-qwen2/         bare Qwen2Model (no `model.` prefix), q/k/v biases,
                                     rope_theta 1e6, 4 query / 1 KV heads
  tests/fixtures/tiny-llama3/        LlamaForCausalLM (tied head), f32, 4 query / 2 KV heads,
                                     attention_bias and mlp_bias, rope_type llama3 (factor 8,
                                     low/high_freq_factor 1/4) over original_max_position_embeddings
                                     32, shorter than the longest texts, so its 16-wide heads have
                                     a pair in each llama3 band (kept, blended, divided)
and tests/fixtures/decoder_reference.safetensors, for every model M and text i:
  M/ids/i     I64 [len]      input ids from the tokenizer (PreTrainedTokenizerFast)
  M/hidden/i  F32 [len, 64]  transformers' last_hidden_state of that text alone (batch of one,
                             eager attention), f32 compute; for tiny-mistral-bf16 the bf16
                             weights widened to f32, as mscope widens them
and transformers' RoPE inverse frequencies (its `inv_freq` buffer, f32):
  tiny-llama3/inv_freq   F32 [8]   the tiny Llama's
  llama-3.1-8b/inv_freq  F32 [64]  Llama 3.1-8B's (head_dim 128, rope_theta 5e5, llama3 scaling:
                                   factor 8, low/high_freq_factor 1/4, 8192 original positions)
with metadata: texts (JSON list), torch_version, transformers_version.

Deterministic (seeded, single-threaded).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Model,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
REFERENCE = FIXTURES / "decoder_reference.safetensors"

VOCAB = 300
# The tiny Llama's original_max_position_embeddings under its llama3 RoPE scaling.
LLAMA3_ORIGINAL_POSITIONS = 32
BOS = "<s>"
# Lengths from one token (the BOS of an empty text) to several times the sliding window.
TEXTS = [
    "",
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to points in a vector space where similar meanings lie close.",
    "A decoder reads left to right: each token attends to the ones before it, and within a "
    "sliding window only to the nearest few, so the last token summarises the whole text.",
]
# What the tokenizer learns its merges from.
CORPUS = TEXTS + [
    "Packed batches need no padding rows, so no work is spent on them.",
    "Rotary embeddings turn each pair of columns by an angle that grows with the position.",
    "Grouped-query attention shares one key and value head among several query heads.",
]


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[BOS, "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    assert tok.get_vocab_size() <= VOCAB
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token="</s>")


def randomize(model, seed):
    """Weights of unit scale instead of the 0.02 init, so attention is far from uniform and a
    wrong norm weight, bias, rotation or mask shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)


def save(model, tokenizer, name, dtype=torch.float32):
    out = FIXTURES / name
    shutil.rmtree(out, ignore_errors=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Only tokenizer.json is read; the rest of what save_pretrained writes is noise here.
    for extra in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / extra).unlink(missing_ok=True)
    return out


def hidden_states(model, ids):
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long)
        base = model.model if hasattr(model, "model") else model
        return base(input_ids=x).last_hidden_state[0].float().numpy()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert len(ids[0]) == 1 and max(map(len, ids)) > 4 * 8, [len(i) for i in ids]
    # The llama3 scaling is meant for texts beyond the original context.
    assert sum(len(i) > LLAMA3_ORIGINAL_POSITIONS for i in ids) >= 2, [len(i) for i in ids]

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        attn_implementation="eager",
    )
    mistral = MistralForCausalLM(
        MistralConfig(num_key_value_heads=2, sliding_window=8, tie_word_embeddings=True, **common)
    ).eval()
    randomize(mistral, 1)
    qwen2 = Qwen2Model(
        Qwen2Config(num_key_value_heads=1, rope_theta=1e6, **common)
    ).eval()
    randomize(qwen2, 2)

    tensors = {}

    def record(name, model):
        for i, seq in enumerate(ids):
            tensors[f"{name}/ids/{i}"] = np.array(seq, dtype=np.int64)
            tensors[f"{name}/hidden/{i}"] = hidden_states(model, seq).astype(np.float32)

    record("tiny-mistral", mistral)
    save(mistral, tokenizer, "tiny-mistral")
    record("tiny-qwen2", qwen2)
    save(qwen2, tokenizer, "tiny-qwen2")
    # bf16 weights, computed in f32 as mscope's widening gives them.
    bf16_dir = save(mistral, tokenizer, "tiny-mistral-bf16", torch.bfloat16)
    widened = MistralForCausalLM.from_pretrained(
        bf16_dir, dtype=torch.bfloat16, attn_implementation="eager"
    ).float().eval()
    record("tiny-mistral-bf16", widened)

    # Built after the models above, so their weights (and the global RNG they draw) are unchanged.
    llama3 = dict(
        rope_type="llama3",
        rope_theta=1e4,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=LLAMA3_ORIGINAL_POSITIONS,
    )
    llama = LlamaForCausalLM(
        LlamaConfig(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=llama3,
            **common,
        )
    ).eval()
    randomize(llama, 3)
    record("tiny-llama3", llama)
    save(llama, tokenizer, "tiny-llama3")
    tensors["tiny-llama3/inv_freq"] = llama.model.rotary_emb.inv_freq.numpy().astype(np.float32)
    llama31 = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        max_position_embeddings=131072,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=5e5,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](llama31, "cpu")
    tensors["llama-3.1-8b/inv_freq"] = inv_freq.numpy().astype(np.float32)

    save_file(
        tensors,
        str(REFERENCE),
        metadata={
            "texts": json.dumps(TEXTS),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
        },
    )
    for name in ("tiny-mistral", "tiny-mistral-bf16", "tiny-qwen2", "tiny-llama3"):
        size = sum(f.stat().st_size for f in (FIXTURES / name).iterdir())
        print(f"{name}: {size} bytes")
    print(f"{REFERENCE.name}: {REFERENCE.stat().st_size} bytes; lengths {[len(i) for i in ids]}")


if __name__ == "__main__":
    main()
