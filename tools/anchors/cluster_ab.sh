#!/usr/bin/env bash
# Before/after check of `mscope cluster` that holds up under load: two mscope binaries run in
# turn on the same rows, --repeat times each; prints each run's wall and user+sys seconds, the
# medians, and the ratio of the medians (before / after).
#
#   tools/anchors/cluster_ab.sh BEFORE_BINARY [AFTER_BINARY] [REPEAT] [ROWS DIM K]
#   tools/anchors/cluster_ab.sh /tmp/mscope-main target/release/mscope 3
#
# The rows: x.npy of tools/anchors/embedding_views.py under /work/big (written by
# cluster_sklearn.py); k-means settings as the scikit-learn anchor's (10 restarts, max-iter
# 300, tol 1e-4, 2 threads).
set -euo pipefail
before=${1:?before binary}
after=${2:-target/release/mscope}
repeat=${3:-3}
rows=${4:-100000}
dim=${5:-1024}
k=${6:-10}
data=/work/big/views_${rows}x${dim}_${k}_0/x.npy
[ -f "$data" ] || { echo "$data missing: run tools/anchors/cluster_sklearn.py first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$repeat"); do
  for side in before after; do
    bin=$before; [ $side = after ] && bin=$after
    /usr/bin/time -f "%e %U %S" -o "$tmp/t" "$bin" cluster --input "$data" --k "$k" --restarts 10 \
      --max-iter 300 --tol 1e-4 --threads 2 --json "$tmp/$side.json" >/dev/null
    read -r wall user sys <"$tmp/t"
    cpu=$(echo "$user + $sys" | bc)
    echo "$side $wall $cpu" >>"$tmp/runs"
    inertia=$(python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(d['inertia'],d['iterations'])" "$tmp/$side.json")
    echo "$side run $i: wall ${wall}s cpu ${cpu}s inertia/iterations $inertia"
  done
done
python3 - "$tmp/runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    side, wall, cpu = line.split()
    runs.setdefault(side, []).append((float(wall), float(cpu)))
med = {s: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for s, r in runs.items()}
for s, (w, c) in med.items():
    print(f"{s}: median wall {w:.2f} s, median cpu {c:.2f} s")
print(f"ratio before/after: wall {med['before'][0] / med['after'][0]:.2f}x, cpu {med['before'][1] / med['after'][1]:.2f}x")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
