#!/usr/bin/env python3
"""Anchor for `mscope embed --images`: transformers' CLIPModel image tower on the CPU, decoding
and preprocessing (CLIPImageProcessorPil) included, on the same folder of images.

  tools/.venv/bin/python tools/anchors/embed_images_transformers.py --create MODEL_DIR
      writes a random-init CLIPModel whose image tower is ViT-B/16-shaped (width 768, 12 layers,
      12 heads, MLP 3072, patch 16, image 224, quick_gelu; a one-layer text tower keeps the file
      small) with the default CLIP preprocessing and the fixtures' tokenizer.json
  tools/.venv/bin/python tools/anchors/embed_images_transformers.py MODEL_DIR IMAGE_DIR
      [--threads N] [--batch-size 32]
      times it on every image under IMAGE_DIR (sorted paths, as mscope reads a folder) and prints
      images/s; compare with `mscope embed --model MODEL_DIR --images IMAGE_DIR --backend cpu`.
"""

import argparse
import shutil
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel


def create(out):
    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
            hidden_act="quick_gelu",
        ),
        text_config=dict(
            vocab_size=814, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
            num_attention_heads=1, bos_token_id=812, eos_token_id=813, pad_token_id=813,
        ),
        projection_dim=512,
    )
    CLIPModel(config).save_pretrained(out, safe_serialization=True)
    CLIPImageProcessorPil().save_pretrained(out)
    shutil.copy(Path(__file__).parents[2] / "tests/fixtures/clip/tokenizer.json", out / "tokenizer.json")
    print("wrote", out)


def bench(model_dir, image_dir, threads, batch_size):
    torch.set_num_threads(threads)
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPImageProcessorPil.from_pretrained(model_dir)
    paths = sorted(p for p in Path(image_dir).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})

    def run(batch):
        images = [Image.open(p).convert("RGB") for p in batch]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = model.get_image_features(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(out, dim=-1)

    run(paths[:2])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        run(paths[i : i + batch_size])
    seconds = time.perf_counter() - start
    print(f"transformers CLIPModel (CPU, {threads} threads): {len(paths)} images in {seconds:.2f} s, "
          f"{len(paths) / seconds:.2f} images/s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("image_dir", type=Path, nargs="?")
    parser.add_argument("--create", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.create:
        create(args.model_dir)
    else:
        bench(args.model_dir, args.image_dir, args.threads, args.batch_size)


if __name__ == "__main__":
    main()
