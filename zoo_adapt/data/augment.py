"""Augmentation recipes from timm behind zoo-adapt's options: RandAugment, AutoAugment,
AugMix (timm's auto-augment strings) and colour jitter act on each training image
after zoo-adapt's gentle crop and flip, in the loader workers. (Random erasing and
mixup/cutmix act on whole batches on the device: zoo_adapt.engine.batch_recipes.)

Every random draw of a per-image recipe comes from the image's own generator
(`pipeline` gives one per image and epoch), so runs repeat exactly whatever the number
of workers, and a resumed run replays the same images.

timm's Posterize ops draw "keep 0 bits" at some magnitudes (its TPU-derived level
scales span 0..4 bits), which Pillow up to 12 turned into a black image and Pillow 13
rejects; `posterize` below keeps the old meaning, so every recipe trains on any Pillow.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import ColorJitter

from zoo_adapt.errors import ZooAdaptError, clip, quote
from zoo_adapt.zoo.backbone import Normalization

# zoo-adapt's names for timm's auto-augment strings (timm's train.py documents them)
NAMED = {"randaugment": "rand-m9-mstd0.5-inc1", "autoaugment": "v0", "augmix": "augmix-m5-w4-d2"}


def image_recipe(augment: str, color_jitter: float, norm: Normalization):
    """The per-image part (a PIL image -> PIL image callable), or None for the gentle
    default without jitter."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    steps = []
    if augment != "gentle":
        spec = NAMED.get(augment, augment)
        hparams = {"translate_const": int(norm.image_size * 0.45), "img_mean": tuple(round(255 * m) for m in norm.mean)}
        try:
            if spec.startswith("rand"):
                steps.append(rand_augment_transform(spec, hparams))
            elif spec.startswith("augmix"):
                steps.append(augment_and_mix_transform(spec, hparams))
            else:
                steps.append(auto_augment_transform(spec, hparams))
            _guard_posterize(steps[-1])
        except (AssertionError, KeyError, ValueError) as e:
            raise ZooAdaptError(
                f"--augment {quote(augment)} is not a recipe timm knows ({clip(str(e), 60) or 'bad string'}); give "
                f"gentle, {', '.join(NAMED)} or a timm string such as rand-m9-mstd0.5"
            ) from None
    if color_jitter > 0:
        steps.append(ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return ImageRecipe(steps) if steps else None


def posterize(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize (keep the `bits_to_keep` high bits of each channel) for every
    bit count its level functions produce: 8 or more is the image, 0 (or fewer) a black
    image, as ImageOps.posterize gave before Pillow 13 and TensorFlow's version gives."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep >= 1:
        return ImageOps.posterize(image, bits_to_keep)
    # ImageOps' table for 0 bits masks every value to 0; the recipes get RGB images
    return image.point([0] * 256 * len(image.getbands()))


def _guard_posterize(transform) -> None:
    """Swap timm's posterize for `posterize` in the ops of a RandAugment, AutoAugment or
    AugMix transform (in this instance only; timm's module is left as it is)."""
    from timm.data import auto_augment

    ops = getattr(transform, "ops", None) or [op for sub in getattr(transform, "policy", []) for op in sub]
    for op in ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = posterize


class ImageRecipe:
    """timm's transforms draw from the global generators (random, numpy, torch): each
    call runs them seeded from the image's own generator and leaves the global ones as
    they were."""

    def __init__(self, steps: list):
        self.steps = steps

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        seed = rng.getrandbits(32)
        state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # the CPU one only: CUDA generators stay as they were
                for step in self.steps:
                    image = step(image)
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
        return image

    def __repr__(self) -> str:
        return " + ".join(type(s).__name__ for s in self.steps)


def describe(augment: str, color_jitter: float, random_erase: float, mixup: float, cutmix: float) -> str:
    """One phrase for the run's log line."""
    parts = [] if augment == "gentle" else [f"{augment} ({NAMED.get(augment, augment)})"]
    parts += [
        f"{name} {value:g}"
        for name, value in (
            ("colour jitter", color_jitter),
            ("random erasing", random_erase),
            ("mixup", mixup),
            ("cutmix", cutmix),
        )
        if value > 0
    ]
    return ", ".join(parts)
