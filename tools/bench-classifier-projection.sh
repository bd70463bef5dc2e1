#!/usr/bin/env bash
# Times the dense-JL pNTK of a fine-tuned classifier with two mscope binaries (before and after a
# change), on the first N texts of a labelled set, and prints both times and their ratio:
#   tools/bench-classifier-projection.sh BEFORE_BIN AFTER_BIN CLASSIFIER_DIR TEXTS.jsonl [N] [K]
# (N = 4 texts, K = 32 by default; the demo's fortune classifier and tools/fetch-fortunes.sh's
# train.jsonl are what BENCHMARKS.md used). Each run is the whole `mscope ntk` process on the CPU.
set -euo pipefail
before=$1 after=$2 model=$3 texts=$4 n=${5:-4} k=${6:-32}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -n "$n" "$texts" > "$tmp/texts.jsonl"
time_of() {
    local start end
    start=$(date +%s.%N)
    "$1" ntk --model "$model" --data "$tmp/texts.jsonl" --kind pntk --projection rademacher \
        --projection-dim "$k" --backend cpu --out "$tmp/k-$2.safetensors" >/dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}
uptime
b=$(time_of "$before" before)
a=$(time_of "$after" after)
uptime
echo "N=$n K=$k before ${b}s after ${a}s ratio $(echo "scale=1; $b / $a" | bc)"
# The same map: the two kernels agree to f32 rounding.
tools/.venv/bin/python - "$tmp" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
b, a = (load_file(f"{sys.argv[1]}/k-{w}.safetensors")["kernel"] for w in ("before", "after"))
print(f"relative difference of the kernels: {np.linalg.norm(a - b) / np.linalg.norm(b):.2e}")
PY
