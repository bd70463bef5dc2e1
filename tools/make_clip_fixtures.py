#!/usr/bin/env python3
"""CLIP fixtures: real photos, preprocessing references, tiny random-init CLIP models in both
layouts, and their reference embeddings.

Writes under tests/fixtures/clip/:
  photos/LABEL/NAME.{png,jpg}   small crops of scikit-image's photos (one folder per label)
  preprocess_reference.safetensors
      `hf/NAME`, `hf_torchvision/NAME`, `open_clip_shortest/NAME`, `open_clip_squash/NAME`:
      [3, 40, 40] pixel tensors from transformers' CLIPImageProcessorPil (shortest edge 48, crop
      40) and CLIPImageProcessor (torchvision backend, same settings), and open_clip's inference
      transform (image size 40, resize_mode shortest / squash).
  tokenizer.json                a CLIP BPE (OpenAI's vocabulary cut to its first merges, so the
                                token table of a tiny model stays small), written by transformers
  hf-tiny/                      transformers CLIPModel (quick_gelu) + preprocessor_config.json
  open_clip-tiny/               open_clip CLIP (gelu, class-token pooling, resize_mode shortest)
  open_clip-squash/             open_clip CLIP (quick_gelu, mean pooling of the patch tokens,
                                resize_mode squash, 30px image, patch 6)
  reference.safetensors
      `MODEL/pixels` [N, 3, S, S]: each model's own preprocessing of the photos
      `MODEL/image_embeds` [N, E]: image tower output (projected, not normalised) on those pixels
      `MODEL/text_embeds` [T, E]: text tower output on the texts below
      `text_ids` [T, 77] I64 and `text_lengths` [T] I64: the tokenizer's ids (0-padded)
  texts.json                    the texts, in order; photos.json: photo paths, in order
  bad/cmyk.jpg                  a CMYK JPEG (refused: decoders turn CMYK into RGB differently)

Run from the repository root: tools/.venv/bin/python tools/make_clip_fixtures.py
"""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import open_clip
import skimage
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
)

OUT = Path("tests/fixtures/clip")
SKIMAGE = Path(skimage.__file__).parent / "data"
MERGES = 300  # BPE merges kept: 512 byte tokens + 300 merges + 2 specials = 814 ids
CONTEXT = 77

# (label, file name, source, crop box (left, top, right, bottom), JPEG quality or None)
PHOTOS = [
    ("animals", "chelsea.png", "chelsea.png", (120, 20, 320, 188), None),
    ("people", "astronaut.png", "astronaut.png", (150, 20, 310, 223), None),
    ("people", "camera_grey.png", "camera.png", (180, 40, 300, 130), None),
    ("things", "rocket.jpg", "rocket.jpg", (200, 60, 420, 380), 90),
    ("things", "coffee_small.png", "coffee.png", (250, 150, 280, 170), None),
    ("things", "logo_rgba.png", "logo.png", (100, 80, 260, 200), None),
]

TEXTS = [
    "a photo of a cat",
    "A ROCKET launching into the sky!",
    "  two   spaces and\ttabs, then 3 numbers: 1 2 3 ",
    "an astronaut",
    "x",
    # Longer than the 77-token context once split by the short BPE: truncated, EOT kept last.
    "the microscope embeds every photograph of the collection and compares the sources "
    "along each principal component, which shows why the generators can be told apart "
    "from the real pictures even when people cannot see the difference at all",
]


def torch_seed(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def write_photos():
    paths = []
    for label, name, source, box, quality in PHOTOS:
        folder = OUT / "photos" / label
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.open(SKIMAGE / source).crop(box)
        path = folder / name
        if quality is None:
            im.save(path, optimize=True)
        else:
            im.save(path, quality=quality)  # PIL's default 4:2:0 chroma subsampling
        paths.append(path)
    return paths


def write_tokenizer(tmp):
    """OpenAI's BPE vocabulary (open_clip ships it) cut to its first MERGES merges."""
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    header, merges = lines[0], lines[1 : 1 + MERGES]
    from open_clip.tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tmp.mkdir(parents=True, exist_ok=True)
    with gzip.open(tmp / "merges.txt.gz", "wt") as f:
        f.write("\n".join([header] + merges))
    tok = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges]
    )
    tok.save_pretrained(tmp / "saved")
    shutil.copy(tmp / "saved" / "tokenizer.json", OUT / "tokenizer.json")
    # open_clip's own tokenizer on the same merges must agree with transformers'.
    simple = open_clip.tokenizer.SimpleTokenizer(bpe_path=str(tmp / "merges.txt.gz"))
    ours = simple(TEXTS, context_length=CONTEXT)
    enc = tok(TEXTS, padding="max_length", truncation=True, max_length=CONTEXT)
    hf = torch.tensor(enc["input_ids"]) * torch.tensor(enc["attention_mask"])
    assert torch.equal(ours, hf), "open_clip and transformers tokenise the texts differently"
    return tok, len(vocab)


def randomize_norms(model):
    """Random-init LayerNorms are 1 and 0; perturb them so a misplaced norm shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "layer_norm" in name or "layernorm" in name or "layrnorm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.copy_(0.2 * torch.randn_like(p))


def make_hf(tok, vocab_size):
    torch_seed(1)
    out = OUT / "hf-tiny"
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=24,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=3,
            max_position_embeddings=CONTEXT,
            hidden_act="quick_gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    randomize_norms(model)
    model.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessorPil(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(out)
    shutil.copy(OUT / "tokenizer.json", out / "tokenizer.json")
    processor = CLIPImageProcessorPil.from_pretrained(out)

    def preprocess(images):
        return processor(images=images, return_tensors="pt")["pixel_values"]

    def encode_image(pixels):
        return model.get_image_features(pixel_values=pixels).pooler_output

    def encode_text(ids, mask):
        return model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output

    return preprocess, encode_image, encode_text


def make_open_clip(name, seed, quick_gelu, resize_mode, image_size, patch, pool_type):
    torch_seed(seed)
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = dict(
        embed_dim=16,
        quick_gelu=quick_gelu,
        vision_cfg=dict(
            image_size=image_size,
            layers=2,
            width=32,
            head_width=8,
            mlp_ratio=2.5,
            patch_size=patch,
            pool_type=pool_type,
        ),
        text_cfg=dict(
            context_length=CONTEXT, vocab_size=VOCAB, width=24, heads=3, layers=2, mlp_ratio=3.0
        ),
    )
    preprocess_cfg = dict(
        mean=[0.48145466, 0.4578275, 0.40821073],
        std=[0.26862954, 0.26130258, 0.27577711],
        interpolation="bicubic",
        resize_mode=resize_mode,
    )
    config = dict(model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    model = open_clip.model.CLIP(**model_cfg).eval()
    randomize_norms(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    shutil.copy(OUT / "tokenizer.json", out / "tokenizer.json")
    # Load back through open_clip's own loader: the saved layout is what open_clip reads.
    loaded, _, transform = open_clip.create_model_and_transforms(f"local-dir:{out}")
    loaded = loaded.eval()

    def preprocess(images):
        return torch.stack([transform(im) for im in images])

    def encode_image(pixels):
        return loaded.encode_image(pixels)

    def encode_text(ids, mask):
        return loaded.encode_text(ids * mask)  # open_clip pads with 0

    return preprocess, encode_image, encode_text


def preprocess_references(photos):
    hf_pil = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 40, "width": 40})
    hf_tv = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 40, "width": 40})
    tensors = {}
    for path in photos:
        im = Image.open(path)
        key = path.name
        tensors[f"hf/{key}"] = hf_pil(images=[im], return_tensors="pt")["pixel_values"][0]
        tensors[f"hf_torchvision/{key}"] = hf_tv(images=[im.convert("RGB")], return_tensors="pt")[
            "pixel_values"
        ][0]
        for mode in ["shortest", "squash"]:
            cfg = open_clip.transform.PreprocessCfg(size=40, resize_mode=mode, interpolation="bicubic")
            transform = open_clip.transform.image_transform_v2(cfg, is_train=False)
            tensors[f"open_clip_{mode}/{key}"] = transform(im)
    gap = (tensors[f"hf/{photos[0].name}"] - tensors[f"hf_torchvision/{photos[0].name}"]).abs().max()
    print(f"transformers PIL vs torchvision backend, {photos[0].name}: max |Δ| {gap:.2e} (normalised)")
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, OUT / "preprocess_reference.safetensors")


def main():
    global VOCAB
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "photos", ignore_errors=True)
    photos = write_photos()
    tmp = OUT / "tmp-tokenizer"
    tok, VOCAB = write_tokenizer(tmp)
    shutil.rmtree(tmp)
    preprocess_references(photos)

    enc = tok(TEXTS, padding="max_length", truncation=True, max_length=CONTEXT, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    reference = {"text_ids": (ids * mask).long(), "text_lengths": mask.sum(1).long()}
    models = {
        "hf-tiny": make_hf(tok, VOCAB),
        "open_clip-tiny": make_open_clip("open_clip-tiny", 2, False, "shortest", 32, 8, "tok"),
        "open_clip-squash": make_open_clip("open_clip-squash", 3, True, "squash", 30, 6, "avg"),
    }
    images = [Image.open(p) for p in photos]
    with torch.no_grad():
        for name, (preprocess, encode_image, encode_text) in models.items():
            pixels = preprocess(images)
            reference[f"{name}/pixels"] = pixels
            reference[f"{name}/image_embeds"] = encode_image(pixels)
            reference[f"{name}/text_embeds"] = encode_text(ids, mask)
    save_file({k: v.contiguous() for k, v in reference.items()}, OUT / "reference.safetensors")
    (OUT / "bad").mkdir(exist_ok=True)
    Image.open(photos[0]).convert("CMYK").resize((16, 12)).save(OUT / "bad" / "cmyk.jpg")
    (OUT / "texts.json").write_text(json.dumps(TEXTS, indent=1) + "\n")
    (OUT / "photos.json").write_text(
        json.dumps([str(p.relative_to(OUT)) for p in photos], indent=1) + "\n"
    )
    for name in models:
        for extra in ["special_tokens_map.json", "tokenizer_config.json"]:
            if (OUT / name / extra).exists():
                os.remove(OUT / name / extra)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
