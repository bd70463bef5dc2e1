#!/usr/bin/env bash
# The one script a GPU session runs to verify the CUDA backend. The GPU machine has no cargo, so
#
#   tools/gpu-check.sh pack   (here, with cargo) builds the test executables and the mscope binary
#                             in release, strips their debug info and packs them into .gpu/ (an
#                             ignored path, carried to the device: keep it under 64 MiB);
#   tools/gpu-check.sh run    (there, in a copy of the repository, with nvcc, compute-sanitizer
#                             and PyTorch present) runs the stages below in order of what a
#                             session most needs back, inside GPU_CHECK_BUDGET seconds (540);
#                             GPU_CHECK_STAGES picks some of them for a rerun. Every stage's log
#                             goes to $OUT/log.txt (a failing stage's tail to stdout too), the
#                             summary table to stdout and $OUT/summary.md.
#
# Stages: 1. devices (fails without an sm_90 device) · the CUDA kernel tests, one thread, every
# launch waited for (MSCOPE_CUDA_SYNC=1): the families first run on a GPU in processes of their
# own (half-precision weights and gathers, every attention variant, the Hopper GEMM on wgmma + TMA,
# the tensor-core attention, the trim sort), then the rest · 2. op-set parity on every backend
# (ops, ntk, ntk_seq, classifier, pca, lda, alpha, wgpu on the GPU's Vulkan adapter — the loader
# travels in the bundle —, the CUDA decoder tests on the tiny Mistral/Qwen2 fixtures, f32 and
# bf16, `--matmul-precision medium` on the tensor cores, embed_parity's tiny XLM-R, ntk on two
# device workers) · 3. the CLI with --backend cuda against --backend cpu (embed, ntk, pca, and
# compare on 1 000 models × 100 000 points, timed) ·
# 4. mscope bench --backend cuda (GEMM variants 1, 2, 4, 10; attention variants side by side;
# the pipelines), wgpu GEMM variants 2, 3, 5, 6 · 5. PyTorch anchors (cuBLAS, SDPA, torch.func)
# set against the benches, and embed end to end against transformers
# (tools/anchors/gpu_embed_anchors.py: fp16 MiniLM-L6 and e5-large, bf16 SmolLM2-135M and 4
# layers of Mistral-7B, random-init checkpoints of the real shapes written on the GPU machine,
# issue 19's 1.5x target and issue 15's decoder throughput; at most 150 s, its tokenizer and
# long texts carried in the bundle) · 6. compute-sanitizer memcheck and racecheck, newest
# kernels first, on what time is left. CI compiles every kernel with NVRTC: no stage repeats it.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PACK=$ROOT/.gpu
TESTS="cuda ops ntk ntk_seq classifier shards pca lda alpha embed_parity wgpu decoder"

pack() {
    set -e
    cd "$ROOT"
    # Building the tests builds the mscope binary too (with the tests' feature set, so no second
    # build of the dependencies); cargo's JSON messages name every executable, wherever the
    # target directory is.
    local list
    list=$(cargo test --release --no-run --message-format=json $(printf -- '--test %s ' $TESTS) |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"]
        if "test" in kind or (kind == ["bin"] and m["target"]["name"] == "mscope"):
            print(m["target"]["name"], m["executable"])')
    rm -rf "$PACK" && mkdir -p "$PACK/stage/bin"
    while read -r name exe; do
        objcopy --strip-debug "$exe" "$PACK/stage/bin/$name"
    done <<<"$list"
    [ -f "$PACK/stage/bin/mscope" ] || { echo "error: cargo built no mscope binary" >&2; exit 1; }
    # The GPU machine may lack the Vulkan loader wgpu opens (Debian's libvulkan1).
    local loader
    # awk reads to the end: leaving early would kill ldconfig with SIGPIPE, which pipefail and
    # `set -e` turn into pack's failure.
    loader=$(ldconfig -p | awk '/libvulkan\.so\.1 / && !found {print $NF; found = 1}')
    if [ -n "$loader" ]; then
        mkdir -p "$PACK/stage/lib" && cp -L "$loader" "$PACK/stage/lib/"
    fi
    # Test executables resolve fixtures through the CARGO_MANIFEST_DIR of this build.
    echo "$ROOT" >"$PACK/stage/manifest_dir"
    # The embed anchors' inputs that the GPU machine cannot fetch (under 1 MiB packed): the
    # encoders' tokenizer.json and the long texts (Debian's fortunes, via long_texts.py). Either
    # missing only drops its rows from that stage.
    mkdir -p "$PACK/stage/anchors"
    cp .cache/models/all-MiniLM-L6-v2/tokenizer.json "$PACK/stage/anchors/bert-tokenizer.json" ||
        echo "warning: no all-MiniLM-L6-v2 (tools/fetch-model.sh): embed anchors without encoders" >&2
    python3 tools/anchors/long_texts.py --out "$PACK/stage/anchors/long.txt" ||
        echo "warning: no long texts (tools/fetch-fortunes.sh): embed anchors on the demo corpus only" >&2
    git rev-parse HEAD >"$PACK/stage/commit" 2>/dev/null || true
    tar -C "$PACK/stage" -cf - . | xz -T0 -6 >"$PACK/bundle.tar.xz"
    rm -rf "$PACK/stage"
    du -h "$PACK/bundle.tar.xz"
    local bytes
    bytes=$(stat -c %s "$PACK/bundle.tar.xz")
    if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
        echo "error: .gpu is $bytes bytes, over the 64 MiB the device tool carries" >&2
        exit 1
    fi
}

# --- run ----------------------------------------------------------------------------------------

OUT=${OUT:-$ROOT/gpu-out}
SUMMARY=()

# Seconds the run may take in all: the device tool stops a command at 600 and returns at most 8
# files, so every stage appends to $OUT/log.txt, and $OUT holds besides only summary.md,
# bench_all.json, anchors.json and embed_anchors.json.
BUDGET=${GPU_CHECK_BUDGET:-540}
# Comma-separated stage names or globs (GPU_CHECK_STAGES='test_*,bench_cuda') for a rerun of a
# part; unset runs every stage. A comparison stage needs the stages that write its inputs.
STAGES=${GPU_CHECK_STAGES:-*}

selected() {
    local glob globs
    IFS=, read -ra globs <<<"$STAGES"
    for glob in "${globs[@]}"; do
        # shellcheck disable=SC2053 # the right-hand side is a glob on purpose
        [[ $1 == $glob ]] && return 0
    done
    return 1
}

# stage NAME SECONDS COMMAND...: runs COMMAND with a time limit (cut to what is left of the
# budget), logs it to $LOGS/NAME.log and $OUT/log.txt, records the outcome, and prints the tail
# of a failing stage's log (what the device tool returns of stdout is its end).
stage() {
    local name=$1 limit=$2
    shift 2
    selected "$name" || return 0
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 10 ]; then
        SUMMARY+=("| $name | SKIPPED (time budget spent) | – | – |")
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local log=$LOGS/$name.log start=$SECONDS rc=0
    echo "== $name: $*" | tee "$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    local took=$((SECONDS - start)) status=ok
    [ "$rc" -eq 0 ] || status="FAIL (exit $rc)"
    [ "$rc" -eq 124 ] && status="TIMEOUT (${limit}s)"
    # Test binaries: the result line, the failed tests and how many backends were skipped.
    local detail failed skipped
    detail=$(grep -E "^test result:" "$log" | tail -1 | cut -c14-70)
    failed=$(grep -E "^test .* \.\.\. FAILED$" "$log" | cut -d' ' -f2 | head -5 | paste -sd' ')
    [ -n "$failed" ] && detail="$detail; failed: $failed"
    skipped=$(grep -c "skipped" "$log" || true)
    [ "$skipped" -gt 0 ] && detail="$detail; $skipped 'skipped' lines"
    SUMMARY+=("| $name | $status | ${took}s | ${detail:-–} |")
    echo "   $status in ${took}s"
    if [ "$rc" -ne 0 ]; then
        echo "---- last 40 lines of $name ----"
        tail -n 40 "$log"
        echo "----"
    fi
    { cat "$log"; echo "   $status in ${took}s"; echo; } >>"$OUT/log.txt"
    return 0
}

# Finds libnvrtc for cudarc (it loads it by name through the dynamic linker).
nvrtc_path() {
    local d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
        ls "$d"/libnvrtc.so* >/dev/null 2>&1 && { echo "$d"; return; }
    done
    d=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null) &&
        find "$d" -name 'libnvrtc.so*' -printf '%h\n' 2>/dev/null | head -1
}

# Helper scripts of the comparison stages (timeout runs programs, not shell functions).
write_helpers() {
    cat >"$1/compare_tensors.py" <<'EOF'
"""compare_tensors.py A B NAME: tensor NAME of two safetensors files, cuda (A) against cpu (B)."""
import json, struct, sys
import torch


def load(path, name):
    """An F32 tensor of a safetensors file (read by hand: the safetensors package may be absent)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        meta = json.loads(fh.read(size))[name]
        assert meta["dtype"] == "F32", meta
        begin, end = meta["data_offsets"]
        fh.seek(8 + size + begin)
        data = bytearray(fh.read(end - begin))
    return torch.frombuffer(data, dtype=torch.float32).reshape(meta["shape"]).double()


a, b, name = sys.argv[1], sys.argv[2], sys.argv[3]
x, y = load(a, name), load(b, name)
rel = ((x - y).norm() / y.norm()).item()
cos = torch.nn.functional.cosine_similarity(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)).min().item()
print(f"{name}: cuda vs cpu relative error {rel:.3e}, min row cosine {cos:.8f}")
sys.exit(0 if rel < 1e-4 and cos > 0.9999 else 1)
EOF
    cat >"$1/compare_pca.py" <<'EOF'
"""compare_pca.py A B: explained variances of two `mscope pca --out` reports."""
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
va, vb = a["explained_variance"], b["explained_variance"]
rel = max(abs(x - y) / abs(y) for x, y in zip(va, vb))
print(f"explained_variance cuda {va}\n                   cpu  {vb}\nmax relative difference {rel:.3e}")
sys.exit(0 if rel < 1e-6 else 1)
EOF
    cat >"$1/compare_reports.py" <<'EOF'
"""compare_reports.py A B LOG...: two `mscope compare --out` reports, cuda (A) against cpu (B),
whose model rows must be equal bit for bit; prints each LOG's timing lines."""
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
fields = ("index", "alpha_hat", "ks", "trimmed_w2", "trimmed_w2_exact")
differ = [x["index"] for x, y in zip(a["models"], b["models"]) if any(x[f] != y[f] for f in fields)]
for log in sys.argv[3:]:
    print(log, [l.strip() for l in open(log) if "trimmed search)" in l or l.startswith("phase ")])
print(f"{len(a['models'])} and {len(b['models'])} models; rows that differ: {len(differ)} {differ[:10]}")
sys.exit(0 if not differ and len(a["models"]) == len(b["models"]) else 1)
EOF
    cat >"$1/merge_bench.py" <<'EOF'
"""merge_bench.py OUT A B...: the results of `mscope bench --json` reports in one file."""
import json, sys
rows = []
for p in sys.argv[2:]:
    try:
        rows += json.load(open(p))["results"]
    except Exception as e:
        print(f"{p}: {e}", file=sys.stderr)
json.dump({"results": rows}, open(sys.argv[1], "w"))
EOF
}

run() {
    mkdir -p "$OUT"
    : >"$OUT/log.txt"
    cd "$ROOT"
    local bin=$ROOT/.gpu/bin
    if [ ! -d "$bin" ]; then
        tar -C "$ROOT/.gpu" -xJf "$ROOT/.gpu/bundle.tar.xz" 2>/dev/null ||
            python3 -c 'import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
                "$ROOT/.gpu/bundle.tar.xz" "$ROOT/.gpu" || {
            echo "cannot unpack .gpu/bundle.tar.xz (run tools/gpu-check.sh pack and carry .gpu)" >&2
            exit 1
        }
    fi
    # Make the packing checkout's path resolve to this copy, and put mscope where the test
    # executables look for it (CARGO_BIN_EXE_mscope).
    local built
    built=$(cat "$ROOT/.gpu/manifest_dir")
    if [ "$built" != "$ROOT" ] && [ ! -e "$built" ]; then
        mkdir -p "$(dirname "$built")" && ln -s "$ROOT" "$built"
    fi
    mkdir -p "$ROOT/target/release" && cp "$bin/mscope" "$ROOT/target/release/mscope"
    local lib tmp
    lib=$(nvrtc_path)
    tmp=$(mktemp -d)
    LOGS=$tmp/logs
    mkdir -p "$LOGS"
    write_helpers "$tmp"
    # The toolkit's libraries (NVRTC) and the carried Vulkan loader go first for mscope's own
    # processes only: PyTorch brings its own CUDA libraries.
    local ld=${lib:+$lib:}$ROOT/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export MSCOPE_REQUIRE_NVRTC=1 MSCOPE_REQUIRE_CUDA=1 XDG_CACHE_HOME=/tmp/mscope-gpu-cache RUST_BACKTRACE=1
    local m=$tmp/mscope
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$ld" "$bin/mscope" >"$m"
    chmod +x "$m"
    # Test executables: one thread, output shown, and every launch waited for, so the first
    # asynchronous fault is reported by the test that caused it.
    local t=(env "LD_LIBRARY_PATH=$ld" MSCOPE_CUDA_SYNC=1)
    local one=(--test-threads=1 --nocapture)
    {
        echo "commit $(cat "$ROOT/.gpu/commit" 2>/dev/null), nvrtc in ${lib:-?}"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    } | tee -a "$OUT/log.txt"

    # 1. The device, then the CUDA kernel tests: the families never run on a GPU before, each in
    # a process of its own (a sticky fault ends the process's context), then the rest.
    stage devices 30 sh -c '"$1" devices && "$1" devices | grep -q "(sm_90)"' sh "$m"
    local families=(half gather_reads attention wgmma tensor_core_attention trim_search)
    local f skip=()
    for f in "${families[@]}"; do
        stage "cuda_$f" 60 "${t[@]}" "$bin/cuda" "$f" "${one[@]}"
        skip+=(--skip "$f")
    done
    stage cuda_rest 90 "${t[@]}" "$bin/cuda" "${skip[@]}" "${one[@]}"
    # 2. Op-set parity on every backend present (wgpu: the GPU's Vulkan adapter).
    stage test_decoder_cuda 90 "${t[@]}" "$bin/decoder" cuda "${one[@]}"
    local b
    for b in ops ntk ntk_seq classifier pca lda alpha wgpu; do
        stage "test_$b" 90 "${t[@]}" "$bin/$b" "${one[@]}"
    done
    stage test_devices 60 "${t[@]}" "$bin/shards" several_device_workers "${one[@]}"
    # The MiniLM tests need the 90 MB model, which does not travel: only the tiny XLM-R runs.
    stage test_embed_tiny_xlmr 60 "${t[@]}" "$bin/embed_parity" tiny_xlm_roberta "${one[@]}"

    # 3. The instruments end to end, --backend cuda against --backend cpu.
    local fx=$ROOT/tests/fixtures
    for b in cuda cpu; do
        stage "embed_$b" 60 "$m" embed --model "$fx/tiny-xlmr" --input "$fx/texts.jsonl" \
            --out "$tmp/e_$b.safetensors" --backend "$b"
        stage "ntk_$b" 30 "$m" ntk --model "$fx/ntk/mlp_relu.safetensors" \
            --data "$fx/ntk/test.safetensors" --against "$fx/ntk/train.safetensors" \
            --out "$tmp/k_$b.safetensors" --backend "$b"
        stage "ntk_jl_$b" 30 "$m" ntk --model "$fx/ntk/mlp_gelu.safetensors" \
            --data "$fx/ntk/train.safetensors" --projection gaussian --projection-dim 64 --seed 7 \
            --out "$tmp/kp_$b.safetensors" --backend "$b"
        stage "pca_$b" 30 "$m" pca --input "$fx/sklearn_embeddings.safetensors" --components 4 \
            --out "$tmp/pca_$b.json" --backend "$b"
        # compare at issue 19's target size (1 000 models × 100 000 points, under 1 s): the
        # report's line "N s (M s trimmed search)" times it, MSCOPE_PHASES its phases.
        stage "compare_$b" 60 env MSCOPE_PHASES=1 "$m" compare --synthetic 1000x100000 \
            --backend "$b" --out "$tmp/compare_$b.json"
    done
    stage embed_compare 30 python3 "$tmp/compare_tensors.py" "$tmp/e_cuda.safetensors" "$tmp/e_cpu.safetensors" embeddings
    stage ntk_compare 30 python3 "$tmp/compare_tensors.py" "$tmp/k_cuda.safetensors" "$tmp/k_cpu.safetensors" kernel
    stage ntk_jl_compare 30 python3 "$tmp/compare_tensors.py" "$tmp/kp_cuda.safetensors" "$tmp/kp_cpu.safetensors" kernel
    stage pca_compare 30 python3 "$tmp/compare_pca.py" "$tmp/pca_cuda.json" "$tmp/pca_cpu.json"
    stage compare_compare 30 python3 "$tmp/compare_reports.py" "$tmp/compare_cuda.json" \
        "$tmp/compare_cpu.json" "$LOGS/compare_cuda.log" "$LOGS/compare_cpu.log"

    # 4. Benches. Variant numbers pick both GEMM and attention kernels: 4 is the mma-bf16 GEMM
    # and the tensor-core attention (bench skips the attention cases a variant has no kernel
    # for). Cases without variants run once on the defaults, trim_search among them.
    stage bench_cuda 120 "$m" bench --backend cuda --suite kernels --variant 1,2,4,10 \
        --json "$tmp/bench_cuda.json"
    # Attention variants side by side (MSCOPE_CUDA_ATTENTION picks one; each runs the cases of
    # the head_dims it has kernels for: bert-base 64, mistral-7b 128).
    stage bench_attention_naive 45 env MSCOPE_CUDA_ATTENTION=naive "$m" bench --backend cuda \
        --suite kernels --filter attention/ --json "$tmp/bench_attention_naive.json"
    stage bench_attention_flash 45 env MSCOPE_CUDA_ATTENTION=flash "$m" bench --backend cuda \
        --suite kernels --filter attention/bert-base --json "$tmp/bench_attention_flash.json"
    local c
    for c in bert-base mistral-7b; do
        stage "bench_attention_flash_warp_$c" 45 env MSCOPE_CUDA_ATTENTION=flash-warp "$m" bench \
            --backend cuda --suite kernels --filter "attention/$c" \
            --json "$tmp/bench_attention_flash_warp_$c.json"
        stage "bench_attention_mma_$c" 45 env MSCOPE_CUDA_ATTENTION=mma-bf16 "$m" bench \
            --backend cuda --suite kernels --filter "attention/$c" \
            --json "$tmp/bench_attention_mma_$c.json"
    done
    stage bench_cuda_pipelines 60 "$m" bench --backend cuda --suite pipelines \
        --json "$tmp/bench_cuda_pipelines.json"
    stage bench_wgpu 60 "$m" bench --backend wgpu --suite kernels --filter linear/ \
        --variant 2,3,5,6 --json "$tmp/bench_wgpu.json"
    # The attention variants' tables are in log.txt; the anchors take the default runs.
    stage bench_merge 30 python3 "$tmp/merge_bench.py" "$OUT/bench_all.json" "$tmp/bench_cuda.json" \
        "$tmp/bench_cuda_pipelines.json" "$tmp/bench_wgpu.json"

    # 5. PyTorch on the same GPU: cuBLAS, SDPA and torch.func against the benches, then embed
    # end to end against transformers (fp16 encoders, bf16 decoders, SDPA) on random-init
    # checkpoints of MiniLM-L6, e5-large, SmolLM2-135M and 4 layers of Mistral-7B written there
    # in seconds, on the demo corpus and 600 long texts; embeddings checked against transformers
    # in f32; two runs a side. The script stops starting work 20 s before its limit and prints
    # its table on SIGTERM, so the figures come back either way; `--models`/`--corpora` rerun
    # a part by hand.
    stage torch_anchors 90 python3 "$ROOT/tools/anchors/gpu_torch.py" --bench "$OUT/bench_all.json" \
        --json "$OUT/anchors.json"
    local embed_limit=$((BUDGET - SECONDS < 150 ? BUDGET - SECONDS : 150))
    stage embed_anchors 150 python3 "$ROOT/tools/anchors/gpu_embed_anchors.py" --mscope "$m" \
        --bert-tokenizer "$ROOT/.gpu/anchors/bert-tokenizer.json" --long "$ROOT/.gpu/anchors/long.txt" \
        --work "$tmp/embed_anchors" --budget-s $((embed_limit > 21 ? embed_limit - 20 : 1)) \
        --repeat 2 --json "$OUT/embed_anchors.json"

    # 6. Sanitizers on what time is left, the new families first.
    if command -v compute-sanitizer >/dev/null; then
        local cs=(compute-sanitizer --error-exitcode 9)
        stage memcheck_wgmma 60 "${t[@]}" "${cs[@]}" --tool memcheck "$bin/cuda" wgmma
        stage memcheck_attention_mma 60 "${t[@]}" "${cs[@]}" --tool memcheck "$bin/cuda" \
            tensor_core_attention
        stage racecheck_attention_mma 60 "${t[@]}" "${cs[@]}" --tool racecheck "$bin/cuda" \
            tensor_core_attention
        # The radix scatter's per-warp digit offsets in shared memory, four barriers a round.
        stage racecheck_trim 60 "${t[@]}" "${cs[@]}" --tool racecheck "$bin/cuda" trim_search_equals
        stage memcheck_half_weights 60 "${t[@]}" "${cs[@]}" --tool memcheck "$bin/cuda" half gather_reads
        stage racecheck_stats 60 "${t[@]}" "${cs[@]}" --tool racecheck "$bin/cuda" jacobi flash
        stage memcheck_ops 60 "${t[@]}" "${cs[@]}" --tool memcheck "$bin/ops" linear attention \
            layer_norm gather pool l2
        stage memcheck_cuda 90 "${t[@]}" "${cs[@]}" --tool memcheck "$bin/cuda"
    else
        selected memcheck_cuda && SUMMARY+=("| sanitizers | SKIPPED (no compute-sanitizer) | – | – |")
    fi

    {
        echo
        echo "## gpu-check $(date -u +%FT%TZ) — $(head -1 "$OUT/log.txt")"
        echo
        echo "| stage | status | time | detail |"
        echo "|---|---|---|---|"
        printf '%s\n' "${SUMMARY[@]}"
        echo
        echo "Anchors (mscope/torch; below 1: mscope faster):"
        grep -E "^\|" "$LOGS/torch_anchors.log" 2>/dev/null || echo "(none: see torch_anchors in log.txt)"
        echo
        echo "Embed end to end (speed-up = torch s / mscope s; above 1: mscope faster):"
        grep -E "^\|" "$LOGS/embed_anchors.log" 2>/dev/null || echo "(none: see embed_anchors in log.txt)"
    } | tee "$OUT/summary.md"
    rm -rf "$tmp"
}

case "${1:-}" in
pack) pack ;;
run) run ;;
*)
    echo "usage: $0 pack|run" >&2
    exit 2
    ;;
esac
