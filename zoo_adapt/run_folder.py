"""The run folder a job writes: model.safetensors, metrics.json, config.toml,
checkpoint.pt and the plots. Files are written to a temporary name and renamed, so a
reader never sees half a file."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import FinetuneConfig
from .engine.callbacks import Callback
from .errors import ZooAdaptError

MODEL_FILE = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.toml"
ADAPTATION_FILE = "adaptation.safetensors"  # the method's own modules (a domain classifier), beside the model
RUN_FILES = (MODEL_FILE, CHECKPOINT, METRICS_FILE)


def prepare_out(config: FinetuneConfig, overwrite: bool) -> Path:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ZooAdaptError(f"--out {out} is a file, not a folder")
    checkpoint = out / CHECKPOINT
    if config.resume:
        if not checkpoint.is_file():
            raise ZooAdaptError(f"nothing to resume: {checkpoint} does not exist")
    elif not overwrite and any((out / f).exists() for f in RUN_FILES):
        raise ZooAdaptError(f"{out} already holds a run; continue it with --resume, or pass "
                            "--overwrite, or choose another --out")
    return out


def write_config(config: FinetuneConfig, path: Path) -> None:
    import tomli_w

    values = {k: v for k, v in config.to_dict().items() if v is not None and k != "resume"}
    path.write_text(tomli_w.dumps(values))


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(x: Any):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x).__name__)


class RunFolder(Callback):
    """After each epoch: the checkpoint, the model when it is the one to keep (the best so
    far, or every epoch with keep='last'), and metrics.json so far."""

    order = 90

    def __init__(self, out: Path, keep: str, export: Callable[[int], None],
                 metrics: Callable[[bool], dict[str, Any]]):
        self.out, self.keep, self.export, self.metrics = out, keep, export, metrics

    def epoch_end(self, loop, record, improved: bool) -> None:
        save_atomic(loop.state_dict(), self.out / CHECKPOINT)
        if improved or self.keep == "last" or loop.best is None:
            self.export(record.epoch)
        write_json(self.metrics(False), self.out / METRICS_FILE)
