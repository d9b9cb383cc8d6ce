"""The one loop callback that feeds experiment trackers (`--log NAME`): per-step and
per-epoch figures, every layer group's learning rate, the run's options, and at the end
the final results, the pictures and the files of the run folder. What each tracker does
with them is its plugin's business (zoo_adapt/tracker_api.py has the contract).

A step never waits for the device here either: step figures stay tensors until
`flush_every` steps have gathered (or the epoch ends) and are then read in one go."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.errors import ZooAdaptError, first_line
from zoo_adapt.zoo.plugins import report
from zoo_adapt.zoo.tracker_api import TrackerRun

# pictures and files of a run folder that trackers receive at the end, in this order
IMAGES = ("curves.png", "confusion_matrix.png", "domain_gap.png", "analysis/top_losses.png", "analysis/cams.png")
ARTIFACTS = (
    "model.safetensors",
    "metrics.json",
    "history.csv",
    "config.toml",
    "README.md",
    "config.json",
    "model.onnx",
    "adaptation.safetensors",
    "analysis/per_class.csv",
    "analysis/analysis.json",
)
FINAL = (
    "val_accuracy",
    "val_top5",
    "val_loss",
    "val_accuracy_tta",
    "val_top5_tta",
    "kept_epoch",
    "target_accuracy_oracle",
)


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Options as trackers take them: nested tables as a.b, lists as comma-separated text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[prefix + key] = ",".join(map(str, value))
        else:
            out[prefix + key] = value
    return out


class Tracking(Callback):
    """Drives the trackers of one run. `trackers`: name -> Tracker; `params`: the
    resolved options."""

    order = 95  # after the run folder's recorder (90), before the progress display (100)

    def __init__(
        self,
        trackers: dict[str, Any],
        out: str | Path,
        params: dict[str, Any],
        classes: Sequence[str],
        flush_every: int = 20,
        log: Callable[[str], None] | None = None,
    ):
        self.trackers = dict(trackers)
        self.log = log or (lambda line: None)
        self.out, self.params, self.classes = Path(out), flat_params(params), tuple(classes)
        self.flush_every = flush_every
        self.saved: dict[str, dict] = {}
        self.started = False
        self.finished = False
        self._steps: list[tuple[int, dict[str, Any]]] = []
        self._loop = None

    # -- the loop's events ---------------------------------------------------------
    def setup(self, loop) -> None:
        self._loop = loop

    def epoch_start(self, loop, epoch: int) -> None:
        self.start(loop)

    def step_end(self, loop, step) -> None:
        if not self.trackers:
            return
        figures = {f"step/{k}": v.detach() if isinstance(v, torch.Tensor) else v for k, v in step.figures.items()}
        figures.update(self._rates(loop, "step"))
        self._steps.append((loop.scheduler.last_epoch, figures))
        if len(self._steps) >= self.flush_every:
            self.flush()

    def epoch_end(self, loop, record, improved: bool) -> None:
        if not self.trackers:
            return
        self.flush()
        figures = {
            f"epoch/{k}": v
            for k, v in record.to_dict().items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch" and v is not None
        }
        figures.update(self._rates(loop, "epoch"))
        self._send("log_metrics", figures, record.epoch, "epoch")

    def state_dict(self) -> dict[str, Any]:
        states = dict(self.saved)
        for name in list(self.trackers):
            if self.started:
                states[name] = self._call(name, "state_dict") or {}
        return {"trackers": states} if states else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = dict(state.get("trackers", {}))

    # -- what the job calls --------------------------------------------------------
    def start(self, loop=None) -> None:
        """Start every tracker (once): a tracker that cannot start stops the job."""
        if self.started or not self.trackers:
            self.started = True
            return
        loop = loop or self._loop
        step = loop.scheduler.last_epoch if loop is not None else 0
        epochs = len(loop.plan) if loop is not None else 0
        resumed = bool(loop is not None and loop.epoch > 0)
        for name, tracker in self.trackers.items():
            run = TrackerRun(
                self.out.name,
                self.out,
                self.out / name,
                dict(self.params),
                resumed,
                dict(self.saved.get(name, {})),
                step,
                epochs,
                self.classes,
            )
            try:
                tracker.start(run)
            except ZooAdaptError as e:
                raise ZooAdaptError(f"--log {name}: {e}") from None
            except Exception as e:
                raise ZooAdaptError(f"--log {name}: the tracker could not start: {first_line(e)}") from e
            where = self._call(name, "location")
            if where:
                self.log(f"--log {name}: {where}")
        self.started = True

    def publish(self, out: Path, metrics: dict[str, Any]) -> None:
        """After the last epoch: the final results, the pictures, the files to keep."""
        if not self.trackers:
            return
        self.start()
        self.flush()
        step = int(metrics.get("epochs_done") or metrics.get("epochs") or 0)
        final = {f"final/{k}": metrics[k] for k in FINAL if isinstance(metrics.get(k), (int, float))}
        per_class = metrics.get("per_class_accuracy") or {}
        if len(per_class) <= 100:
            final.update({f"final/class_accuracy/{c}": v for c, v in per_class.items() if v is not None})
        self._send("log_metrics", final, step, "final")
        for name in IMAGES:
            if (out / name).is_file():
                self._send("log_image", name.rsplit(".", 1)[0], out / name, step)
        for name in ARTIFACTS:
            if (out / name).is_file():
                self._send("log_artifact", out / name, name)

    def finish(self, status: str) -> None:
        if self.finished:
            return
        self.finished = True
        if self.started:
            if status == "finished":
                self.flush()
            for name in list(self.trackers):
                self._call(name, "finish", status)

    @contextlib.contextmanager
    def running(self) -> Iterator[Tracking]:
        """Finish every tracker however the job ends: finished, interrupted or failed."""
        try:
            yield self
        except KeyboardInterrupt:
            self.finish("interrupted")
            raise
        except BaseException:
            self.finish("failed")
            raise
        self.finish("finished")

    # -- inside --------------------------------------------------------------------
    def flush(self) -> None:
        """Read the gathered step figures from the device in one go and send them."""
        if not self._steps:
            return
        steps, self._steps = self._steps, []
        tensors = [v for _, figures in steps for v in figures.values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.float().reshape(()).cpu() for t in tensors]).tolist() if tensors else [])
        for step, figures in steps:
            numbers = {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in figures.items()}
            self._send("log_metrics", numbers, step, "step")

    def _rates(self, loop, scope: str) -> dict[str, float]:
        rates: dict[str, float] = {}
        for group in loop.optimizer.param_groups:
            rates.setdefault(f"{scope}/lr/{group.get('name', 'extra')}", float(group["lr"]))
        return rates

    def _send(self, method: str, *args) -> None:
        for name in list(self.trackers):
            self._call(name, method, *args)

    def _call(self, name: str, method: str, *args):
        tracker = self.trackers.get(name)
        if tracker is None:
            return None
        try:
            return getattr(tracker, method)(*args)
        except Exception as e:
            del self.trackers[name]
            report(
                f"--log {name}: the tracker failed in {method} ({first_line(e)}); it records nothing more in "
                "this run (training goes on)"
            )
            return None
