"""A run folder's life beyond one run: `--resume` of a finished run says so and rewrites
nothing, an extended run keeps the model's provenance, and the lock file goes when the
run ends (without opening a gap for two runs to share a folder)."""

from __future__ import annotations

import pytest

import zoo_adapt
from zoo_adapt.job.run_folder import LOCK_FILE, RunFolder
from zoo_adapt.model.weights import safetensors_metadata
from zoo_adapt.ship.export import export_model

from helpers import TINY


def snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def weights(tmp_path):
    """A weights file to start from: the model header must keep naming it."""
    model = zoo_adapt.create_model("resnet18", num_classes=1000, pretrained=False)
    return export_model(model, tmp_path / "start.safetensors", [f"c{i}" for i in range(1000)])


def test_resuming_a_finished_run_says_so_and_rewrites_nothing(tmp_path, demo, run_cli, weights):
    out = tmp_path / "run"
    first = run_cli("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1, "--weights", weights)
    assert first.exit_code == 0, first.output
    assert safetensors_metadata(out / "model.safetensors")["pretrained_weights"] == str(weights)
    assert not (out / LOCK_FILE).exists()  # the lock went with the run
    before = snapshot(out)
    again = run_cli("finetune", "--out", out, "--resume")
    assert again.exit_code == 0, again.output
    (line,) = again.output.strip().splitlines()
    assert line == (
        f"{out} is finished: all 1 epochs trained and its results written, nothing to resume; train it longer "
        f"with `zoo-adapt finetune --out {out} --resume --epochs N` (N > 1)"
    )
    assert snapshot(out) == before  # not a byte, not a timestamp
    longer = run_cli("finetune", "--out", out, "--resume", "--epochs", 2)
    assert longer.exit_code == 0, longer.output
    header = safetensors_metadata(out / "model.safetensors")
    assert header["epoch"] in ("1", "2") and header["pretrained_weights"] == str(weights)  # the provenance stays
    assert not (out / LOCK_FILE).exists()


def test_a_run_stopped_while_writing_its_results_is_not_finished(tmp_path, demo, run_cli):
    """Its card (written last) is older than its metrics: --resume writes the results."""
    out = tmp_path / "run"
    assert run_cli("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1).exit_code == 0
    assert RunFolder(out).finished_epochs() == 1
    (out / "README.md").unlink()
    assert RunFolder(out).finished_epochs() is None
    result = run_cli("finetune", "--out", out, "--resume")
    assert result.exit_code == 0 and "is finished" not in result.output and (out / "README.md").is_file()


def test_the_lock_file_goes_but_a_late_locker_never_shares_the_folder(tmp_path, monkeypatch):
    """B opens the lock file while A holds it, A lets go (removing the file), B locks the
    removed file: B must notice and lock the file on disk, so C is then refused."""
    from zoo_adapt.job import run_folder

    out = tmp_path / "run"
    out.mkdir()  # (a folder A made and never wrote to would go with A: B then makes it again)
    a, b, c = RunFolder(out), RunFolder(out), RunFolder(out)
    a.acquire()
    real = run_folder.fcntl.flock
    calls = []

    def flock_after_a_lets_go(fd, how):
        calls.append(fd)
        if len(calls) == 1:
            a.release()  # between B's open and B's lock
        return real(fd, how)

    monkeypatch.setattr(run_folder.fcntl, "flock", flock_after_a_lets_go)
    b.acquire()
    assert len(calls) == 2  # B locked the removed file first, saw it, and locked the one on disk
    assert (out / LOCK_FILE).is_file()
    monkeypatch.setattr(run_folder.fcntl, "flock", real)
    with pytest.raises(zoo_adapt.ZooAdaptError, match="in use by another zoo-adapt run"):
        c.acquire()
    b.release()
    assert not (out / LOCK_FILE).exists()
    c.acquire()
    c.release()
    assert out.is_dir()


def test_a_folder_removed_by_its_last_run_is_made_again(tmp_path, monkeypatch):
    """A made the folder and lets go before writing (so removes it) between B's check
    for the folder and B's open: B makes it again."""
    from zoo_adapt.job import run_folder

    out = tmp_path / "run"
    a, b = RunFolder(out), RunFolder(out)
    a.acquire()
    real = run_folder.os.open
    calls = []

    def open_after_a_lets_go(path, *args):
        calls.append(path)
        if len(calls) == 1:
            a.release()
        return real(path, *args)

    monkeypatch.setattr(run_folder.os, "open", open_after_a_lets_go)
    b.acquire()
    monkeypatch.setattr(run_folder.os, "open", real)
    assert len(calls) == 2 and (out / LOCK_FILE).is_file()
    b.release()
    assert not out.exists()  # B made it and never began: gone again
