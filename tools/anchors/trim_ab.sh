#!/usr/bin/env bash
# Before/after of the leave-one-out trim search, robust to a loaded machine: alternates two mscope
# binaries, REPEATS rounds, and prints each one's median of the seconds `compare` prints (whole
# comparison, trimmed search) and of `bench --filter trim_search` (median per case).
#   tools/anchors/trim_ab.sh BEFORE AFTER [REPEATS] [SIZE]
# e.g. tools/anchors/trim_ab.sh /tmp/mscope-main target/release/mscope 5 1000x100000
set -euo pipefail
before=${1:?before binary} after=${2:?after binary} repeats=${3:-5} size=${4:-1000x100000}
declare -A total trimmed bench
for r in $(seq "$repeats"); do
    for b in "$before" "$after"; do
        line=$("$b" compare --synthetic "$size" --top 1 --threads 2 | grep -o '[0-9.]* s ([0-9.]* s trimmed search)')
        total[$b]+="$(echo "$line" | cut -d' ' -f1) "
        trimmed[$b]+="$(echo "$line" | sed 's/.*(\([0-9.]*\) s.*/\1/') "
        # The case's row: | case | backend | variant | shape | median | ... | roofline |
        ms=$("$b" bench --backend cpu --suite kernels --filter "trim_search/$size" --repeat 1 |
            awk -F' [|] ' -v c="| trim_search/$size" 'index($0, c) == 1 {r = $NF; sub(/ *[|]$/, "", r); print $5 "," r}')
        bench[$b]+="${ms// /} "
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
for b in "$before" "$after"; do
    echo "$b: compare ${total[$b]}-> median $(echo "${total[$b]}" | median) s;" \
        "trimmed search ${trimmed[$b]}-> median $(echo "${trimmed[$b]}" | median) s;" \
        "bench trim_search/$size ${bench[$b]}"
done
uptime
