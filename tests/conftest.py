"""Shared fixtures. Everything runs on CPU, offline, from images that ship with
scikit-image and scikit-learn, built once per test session (per xdist worker).

Markers: `slow` (large backbones, torch.compile: `pytest -m slow`, see the README),
`distributed` (two processes under torchrun), `cuda` (needs a GPU: `pytest -m cuda`,
skipped without one)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers.py, from any test folder
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker process (and the processes it starts): two workers on two cores
    # would otherwise each run torch's threads on both and spend the time switching
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from zoo_adapt.cli import cli  # noqa: E402
from zoo_adapt.data.demo import build_demo, build_digit_shift  # noqa: E402
from zoo_adapt.testing import registered  # noqa: E402

from helpers import CLASSES  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """CUDA tests skip with a reason where torch sees no GPU (CI never needs one), except
    tests/cuda/ under ZOO_ADAPT_TIER_DEVICE=cpu, which rehearses that tier's plumbing
    on the CPU (tests/cuda/conftest.py)."""
    if "cuda" not in {m.name for item in items for m in item.iter_markers()}:
        return
    import torch

    if torch.cuda.is_available():
        return
    rehearsal = os.environ.get("ZOO_ADAPT_TIER_DEVICE") == "cpu"
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") and not (rehearsal and "tests/cuda/" in item.nodeid.replace("\\", "/")):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """The demo's photographs as a small ImageFolder: 5 classes (CLASSES), 6 training and
    4 validation patches each, train/ and val/."""
    return build_demo(tmp_path_factory.mktemp("demo"), train_per_class=6, val_per_class=4, classes=CLASSES)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """The digits domain-shift task at 32 px, 120 images a split (source/, target/)."""
    return build_digit_shift(tmp_path_factory.mktemp("digits"), size=32, limit=120)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Path:
    """A folder for one test file's shared runs, removed when the file's tests are done: a
    run folder holds a checkpoint of a few hundred megabytes, and kept to the end of the
    session they would add up to gigabytes."""
    folder = tmp_path_factory.mktemp("module")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns click's Result."""
    runner = CliRunner()

    def run(*args, **kwargs):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return run


@pytest.fixture
def plugin():
    """Register test plugins for one test (zoo_adapt.testing.registered, as a plugin's
    own tests would), unregister them afterwards."""
    with contextlib.ExitStack() as stack:

        def register(obj, name):
            stack.enter_context(registered(obj, name))
            return obj

        yield register


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty weight caches, even on a machine that has both."""

    def refuse(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
