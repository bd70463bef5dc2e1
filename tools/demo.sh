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
# What separates the three sources: principal components (with the rows at either end of each)
# and LDA accuracy over 50 stratified splits with the pairwise table.
cargo run --release --quiet -- pca --input .cache/demo/embeddings.safetensors --components 5 \
    --explain 3 --out .cache/demo/pca.json --plot .cache/demo/pca.png
cargo run --release --quiet -- lda --input .cache/demo/embeddings.safetensors --shrinkage auto \
    --pairwise --out .cache/demo/lda.json --plot .cache/demo/lda.png
# Trimmed comparison of an ensemble: each of 20 models against the pooled other 19 (seeded
# synthetic binary classifiers, the last one overconfident), until a trained ensemble is at hand.
cargo run --release --quiet -- compare --synthetic 20x10000 --top 5 \
    --out .cache/demo/compare.json --plot .cache/demo/compare.png
