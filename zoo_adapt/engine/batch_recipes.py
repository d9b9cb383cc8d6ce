"""Augmentation of whole training batches on the device, as timm's training script
applies it (after normalization): random erasing and mixup/cutmix, as a loop callback.
(Per-image recipes run in the loader workers: zoo_adapt.data.augment.)"""

from __future__ import annotations

from typing import Any

from zoo_adapt.engine.callbacks import Callback


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
        self.mix = (
            Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)
            if mixup > 0 or cutmix > 0
            else None
        )
        self.eraser: Any = None  # timm's RandomErasing, made at setup

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
