#!/usr/bin/env bash
# Issue 21 item 1: `mscope bench`'s linear cases on the CPU GEMM variants 7 (faer), 8 (packed)
# and 9 (packed, f16 weights), two binaries alternating (a baseline's build, then this
# checkout's), ROUNDS rounds. Each bench divides by its own run's faer GEMM ceiling, so compare the
# roofline column (fraction of the ceiling) within a round and medians across rounds.
#   tools/anchors/gemm-variants.sh [BASELINE_BINARY] [NEW_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
before=${1:-/tmp/mscope-main}
after=${2:-target/release/mscope}
rounds=${ROUNDS:-2}
echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    for binary in "$before" "$after"; do
        echo "## round $round: $binary"
        "$binary" bench --backend cpu --suite kernels --filter linear/ --variant 7,8,9 --repeat 5 2>/dev/null |
            grep -E '^\| (gemm-f32|linear/)'
    done
done
echo "# done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
