"""What an evaluation found, as plain data (no torch): built by the single-label tally
(evaluation.py) and the multi-label one (multilabel.py), read by the job, the CLI and
the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
