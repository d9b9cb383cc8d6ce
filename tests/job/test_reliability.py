"""Never a wrong model, never lost work: runs killed at write boundaries, signals, the
folder lock, damaged checkpoints, failed starts, and every option's range through the
CLI and through config files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from zoo_adapt.data.demo import build_demo
from zoo_adapt.job.config import FinetuneConfig, build_config
from zoo_adapt.job.finetune import finetune
from zoo_adapt.job.run_folder import RunFolder
from zoo_adapt.ship.export import read_card

from helpers import TINY, ZOO, one_line_error, small, zoo


def tensors(path):
    return load_file(path)


def same_model(a, b):
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def consistent(out):
    """model.safetensors and metrics.json never disagree: metrics names the model's hash
    and kept epoch, or is absent; the model says which epoch it holds."""
    metrics_file, model_file = out / "metrics.json", out / "model.safetensors"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        assert model_file.exists()
        assert metrics["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
        _, meta = read_card(model_file)
        assert int(meta["epoch"]) == metrics["kept_epoch"]
    if (out / "checkpoint.pt").exists() and metrics_file.exists():
        saved = torch.load(out / "checkpoint.pt", weights_only=True)
        assert saved["epoch"] >= json.loads(metrics_file.read_text())["checkpoint_epoch"]


# Imports zoo-adapt and torch once, runs no tensor operation, then forks one child per
# kill point: each child is a fresh `zoo-adapt finetune` that SIGKILLs itself at its
# boundary (no clean-up at all). Forking before any operation keeps the children safe.
ZYGOTE = """
import json, os, sys
import torch, zoo_adapt.cli, zoo_adapt.job.finetune, zoo_adapt_plugins.efficientnet_lite
args, points = json.loads(sys.argv[1]), json.loads(sys.argv[2])
status = {}
for n, out in points:
    pid = os.fork()
    if pid == 0:
        os.environ["ZOO_ADAPT_CRASH_AT"] = str(n)
        sys.argv = ["zoo-adapt", *args, "--out", out]
        try:
            zoo_adapt.cli.main()
        finally:
            os._exit(3)
    status[n] = os.waitpid(pid, 0)[1]
print(json.dumps(status))
"""
SAMPLED = 3  # boundaries drawn at random each run, beside the first and the last


def kill_points(count: int, seed: int) -> list[int]:
    """The first and last write boundaries, and SAMPLED others drawn with `seed`: every
    run checks the ends and a different handful in between (ZOO_ADAPT_TEST_SEED=S
    repeats a run's draw; the seed is in every failure message)."""
    middle = random.Random(seed).sample(range(2, count), min(SAMPLED, max(0, count - 2)))
    return sorted({1, count, *middle})


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    """Two classes, 4 training and 2 validation images each: one batch an epoch."""
    return build_demo(tmp_path_factory.mktemp("few"), train_per_class=4, val_per_class=2, classes=("brick", "moon"))


def test_a_run_killed_at_write_boundaries_resumes_to_the_uninterrupted_result(tmp_path, few):
    """SIGKILL at a boundary, then --resume: the result is the uninterrupted one."""
    seed = int(os.environ.get("ZOO_ADAPT_TEST_SEED") or time.time())
    args = [
        "finetune",
        "--backbone",
        "efficientnet_lite0",
        "--no-pretrained",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--no-tta",
        "--workers",
        "0",
        "--analysis",
        "off",
        "--data",
        str(few),
        "--epochs",
        "3",
        "--keep",
        "best",
        "--lr",
        "0.02",
    ]
    straight = tmp_path / "straight"
    log = tmp_path / "boundaries.txt"
    start = time.perf_counter()
    done = zoo(*args, "--out", straight, env={"ZOO_ADAPT_CRASH_LOG": str(log)})
    took = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    boundaries = log.read_text().splitlines()
    assert len(boundaries) >= 10, boundaries
    expected = json.loads((straight / "metrics.json").read_text())
    points = [(n, str(tmp_path / f"killed{n}")) for n in kill_points(len(boundaries), seed)]
    forked = subprocess.run(
        [sys.executable, "-c", ZYGOTE, json.dumps(args), json.dumps(points)],
        capture_output=True,
        text=True,
        timeout=60 + 5 * took * len(points),
    )  # each child at most a whole run, and slack
    assert forked.returncode == 0, forked.stderr
    status = json.loads(forked.stdout.splitlines()[-1])
    for n, out in points:
        out = tmp_path / f"killed{n}"
        where = f"boundary {n} of {len(boundaries)} ({boundaries[n - 1]}), ZOO_ADAPT_TEST_SEED={seed}"
        assert os.WIFSIGNALED(status[str(n)]) and os.WTERMSIG(status[str(n)]) == signal.SIGKILL, (where, status)
        consistent(out)
        if not (out / "checkpoint.pt").exists():  # killed before the first checkpoint: start again
            assert n <= 2, where
            shutil.rmtree(out)
            assert zoo(*args, "--out", out).returncode == 0, where
        else:
            finetune(build_config({"out": str(out), "resume": True}), log=None)
        assert not list(out.glob(".*zoo-tmp")), f"temporaries left behind: {where}"
        consistent(out)
        assert same_model(out / "model.safetensors", straight / "model.safetensors"), where
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["kept_epoch"] == expected["kept_epoch"] and metrics["finished"], where
        assert metrics["val_accuracy"] == expected["val_accuracy"], where
        assert [r["train_loss"] for r in metrics["history"]] == [r["train_loss"] for r in expected["history"]], where
        shutil.rmtree(out)  # checked: its checkpoints need not add up on disk


def _wait_for(predicate, timeout=300):
    start = time.time()
    while not predicate():
        if time.time() - start > timeout:
            raise TimeoutError
        time.sleep(0.02)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_after_a_checkpoint_leaves_a_resumable_run_and_says_so(tmp_path, demo, sig, code, word):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        ZOO + ["finetune", *TINY, "--data", str(demo), "--epochs", "12", "--keep", "best", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (out / "metrics.json").exists())
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0, "the run finished before the signal arrived (12 tiny epochs: a second or more)"
    assert proc.returncode == code, stderr
    assert word in stderr and "--resume" in stderr and "Traceback" not in stderr
    consistent(out)
    assert zoo("finetune", "--out", out, "--resume").returncode == 0
    straight = finetune(
        small(tmp_path, demo, batch_size=8, epochs=12, keep="best", out=str(tmp_path / "s")),
        log=None,
    )
    assert same_model(out / "model.safetensors", straight.out / "model.safetensors")


def test_ctrl_c_before_the_first_checkpoint_says_so_and_leaves_nothing(tmp_path, demo):
    from zoo_adapt import Callback

    class CtrlC(Callback):
        def step_end(self, loop, step):
            raise KeyboardInterrupt

    out = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt, match="before the first checkpoint: nothing can be resumed"):
        finetune(
            FinetuneConfig(
                backbone="resnet18",
                pretrained=False,
                image_size=32,
                analysis="off",
                data=str(demo),
                out=str(out),
                workers=0,
            ),
            callbacks=[CtrlC()],
            log=None,
        )
    assert not out.exists()


def test_ctrl_c_while_writing_the_results_is_finished_by_resume(tmp_path, demo):
    from zoo_adapt import Callback, files

    finished = []

    class MarkFinished(Callback):
        def fit_end(self, loop):
            finished.append(True)

    def interrupt_after_training(what):
        if finished:
            raise KeyboardInterrupt

    cfg = small(tmp_path, demo, out=str(tmp_path / "r"), epochs=2, batch_size=32)
    files.on_boundary = interrupt_after_training
    try:
        with pytest.raises(KeyboardInterrupt, match="while writing the results.*--resume` writes them"):
            finetune(cfg, callbacks=[MarkFinished()], log=None)
    finally:
        files.on_boundary = None
    consistent(tmp_path / "r")
    cfg.resume = True
    result = finetune(cfg, log=None)
    assert result.metrics["finished"] and (tmp_path / "r" / "curves.png").exists()


def test_two_runs_into_one_folder(tmp_path, demo):
    out = tmp_path / "busy"
    with RunFolder(out).locked():
        line = one_line_error(
            zoo("finetune", *TINY, "--data", demo, "--out", out),
            "is in use by another zoo-adapt run",
            f"pid {os.getpid()}",
        )
        one_line_error(zoo("finetune", *TINY, "--data", demo, "--out", out, "--overwrite"), "in use")
        assert line
    assert zoo("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1).returncode == 0  # released


def test_a_failed_resume_does_not_touch_the_run(tmp_path, demo):
    out = tmp_path / "run"
    assert zoo("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    one_line_error(zoo("finetune", "--out", out, "--resume", "--data", tmp_path / "typo"), "--data")
    one_line_error(zoo("finetune", "--out", out, "--resume", "--lr", "0.5"), "--lr 0.5", "started with")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert before == after


@pytest.mark.parametrize("when", ["setup", "step_end"])
def test_an_overwrite_interrupted_at_start_never_mixes_old_checkpoint_and_new_options(tmp_path, demo, when):
    """Interrupted before it begins, an --overwrite has touched nothing (the old run is
    intact, its config.toml still its own); interrupted once it began, the old run is
    gone and nothing can be resumed."""
    from zoo_adapt import Callback

    out = tmp_path / "run"
    assert zoo("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1).returncode == 0
    before = (out / "config.toml").read_text()

    class CtrlC(Callback):
        pass

    setattr(CtrlC, when, lambda self, loop, *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        finetune(
            FinetuneConfig(
                backbone="resnet18",
                pretrained=False,
                image_size=32,
                analysis="off",
                data=str(demo),
                out=str(out),
                lr=0.05,
                workers=0,
            ),
            callbacks=[CtrlC()],
            log=None,
            overwrite=True,
        )
    if when == "setup":
        assert (out / "config.toml").read_text() == before and "lr = 0.05" not in before
        assert zoo("finetune", "--out", out, "--resume", "--epochs", 2).returncode == 0
    else:
        one_line_error(zoo("finetune", "--out", out, "--resume"), "nothing to resume")


@pytest.mark.parametrize("content", [b"", b"\x80\x02junk" * 10, "truncated", "foreign"])
def test_damaged_checkpoints_are_one_line_errors(tmp_path, demo, content):
    out = tmp_path / "run"
    assert zoo("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1).returncode == 0
    checkpoint = out / "checkpoint.pt"
    if content == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    elif content == "foreign":
        torch.save({"weights": torch.ones(2)}, checkpoint)
    else:
        checkpoint.write_bytes(content)
    one_line_error(zoo("finetune", "--out", out, "--resume", "--epochs", 2), "checkpoint")


def test_file_system_errors_are_one_line(tmp_path, demo):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        one_line_error(zoo("finetune", *TINY, "--data", demo, "--out", locked / "run"), "cannot write")
    finally:
        locked.chmod(0o700)


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from zoo_adapt import files
    from zoo_adapt.errors import ZooAdaptError

    def full(path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ZooAdaptError, match="cannot write .*x.bin: No space left on device"):
        files.write_bytes(tmp_path / "x.bin", full)
    assert list(tmp_path.iterdir()) == []


def test_leftover_temporaries_are_removed_by_the_next_run(tmp_path, demo):
    out = tmp_path / "run"
    assert zoo("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1).returncode == 0
    (out / ".checkpoint.pt.123.zoo-tmp").write_bytes(b"half")
    assert zoo("finetune", "--out", out, "--resume", "--epochs", 2).returncode == 0
    assert not list(out.glob(".*zoo-tmp"))
    mode = (out / "model.safetensors").stat().st_mode & 0o777
    assert mode == (out / "metrics.json").stat().st_mode & 0o777  # the export follows the umask like the rest


def test_config_keys_as_the_help_says_and_wrong_types(tmp_path, demo):
    config = tmp_path / "job.toml"
    config.write_text(
        f'backbone = "resnet18"\ndata = "{demo}"\npretrained = false\nimage-size = 32\n'
        'analysis = "off"\nbatch-size = 4\nlr-body = 1e-5\nlabel-smoothing = 0.0\ntta = false\nepochs = 1\n'
        f'val-split = 0.5\nworkers = 0\nout = "{tmp_path / "run"}"\n'
    )
    assert zoo("finetune", "--config", config).returncode == 0
    written = (tmp_path / "run" / "config.toml").read_text()
    for line in ("image_size = 32", "batch_size = 4", "lr_body = 1e-05", "label_smoothing = 0.0"):
        assert line in written
    for bad, needle in [
        ('epochs = "five"', "epochs must be a whole number"),
        ('lr = "fast"', "lr must be a number"),
        ("data = 5", "data must be a text"),
        ('pretrained = "no"', "pretrained must be true or false"),
        ("epoch = 3", "unknown option 'epoch' (did you mean 'epochs'?)"),
        ("lr-body = 1e-4\nlr_body = 1e-4", "given twice"),
        ("image-size = 0", "image-size must be at least 8"),
    ]:
        bad_file = tmp_path / "bad.toml"
        bad_file.write_text(bad + "\n")
        one_line_error(zoo("finetune", "--config", bad_file, "--out", tmp_path / "x"), needle)


# (flag, bad value, what the message says)
RANGES = [
    ("--image-size", "-32", "at least 8"),
    ("--image-size", "0", "at least 8"),
    ("--workers", "-1", "at least 0"),
    ("--label-smoothing", "2", "less than 1"),
    ("--weight-decay", "-1", "at least 0"),
    ("--warmup", "-1", "at least 0"),
    ("--val-split", "1.5", "less than 1"),
    ("--epochs", "0", "at least 1"),
    ("--batch-size", "0", "at least 1"),
    ("--lr", "0", "greater than 0"),
    ("--lr-body", "-1", "greater than 0"),
    ("--lr-decay", "1.5", "at most 1"),
    ("--crop-scale", "0", "greater than 0"),
    ("--momentum", "1", "less than 1"),
    ("--head-epochs", "-1", "at least 0"),
    ("--unfreeze-every", "0", "at least 1"),
    ("--cache-views", "0", "at least 1"),
    ("--seed", "-1", "at least 0"),
    ("--adapt-weight", "-1", "at least 0"),
    ("--steps-per-epoch", "-2", "at least 1"),
    ("--ema", "1", "less than 1"),
    ("--accumulate", "0", "at least 1"),
    ("--early-stop", "0", "at least 1"),
]


def zoo_here(capsys, monkeypatch, *args):
    """The CLI's entry point in this process (as `zoo` runs it in a new one), for the
    many checks that fail before anything is imported that a fresh process would need."""
    from zoo_adapt.cli import main

    monkeypatch.setattr(sys, "argv", ["zoo-adapt", *[str(a) for a in args]])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.mark.parametrize("flag, value, needle", RANGES)
def test_every_option_has_its_range_on_the_command_line_and_in_files(
    tmp_path, flag, value, needle, capsys, monkeypatch
):
    one_line_error(zoo_here(capsys, monkeypatch, "finetune", flag, value, "--out", tmp_path / "o"), flag, needle)
    key = flag[2:]
    for spelling in (key, key.replace("-", "_")):
        config = tmp_path / "c.toml"
        config.write_text(f"{spelling} = {value}\n")
        one_line_error(
            zoo_here(capsys, monkeypatch, "finetune", "--config", config, "--out", tmp_path / "o"), spelling, needle
        )
    assert not (tmp_path / "o").exists()


def test_the_in_process_cli_is_the_command_line():
    """zoo_here stands in for a new process above: one case both ways."""
    result = zoo("finetune", "--image-size", "0", "--out", "/nonexistent/o")
    assert result.returncode == 1 and result.stderr.strip() == "Error: --image-size must be at least 8, not 0"


def test_non_utf8_paths_are_one_line_and_write_nothing(tmp_path):
    bad = os.fsdecode(b"caf\xe9")
    result = subprocess.run(
        ZOO + ["finetune", "--data", bad, "--out", str(tmp_path / "o")], capture_output=True, cwd=tmp_path
    )
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "o").exists()


def test_the_debug_switch_shows_the_traceback(tmp_path):
    result = zoo("finetune", "--data", tmp_path / "nope", "--out", tmp_path / "o", env={"ZOO_ADAPT_DEBUG": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr and "data folder not found" in result.stderr


def test_a_finished_run_copied_elsewhere_can_be_resumed_there(tmp_path, demo):
    out = tmp_path / "run"
    assert zoo("finetune", *TINY, "--data", demo, "--out", out, "--epochs", 1).returncode == 0
    moved = shutil.copytree(out, tmp_path / "moved")
    result = zoo("finetune", "--out", moved, "--resume", "--epochs", 2)
    assert result.returncode == 0, result.stderr
    assert json.loads((moved / "metrics.json").read_text())["epochs_done"] == 2
