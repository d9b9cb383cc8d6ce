"""A process of a torchrun run killed mid-run: the survivor's collective fails (gloo:
"Connection reset by peer"), which is no bug: it says another process stopped and which
checkpoint can be resumed, and the resume goes on from it. Two processes on the CPU."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from zoo_adapt.data.demo import build_demo

pytestmark = pytest.mark.distributed
# the agent checks its processes every 5 s: the survivor meets the lost peer in its next
# collective long before the agent would stop it with SIGTERM
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--monitor-interval",
    "5",
    "--nproc-per-node",
    "2",
    "-m",
    "zoo_adapt",
]
TINY = ["--device", "cpu", "--no-pretrained", "--image-size", "32", "--no-tta", "--workers", "0", "--analysis", "off"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    classes = ("brick", "coffee", "grass", "moon", "rocket")
    return build_demo(tmp_path_factory.mktemp("lost"), train_per_class=8, val_per_class=3, classes=classes)


def process_of_rank(out, rank: int) -> int:
    """The pid of the zoo-adapt process of `rank` writing to `out` (read from /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if (
            str(out).encode() in cmdline
            and b"torch.distributed.run" not in cmdline
            and f"RANK={rank}".encode() in environ
        ):
            return int(pid)
    raise AssertionError(f"no process of rank {rank}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the processes in /proc")
@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_process_is_reported_by_the_survivor_with_the_checkpoint_to_resume(tmp_path, data, killed):
    out = tmp_path / "run"
    args = ["finetune", "--backbone", "resnet18", "--data", data, "--out", out, *TINY, "--batch-size", 8]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [*TORCHRUN, *map(str, args), "--epochs", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
            time.sleep(0.05)
        os.kill(process_of_rank(out, killed), signal.SIGKILL)
        _, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
    ours = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    survivor = "" if killed == 1 else "(rank 1) "
    assert len(ours) == 1, stderr[-3000:]
    found = re.fullmatch(
        f"Error: {re.escape(survivor)}another process of this run stopped "
        "\\(gloo: Connection (reset|closed) by peer\\) "
        f"in epoch (\\d+); the checkpoint of epoch (\\d+) \\({re.escape(str(out / 'checkpoint.pt'))}\\) can be "
        f"resumed with the same torchrun command and `zoo-adapt finetune --out {re.escape(str(out))} --resume`",
        ours[0],
    )
    assert found, ours[0]
    assert "bug" not in stderr.split("Error: ")[1].splitlines()[0]
    held = int(found.group(3))
    assert 1 <= held < 4
    if killed == 0:
        return  # resuming is the same either way: once is enough
    resumed = subprocess.run(
        [*TORCHRUN, "finetune", "--out", str(out), "--resume"], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {held} of 4" in resumed.stdout
