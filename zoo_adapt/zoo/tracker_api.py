"""What an experiment tracker is to zoo-adapt (no torch, no tracker package here: plugins
import this through `zoo_adapt.plugin_api`).

One `Tracking` callback in the loop drives every tracker the run asked for (`--log
NAME`), always in this order:

1. `start(run)`, once, before the first figure: `run` says what the run is (its name,
   folder, options, whether it resumes a checkpoint and the tracker's own state saved
   with it, e.g. its run id). Then `location()`: where the records are, said on the
   run's first lines.
2. `log_metrics(metrics, step, scope)`, many times: `scope` "step" (every optimizer step,
   `step` = optimizer steps done), "epoch" (`step` = the epoch number) and, once, "final"
   (the kept model's results; `step` = the last epoch). Keys are `step/loss`,
   `step/accuracy`, `step/lr/<group>` (every layer group's rate), `epoch/train_loss`,
   `epoch/val_accuracy`, `epoch/lr/<group>`, ..., `final/val_accuracy`, ...
3. `log_image(key, path, step)` for each picture of the run (curves, confusion matrix,
   the analysis' top losses and class activation maps) and `log_artifact(path, name)`
   for each file to keep (the model, metrics.json, history.csv, config.toml, the model
   card, model.onnx, the analysis tables), after the last epoch.
4. `finish(status)`, always: "finished", "interrupted" (Ctrl-C, SIGTERM: `--resume`
   continues) or "failed".

`state_dict()` is saved in every checkpoint and handed back as `run.state` when the run
resumes, so a tracker can continue its own run. A tracker that raises in `start` stops
the job before its first epoch (one line naming it); one that raises later is reported
once and left out for the rest of the run: training never stops for a logging failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCOPES = ("step", "epoch", "final")
STATUSES = ("finished", "interrupted", "failed")


@dataclass(frozen=True)
class TrackerRun:
    """What a tracker is told when it starts.

    name: the run's name (the run folder's name); out: the run folder; folder: the
    tracker's own folder in it (``out/<tracker name>``, not created: a tracker that
    writes files there creates it); params: the run's options, every value resolved,
    flattened to numbers, booleans and texts; resumed: True when the run continues
    from a checkpoint; state: what this tracker's `state_dict()` returned at that
    checkpoint ({} otherwise); step: optimizer steps done so far (0 unless resumed);
    epochs: epochs in all; classes: the class names."""

    name: str
    out: Path
    folder: Path
    params: dict[str, Any]
    resumed: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    epochs: int = 0
    classes: tuple[str, ...] = ()


class Tracker:
    """Base class of experiment trackers; override what your tracker supports (every
    method has a do-nothing default)."""

    def start(self, run: TrackerRun) -> None:
        """Open (or, with `run.state` from a checkpoint, reopen) the tracker's run and
        record `run.params`."""

    def location(self) -> str | None:
        """After `start`: where this run's records are and how to see them (a folder, a
        store URI, a URL), said on the run's first lines; None says nothing."""
        return None

    def log_metrics(self, metrics: dict[str, float], step: int, scope: str) -> None:
        """Numbers at `step` (see the module doc for scopes and keys)."""

    def log_image(self, key: str, path: Path, step: int) -> None:
        """A PNG the run wrote (key: its name without extension, e.g. "curves",
        "analysis/top_losses")."""

    def log_artifact(self, path: Path, name: str) -> None:
        """A file of the run folder to keep with the run (`name`: its path in the folder)."""

    def state_dict(self) -> dict[str, Any]:
        """What to save with each checkpoint (plain data: texts, numbers, lists, dicts)."""
        return {}

    def finish(self, status: str) -> None:
        """Close the run: "finished", "interrupted" or "failed"."""
