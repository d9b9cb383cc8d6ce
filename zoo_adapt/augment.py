"""Augmentation recipes from timm behind zoo-adapt's options: RandAugment, AutoAugment,
AugMix (timm's auto-augment strings) and colour jitter act on each training image
after zoo-adapt's gentle crop and flip, in the loader workers; random erasing and
mixup/cutmix act on the batch on the device, as timm's training script applies them
(after normalization), as loop callbacks.

Every random draw of a per-image recipe comes from the image's own generator
(`pipeline` gives one per image and epoch), so runs repeat exactly whatever the number
of workers, and a resumed run replays the same images.
"""
from __future__ import annotations

import random
import numpy as np
import torch
from PIL import Image

from .backbone import Normalization
from .engine.callbacks import Callback
from .errors import ZooAdaptError

# zoo-adapt's names for timm's auto-augment strings (timm's train.py documents them)
NAMED = {"randaugment": "rand-m9-mstd0.5-inc1", "autoaugment": "v0", "augmix": "augmix-m5-w4-d2"}


def image_recipe(augment: str, color_jitter: float, norm: Normalization, size: int):
    """The per-image part (a PIL image -> PIL image callable), or None for the gentle
    default without jitter."""
    from timm.data.auto_augment import auto_augment_transform, augment_and_mix_transform, rand_augment_transform
    from torchvision.transforms import ColorJitter

    steps = []
    if augment != "gentle":
        spec = NAMED.get(augment, augment)
        hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in norm.mean)}
        try:
            if spec.startswith("rand"):
                steps.append(rand_augment_transform(spec, hparams))
            elif spec.startswith("augmix"):
                steps.append(augment_and_mix_transform(spec, hparams))
            else:
                steps.append(auto_augment_transform(spec, hparams))
        except (AssertionError, KeyError, ValueError) as e:
            raise ZooAdaptError(f"--augment {augment!r} is not a recipe timm knows ({e or 'bad string'}); give "
                                f"gentle, {', '.join(NAMED)} or a timm string such as rand-m9-mstd0.5") from None
    if color_jitter > 0:
        steps.append(ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return ImageRecipe(steps) if steps else None


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
                torch.manual_seed(seed)
                for step in self.steps:
                    image = step(image)
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
        return image

    def __repr__(self) -> str:
        return " + ".join(type(s).__name__ for s in self.steps)


class BatchRecipe(Callback):
    """Random erasing and mixup/cutmix on each labelled training batch on the device
    (timm's `RandomErasing` in 'pixel' mode, timm's `Mixup` with the run's label
    smoothing), before any callback adds unlabelled rows. Mixed batches carry soft
    targets, which the task's loss takes. An odd-sized batch (an epoch's last) is not
    mixed: its targets become the smoothed one-hot rows."""

    order = -30

    def __init__(self, random_erase: float, mixup: float, cutmix: float, num_classes: int, label_smoothing: float):
        from timm.data import Mixup

        self.random_erase, self.num_classes, self.smoothing = random_erase, num_classes, label_smoothing
        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                         num_classes=num_classes) if mixup > 0 or cutmix > 0 else None
        self.eraser = None

    def setup(self, loop) -> None:
        from timm.data.random_erasing import RandomErasing

        if self.random_erase > 0:
            self.eraser = RandomErasing(self.random_erase, mode="pixel", device=str(loop.device))

    def before_forward(self, loop, step) -> None:
        x, y = step.x, step.y
        if self.eraser is not None:
            x = self.eraser(x.clone())
        if self.mix is not None:
            if len(x) % 2 == 0:
                x, y = self.mix(x, y)
            else:
                from timm.data.mixup import mixup_target

                y = mixup_target(y, self.num_classes, 1.0, self.smoothing)
        step.x, step.y = x, y


def describe(augment: str, color_jitter: float, random_erase: float, mixup: float, cutmix: float) -> str:
    """One phrase for the run's log line."""
    parts = [] if augment == "gentle" else [f"{augment} ({NAMED.get(augment, augment)})"]
    parts += [f"{name} {value:g}" for name, value in (("colour jitter", color_jitter), ("random erasing",
              random_erase), ("mixup", mixup), ("cutmix", cutmix)) if value > 0]
    return ", ".join(parts)
