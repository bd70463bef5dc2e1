#!/usr/bin/env bash
# Before/after check of `mscope align`'s neighbour search, robust to load: alternates a reference
# binary (main's build) and this build's neighbour variants on the same two views, REPEAT rounds,
# and prints each one's median wall and user+sys seconds and its mutual k-NN (equal on all).
#
#   tools/anchors/align_neighbour_variants.sh [ROWS] [REPEAT] [REFERENCE_BINARY]
#   tools/anchors/align_neighbour_variants.sh 20000 3 /tmp/mscope-main
#
# Views: tools/anchors/embedding_views.py's x.npy, y.npy under /work/big/views_ROWSxDIM_10_0.
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=${1:-20000}
repeat=${2:-3}
reference=${3:-/tmp/mscope-main}
data=$(ls -d /work/big/views_"${rows}"x*_10_0 | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
runs=("main:$reference:" "v1:target/release/mscope:1" "v2:target/release/mscope:2" "v3:target/release/mscope:3")
echo "uptime before: $(uptime)"
for round in $(seq "$repeat"); do
    for run in "${runs[@]}"; do
        IFS=: read -r name binary variant <<<"$run"
        args=(align "$data/x.npy" "$data/y.npy" --threads 2 --json "$out/$name.json")
        [ -n "$variant" ] && args+=(--neighbour-variant "$variant")
        /usr/bin/time -f "%e %U %S" -o "$out/time" "$binary" "${args[@]}" >/dev/null
        read -r wall user sys <"$out/time"
        echo "$name $wall $(echo "$user + $sys" | bc)" >>"$out/times"
    done
done
echo "uptime after: $(uptime)"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for run in "${runs[@]}"; do
    name=${run%%:*}
    knn=$(grep -o '"mutual_knn": *[0-9.]*' "$out/$name.json" | grep -o '[0-9.]*$')
    wall=$(awk -v n="$name" '$1 == n { print $2 }' "$out/times" | median)
    cpu=$(awk -v n="$name" '$1 == n { print $3 }' "$out/times" | median)
    echo "$name: median wall $wall s, user+sys $cpu s over $repeat runs, mutual_knn $knn"
done
