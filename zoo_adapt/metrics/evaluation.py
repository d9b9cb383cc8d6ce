"""Accuracy, top-5, balanced accuracy, per-class accuracy, precision, recall and F1
and the confusion matrix, with optional test-time augmentation: the softmax averaged
over the image, its mirror image and zoomed-in centre crops. Counts stay on the
device until the end (one read per evaluation, not per batch). Multi-label models
(sigmoid per class) are scored by multilabel.py's tally: mAP, F1 at per-class
thresholds."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from zoo_adapt.metrics import intervals as ci
from zoo_adapt.metrics.multilabel import MultiLabelTally
from zoo_adapt.metrics.scores import Evaluation, class_figures, macro_f1
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
    temperature: float = 1.0,
    vflip: bool = False,
    rot90: bool = False,
) -> torch.Tensor:
    """Class probabilities: softmax of the logits divided by `temperature` (the
    calibration stored in an export; a sigmoid per class when `multi_label`), averaged
    over the TTA views if asked. `autocast`: a context factory (the loop's), or True for
    bf16 autocast."""
    return predict_log_proba(model, x, tta, autocast, flip, multi_label, temperature, vflip, rot90).exp()


def predict_log_proba(
    model: nn.Module,
    x: torch.Tensor,
    tta: bool = False,
    autocast: bool | Callable = False,
    flip: bool = True,
    multi_label: bool = False,
    temperature: float = 1.0,
    vflip: bool = False,
    rot90: bool = False,
) -> torch.Tensor:
    """The log of `predict_proba`, exact without TTA (log-softmax of the logits, so a
    confident model's small probabilities keep their size for calibration)."""
    views = tta_views(x, flip=flip, vflip=vflip, rot90=rot90) if tta else [x]
    with torch.no_grad(), _autocast(autocast, x.device):
        logits = [model(v).float() / temperature for v in views]
    if multi_label:
        return torch.stack([z.sigmoid() for z in logits]).mean(0).clamp_min(1e-30).log()
    if len(logits) == 1:
        return logits[0].log_softmax(-1)
    return torch.stack([z.log_softmax(-1) for z in logits]).logsumexp(0) - math.log(len(logits))


def _autocast(autocast, device: torch.device):
    if callable(autocast):
        return autocast()
    return torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()


class Tally:
    """Sums of an evaluation, kept on the device: confusion counts, top-5 hits, summed
    negative log-likelihood; and each image's label and prediction (for intervals and
    paired comparisons), with its log-probabilities when `keep_scores` (calibration).
    Under data parallelism each process tallies its shard and `all_reduce` adds the sums
    up and gathers the images in the set's order, so the result is the whole set's."""

    def __init__(self, num_classes: int, device: torch.device, keep_scores: bool = False):
        self.n = num_classes
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # top-5 hits, nll
        self.predictions: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.keep_scores = keep_scores
        self.scores: list[torch.Tensor] = []

    def add(self, log_probs: torch.Tensor, y: torch.Tensor) -> None:
        pred = log_probs.argmax(-1)
        self.predictions.append(pred)
        self.labels.append(y)
        if self.keep_scores:
            self.scores.append(log_probs.float().cpu())
        self.confusion += torch.bincount(y * self.n + pred, minlength=self.n * self.n)
        k = min(5, self.n)
        hits = (log_probs.topk(k, -1).indices == y[:, None]).any(-1).sum()
        nll = F.nll_loss(log_probs.float().clamp_min(-1e4), y, reduction="sum")
        self.sums += torch.stack([hits.double(), nll.double()])

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion)
            dist.all_reduce(self.sums)
            self.predictions = [gather_in_order(_cat(self.predictions, torch.long))]
            self.labels = [gather_in_order(_cat(self.labels, torch.long))]
            if self.keep_scores:
                self.scores = [gather_in_order(_cat(self.scores, torch.float32, self.n))]

    def result(self, classes: list[str], intervals: bool = False) -> Evaluation:
        confusion = self.confusion.view(self.n, self.n).cpu()
        hits, nll = self.sums.tolist()
        count = int(confusion.sum())
        correct, totals = confusion.diag(), confusion.sum(1)
        per_class = {c: (correct[i].item() / totals[i].item() if totals[i] else None) for i, c in enumerate(classes)}
        predictions = _cat(self.predictions, torch.long).tolist()
        labels = _cat(self.labels, torch.long).tolist()
        predicted = confusion.sum(0)
        precision, recall, f1 = {}, {}, {}
        for i, c in enumerate(classes):
            precision[c], recall[c], f1[c] = class_figures(int(correct[i]), int(totals[i]), int(predicted[i]))
        present = [r for r in recall.values() if r is not None]
        result = Evaluation(
            count,
            correct.sum().item() / max(count, 1),
            hits / max(count, 1),
            nll / max(count, 1),
            per_class,
            confusion.tolist(),
            list(classes),
            predictions,
            balanced_accuracy=sum(present) / len(present) if present else None,
            macro_f1=macro_f1(f1.values()),
            precision=precision,
            recall=recall,
            f1=f1,
            labels=labels,
            scores=_cat(self.scores, torch.float32, self.n).numpy() if self.keep_scores else None,
        )
        if intervals:
            result.intervals = single_label_intervals(result, int(round(hits)), totals.tolist(), correct.tolist())
        return result


def single_label_intervals(result: Evaluation, top5_hits: int, support: list[int], tp: list[int]) -> dict:
    """metrics.json's `<figure>_interval`s: Wilson for accuracy, top-5 and each class's
    recall, the bootstrap over images for balanced accuracy and macro F1."""
    n = result.num_images
    boot = ci.single_label_bootstrap(result.labels, result.predictions, len(result.classes))
    return {
        "accuracy": ci.as_list(ci.wilson(round(result.accuracy * n), n)),
        "top5": ci.as_list(ci.wilson(top5_hits, n)),
        "balanced_accuracy": ci.as_list(boot["balanced_accuracy"]),
        "macro_f1": ci.as_list(boot["macro_f1"]),
        "per_class_recall": {c: ci.as_list(ci.wilson(t, s)) for c, t, s in zip(result.classes, tp, support)},
    }


def _cat(parts: list[torch.Tensor], dtype: torch.dtype, width: int | None = None) -> torch.Tensor:
    if not parts:
        return torch.zeros((0, width) if width else (0,), dtype=dtype)
    return torch.cat([p.cpu() for p in parts]).to(dtype)


def gather_in_order(local: torch.Tensor) -> torch.Tensor:
    """The rows of a whole evaluation set from each process's shard (rank r holds rows
    r, r + world, ...; evaluation shards are never padded), in the set's order."""
    world = dist.get_world_size()
    parts: list = [None] * world
    dist.all_gather_object(parts, local.cpu())
    total = sum(len(p) for p in parts)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for rank, part in enumerate(parts):
        out[rank::world] = part
    return out


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
    temperature: float = 1.0,
    intervals: bool = False,
    keep_scores: bool = False,
    sharded: bool = True,
    vflip: bool = False,
    rot90: bool = False,
) -> Evaluation:
    """Score `model` over (images, labels) batches already on the model's device;
    `progress`: a name to show progress under (long evaluations). `multi_label`: 0/1
    label vectors, scored at `thresholds` (None: each class's best F1 on these images).
    `temperature`: the logits are divided by it (a calibrated export's); `intervals`:
    the 95% interval of every figure too (the bootstrap costs a moment: final figures
    only); `keep_scores`: each image's log-probabilities in `Evaluation.scores`;
    `sharded`: under torchrun the batches are this process's shard, to be added up with
    the others' (False: every process has all the images, nothing is exchanged)."""
    model.eval()
    tally: Tally | MultiLabelTally | None = None
    device = next(model.parameters()).device

    def make() -> Tally | MultiLabelTally:
        return MultiLabelTally(len(classes), device) if multi_label else Tally(len(classes), device, keep_scores)

    total = len(batches) if isinstance(batches, Sized) else 0
    for x, y in track(batches, total, progress or "", count=lambda b: len(b[1]), enabled=bool(progress and total)):
        log_probs = predict_log_proba(model, x, tta, autocast, flip, multi_label, temperature, vflip, rot90)
        if tally is None:
            device = log_probs.device
            tally = make()
        if isinstance(tally, MultiLabelTally):
            tally.add(log_probs.exp(), y.to(log_probs.device))
        else:
            tally.add(log_probs, y.to(log_probs.device))
    if tally is None:
        tally = make()
    if sharded:
        tally.all_reduce()
    if isinstance(tally, MultiLabelTally):
        return tally.result(classes, thresholds, intervals=intervals)
    return tally.result(classes, intervals=intervals)
