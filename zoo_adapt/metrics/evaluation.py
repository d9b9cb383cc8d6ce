"""Accuracy, top-5, balanced accuracy, per-class accuracy, precision, recall and F1
and the confusion matrix, with optional test-time augmentation: the softmax averaged
over the image, its mirror image and zoomed-in centre crops. Counts stay on the
device until the end (one read per evaluation, not per batch). Multi-label models
(sigmoid per class) are scored by multilabel.py's tally: mAP, F1 at per-class
thresholds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from zoo_adapt.metrics.multilabel import MultiLabelTally
from zoo_adapt.metrics.scores import Evaluation
from zoo_adapt.progress import track

TTA_ZOOM = 1.15


def tta_views(
    x: torch.Tensor, zoom: float = TTA_ZOOM, flip: bool = True, vflip: bool = False, rot90: bool = False
) -> list[torch.Tensor]:
    """The batch and its zoom by `zoom` (centre crop), each with the symmetries the model
    was trained with: its horizontal flip (unless trained without: mirrored digits are
    other digits), vertical flip (`vflip`) and rotations by 90, 180 and 270 degrees
    (`rot90`, square images)."""
    h, w = x.shape[-2:]
    big = F.interpolate(x, scale_factor=zoom, mode="bilinear", align_corners=False, antialias=False)
    top, left = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
    zoomed = big[..., top : top + h, left : left + w]
    views = []
    for view in (x, zoomed):
        views += [view] + [view.flip(-1)] * flip + [view.flip(-2)] * vflip
        views += [torch.rot90(view, k, dims=(-2, -1)) for k in (1, 2, 3)] if rot90 else []
    return views


def predict_proba(
    model: nn.Module,
    x: torch.Tensor,
    tta: bool = False,
    autocast: bool | Callable = False,
    flip: bool = True,
    multi_label: bool = False,
    vflip: bool = False,
    rot90: bool = False,
) -> torch.Tensor:
    """Class probabilities: softmax of the logits (a sigmoid per class when
    `multi_label`), averaged over the TTA views if asked. `autocast`: a context factory
    (the loop's), or True for bf16 autocast."""
    views = tta_views(x, flip=flip, vflip=vflip, rot90=rot90) if tta else [x]
    with torch.no_grad(), _autocast(autocast, x.device):
        probs = [model(v).float().sigmoid() if multi_label else model(v).float().softmax(-1) for v in views]
    return torch.stack(probs).mean(0)


def _autocast(autocast, device: torch.device):
    if callable(autocast):
        return autocast()
    return torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()


class Tally:
    """Sums of an evaluation, kept on the device: confusion counts, top-5 hits, summed
    negative log-likelihood. Under data parallelism each process tallies its shard and
    `all_reduce` adds them up, so the result is the whole set's."""

    def __init__(self, num_classes: int, device: torch.device):
        self.n = num_classes
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # top-5 hits, nll
        self.predictions: list[torch.Tensor] = []

    def add(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        pred = probs.argmax(-1)
        self.predictions.append(pred)
        self.confusion += torch.bincount(y * self.n + pred, minlength=self.n * self.n)
        k = min(5, self.n)
        hits = (probs.topk(k, -1).indices == y[:, None]).any(-1).sum()
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum")
        self.sums += torch.stack([hits.double(), nll.double()])

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion)
            dist.all_reduce(self.sums)

    def result(self, classes: list[str]) -> Evaluation:
        confusion = self.confusion.view(self.n, self.n).cpu()
        hits, nll = self.sums.tolist()
        count = int(confusion.sum())
        correct, totals = confusion.diag(), confusion.sum(1)
        per_class = {c: (correct[i].item() / totals[i].item() if totals[i] else None) for i, c in enumerate(classes)}
        predictions = torch.cat(self.predictions).tolist() if self.predictions else []
        predicted = confusion.sum(0)
        precision, recall, f1 = {}, {}, {}
        for i, c in enumerate(classes):
            tp, support, said = correct[i].item(), totals[i].item(), predicted[i].item()
            precision[c] = tp / said if said else None
            recall[c] = tp / support if support else None
            f1[c] = 2 * tp / (support + said) if support + said else None
        present = [r for r in recall.values() if r is not None]
        scored = [v for v in f1.values() if v is not None]
        return Evaluation(
            count,
            correct.sum().item() / max(count, 1),
            hits / max(count, 1),
            nll / max(count, 1),
            per_class,
            confusion.tolist(),
            list(classes),
            predictions,
            balanced_accuracy=sum(present) / len(present) if present else None,
            macro_f1=sum(scored) / len(scored) if scored else None,
            precision=precision,
            recall=recall,
            f1=f1,
        )


def evaluate(
    model: nn.Module,
    batches: Iterable,
    classes: list[str],
    tta: bool = False,
    autocast: bool | Callable = False,
    flip: bool = True,
    progress: str | None = None,
    multi_label: bool = False,
    thresholds: list[float] | None = None,
    vflip: bool = False,
    rot90: bool = False,
) -> Evaluation:
    """Score `model` over (images, labels) batches already on the model's device;
    `progress`: a name to show progress under (long evaluations). `multi_label`: 0/1
    label vectors, scored at `thresholds` (None: each class's best F1 on these images)."""
    model.eval()
    tally: Tally | MultiLabelTally | None = None
    make: type[Tally] | type[MultiLabelTally] = MultiLabelTally if multi_label else Tally
    total = len(batches) if isinstance(batches, Sized) else 0
    for x, y in track(batches, total, progress or "", count=lambda b: len(b[1]), enabled=bool(progress and total)):
        probs = predict_proba(
            model, x, tta=tta, autocast=autocast, flip=flip, multi_label=multi_label, vflip=vflip, rot90=rot90
        )
        if tally is None:
            tally = make(len(classes), probs.device)
        tally.add(probs, y.to(probs.device))
    if tally is None:
        tally = make(len(classes), next(model.parameters()).device)
    tally.all_reduce()
    if isinstance(tally, MultiLabelTally):
        return tally.result(classes, thresholds)
    return tally.result(classes)
