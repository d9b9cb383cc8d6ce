"""Shared fixtures. Everything runs on CPU, offline, from images that ship with
scikit-image and scikit-learn."""
from __future__ import annotations

import contextlib
import socket

import pytest
from click.testing import CliRunner

from zoo_adapt.cli import cli
from zoo_adapt.testing import registered


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
