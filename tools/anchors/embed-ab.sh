#!/usr/bin/env bash
# Whole-process `mscope embed` (all-MiniLM-L6-v2, short demo corpus, batch 32, 2 threads, CPU) of
# two builds, alternated so that load on a shared machine falls on both alike: medians of the
# wall-clock seconds, and of user + system CPU seconds, per build.
#
#     tools/anchors/embed-ab.sh BEFORE_BINARY AFTER_BINARY [REPEATS]   # default 9 repeats
#
# MSCOPE_PHASES=1 in the environment makes each run print its phases on stderr (src/phases.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
before=$1 after=$2 repeats=${3:-9}
model=.cache/models/all-MiniLM-L6-v2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {
    /usr/bin/time -f "%e %U %S" -o "$out/time" "$1" embed --model "$model" \
        --input tools/demo-corpus/news.txt --input tools/demo-corpus/reviews.jsonl \
        --input tools/demo-corpus/multilingual.csv --batch-size 32 --threads 2 --backend cpu \
        --out "$out/e.safetensors" >/dev/null
    cat "$out/time"
}
echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$repeats"); do
    echo "before $(run "$before")"
    echo "after $(run "$after")"
done | tee "$out/runs"
echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
for build in before after; do
    grep "^$build " "$out/runs" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split()[1:])) for line in sys.stdin]
wall = statistics.median(r[0] for r in rows)
cpu = statistics.median(r[1] + r[2] for r in rows)
print(f"{sys.argv[1]}: wall {wall:.3f} s, user+sys {cpu:.3f} s (medians of {len(rows)})")
' "$build"
done
