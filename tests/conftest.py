"""Shared fixtures. Everything runs on CPU, offline, from images that ship with
scikit-image and scikit-learn."""
from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

import zoo_adapt
from zoo_adapt.cli import cli


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns click's Result."""
    runner = CliRunner()

    def run(*args, **kwargs):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return run


@pytest.fixture
def plugin():
    """Register test plugins for one test, unregister them afterwards."""
    names = []

    def register(obj, name):
        names.append(zoo_adapt.register_plugin(obj, name))
        return obj

    yield register
    for name in names:
        zoo_adapt.unregister_plugin(name)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty weight caches, even on a machine that has both."""
    def refuse(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
