#!/usr/bin/env python3
"""Image-input fixtures: files in every decoded format and EXIF orientation, with Pillow's pixels
and CLIP preprocessing of them; open_clip's resize modes on the CLIP photos; pickled checkpoints.

Writes under tests/fixtures/images/:
  formats/NAME        a crop of scikit-image's chelsea.png (45×34) saved by Pillow as lossless,
                      lossy and RGBA WebP; palette, transparent and animated GIF; RGB (raw and
                      LZW), grey, RGBA TIFF; palette (with and without tRNS), grey+alpha and
                      1-bit PNG; 16-bit RGB PNG and TIFF, which Pillow reads by keeping each
                      sample's high byte (written here by hand / by tifffile: Pillow cannot)
  bad/grey16.tif, bad/palette.tif
                      16-bit grey (Pillow clips it to 8 bits: refused) and a palette TIFF
                      (not decoded here: refused)
  orientation/oK.jpg  K = 1..8: the same pixels with EXIF orientation K (JPEG APP1), and
  orientation/oK.webp, oK.png, oK.tif for a few K (lossless, so the comparison is exact)
  reference.safetensors
      `rgb/PATH` U8 [H, W, 3]: `ImageOps.exif_transpose(Image.open(PATH)).convert("RGB")`
      `pixels/PATH` F32 [3, 20, 20]: CLIPImageProcessorPil (shortest edge 24, crop 20) of that
      image (transformers' processor does not transpose: it is given the transposed image)
  open_clip_modes.safetensors
      `MODE/NAME` F32 [3, H, W]: open_clip's inference transform of the CLIP fixture photos for
      the resize modes and sizes in OPEN_CLIP_MODES; `open_clip-longest/pixels` [N, 3, 24, 32]
      and `open_clip-longest/image_embeds` [N, E]: the model below on those photos
  open_clip_pil_modes.safetensors, open_clip_pil_modes.json, pil_modes/rgba_gradient.png
      `MODE/INTERPOLATION/PATH` F32 [3, H, W]: open_clip's inference transform of the files that
      Pillow opens as "P", "1", "LA" or "RGBA" (the formats above and an RGBA PNG whose alpha
      runs from 0 to 255 across the crop), which open_clip resizes and pads in that mode and
      converts to RGB only after, for the modes in PIL_MODES_MODES (written alone by the
      `pil-modes` argument, which leaves the other fixtures as they are)
  colour_key/NAME, colour_key.safetensors
      PNGs with a colour key (tRNS) that Pillow keeps in `info["transparency"]`: 8-bit RGB and
      grey, whose most frequent colour is the key; 16-bit RGB, whose key is one pixel's exact
      samples and whose low bytes are the most frequent 8-bit colour (Pillow compares the key's
      low bytes with the pixels' high bytes); 4-bit grey, keyed on its most frequent level (Pillow
      compares the raw key with the levels scaled to 8 bits). References as reference.safetensors
      holds them, under the same keys (written alone by the `colour-key` argument)
  pickle/tensors.bin  torch.save of f32/f16/bf16 tensors, views with offsets and strides, a
                      shared storage; pickle/tensors.safetensors the same tensors, contiguous
  pickle/os_system.bin
                      a torch-style zip whose pickle calls os.system (refused unexecuted)
and under tests/fixtures/clip/: open_clip-pickle/, open_clip-tiny's weights saved by torch.save
as open_clip_pytorch_model.bin (the older open_clip upload format), with its config and
tokenizer; open_clip-longest/, a random-init open_clip model with a non-square 24×32 input and
resize_mode "longest" (made by make_clip_fixtures.py's helper).

Run from the repository root:
  tools/.venv/bin/python tools/make_image_fixtures.py [pil-modes | colour-key]
"""

import json
import pickle
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import open_clip
import skimage
import tifffile
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessorPil

import make_clip_fixtures

OUT = Path("tests/fixtures/images")
CLIP = Path("tests/fixtures/clip")
SKIMAGE = Path(skimage.__file__).parent / "data"

# (mode name, open_clip size (int or [h, w]), resize_mode, fill_color)
OPEN_CLIP_MODES = [
    ("longest_40", 40, "longest", 0),
    ("longest_40x32", [40, 32], "longest", 128),
    ("shortest_32x40", [32, 40], "shortest", 0),
    ("squash_40x32", [40, 32], "squash", 0),
]
OPEN_CLIP_PHOTOS = ["animals/chelsea.png", "people/astronaut.png", "things/coffee_small.png"]
# The same kinds of mode at small sizes (the 45×34 files shrink ~4×), with a fill inside the
# 32-entry palettes (its colour pads "P" images) and one past their end (black).
PIL_MODES_MODES = [
    ("longest_10x8", [8, 10], "longest", 128),
    ("longest_9", 9, "longest", 5),
    ("shortest_8x10", [8, 10], "shortest", 0),
    ("squash_8x10", [8, 10], "squash", 0),
]
# Files by interpolation: "P" and "1" are resized by nearest neighbour whatever is asked, so
# bilinear is checked on one of each and on every file with alpha.
PIL_MODES_FILES = {
    "bicubic": [
        "formats/palette.png", "formats/palette_trns.png", "formats/palette.gif",
        "formats/transparent.gif", "formats/bilevel.png", "formats/grey_alpha.png",
        "formats/alpha.webp", "formats/rgba.tif", "pil_modes/rgba_gradient.png",
    ],
    "bilinear": [
        "formats/palette.png", "formats/bilevel.png", "formats/grey_alpha.png",
        "formats/alpha.webp", "formats/rgba.tif", "pil_modes/rgba_gradient.png",
    ],
}


def source():
    return Image.open(SKIMAGE / "chelsea.png").convert("RGB").crop((150, 40, 195, 74))


def write_png(path, size, bit_depth, colour_type, rows, key=None):
    """A PNG of packed `rows` written by hand (Pillow writes neither 16-bit RGB nor 4-bit grey):
    signature, IHDR, tRNS with the colour key's 16-bit samples if given, one zlib IDAT, IEND."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", *size, bit_depth, colour_type, 0, 0, 0)
    trns = chunk(b"tRNS", struct.pack(f">{len(key)}H", *key)) if key else b""
    raw = b"".join(b"\0" + row for row in rows)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + trns + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_png16(path, rgb16, key=None):
    """A 16-bit RGB PNG, with a colour key if given."""
    h, w, _ = rgb16.shape
    write_png(path, (w, h), 16, 2, [row.astype(">u2").tobytes() for row in rgb16], key)


def sixteen_bit(im):
    """The 16-bit samples of `im` whose low bytes differ from their high bytes, so truncation
    shows."""
    low = (np.arange(im.height * im.width * 3) % 251).reshape(im.height, im.width, 3)
    return (np.asarray(im).astype(np.uint16) * 256 + low).astype(np.uint16)


def write_formats(im):
    d = OUT / "formats"
    d.mkdir(parents=True)
    rgba = im.copy()
    alpha = Image.linear_gradient("L").resize(im.size)
    rgba.putalpha(alpha)
    im.save(d / "lossless.webp", lossless=True)
    im.save(d / "lossy.webp", quality=80)
    rgba.save(d / "alpha.webp", lossless=True)
    palette = im.quantize(colors=32)
    palette.save(d / "palette.gif")
    palette.save(d / "transparent.gif", transparency=3)
    second = im.transpose(Image.Transpose.ROTATE_180).quantize(colors=16)
    palette.save(d / "animated.gif", save_all=True, append_images=[second], duration=100)
    im.save(d / "rgb.tif")
    im.save(d / "lzw.tif", compression="tiff_lzw")
    im.convert("L").save(d / "grey.tif")
    rgba.save(d / "rgba.tif")
    palette.save(d / "palette.png")
    palette.save(d / "palette_trns.png", transparency=3)
    rgba.convert("LA").save(d / "grey_alpha.png")
    im.convert("1").save(d / "bilevel.png")
    wide = sixteen_bit(im)
    write_png16(d / "rgb16.png", wide)
    tifffile.imwrite(d / "rgb16.tif", wide, photometric="rgb")
    bad = OUT / "bad"
    bad.mkdir()
    tifffile.imwrite(bad / "grey16.tif", wide[..., 0])
    palette.save(bad / "palette.tif")
    return [p for p in sorted(d.iterdir())]


def write_orientations(im):
    d = OUT / "orientation"
    d.mkdir()
    paths = []
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        jpg = d / f"o{k}.jpg"
        im.save(jpg, quality=95, exif=exif.tobytes())
        paths.append(jpg)
        if k in (3, 6, 8):
            webp = d / f"o{k}.webp"
            im.save(webp, lossless=True, exif=exif.tobytes())
            paths.append(webp)
        if k in (2, 4, 6):
            png = d / f"o{k}.png"
            im.save(png, exif=exif.tobytes())  # an eXIf chunk
            paths.append(png)
        if k in (5, 7):
            tif = d / f"o{k}.tif"
            im.save(tif, tiffinfo={0x0112: k})
            paths.append(tif)
    return paths


def references(paths, out):
    processor = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 20, "width": 20})
    tensors = {}
    for path in paths:
        key = str(path.relative_to(OUT))
        im = ImageOps.exif_transpose(Image.open(path))
        rgb = im.convert("RGB")
        tensors[f"rgb/{key}"] = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        pixels = processor(images=[im], return_tensors="np")["pixel_values"][0]
        tensors[f"pixels/{key}"] = np.ascontiguousarray(pixels.astype(np.float32))
    save_numpy(tensors, out)


def open_clip_modes():
    tensors = {}
    for name, size, mode, fill in OPEN_CLIP_MODES:
        cfg = open_clip.transform.PreprocessCfg(
            size=size, resize_mode=mode, interpolation="bicubic", fill_color=fill
        )
        transform = open_clip.transform.image_transform_v2(cfg, is_train=False)
        for photo in OPEN_CLIP_PHOTOS:
            im = Image.open(CLIP / "photos" / photo)
            tensors[f"{name}/{Path(photo).name}"] = transform(im).contiguous()
    vocab = json.loads((CLIP / "tokenizer.json").read_text())["model"]["vocab"]
    make_clip_fixtures.VOCAB = len(vocab)
    preprocess, encode_image, _ = make_clip_fixtures.make_open_clip(
        "open_clip-longest", 4, True, "longest", [24, 32], 8, "tok"
    )
    with torch.no_grad():
        pixels = preprocess([Image.open(CLIP / "photos" / p) for p in OPEN_CLIP_PHOTOS])
        tensors["open_clip-longest/pixels"] = pixels.contiguous()
        tensors["open_clip-longest/image_embeds"] = encode_image(pixels).contiguous()
    save_file(tensors, OUT / "open_clip_modes.safetensors")
    (OUT / "open_clip_modes.json").write_text(
        json.dumps(
            {"photos": OPEN_CLIP_PHOTOS, "modes": [dict(name=n, size=s, resize_mode=m, fill_color=f)
                                                    for n, s, m, f in OPEN_CLIP_MODES]},
            indent=1,
        )
        + "\n"
    )


def open_clip_pil_modes():
    d = OUT / "pil_modes"
    d.mkdir(exist_ok=True)
    rgba = source()
    # Transparent on the left, opaque on the right, partial in between: resizing premultiplied
    # colour differs from resizing the colour alone wherever the window mixes alphas.
    x, y = np.arange(rgba.width)[None, :], np.arange(rgba.height)[:, None]
    rgba.putalpha(Image.fromarray(np.clip((x - 8) * 9 + y * 3, 0, 255).astype(np.uint8)))
    rgba.save(d / "rgba_gradient.png")
    tensors, modes = {}, {}
    for interpolation, files in PIL_MODES_FILES.items():
        for name, size, mode, fill in PIL_MODES_MODES:
            cfg = open_clip.transform.PreprocessCfg(
                size=size, resize_mode=mode, interpolation=interpolation, fill_color=fill
            )
            transform = open_clip.transform.image_transform_v2(cfg, is_train=False)
            for file in files:
                im = Image.open(OUT / file)
                modes[file] = im.mode
                tensors[f"{name}/{interpolation}/{file}"] = transform(im).contiguous()
    save_file(tensors, OUT / "open_clip_pil_modes.safetensors")
    (OUT / "open_clip_pil_modes.json").write_text(
        json.dumps(
            {"files": PIL_MODES_FILES, "pil_modes": modes,
             "modes": [dict(name=n, size=s, resize_mode=m, fill_color=f)
                       for n, s, m, f in PIL_MODES_MODES]},
            indent=1,
        )
        + "\n"
    )


def most_frequent(pixels):
    """The most frequent value of the last axis's vectors in `pixels`, as ints."""
    values, counts = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0, return_counts=True)
    return [int(v) for v in values[counts.argmax()]]


def colour_keys():
    d = OUT / "colour_key"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    im = source()
    rgb = np.asarray(im)
    im.save(d / "rgb.png", transparency=tuple(most_frequent(rgb)))
    grey = im.convert("L")
    grey.save(d / "grey.png", transparency=most_frequent(np.asarray(grey)[..., None])[0])
    # Pillow's alpha: the pixels of the most frequent colour; a 16-bit comparison's: pixel (0, 0).
    wide = sixteen_bit(im)
    common = most_frequent(rgb)
    assert list(rgb[0, 0]) != common
    wide[0, 0] = rgb[0, 0].astype(np.uint16) * 256 + common
    write_png16(d / "rgb16.png", wide, key=[int(v) for v in wide[0, 0]])
    # Levels 0..15, two to a byte; the odd width leaves each row's last low nibble 0.
    levels = np.asarray(grey) >> 4
    padded = np.pad(levels, ((0, 0), (0, levels.shape[1] % 2)))
    rows = [(padded[y, ::2] << 4 | padded[y, 1::2]).astype(np.uint8).tobytes()
            for y in range(padded.shape[0])]
    write_png(d / "grey4.png", grey.size, 4, 0, rows, key=most_frequent(levels[..., None]))
    references(sorted(d.iterdir()), OUT / "colour_key.safetensors")


def write_pickles():
    d = OUT / "pickle"
    d.mkdir()
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    tensors = {
        "f32": torch.randn(2, 3),
        "f16": torch.randn(3, 5).half(),
        "bf16": torch.randn(5).bfloat16(),
        "scalar": torch.tensor(2.5),
        "transposed": base.t(),  # strides (1, 6)
        "offset": base[1:3, 2:5],  # storage offset 8, strides (6, 1)
        "base": base,  # shares its storage with the two views above
    }
    torch.save(tensors, d / "tensors.bin")
    save_file({k: v.contiguous() for k, v in tensors.items()}, d / "tensors.safetensors")

    # A pickle that would run os.system("true") when loaded by plain pickle: GLOBAL, REDUCE.
    class Call:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    with zipfile.ZipFile(d / "os_system.bin", "w") as z:
        # Fixed timestamps keep the file identical across runs.
        stamp = (2026, 1, 1, 0, 0, 0)
        z.writestr(zipfile.ZipInfo("archive/data.pkl", stamp), pickle.dumps({"weight": Call()}, protocol=2))
        z.writestr(zipfile.ZipInfo("archive/version", stamp), "3\n")

    model = CLIP / "open_clip-pickle"
    shutil.rmtree(model, ignore_errors=True)
    model.mkdir()
    for name in ["open_clip_config.json", "tokenizer.json"]:
        shutil.copy(CLIP / "open_clip-tiny" / name, model / name)
    # A real state dict (an OrderedDict carrying `_metadata`), as open_clip's uploads hold.
    config = json.loads((CLIP / "open_clip-tiny" / "open_clip_config.json").read_text())
    clip = open_clip.model.CLIP(**config["model_cfg"])
    clip.load_state_dict(load_file(CLIP / "open_clip-tiny" / "open_clip_model.safetensors"))
    torch.save(clip.state_dict(), model / "open_clip_pytorch_model.bin")


def main():
    if sys.argv[1:] == ["pil-modes"]:
        open_clip_pil_modes()
        print("wrote", OUT / "open_clip_pil_modes.safetensors")
        return
    if sys.argv[1:] == ["colour-key"]:
        colour_keys()
        print("wrote", OUT / "colour_key.safetensors")
        return
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    im = source()
    paths = write_formats(im) + write_orientations(im)
    references(paths, OUT / "reference.safetensors")
    open_clip_modes()
    open_clip_pil_modes()
    colour_keys()
    write_pickles()
    print("wrote", OUT)


if __name__ == "__main__":
    main()
