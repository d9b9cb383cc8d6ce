"""Accuracy, top-5, per-class accuracy and the confusion matrix, with optional
test-time augmentation: the softmax averaged over the image, its mirror image and
zoomed-in centre crops."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

TTA_ZOOM = 1.15


def tta_views(x: torch.Tensor, zoom: float = TTA_ZOOM, flip: bool = True) -> list[torch.Tensor]:
    """The batch, zoomed in by `zoom` (centre crop), and the horizontal flips of both
    (unless the model was trained without flips: mirrored digits are other digits)."""
    h, w = x.shape[-2:]
    big = F.interpolate(x, scale_factor=zoom, mode="bilinear", align_corners=False, antialias=False)
    top, left = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
    zoomed = big[..., top:top + h, left:left + w]
    return [x, x.flip(-1), zoomed, zoomed.flip(-1)] if flip else [x, zoomed]


def predict_proba(model: nn.Module, x: torch.Tensor, tta: bool = False,
                  autocast: bool = False, flip: bool = True) -> torch.Tensor:
    """Class probabilities: softmax of the logits, averaged over the TTA views if asked."""
    views = tta_views(x, flip=flip) if tta else [x]
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        probs = [model(v).float().softmax(-1) for v in views]
    return torch.stack(probs).mean(0)


@dataclass
class Evaluation:
    num_images: int
    accuracy: float
    top5: float
    loss: float
    per_class: dict[str, float | None]
    confusion: list[list[int]]
    classes: list[str]
    predictions: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "top5": self.top5, "loss": self.loss,
                "num_images": self.num_images, "per_class_accuracy": self.per_class,
                "confusion_matrix": self.confusion, "classes": self.classes}


def evaluate(model: nn.Module, batches: Iterable, classes: list[str], device: torch.device,
             tta: bool = False, autocast: bool = False, flip: bool = True) -> Evaluation:
    """Score `model` over (images, labels) batches."""
    model.eval()
    n = len(classes)
    confusion = torch.zeros(n, n, dtype=torch.long)
    top5_hits, nll, count, predictions = 0, 0.0, 0, []
    k = min(5, n)
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
        probs = predict_proba(model, x, tta=tta, autocast=autocast, flip=flip)
        pred = probs.argmax(-1)
        predictions += pred.tolist()
        confusion += torch.bincount((y * n + pred).cpu(), minlength=n * n).view(n, n)
        top5_hits += (probs.topk(k, -1).indices == y[:, None]).any(-1).sum().item()
        nll += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
        count += len(y)
    correct = confusion.diag()
    totals = confusion.sum(1)
    per_class = {c: (correct[i].item() / totals[i].item() if totals[i] else None)
                 for i, c in enumerate(classes)}
    return Evaluation(count, correct.sum().item() / max(count, 1), top5_hits / max(count, 1),
                      nll / max(count, 1), per_class, confusion.tolist(), list(classes), predictions)
