"""The CUDA tier (`pytest -m cuda`): every CUDA path of the engine on small real data,
each test asserting what the path must do, in a few minutes on one GPU. Skipped with
the reason where torch sees no GPU (tests/conftest.py); `bash benchmarks/gpu_check.sh`
runs it first on a GPU machine. tier.py holds what the tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tier import CUDA, NoHostSync

from zoo_adapt.data.demo import build_demo

from helpers import CLASSES


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """The demo's photographs, 5 classes: 24 training and 12 validation images each
    (8 batches of 16 an epoch, the last one of 8)."""
    return build_demo(tmp_path_factory.mktemp("cuda-demo"), train_per_class=24, val_per_class=12, classes=CLASSES)


@pytest.fixture
def no_host_sync():
    """([callbacks for finetune], the guard): steps that wait for the GPU raise."""
    guard = NoHostSync()
    yield [guard, guard.off], guard
    if CUDA:
        torch.cuda.set_sync_debug_mode(0)
