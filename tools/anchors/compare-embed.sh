#!/usr/bin/env bash
# mscope's CPU `embed` (criterion, benches/embed.rs) against sentence-transformers on PyTorch CPU,
# in one run: same model, corpora, batch size 32 and thread count. Needs tools/.venv (see README).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-$(nproc)}
model=$(tools/fetch-model.sh)
echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'), $threads threads, load $(cut -d' ' -f1-3 /proc/loadavg)"
RAYON_NUM_THREADS=$threads cargo bench --quiet --bench embed 2>&1 | grep -E "^embed/|time:|thrpt:"
demo=(--input tools/demo-corpus/news.txt --input tools/demo-corpus/reviews.jsonl --input tools/demo-corpus/multilingual.csv)
for inputs in "${demo[*]}" "--input tests/fixtures/texts.jsonl"; do
    # shellcheck disable=SC2086 # the input flags are meant to split
    tools/.venv/bin/python tools/anchors/embed_sentence_transformers.py --model "$model" $inputs \
        --batch-size 32 --threads "$threads" --repeat 5
done
