#!/usr/bin/env bash
# The main job on its bundled default: embeds the demo corpus (three sources) with the real
# all-MiniLM-L6-v2 and with the real SmolLM2-135M-Instruct decoder (GGUF Q4_1, last-token pooling),
# analyses both sets of embeddings (PCA, LDA), does the same for a folder of photos through a tiny
# random-init CLIP (PHOTOS=DIR for your own), then trains a small ensemble and runs the
# tangent-kernel and trimmed-comparison instruments on it; last, the seeds' kernel comparison on a
# fine-tuned MiniLM classifier (fortune cookies by category). Outputs land in .cache/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
encoder=$(tools/fetch-model.sh)
d=.cache/demo
mkdir -p $d
mscope() { cargo run --release --quiet -- "$@"; }
mscope embed --model "$encoder" \
    --input tools/demo-corpus/news.txt=news \
    --input tools/demo-corpus/reviews.jsonl \
    --input tools/demo-corpus/multilingual.csv \
    --out $d/embeddings.safetensors "$@"
# What separates the three sources: principal components (with the rows at either end of each)
# and LDA accuracy over 50 stratified splits with the pairwise table.
mscope pca --input $d/embeddings.safetensors --components 5 \
    --explain 3 --out $d/pca.json --plot $d/pca.png
mscope lda --input $d/embeddings.safetensors --shrinkage auto \
    --pairwise --out $d/lda.json --plot $d/lda.png
# Table S4-style slices of the labels: two of the three sources alone, then two sources merged
# into one class against the third.
mscope lda --input $d/embeddings.safetensors --shrinkage auto \
    --only news,review --out $d/lda-only.json
mscope lda --input $d/embeddings.safetensors --shrinkage auto \
    --group english=news,review --out $d/lda-group.json
# Images: 17 real photos from the scikit-image wheel in three labelled folders (everyday,
# science, textures), or PHOTOS=DIR for a folder of your own (one sub-folder per label), through
# the tiny open_clip model the tests commit. Its weights are random (no real CLIP checkpoint can
# be fetched here): the numbers show the pipeline — decoding, Pillow-exact resizing, the image
# tower, PCA with a contact sheet of the photos at either end of each component, LDA — not
# CLIP's judgement. A real checkpoint is one --model away.
photos=${PHOTOS:-$(realpath -s --relative-to=. "$(tools/fetch-photos.sh)")}
clip=tests/fixtures/clip/open_clip-tiny
mscope embed --model $clip --images "$photos" --out $d/photos.safetensors
mscope pca --input $d/photos.safetensors --components 3 --explain 2 --out $d/photos-pca.json \
    --plot $d/photos-pca.png --contact-sheet $d/photos-contact-sheet.png
# Half of each label held out per split: the smallest label has 4 photos, and each part of a
# split needs at least 2 of every label.
mscope lda --input $d/photos.safetensors --shrinkage auto --test-fraction 0.5 \
    --out $d/photos-lda.json --plot $d/photos-lda.png
# The same corpus and analyses through a decoder: SmolLM2's last hidden state of each text's last
# token (the file's config, tokenizer and weights all come from the GGUF).
decoder=$(tools/fetch-smollm2.sh)
mscope embed --model "$decoder" \
    --input tools/demo-corpus/news.txt=news \
    --input tools/demo-corpus/reviews.jsonl \
    --input tools/demo-corpus/multilingual.csv \
    --out $d/smollm2-embeddings.safetensors "$@"
mscope pca --input $d/smollm2-embeddings.safetensors --components 5 \
    --explain 3 --out $d/smollm2-pca.json --plot $d/smollm2-pca.png
mscope lda --input $d/smollm2-embeddings.safetensors --shrinkage auto \
    --pairwise --out $d/smollm2-lda.json --plot $d/smollm2-lda.png
# How alike the two embedders' views of the same texts are: CKA, Procrustes, SVCCA, mutual k-NN.
mscope align $d/embeddings.safetensors $d/smollm2-embeddings.safetensors \
    --json $d/align.json --plot $d/align.png
# Tangent-kernel surrogates and the trimmed comparison on a trained ensemble: the 8×8 digits
# (from the scikit-learn wheel), five 64-100-100-10 MLPs that differ only by their seed, every
# model against the pooled other four (α̂, churn, ECE), then model 0's trace NTK — exact, and
# Kronecker-projected — and the seeds' two baselines, with a kernel GLM fitted on each and its
# faithfulness τ to the network.
tools/fetch-digits.sh >/dev/null
mscope data digits --out $d/digits-train.safetensors --test-out $d/digits-test.safetensors
mscope train --data $d/digits-train.safetensors --test-data $d/digits-test.safetensors \
    --hidden 100,100 --activation relu --epochs 20 --seeds 0..5 --out $d/ensemble
mscope compare --scores $d/ensemble/scores.safetensors --labels $d/ensemble/scores.safetensors \
    --out $d/compare.json --plot $d/compare.png
mlp=$d/ensemble/model-seed0.safetensors
for projection in none kronecker; do
    # A projection dimension only with a projection (ntk refuses one it would ignore).
    dim=$([ $projection = none ] || echo "--projection-dim 32")
    mscope ntk --model $mlp --data $d/digits-train.safetensors --projection $projection \
        $dim --out $d/ntk-$projection-train.safetensors
    mscope ntk --model $mlp --data $d/digits-test.safetensors --against $d/digits-train.safetensors \
        --projection $projection $dim --out $d/ntk-$projection-test.safetensors
    mscope kglm --train-kernel $d/ntk-$projection-train.safetensors \
        --train-labels $d/digits-train.safetensors --test-kernel $d/ntk-$projection-test.safetensors \
        --test-labels $d/digits-test.safetensors --model $mlp --test-data $d/digits-test.safetensors \
        --out $d/kglm-$projection.json --plot $d/kglm-$projection.png
done
mscope ntk-compare $d/ntk-none-train.safetensors $d/ntk-kronecker-train.safetensors \
    --json $d/ntk-compare.json --plot $d/ntk-spectra.png
# Engel et al.'s two baselines for the same MLP: the cosine of per-image loss gradients at their
# labels, and the cosine of the input and hidden activations, each with its kGLM.
for kind in gradcos embedding; do
    mscope ntk --model $mlp --data $d/digits-train.safetensors --kind $kind \
        --out $d/ntk-$kind-train.safetensors
    mscope ntk --model $mlp --data $d/digits-test.safetensors --against $d/digits-train.safetensors \
        --kind $kind --out $d/ntk-$kind-test.safetensors
    mscope kglm --train-kernel $d/ntk-$kind-train.safetensors \
        --train-labels $d/digits-train.safetensors --test-kernel $d/ntk-$kind-test.safetensors \
        --test-labels $d/digits-test.safetensors --model $mlp --test-data $d/digits-test.safetensors \
        --out $d/kglm-$kind.json --plot $d/kglm-$kind.png
done

# The seeds' kernel comparison at small scale: the real all-MiniLM-L6-v2 fine-tuned (a new
# three-label head, AdamW) on 96 of Debian's fortune cookies from three categories (computers,
# food, love; tools/fetch-fortunes.sh), then its exact trNTK, trNTK0 (unnormalised) and pNTK over
# every parameter, the projected trNTK and pNTK (one dense ±1 map of the whole parameter vector
# to K = PROJ_DIM dimensions, 128 by default), the seeds' two baselines (gradient cosine: the
# cosine of per-cookie loss gradients at their labels; embedding kernel: the cosine of every
# layer's hidden states), a kGLM fitted on each train × train kernel, and each kGLM's Kendall τ
# against the network on 48 held-out cookies.
fortunes=$(tools/fetch-fortunes.sh)
classifier=$d/fortunes-classifier
mscope train --model "$encoder" --data $fortunes/train.jsonl --test-data $fortunes/test.jsonl \
    --epochs 4 --lr 1e-4 --batch-size 16 --seed 0 --out $classifier
proj_dim=${PROJ_DIM:-128}
for kernel in trntk trntk0 pntk trntk-proj pntk-proj gradcos embedding; do
    kind=${kernel%-proj}
    projection=""
    [ $kind = $kernel ] || projection="--projection rademacher --projection-dim $proj_dim"
    k=$d/fortunes-$kernel
    # Both kernels from one pass over the training texts' gradients.
    mscope ntk --model $classifier --data $fortunes/train.jsonl --kind $kind $projection \
        --out $k-train.safetensors --test-data $fortunes/test.jsonl --test-out $k-test.safetensors
    mscope kglm --train-kernel $k-train.safetensors --train-labels $fortunes/train.jsonl \
        --test-kernel $k-test.safetensors --test-labels $fortunes/test.jsonl \
        --model $classifier --test-data $fortunes/test.jsonl --out $k-kglm.json >/dev/null
done
# The table: one row per surrogate, as the seeds' comparison prints it.
python3 - $d/fortunes $proj_dim <<'PY'
import json, sys
prefix, dim = sys.argv[1], sys.argv[2]
print("| kernel | Kendall τ | test accuracy, kGLM | test accuracy, network |")
print("|---|---|---|---|")
for name, kernel in (("trNTK", "trntk"), (f"projected trNTK (K = {dim})", "trntk-proj"),
                     (f"projected pNTK (K = {dim})", "pntk-proj"), ("gradient cosine", "gradcos"),
                     ("embedding kernel", "embedding"), ("trNTK0", "trntk0"), ("pNTK", "pntk")):
    r = json.load(open(f"{prefix}-{kernel}-kglm.json"))
    print(f"| {name} | {r['kendall_tau']:.3f} | {r['accuracy_surrogate']:.1%} "
          f"| {r['accuracy_network']:.1%} |")
PY
