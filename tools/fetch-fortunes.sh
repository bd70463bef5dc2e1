#!/usr/bin/env bash
# Makes a small labelled text set from Debian's fortune cookies (package `fortunes`, files under
# /usr/share/games/fortunes/, one cookie per `%`-separated entry) and prints its folder:
#   .cache/data/fortunes/train.jsonl   96 texts, 32 per category
#   .cache/data/fortunes/test.jsonl    48 texts, 16 per category
# Rows are {"text": ..., "label": CATEGORY} for the categories computers, food and love. Each
# cookie's whitespace is collapsed to single spaces; only cookies of 20 to 100 characters are
# kept (short texts keep the tangent kernels fast). Within a category the cookies are ordered by
# the sha256 of their text, the first 32 go to train and the next 16 to test, and each file is
# ordered by sha256 again (categories interleaved): the same package gives the same files.
# Installs `fortunes` with apt-get (as root) when the files are missing. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/data/fortunes"
source_dir=/usr/share/games/fortunes
categories="computers food love"
if [ -f "$dest/train.jsonl" ] && [ -f "$dest/test.jsonl" ]; then
    echo "$dest"
    exit 0
fi
missing() {
    for c in $categories; do [ -f "$source_dir/$c" ] || return 0; done
    return 1
}
if missing; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "fetch-fortunes.sh: needs Debian's fortune files ($source_dir/{${categories// /,}});" \
            "install them with: apt-get install fortunes" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fortunes >/dev/null
fi
mkdir -p "$dest"
python3 - "$source_dir" "$dest" $categories <<'PY'
import hashlib, json, os, sys

source, dest, categories = sys.argv[1], sys.argv[2], sys.argv[3:]
per_train, per_test = 32, 16
digest = lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest()
train, test = [], []
for category in categories:
    with open(os.path.join(source, category), encoding="utf-8") as f:
        entries = f.read().split("\n%\n")
    texts = sorted({" ".join(e.split()) for e in entries} - {""}, key=digest)
    texts = [t for t in texts if 20 <= len(t) <= 100]
    if len(texts) < per_train + per_test:
        sys.exit(f"fetch-fortunes.sh: {source}/{category} has {len(texts)} cookies of 20-100 "
                 f"characters, fewer than {per_train + per_test}")
    train += [(t, category) for t in texts[:per_train]]
    test += [(t, category) for t in texts[per_train:per_train + per_test]]
for name, rows in (("train", train), ("test", test)):
    rows.sort(key=lambda row: digest(row[0]))
    with open(os.path.join(dest, f"{name}.jsonl.partial"), "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
PY
mv "$dest/test.jsonl.partial" "$dest/test.jsonl"
mv "$dest/train.jsonl.partial" "$dest/train.jsonl"
echo "$dest"
