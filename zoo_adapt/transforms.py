"""Image transforms built from what the backbone's plugin reports (torchvision v2)."""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from .backbone import Normalization

_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
          "nearest": InterpolationMode.NEAREST}


def _mode(norm: Normalization) -> InterpolationMode:
    return _MODES.get(norm.interpolation, InterpolationMode.BILINEAR)


def _normalize(norm: Normalization) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(norm.mean), std=list(norm.std))]


def eval_transform(norm: Normalization, image_size: int | None = None) -> v2.Compose:
    """Resize the shorter side (size / crop_pct), centre crop: timm's and torchvision's eval recipe."""
    size = image_size or norm.image_size
    return v2.Compose([v2.ToImage(), v2.RGB(),
                       v2.Resize(norm.resize_size(size), interpolation=_mode(norm), antialias=True),
                       v2.CenterCrop(size), *_normalize(norm)])


def train_transform(norm: Normalization, image_size: int | None = None,
                    min_scale: float = 0.35, hflip: bool = True) -> v2.Compose:
    """Random resized crop (fastai's min_scale 0.35: gentler than ImageNet's 0.08, which
    suits small datasets and few epochs) and, unless the data forbids it, horizontal flip."""
    size = image_size or norm.image_size
    flip = [v2.RandomHorizontalFlip()] if hflip else []
    return v2.Compose([v2.ToImage(), v2.RGB(),
                       v2.RandomResizedCrop(size, scale=(min_scale, 1.0), interpolation=_mode(norm),
                                            antialias=True),
                       *flip, *_normalize(norm)])
