"""The run folder a job writes: model.safetensors, metrics.json, config.toml,
checkpoint.pt and the plots, consistent whenever the process is killed.

checkpoint.pt is the run's record: it holds everything to continue (weights, optimizer,
schedule, history, the kept epoch's weights, the options it was made with), and after
each epoch it is replaced first. model.safetensors and metrics.json are derived from it:
when the kept model changes, metrics.json is removed, the model written, then metrics.json
(which names the model's SHA-256 and the checkpoint's epoch) written again. So after a
kill at any point the two user-facing files agree with each other or metrics.json is
absent, never describing another model; the checkpoint may be one epoch ahead, and
`--resume` rewrites both from it. The folder is locked while a run uses it.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.files import clean_temporaries, remove, write_bytes, write_text
from zoo_adapt.model.weights import CHECKPOINT_KEYS, read_checkpoint, safetensors_metadata
from zoo_adapt.ship.model_files import MODEL_FILE

CHECKPOINT = "checkpoint.pt"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.toml"
HISTORY_FILE = "history.csv"  # one row per epoch, every logged figure (rewritten after each epoch)
ADAPTATION_FILE = "adaptation.safetensors"  # the method's own modules (a domain classifier), beside the model
RANK_FILE = "rank.json"  # --backbone auto: the ranking that chose the backbone
LOCK_FILE = ".zoo-adapt.lock"
CALIBRATION_PLOT = "calibration.png"  # the reliability diagram, before and after temperature scaling
PLOTS = ("curves.png", "confusion_matrix.png", "adaptation.png", "lr_find.png", CALIBRATION_PLOT)
RUN_FILES = (MODEL_FILE, CHECKPOINT, METRICS_FILE)
# written at the end of a run: the model card, timm's config, the ONNX model, the analysis folder
SHIPPING = ("README.md", "config.json", "model.onnx", "analysis")
OUTPUTS = (*RUN_FILES, CONFIG_FILE, HISTORY_FILE, ADAPTATION_FILE, RANK_FILE, *PLOTS, *SHIPPING)
CHECKPOINT_FORMAT = "zoo-adapt-checkpoint/1"


class RunFolder:
    """One run's folder: checks before anything is written, the lock, and every write."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.model_sha: str | None = None
        self._created = False
        self._began = False
        self._lock_fd: int | None = None

    def path(self, name: str) -> Path:
        return self.out / name

    def precheck(self, resume: bool, overwrite: bool) -> None:
        """Read-only: is --out usable for this kind of start?"""
        if self.out.exists() and not self.out.is_dir():
            raise ZooAdaptError(f"--out {self.out} is a file, not a folder")
        if resume:
            if not self.path(CHECKPOINT).is_file():
                raise ZooAdaptError(
                    f"nothing to resume: {self.path(CHECKPOINT)} does not exist (a run "
                    "interrupted in its first epoch leaves no checkpoint: start it again)"
                )
        elif not overwrite and any(self.path(f).exists() for f in RUN_FILES):
            raise ZooAdaptError(
                f"{self.out} already holds a run; continue it with --resume, rerun it from "
                "scratch with --overwrite, or choose another --out"
            )

    @contextmanager
    def locked(self):
        """Hold the folder's lock for the duration (see `acquire`)."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def acquire(self) -> None:
        """Take the folder's lock (an OS file lock on LOCK_FILE: released when the process
        ends, however it ends), creating the folder if needed. The run that holds the lock
        removes the file when it lets go; a process that locked the file just as it was
        removed holds a lock on nothing, so it checks that the file it locked is still the
        one on disk and tries again otherwise."""
        fd = None
        for _ in range(100):
            fd = self._locked_fd()
            if fd is None:
                continue  # the folder went as we opened the file (its last run removed it): make it again
            try:
                on_disk = os.stat(self.path(LOCK_FILE))
            except FileNotFoundError:
                on_disk = None
            mine = os.fstat(fd)
            if on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (mine.st_ino, mine.st_dev):
                break
            os.close(fd)  # the holder removed it as we locked it: lock the file there now
            fd = None
        if fd is None:
            raise ZooAdaptError(f"cannot lock --out {self.out}: its lock file keeps being removed")
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
        )
        self._lock_fd = fd

    def _locked_fd(self) -> int | None:
        """The lock file, opened (the folder made if needed) and locked; None if the
        folder vanished between the two."""
        try:
            if not self.out.exists():
                self.out.mkdir(parents=True, exist_ok=True)
                self._created = True
            fd = os.open(self.path(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ZooAdaptError(f"cannot write to --out {self.out}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ZooAdaptError(
                f"{self.out} is in use by another zoo-adapt run ({holder}); wait for it to end or choose another --out"
            ) from None
        return fd

    def release(self) -> None:
        """Let go of the lock, removing its file while still holding it (see `acquire`); a
        folder this run created and never began writing is removed again."""
        if self._lock_fd is not None:
            try:
                os.unlink(self.path(LOCK_FILE))
            except OSError:
                pass  # removed already, or a read-only folder: the lock goes with the descriptor
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._created and not self._began:
            self.discard()

    def finished_epochs(self) -> int | None:
        """The epochs of a run that finished and wrote all its results (metrics.json says
        finished, and the model card, written last, is as new); None otherwise: a run
        stopped while writing its results is not finished, `--resume` completes it."""
        try:
            metrics = json.loads(self.path(METRICS_FILE).read_text())
            card = self.path("README.md").stat().st_mtime_ns
            written = self.path(METRICS_FILE).stat().st_mtime_ns
        except (OSError, ValueError):
            return None
        if not isinstance(metrics, dict) or metrics.get("finished") is not True or card < written:
            return None
        done = metrics.get("epochs_done")
        return done if isinstance(done, int) and done == metrics.get("epochs") else None

    def model_provenance(self) -> str | None:
        """The pretrained weights the run started from, as its model file's header says."""
        try:
            return safetensors_metadata(self.path(MODEL_FILE)).get("pretrained_weights")
        except (OSError, ValueError, ZooAdaptError):
            return None

    def read_checkpoint(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        """The checkpoint, loaded without unpickling code, checked to be a zoo-adapt one."""
        state = read_checkpoint(self.path(CHECKPOINT), device, required=(*CHECKPOINT_KEYS, "format"))
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ZooAdaptError(
                f"{self.path(CHECKPOINT)} was written by another version of zoo-adapt "
                f"({state.get('format')!r}); start the run again with --overwrite"
            )
        return state

    def begin(self, config_text: str, fresh: bool) -> None:
        """The run really starts: leftovers of a killed run are removed, a fresh run
        removes the outputs of an earlier one (so its checkpoint can never be resumed
        with new options), and config.toml is written."""
        clean_temporaries(self.out)
        if fresh:
            for name in OUTPUTS:
                remove(self.path(name), folders=True)
        write_text(self.path(CONFIG_FILE), config_text)
        self._began = True

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes(self.path(CHECKPOINT), buffer.getvalue())

    def write_outputs(self, model_changed: bool, write_model: Callable[[Path], Any], metrics: dict[str, Any]) -> None:
        """model.safetensors (when the kept model changed) and metrics.json, in the order
        that never lets metrics.json describe another model."""
        if model_changed or self.model_sha is None:
            remove(self.path(METRICS_FILE))
            write_model(self.path(MODEL_FILE))
            self.model_sha = sha256(self.path(MODEL_FILE))
        write_json({**metrics, "model_sha256": self.model_sha}, self.path(METRICS_FILE))
        write_text(self.path(HISTORY_FILE), history_csv(metrics.get("history", [])))

    def has_checkpoint(self) -> bool:
        return self.path(CHECKPOINT).is_file()

    def discard(self) -> None:
        """Remove what this run wrote (it never got to a checkpoint), and the folder if
        this run created it."""
        for name in (*OUTPUTS, LOCK_FILE):
            path = self.path(name)
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                pass
        clean_temporaries(self.out)
        if self._created:
            try:
                self.out.rmdir()
            except OSError:
                pass


class EpochRecorder(Callback):
    """After each epoch: the checkpoint (with the kept epoch's weights: the best so far,
    or the last with keep='last'; the weight average's when there is one), then the
    model and metrics derived from it. Under torchrun every process keeps the kept
    weights (all evaluate the kept model at the end), and only rank 0 (`write`) writes."""

    order = 90

    def __init__(
        self,
        folder: RunFolder,
        keep: str,
        checkpoint_extra: dict[str, Any],
        write_model: Callable[[Path, dict | None, int], Any],
        metrics: Callable[[Any, bool], dict],
        write: bool = True,
    ):
        """`write_model(path, state, epoch)` writes model.safetensors; `metrics(loop,
        finished)` is what metrics.json holds."""
        self.folder, self.keep, self.extra, self.write = folder, keep, checkpoint_extra, write
        self.write_model, self.metrics = write_model, metrics
        self.kept_state: dict[str, torch.Tensor] | None = None
        self.kept_epoch = 0
        self.loop = None

    def setup(self, loop) -> None:
        self.loop = loop

    def epoch_end(self, loop, record, improved: bool) -> None:
        changed = improved or self.keep == "last" or loop.best is None
        if changed:
            self.kept_epoch = record.epoch
            self.kept_state = (
                None
                if self.keep == "last" and loop.runtime.averaged is None
                else {k: v.detach().to("cpu", copy=True) for k, v in loop.kept_weights().items()}
            )
        if self.write:
            self.folder.write_checkpoint({**loop.state_dict(), **self.extra})
            self.commit_outputs(changed)

    def commit_outputs(self, changed: bool = True) -> None:
        if self.write:
            self.folder.write_outputs(
                changed,
                lambda path: self.write_model(path, self.kept_state, self.kept_epoch),
                {**self.metrics(self.loop, False), "kept_epoch": self.kept_epoch},
            )

    def state_dict(self) -> dict[str, Any]:
        return {"kept_epoch": self.kept_epoch, "kept_state": self.kept_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept_epoch, self.kept_state = state["kept_epoch"], state["kept_state"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(obj: Any, path: Path) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(x: Any):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x).__name__)


def history_rows(history: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of history.csv: every per-epoch figure of metrics.json's history,
    the learning rates as lr_<group> columns, the trainable groups as 'i j k'."""
    rows = []
    for record in history:
        row = {}
        for key, value in record.items():
            if key == "lrs":
                row.update({f"lr_{group}": lr for group, lr in value.items()})
            elif isinstance(value, (list, tuple)):
                row[key] = " ".join(map(str, value))
            else:
                row[key] = value
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return columns, rows


def history_csv(history: list[dict[str, Any]]) -> str:
    columns, rows = history_rows(history)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def config_text(values: dict[str, Any], notes: list[str]) -> str:
    """config.toml: the resolved options, with notes on what was left to the machine."""
    header = "".join(f"# {line}\n" for line in notes)
    return header + tomli_w.dumps(values)
