"""Calibrated probabilities: temperature scaling (Guo et al., ICML 2017). One number T
divides the logits; it is fitted by minimising the negative log-likelihood of held-out
labels (the validation images, or the out-of-fold predictions of a cross-validated
run). T > 1 softens an over-confident network, T < 1 sharpens an under-confident one
(label smoothing makes networks under-confident); the ranking of the classes, hence
accuracy, never changes.

The fit is a few steps of L-BFGS on log T (the NLL is convex in 1/T), so no library is
needed for it. Expected calibration error (ECE): 15 equal-width bins of the top-1
confidence, the mean |accuracy - confidence| weighted by the bins' sizes.

Rule: a temperature is fitted when there are at least `MIN_IMAGES` images and at least
`MIN_PER_CLASS` of every class; below that one number fitted on a handful of images
is noise, and the run says it skipped and why. Multi-label models are not calibrated:
their decisions are per-class thresholds chosen on the same validation images for the
best F1, which a per-class temperature would have to share, and with a few dozen
positives per class a per-class fit is noise (the run says so)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

MIN_IMAGES = 50
MIN_PER_CLASS = 2
BINS = 15
MULTI_LABEL_REASON = (
    "multi-label models are not calibrated: their per-class thresholds, chosen on the validation "
    "images, make the decisions"
)


def why_not(labels, num_classes: int) -> str | None:
    """Why these images are too few to fit a temperature (None: enough)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    n = int(counts.sum())
    if n < MIN_IMAGES:
        return f"{n} validation images, fewer than the {MIN_IMAGES} needed to fit a temperature"
    if counts.min() < MIN_PER_CLASS:
        return (
            f"a class has {int(counts.min())} validation image(s), fewer than the {MIN_PER_CLASS} per class "
            "needed to fit a temperature"
        )
    return None


def nll(log_probs, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels after dividing the logits by
    `temperature` (log-probabilities are logits up to a per-image constant)."""
    z = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64) / temperature
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float(torch.nn.functional.cross_entropy(z, y))


def fit_temperature(log_probs, labels) -> float:
    """The T > 0 minimising the NLL of `labels` under softmax(log_probs / T)."""
    z = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, 1e-2), 1e2) if math.isfinite(t) else 1.0


@dataclass
class Reliability:
    """Per confidence bin: images, mean confidence, accuracy (for the diagram)."""

    edges: list[float]
    count: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]

    def ece(self) -> float:
        gaps = [
            c * abs(a - f)
            for c, a, f in zip(self.count, self.accuracy, self.confidence)
            if a is not None and f is not None
        ]
        return sum(gaps) / max(sum(self.count), 1)


def reliability(log_probs, labels, temperature: float = 1.0, bins: int = BINS) -> Reliability:
    z = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64) / temperature
    probs = z.softmax(-1).numpy()
    y = np.asarray(labels)
    confidence, predicted = probs.max(1), probs.argmax(1)
    right = predicted == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count, conf, acc = [], [], []
    for b in range(bins):
        inside = which == b
        k = int(inside.sum())
        count.append(k)
        conf.append(float(confidence[inside].mean()) if k else None)
        acc.append(float(right[inside].mean()) if k else None)
    return Reliability(edges.tolist(), count, conf, acc)


def ece(log_probs, labels, temperature: float = 1.0, bins: int = BINS) -> float:
    return reliability(log_probs, labels, temperature, bins).ece()


@dataclass
class Calibration:
    """A fitted temperature and what it changed on the images it was fitted on."""

    temperature: float
    images: int
    ece: float
    nll: float
    ece_calibrated: float
    nll_calibrated: float
    before: Reliability = field(repr=False)
    after: Reliability = field(repr=False)

    def metrics(self, prefix: str = "val_") -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            f"{prefix}ece": self.ece,
            f"{prefix}nll": self.nll,
            f"{prefix}ece_calibrated": self.ece_calibrated,
            f"{prefix}nll_calibrated": self.nll_calibrated,
        }

    def line(self, where: str = "validation images") -> str:
        return (
            f"calibration: temperature {self.temperature:.2f} fitted on {self.images} {where}: ECE "
            f"{self.ece:.1%} -> {self.ece_calibrated:.1%}, NLL {self.nll:.3f} -> {self.nll_calibrated:.3f}; "
            "predict and evaluate apply it"
        )


def calibrate(log_probs, labels) -> Calibration:
    """Fit a temperature on these images and measure ECE and NLL before and after."""
    t = fit_temperature(log_probs, labels)
    before, after = reliability(log_probs, labels), reliability(log_probs, labels, t)
    return Calibration(
        t,
        len(np.asarray(labels)),
        before.ece(),
        nll(log_probs, labels),
        after.ece(),
        nll(log_probs, labels, t),
        before,
        after,
    )
