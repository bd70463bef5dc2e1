#!/usr/bin/env python3
"""Reference outputs of the real SmolLM2-135M-Instruct Q4_1 GGUF (tools/fetch-smollm2.sh) as
transformers loads it (tokenizer and model from the GGUF file, dequantised to float32), for
tests/decoder_gguf.rs.

Writes tests/fixtures/smollm2/reference.safetensors:
  ids/i      I64 [len_i]        token ids of text i
  mean       F32 [texts, 576]   mean over each text's tokens of last_hidden_state
  last       F32 [texts, 576]   each text's last-token last_hidden_state
  hidden/0   F32 [len_0, 576]   every token's last_hidden_state of the short text 0
with metadata: texts (JSON list), torch_version, transformers_version.

Run: tools/.venv/bin/python tools/make_smollm2_fixtures.py
"""

import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import AutoModel, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, ".cache", "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2", "reference.safetensors")

# A paragraph repeated with a counter, long enough to pass 1 000 tokens.
LONG = " ".join(
    f"Section {i}: the quick brown fox jumps over the lazy dog, then rests by the river."
    for i in range(60)
)

TEXTS = [
    "The cat sat on the mat.",
    "Grüße aus Zürich — ça va très bien, merci!",
    "東京は日本の首都です。北京是中国的首都。",
    "Привет, мир! Как дела? مرحبا بالعالم",
    "Emoji: 🚀🔥👍🏽 and a family 👨‍👩‍👧‍👦 plus a flag 🇫🇷.",
    "   leading spaces,\ttabs\t\tand\n\n\nnewlines    between     words   ",
    "def f(x):\n    return x ** 2  # 3.14159, 1234567890",
    LONG,
]


def main():
    if not os.path.isfile(os.path.join(MODELS, GGUF)):
        sys.exit(f"{MODELS}/{GGUF} is missing: run tools/fetch-smollm2.sh")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = AutoModel.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32).eval()

    tensors = {}
    means, lasts = [], []
    for i, text in enumerate(TEXTS):
        ids = tokenizer(text)["input_ids"]
        tensors[f"ids/{i}"] = np.array(ids, dtype=np.int64)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].float().numpy()
        means.append(hidden.mean(axis=0))
        lasts.append(hidden[-1])
        if i == 0:
            tensors["hidden/0"] = np.ascontiguousarray(hidden)
        print(f"text {i}: {len(ids)} tokens", file=sys.stderr)
    assert len(tensors["ids/7"]) > 1000, len(tensors["ids/7"])
    tensors["mean"] = np.stack(means).astype(np.float32)
    tensors["last"] = np.stack(lasts).astype(np.float32)

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(
        tensors,
        OUT,
        metadata={
            "texts": json.dumps(TEXTS, ensure_ascii=False),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
        },
    )
    print(OUT)


if __name__ == "__main__":
    main()
