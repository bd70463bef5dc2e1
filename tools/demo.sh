#!/usr/bin/env bash
# The main job on its bundled default: embeds the demo corpus (three sources) with the real
# all-MiniLM-L6-v2 and prints the summary. Later instruments extend this demo.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(tools/fetch-model.sh)
mkdir -p .cache/demo
cargo run --release --quiet -- embed --model "$model" \
    --input tools/demo-corpus/news.txt=news \
    --input tools/demo-corpus/reviews.jsonl \
    --input tools/demo-corpus/multilingual.csv \
    --out .cache/demo/embeddings.safetensors "$@"
