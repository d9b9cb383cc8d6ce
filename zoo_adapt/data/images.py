"""Reading image files. `open_image` is the one place an image file is decoded (loader
workers, images held on the device, evaluate, predict and its TTA), so training,
evaluation and prediction see the same pixels; `check_image` finds bad files at
start-up, before a trained epoch can be lost to them.

`open_image` gives 8-bit RGB, or with `mode="L"` (--in-chans 1: X-rays, microscopy,
scanned documents) 8-bit grayscale, made from the file as follows:

- EXIF orientation is applied: phones store photos sideways with a tag saying so, a
  viewer shows them upright, so the model sees them upright too. A damaged EXIF block
  is ignored (the pixels are fine).
- 16-bit integer images (mode I;16 and its byte orders: 16-bit grayscale PNG, TIFF,
  PGM) are scaled from their type's full range, 0..65535 -> 0..255, so a grey level
  means the same in every file, as torchvision's and scikit-image's conversions do.
  (PIL's own conversion clips at 255 and turns such an image almost all white.)
- 32-bit images (modes I and F) have no full range of their own: the smallest of
  0..1 (F only), 0..255 and 0..65535 that holds all the image's values is mapped to
  0..255; values outside all three (negative, or above 65535) are stretched from the
  image's minimum to its maximum.
- Transparency (an alpha channel, a palette entry or a colour key) is composited on
  WHITE: transparent backgrounds (product photos, icons, scans) are drawn to be seen
  on a page, and the colour stored under a transparent pixel is arbitrary.
- Other modes (1, L, P, CMYK, YCbCr, ...) are converted by PIL; a colour image read
  as grayscale gets PIL's luma (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B), and a grey
  image read as RGB and then as grayscale keeps its exact grey levels.
- Images above PIL's `Image.MAX_IMAGE_PIXELS` (89.5 million pixels unless changed)
  are refused as possible decompression bombs. PIL only warns between one and two
  times that limit; zoo-adapt refuses both, so there is one limit to know.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from zoo_adapt.errors import ZooAdaptError

BACKGROUND = (255, 255, 255)  # transparent pixels become white
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ORIENTATION = 0x0112
# check_image decodes fully up to these sizes (a few ms each); see check_image
PNG_DECODE_PIXELS = 256 * 256
DECODE_PIXELS = 1024 * 1024
_OPEN_LOCK = threading.Lock()


MODES = ("RGB", "L")  # what open_image gives: three channels, or one (--in-chans 1)


def open_image(path: str | Path, min_side: int | None = None, mode: str = "RGB") -> Image.Image:
    """The image as 8-bit RGB or, `mode="L"`, grayscale (see the module doc), fully decoded, or a ZooAdaptError
    naming the file. `min_side`, for training crops only: the shorter side the caller
    needs at least; a JPEG at least twice that is decoded at a power-of-two reduction
    (the decoder skips detail the resize would throw away; benchmarks/draft_decode.py),
    still at least `min_side`. Its pixels differ from a full decode's, so nothing that
    scores an image passes it: scores match load_plain, ONNX and the README's snippets."""
    try:
        with _open(path) as im:
            if min_side and im.format in ("JPEG", "MPO") and min(im.size) >= 2 * min_side:
                scale = min(im.size) / min_side
                im.draft("RGB", (math.ceil(im.size[0] / scale), math.ceil(im.size[1] / scale)))
            im.load()
            return to_mode(upright(im), mode)
    except ZooAdaptError:
        raise
    except Exception as e:  # PIL's decoders raise many types on malformed files
        raise ZooAdaptError(f"cannot read image {path}: {_reason(e)}") from None


def check_image(path: str | Path) -> None:
    """A start-up check that decodes for real, cheaply, and runs the same conversion as
    `open_image`, so a file that passes it can be read in training:

    - JPEG (no checksum: decoding is the only test) is decoded at 1/8 scale: DCT
      scaling still reads every byte of the compressed data, so truncated or garbled
      files fail here as in a full decode (~0.8 ms for 512x512, against 1.4 ms).
    - PNG up to 256x256 is decoded fully (~3 ms); above, `verify()` checks every
      chunk's CRC and the end chunk (~0.4 ms for 512x512 against 14 ms for a decode),
      which finds truncated and corrupted files.
    - Other formats (BMP, TIFF, PPM, WebP) are decoded fully up to 1024x1024 (BMP and
      TIFF ~2 ms, WebP ~16 ms); above, only their structure is verified.
    """
    try:
        with _open(path) as im:
            w, h = im.size
            if im.format in ("JPEG", "MPO"):  # MPO: cameras' multi-picture JPEG
                im.draft(im.mode, (math.ceil(w / 8), math.ceil(h / 8)))
            elif w * h > (PNG_DECODE_PIXELS if im.format == "PNG" else DECODE_PIXELS):
                mode = im.mode
                im.verify()
                to_rgb(Image.new(mode, (1, 1)))  # the conversion, on one pixel
                return
            im.load()
            to_rgb(upright(im))
    except ZooAdaptError:
        raise
    except Exception as e:
        raise ZooAdaptError(
            f"cannot read image {path}: {_reason(e)} (corrupt or not an image?); remove it or replace it"
        ) from None


def check_images(paths: Sequence[Path], threads: int | None = None) -> list[tuple[Path, str]]:
    """`check_image` on every path; (path, message) of those that fail, in order. Runs
    in threads (PIL decodes without holding the GIL), in chunks so a million paths do
    not become a million futures."""

    def chunk(part: Sequence[Path]) -> list[tuple[Path, str]]:
        bad = []
        for path in part:
            try:
                check_image(path)
            except ZooAdaptError as e:
                bad.append((path, str(e)))
        return bad

    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = min(8, cores)
    if threads <= 1 or len(paths) < 64:
        return chunk(paths)
    parts = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    with ThreadPoolExecutor(threads) as pool:
        return [b for bad in pool.map(chunk, parts) for b in bad]


def _open(path: str | Path) -> Image.Image:
    """Image.open, with PIL's decompression-bomb warning made an error. The lock keeps
    the warning filters consistent when several threads open images."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _reason(e: Exception) -> str:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return (
            f"{size}, above PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS:,}); refused as a "
            "possible decompression bomb"
        )
    text = " ".join(str(e).split())
    return text or type(e).__name__


def upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (the same image if none)."""
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels are still good
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """A new 8-bit image in `mode` ("RGB" or "L") from any mode (see the module doc)."""
    return to_gray(im) if mode == "L" else to_rgb(im)


def to_gray(im: Image.Image) -> Image.Image:
    """A new 8-bit grayscale (L) image from any mode, read as `to_rgb` reads it: 16- and
    32-bit images scaled from their range, transparency composited on white."""
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode), "L")
    if im.mode in ("1", "L", "P", "RGB") and "transparency" not in im.info:
        return im.convert("L")
    return to_rgb(im).convert("L")  # alpha, CMYK, YCbCr, ...: through the RGB reading


def to_rgb(im: Image.Image) -> Image.Image:
    """A new 8-bit RGB image from any mode (see the module doc)."""
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode), "L").convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")
        out = Image.new("RGB", im.size, BACKGROUND)
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    a = a.astype(np.float64)
    if mode in _SIXTEEN_BIT:
        top, low = 65535.0, 0.0
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        fixed = [t for t in ((1.0,) if mode == "F" else ()) + (255.0, 65535.0) if lo >= 0 and hi <= t]
        top, low = (fixed[0], 0.0) if fixed else (hi, lo)
    scaled = (np.nan_to_num(a, nan=low, posinf=top, neginf=low) - low) * (255.0 / max(top - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
