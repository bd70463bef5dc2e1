#!/usr/bin/env python3
"""References for `mscope kglm --model CLASSIFIER_DIR --test-data TEXTS` (tests/kglm.rs): the
faithfulness of a kernel GLM to a transformer classifier, the network's side computed by
transformers and the τ by scipy.

    tools/.venv/bin/python tools/make_kglm_classifier_fixtures.py

Reads tests/fixtures/classifiers/tiny-bert-cls (random-init BertForSequenceClassification, labels
negative / neutral / positive; left untouched) and writes under tests/fixtures/kglm/:

- classifier_train.jsonl (24 rows) and classifier_test.jsonl (10 rows): `text`, `label` (a label
  name of the model);
- classifier_train_kernel.safetensors [24, 24], classifier_test_kernel.safetensors [10, 24]: an
  RBF kernel (γ = 0.5) on points drawn from 3 overlapping Gaussian clusters in 4 dimensions, one
  cluster per label, in mscope's kernel format (README › Commands), stored as float32;
- classifier_reference.safetensors (F64): `logits` [10, 3], the model's logits of the test texts
  (float64 forward of the checkpoint, eager attention); `network_p` [10], the softmax probability
  of each test text's label; `surrogate_p` [10], that of LogisticRegression(C=1, tol=1e-10,
  max_iter=10000) fitted on the float32 rows of K_TT, on the rows of K_ST; `tau`,
  scipy.stats.kendalltau(surrogate_p, network_p) (τ-b).
"""

import json
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
import transformers
from safetensors.numpy import save_file
from scipy.stats import kendalltau
from sklearn.linear_model import LogisticRegression
from transformers import AutoTokenizer, BertForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "fixtures" / "classifiers" / "tiny-bert-cls"
OUT = ROOT / "tests" / "fixtures" / "kglm"
LABELS = ["negative", "neutral", "positive"]
WORDS = (
    "the a quick brown fox jumps over lazy dog cat sat quietly on warm windowsill watching rain "
    "embeddings map sentences to points where similar meanings lie close hi"
).split()


def rbf(a, b, gamma):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * d2).astype(np.float32)


def write_kernel(path, k):
    save_file(
        {"kernel": np.ascontiguousarray(k, dtype=np.float32)},
        str(path),
        metadata={"kind": "rbf", "normalized": "false", "projection_dim": "0"},
    )


def write_texts(path, rng, labels):
    with open(path, "w", encoding="utf-8") as f:
        for y in labels:
            words = rng.choice(WORDS, size=int(rng.integers(3, 10)))
            text = " ".join(words).capitalize() + "."
            f.write(json.dumps({"text": text, "label": LABELS[y]}) + "\n")
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8")]


def main():
    rng = np.random.default_rng(17)
    n_train, n_test = 24, 10
    centres = rng.standard_normal((3, 4)) * 1.2
    y = np.concatenate([np.arange(n_train) % 3, rng.integers(0, 3, n_test)])
    x = centres[y] + rng.standard_normal((len(y), 4))
    k_tt = rbf(x[:n_train], x[:n_train], 0.5)
    k_st = rbf(x[n_train:], x[:n_train], 0.5)
    write_kernel(OUT / "classifier_train_kernel.safetensors", k_tt)
    write_kernel(OUT / "classifier_test_kernel.safetensors", k_st)
    write_texts(OUT / "classifier_train.jsonl", rng, y[:n_train])
    test_texts = write_texts(OUT / "classifier_test.jsonl", rng, y[n_train:])
    y_test = y[n_train:]

    model = BertForSequenceClassification.from_pretrained(str(MODEL), attn_implementation="eager")
    model = model.double().eval()
    assert [model.config.id2label[i] for i in range(3)] == LABELS
    tok = AutoTokenizer.from_pretrained(str(MODEL))
    with torch.no_grad():
        enc = tok(test_texts, padding=True, return_tensors="pt")
        logits = model(**enc).logits.numpy()
    network_p = torch.softmax(torch.from_numpy(logits), -1).numpy()[np.arange(n_test), y_test]

    glm = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000)
    glm.fit(k_tt.astype(np.float64), y[:n_train])
    surrogate_p = glm.predict_proba(k_st.astype(np.float64))[np.arange(n_test), y_test]
    tau = kendalltau(surrogate_p, network_p).statistic  # variant="b" is the default
    save_file(
        {
            "logits": logits.astype(np.float64),
            "network_p": network_p.astype(np.float64),
            "surrogate_p": surrogate_p.astype(np.float64),
            "tau": np.array([tau], dtype=np.float64),
        },
        str(OUT / "classifier_reference.safetensors"),
        metadata={
            "sklearn": sklearn.__version__,
            "scipy": scipy.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    )
    print(f"tau {tau:.6f}; network p {np.round(network_p, 5)}")


if __name__ == "__main__":
    main()
