"""Image transforms built from what the backbone's plugin reports.

Loader workers only decode, crop and resize PIL images and hand over uint8 tensors
(a quarter of the bytes of float32); conversion to float and normalization happen on
the device (`normalize`), as in timm's fast loader."""

from __future__ import annotations

import functools
import math
import random

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from zoo_adapt.data.images import to_mode, upright
from zoo_adapt.zoo.backbone import Normalization

_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
RATIO = (3 / 4, 4 / 3)  # aspect ratios of the random resized crop, as torchvision's


def run_normalization(norm: Normalization, image_size: int, crop_scale: float) -> Normalization:
    """The backbone's normalization at the size a run trains at, with the evaluation crop
    that matches its training crops: a run trained on whole images (`crop_scale` 1) is
    evaluated on whole images too (crop_pct 1), so objects appear at the scale training
    showed them (Touvron et al. 2019, "Fixing the train-test resolution discrepancy");
    random resized crops keep the backbone's crop_pct, which offsets their zoom."""
    return norm.at(image_size, crop_pct=1.0 if crop_scale >= 1 else norm.crop_pct)


def image_mode(norm: Normalization) -> str:
    """The PIL mode images are read in for `norm`: "L" for a one-channel model
    (--in-chans 1), else "RGB". Transforms carry it as `image_mode`, so the datasets
    decode each file straight into it (`images.open_image`)."""
    return "L" if norm.channels == 1 else "RGB"


def as_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode`: images read by `images.open_image` in that mode pass as they
    are; others (a torchvision dataset's RGB images) are converted as files are read."""
    return image if image.mode == mode else to_mode(image, mode)


def interpolation(norm: Normalization) -> InterpolationMode:
    return _MODES.get(norm.interpolation, InterpolationMode.BILINEAR)


class EvalTransform:
    """Resize the shorter side to size / crop_pct, centre crop: timm's and torchvision's
    eval recipe, giving a uint8 CHW tensor. It has no `min_side`: every image scored
    (validation, evaluate, predict, TTA, the analysis, the export checks) is decoded in
    full, as `load_plain`, the README's snippets and ONNX users decode it, so the numbers
    agree (a JPEG's reduced draft decode gives other pixels)."""

    def __init__(self, norm: Normalization):
        self.size = norm.image_size
        self.resize = norm.resize_size(self.size)
        self.mode, self.image_mode = interpolation(norm), image_mode(norm)

    def __call__(self, image: Image.Image, rng=None) -> torch.Tensor:
        image = as_mode(image, self.image_mode)
        image = TF.resize(image, self.resize, interpolation=self.mode, antialias=True)
        return TF.pil_to_tensor(TF.center_crop(image, self.size))


# counter-clockwise quarter turns, as torch.rot90 turns a tensor
ROTATIONS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


class TrainTransform:
    """Random resized crop (fastai's min_scale 0.35: gentler than ImageNet's 0.08, which
    suits small datasets and few epochs) and, unless the data forbids it, a horizontal
    flip; a vertical flip and a quarter turn by 0-3 when asked (`vflip`, `rot90`: aerial,
    microscopy, medical images); then `recipe` (timm's augmentations, `zoo_adapt.augment`) if given; gives a
    uint8 CHW tensor. The randomness comes from `rng` (one per image and epoch, see
    `pipeline`), so it does not depend on which worker decodes the image. `min_side`:
    a JPEG at least twice as large is decoded at a reduced scale (`images.open_image`),
    a speed choice for training only (benchmarks/draft_decode.py measures it)."""

    def __init__(
        self,
        norm: Normalization,
        min_scale: float = 0.35,
        hflip: bool = True,
        recipe=None,
        vflip: bool = False,
        rot90: bool = False,
    ):
        self.size = norm.image_size
        self.scale, self.hflip, self.mode = (min_scale, 1.0), hflip, interpolation(norm)
        self.image_mode = image_mode(norm)
        self.vflip, self.rot90 = vflip, rot90
        self.recipe = recipe
        # the smallest crop keeps sqrt(min_scale * 3/4) of the shorter side
        self.min_side = math.ceil(self.size / math.sqrt(min_scale * RATIO[0]))

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random.Random()
        image = as_mode(image, self.image_mode)
        top, left, h, w = crop_params(image.size[1], image.size[0], self.scale, rng)
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], interpolation=self.mode, antialias=True)
        if self.hflip and rng.random() < 0.5:
            image = TF.horizontal_flip(image)
        if self.vflip and rng.random() < 0.5:
            image = TF.vertical_flip(image)
        if self.rot90:
            turns = rng.randrange(4)
            if turns:
                image = image.transpose(ROTATIONS[turns])
        if self.recipe is not None:
            image = self.recipe(image, rng)
        return TF.pil_to_tensor(image)


def crop_params(height: int, width: int, scale: tuple[float, float], rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, drawn as torchvision's
    RandomResizedCrop.get_params draws it, from `rng`."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class Normalized:
    """A uint8 transform followed by the normalization: PIL image in (any mode, EXIF
    orientation applied and read in the model's mode, RGB or grayscale, as zoo-adapt
    reads files), float CHW out."""

    def __init__(self, transform, norm: Normalization):
        self.transform, self.norm, self.image_mode = transform, norm, image_mode(norm)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return normalize(self.transform(to_mode(upright(image), self.image_mode))[None], self.norm)[0]


def eval_transform(norm: Normalization) -> Normalized:
    """The exact evaluation preprocessing as one callable, for plain PyTorch use:
    a PIL image in, a normalized float CHW tensor out."""
    return Normalized(EvalTransform(norm), norm)


@functools.lru_cache(maxsize=64)
def channel_values(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1) per-channel values on `device`, made once: a copy from the host in
    every batch would wait for the kernels queued before it."""
    return torch.tensor(values, device=device).view(1, -1, 1, 1)


def normalize(x: torch.Tensor, norm: Normalization, channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW on the device -> float32, normalized (the work timm's prefetcher does)."""
    mean = channel_values(tuple(m * 255 for m in norm.mean), x.device)
    std = channel_values(tuple(s * 255 for s in norm.std), x.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.float().sub_(mean).div_(std)
