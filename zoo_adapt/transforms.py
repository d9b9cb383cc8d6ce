"""Image transforms built from what the backbone's plugin reports.

Loader workers only decode, crop and resize PIL images and hand over uint8 tensors
(a quarter of the bytes of float32); conversion to float and normalization happen on
the device (`normalize`), as in timm's fast loader."""
from __future__ import annotations

import math
import random

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from .backbone import Normalization

_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
          "nearest": InterpolationMode.NEAREST}
RATIO = (3 / 4, 4 / 3)  # aspect ratios of the random resized crop, as torchvision's


def interpolation(norm: Normalization) -> InterpolationMode:
    return _MODES.get(norm.interpolation, InterpolationMode.BILINEAR)


def draft(image: Image.Image, min_side: int) -> Image.Image:
    """Let the JPEG decoder skip detail we would throw away: decode at the smallest
    power-of-two reduction whose shorter side is still at least `min_side`."""
    if image.format == "JPEG" and min(image.size) >= 2 * min_side:
        scale = min(image.size) / min_side
        image.draft("RGB", (math.ceil(image.size[0] / scale), math.ceil(image.size[1] / scale)))
    return image


class EvalTransform:
    """Resize the shorter side to size / crop_pct, centre crop: timm's and torchvision's
    eval recipe, giving a uint8 CHW tensor."""

    def __init__(self, norm: Normalization, image_size: int | None = None):
        self.size = image_size or norm.image_size
        self.resize = norm.resize_size(self.size)
        self.mode = interpolation(norm)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = TF.resize(draft(image, self.resize), self.resize, interpolation=self.mode, antialias=True)
        return TF.pil_to_tensor(TF.center_crop(image, self.size))


class TrainTransform:
    """Random resized crop (fastai's min_scale 0.35: gentler than ImageNet's 0.08, which
    suits small datasets and few epochs) and, unless the data forbids it, a horizontal
    flip; gives a uint8 CHW tensor."""

    def __init__(self, norm: Normalization, image_size: int | None = None, min_scale: float = 0.35,
                 hflip: bool = True):
        self.size = image_size or norm.image_size
        self.scale, self.hflip, self.mode = (min_scale, 1.0), hflip, interpolation(norm)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # the smallest crop keeps sqrt(min_scale * 3/4) of the shorter side
        image = draft(image, math.ceil(self.size / math.sqrt(self.scale[0] * RATIO[0])))
        top, left, h, w = RandomResizedCrop.get_params(image, list(self.scale), list(RATIO))
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], interpolation=self.mode,
                                antialias=True)
        if self.hflip and random.random() < 0.5:
            image = TF.horizontal_flip(image)
        return TF.pil_to_tensor(image)


class Normalized:
    """A uint8 transform followed by the normalization: PIL image in, float CHW out."""

    def __init__(self, transform, norm: Normalization):
        self.transform, self.norm = transform, norm

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return normalize(self.transform(image)[None], self.norm)[0]


def eval_transform(norm: Normalization, image_size: int | None = None) -> Normalized:
    """The exact evaluation preprocessing as one callable, for plain PyTorch use:
    a PIL image in, a normalized float CHW tensor out."""
    return Normalized(EvalTransform(norm, image_size), norm)


def normalize(x: torch.Tensor, norm: Normalization, channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW on the device -> float32, normalized (the work timm's prefetcher does)."""
    mean = torch.tensor([m * 255 for m in norm.mean], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor([s * 255 for s in norm.std], device=x.device).view(1, -1, 1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.float().sub_(mean).div_(std)
