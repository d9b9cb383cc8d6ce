"""Scoring a multi-label model: average precision per class and its mean (mAP, needs
no threshold), and, at per-class thresholds, F1 (per class, macro, micro), precision,
recall and exact-match accuracy. Thresholds are chosen on validation, each class's at
its best F1, and stored in the export, so `predict` and `evaluate` use them."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from zoo_adapt.metrics import intervals as ci
from zoo_adapt.metrics.scores import Evaluation, class_figures, macro_f1

DEFAULT_THRESHOLD = 0.5


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """The mean of the precision at each positive, ranked by score (scikit-learn's
    average_precision_score); None without positives."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    # ties share the precision at the end of their group, as a threshold cannot split them
    ranked = scores[order]
    last = np.r_[ranked[1:] != ranked[:-1], True]
    tp, seen = np.cumsum(hits), np.arange(1, len(hits) + 1)
    group_ends = np.flatnonzero(last)
    end = group_ends[np.searchsorted(group_ends, np.arange(len(hits)))]
    return float((tp[end] / seen[end] * hits / n_pos).sum())


def best_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold with the highest F1 on these scores: halfway between the lowest
    score called positive and the next lower one. Without positives: 0.5."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order].astype(np.float64)
    tp = np.cumsum(hits)
    cut = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # last index of each run of equal scores
    f1 = 2 * tp[cut] / (n_pos + cut + 1)
    k = cut[int(np.argmax(f1))]
    below = ranked[k + 1] if k + 1 < len(ranked) else 0.0
    return float((ranked[k] + below) / 2)


class MultiLabelTally:
    """Probabilities and 0/1 labels of every image; under data parallelism each process
    keeps its shard and `all_reduce` gathers the whole set on every process."""

    def __init__(self, num_classes: int, device: torch.device):
        self.n = num_classes
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def add(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        self.probs.append(probs.float())
        self.labels.append(y.float())

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.probs:
            return torch.zeros(0, self.n), torch.zeros(0, self.n)
        return torch.cat(self.probs).cpu(), torch.cat(self.labels).cpu()

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            shards: list = [None] * dist.get_world_size()
            dist.all_gather_object(shards, self._stacked())
            self.probs, self.labels = [s[0] for s in shards], [s[1] for s in shards]

    def result(self, classes: list[str], thresholds: list[float] | None = None, intervals: bool = False):
        probs_t, labels_t = self._stacked()
        probs, labels = probs_t.numpy().astype(np.float64), labels_t.numpy() > 0.5
        count = len(probs)
        chosen = thresholds is None
        if thresholds is None:
            thresholds = [best_threshold(probs[:, i], labels[:, i]) for i in range(self.n)]
        said = probs >= np.asarray(thresholds)[None, :]
        ap, precision, recall, f1 = {}, {}, {}, {}
        for i, c in enumerate(classes):
            tp = int((said[:, i] & labels[:, i]).sum())
            n_said, n_pos = int(said[:, i].sum()), int(labels[:, i].sum())
            ap[c] = average_precision(probs[:, i], labels[:, i])
            precision[c], recall[c], f1[c] = class_figures(tp, n_pos, n_said)
        aps = [v for v in ap.values() if v is not None]
        tp_all = int((said & labels).sum())
        micro = 2 * tp_all / (int(said.sum()) + int(labels.sum())) if said.sum() + labels.sum() else None
        clipped = np.clip(probs, 1e-7, 1 - 1e-7)
        loss = float(-(labels * np.log(clipped) + (~labels) * np.log(1 - clipped)).mean()) if count else 0.0
        exact = float((said == labels).all(1).mean()) if count else 0.0
        result = Evaluation(
            count,
            exact,
            None,
            loss,
            ap,
            [],
            list(classes),
            said.astype(int).tolist(),
            macro_f1=macro_f1(f1.values()),
            micro_f1=micro,
            map=sum(aps) / len(aps) if aps else None,
            precision=precision,
            recall=recall,
            f1=f1,
            thresholds=[float(t) for t in thresholds],
            thresholds_chosen_here=chosen,
            multi_label=True,
            labels=labels.astype(int).tolist(),
            scores=probs,
        )
        if intervals:
            boot = ci.multi_label_bootstrap(probs, labels, said, average_precision)
            result.intervals = {
                "accuracy": ci.as_list(ci.wilson(int((said == labels).all(1).sum()), count)),
                "map": ci.as_list(boot["map"]),
                "macro_f1": ci.as_list(boot["macro_f1"]),
                "micro_f1": ci.as_list(boot["micro_f1"]),
                "per_class_recall": {
                    c: ci.as_list(ci.wilson(int((said[:, i] & labels[:, i]).sum()), int(labels[:, i].sum())))
                    for i, c in enumerate(classes)
                },
            }
        return result
