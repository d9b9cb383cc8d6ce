"""What an evaluation found, as plain data (no torch): built by the single-label tally
(evaluation.py) and the multi-label one (multilabel.py), read by the job, the CLI and
the reports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def class_figures(hits: int, support: int, predicted: int) -> tuple[float | None, float | None, float | None]:
    """(precision, recall, F1) of one class from its true positives, its images and the
    images predicted as it, as scikit-learn computes them: F1 = 2 TP / (support +
    predicted), so a class with images that is never predicted (or predicted but absent)
    scores 0; None where the figure divides by zero (F1: a class absent from both the
    truth and the predictions)."""
    precision = hits / predicted if predicted else None
    recall = hits / support if support else None
    f1 = 2 * hits / (support + predicted) if support + predicted else None
    return precision, recall, f1


def macro_f1(f1s: Iterable[float | None]) -> float | None:
    """The mean F1 over the classes that occur in the truth or the predictions: scikit-
    learn's f1_score(average="macro") with its default labels (those in y_true or
    y_pred); a class absent from both is left out, not counted as 0."""
    scored = [v for v in f1s if v is not None]
    return sum(scored) / len(scored) if scored else None


@dataclass
class Evaluation:
    num_images: int
    accuracy: float
    top5: float | None  # None for multi-label models
    loss: float
    per_class: dict[str, float | None]
    confusion: list[list[int]]
    classes: list[str]
    predictions: list = field(default_factory=list, repr=False)
    folder: str = ""  # where the images came from (evaluate's held-out split of a dataset root)
    balanced_accuracy: float | None = None  # mean recall over the classes present
    macro_f1: float | None = None
    micro_f1: float | None = None  # multi-label
    map: float | None = None  # multi-label: mean average precision over classes with positives
    precision: dict[str, float | None] = field(default_factory=dict)
    recall: dict[str, float | None] = field(default_factory=dict)
    f1: dict[str, float | None] = field(default_factory=dict)
    thresholds: list[float] | None = None  # multi-label: per class (given, or chosen on these images)
    thresholds_chosen_here: bool = False
    multi_label: bool = False
    labels: list = field(default_factory=list, repr=False)  # each image's true label, in the set's order
    scores: Any = field(default=None, repr=False)  # images x classes: log-probabilities (multi-label: probabilities)
    intervals: dict[str, Any] = field(default_factory=dict)  # figure -> [low, high] (95%), when asked for

    @property
    def correct(self) -> list[bool]:
        """Each image right or not (multi-label: every label right), for paired comparisons."""
        return [p == y for p, y in zip(self.predictions, self.labels)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "top5": self.top5,
            "loss": self.loss,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "num_images": self.num_images,
            "per_class_accuracy": self.per_class,
            "per_class_precision": self.precision,
            "per_class_recall": self.recall,
            "per_class_f1": self.f1,
            "confusion_matrix": self.confusion,
            "classes": self.classes,
            "folder": self.folder,
        }
        if self.multi_label:
            out.update(
                {
                    "map": self.map,
                    "micro_f1": self.micro_f1,
                    "per_class_ap": out.pop("per_class_accuracy"),
                    "thresholds": self.thresholds,
                    "thresholds_chosen_here": self.thresholds_chosen_here,
                }
            )
            del out["top5"], out["balanced_accuracy"], out["confusion_matrix"]
        for figure, interval in self.intervals.items():
            out[f"{figure}_interval"] = interval
        return out
