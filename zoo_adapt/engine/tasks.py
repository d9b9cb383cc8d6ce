"""What a run optimises and counts as right: one label per image (cross-entropy,
top-1 hits) or any number of labels (a sigmoid per class, binary cross-entropy)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class SingleLabel:
    """Cross-entropy (with label smoothing) on class indices, or on soft targets (rows
    of class probabilities, as mixup and cutmix make them: their smoothing is already in
    them); accuracy counts top-1 hits against the index or the largest target.
    `class_weights` (--balance loss): each class's weight in the loss."""

    multi_label = False

    def __init__(self, label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None):
        self.label_smoothing = label_smoothing
        self.class_weights = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights else None

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = self.class_weights = _on(self.class_weights, logits.device)
        if y.is_floating_point():
            losses = torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1)
            if weight is None:
                return losses.mean()
            per_image = (y.float() * weight).sum(-1)  # a soft target's weight: its classes' weights, mixed
            return (losses * per_image).sum() / per_image.sum()
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=self.label_smoothing)

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():
            y = y.argmax(-1)
        return (logits.argmax(-1) == y).float().mean()


class MultiLabel:
    """Any number of classes per image: one sigmoid per class, binary cross-entropy on
    0/1 label vectors. Accuracy: images whose whole label set is right at probability
    0.5 (validation also reports mAP and F1 at per-class thresholds). `pos_weights`
    (--balance loss): each class's weight on its positives."""

    multi_label = True

    def __init__(self, pos_weights: Sequence[float] | None = None):
        self.pos_weights = torch.as_tensor(pos_weights, dtype=torch.float32) if pos_weights else None

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = self.pos_weights = _on(self.pos_weights, logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=weight)

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((logits > 0) == (y > 0.5)).all(-1).float().mean()


def _on(weights: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """`weights` on `device` (kept there by the caller: a copy from the host in every
    step would make each step wait for the GPU)."""
    return weights if weights is None or weights.device == device else weights.to(device)
