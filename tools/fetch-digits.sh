#!/usr/bin/env bash
# Puts scikit-learn's 8×8 handwritten digits into .cache/data/digits.csv (1797 rows, no header:
# 64 pixel columns 0..16, then the label 0..9) and prints the path.
# The data ships inside the scikit-learn wheel as sklearn/datasets/data/digits.csv.gz; this
# downloads one pinned wheel from PyPI and checks the CSV's sha256. Idempotent: does nothing
# when the CSV is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tools/lib/pypi-wheel.sh"
dest="$root/.cache/data/digits.csv"
version="1.5.2"
sha256="6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8"
if [ -f "$dest" ]; then
    echo "$dest"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download_wheel fetch-digits.sh scikit-learn "$version" "$work"
mkdir -p "$(dirname "$dest")"
python3 - "$work"/scikit_learn-"$version"-*.whl "$dest.partial" "$sha256" <<'PY'
import gzip, hashlib, sys, zipfile
wheel, out, want = sys.argv[1:4]
data = gzip.decompress(zipfile.ZipFile(wheel).read("sklearn/datasets/data/digits.csv.gz"))
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"fetch-digits.sh: digits.csv from {wheel} has sha256 {got}, expected {want}")
with open(out, "wb") as f:
    f.write(data)
PY
mv "$dest.partial" "$dest"
echo "$dest"
