#!/usr/bin/env bash
# Fuzzes each target named (all by default) to RUNS executions, one at a time, niced, then merges
# the inputs that found new coverage into the committed corpus. Crashes land in
# fuzz/artifacts/TARGET/ and stop that target's run. Logs: $LOGS/TARGET.log.
#
#   fuzz/run.sh [TARGET...]   RUNS=1000000 MAX_TIME=1200 MERGE_MAX_BYTES=2048 LOGS=/tmp/mscope-fuzz-logs
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-1000000}
MAX_TIME=${MAX_TIME:-1200}
LOGS=${LOGS:-/tmp/mscope-fuzz-logs}
MERGE_MAX_BYTES=${MERGE_MAX_BYTES:-2048}
mkdir -p "$LOGS"
cargo +nightly fuzz build -s none
bin=target/x86_64-unknown-linux-gnu/release
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v mscope-fuzz))
for t in "${targets[@]}"; do
    new="$LOGS/new-$t"
    mkdir -p "$new" "artifacts/$t"
    echo "== $t"
    # The committed corpus is read but not written; what the run finds goes to $new, and only
    # inputs of at most MERGE_MAX_BYTES that reach new edges (hit counts ignored) are merged back,
    # which keeps the committed corpora small.
    nice -n 10 "$bin/$t" "$new" "corpus/$t" -runs="$RUNS" -max_total_time="$MAX_TIME" \
        -rss_limit_mb=2048 -timeout=10 -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        >"$LOGS/$t.log" 2>&1 || echo "   $t stopped: see $LOGS/$t.log"
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|Done [0-9]+ runs|ERROR|panicked" \
        "$LOGS/$t.log" | head -5 || true
    small="$LOGS/small-$t"
    rm -rf "$small" && mkdir -p "$small"
    find "$new" -type f -size -"$((MERGE_MAX_BYTES + 1))"c -exec cp -t "$small" {} +
    nice -n 10 "$bin/$t" -merge=1 -use_counters=0 "corpus/$t" "$small" >>"$LOGS/$t.log" 2>&1 || true
done
