#!/usr/bin/env bash
# Every instrument against its anchor (sentence-transformers, scikit-learn, torch.func, numpy) on
# the same work, on this machine, in one run; prints the ratio table and writes
# .cache/bench/anchors.json. Arguments go to tools/anchors/compare_anchors.py (--quick: a few
# minutes; --only NAME; --threads T; --backend B). Needs the Python anchors' packages (torch,
# sentence-transformers, scikit-learn, safetensors; transformers' GGUF loader needs gguf) in
# tools/.venv or in $PYTHON's environment:
#   python3 -m venv tools/.venv && tools/.venv/bin/pip install torch sentence-transformers scikit-learn safetensors gguf
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-tools/.venv/bin/python}
if ! "$python" -c "import torch, sentence_transformers, sklearn, safetensors, threadpoolctl, gguf" 2>/dev/null; then
    echo "compare-anchors: $python lacks the anchors' packages; see the comment at the top of $0" >&2
    exit 1
fi
tools/fetch-model.sh >/dev/null
tools/fetch-smollm2.sh >/dev/null
cargo build --release --quiet --bin mscope
exec "$python" tools/anchors/compare_anchors.py "$@"
