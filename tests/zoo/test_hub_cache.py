"""hf_hub_cached finds the weights of the snapshot refs/main points at (through
huggingface_hub's try_to_load_from_cache), never a stale one; without huggingface_hub it
still finds a snapshot; the look-up imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zoo_adapt.zoo.hub import hf_hub_cached


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A Hub cache with two snapshots of timm/tiny.x: a stale one (sorted first) and the
    one refs/main names."""
    repo = tmp_path / "hub" / "models--timm--tiny.x"
    for commit in ("0000stale", "ffffmain"):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "model.safetensors").write_bytes(commit.encode())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("ffffmain")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo


def test_the_snapshot_refs_main_names(cache):
    pytest.importorskip("huggingface_hub")
    assert hf_hub_cached("timm/tiny.x") == cache / "snapshots" / "ffffmain" / "model.safetensors"
    assert hf_hub_cached("timm/not-cached") is None


def test_without_huggingface_hub_a_snapshot_still(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert hf_hub_cached("timm/tiny.x").parent.parent == cache / "snapshots"


def test_the_look_up_imports_no_torch(cache):
    code = (
        "import sys; from zoo_adapt.zoo.hub import hf_hub_cached; "
        "print(hf_hub_cached('timm/tiny.x').parent.name, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["ffffmain", "False"], out.stderr
