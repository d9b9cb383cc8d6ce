"""zoo-adapt as its own processes on CUDA: under torchrun with NCCL (one process, and two
where two GPUs are), and a run killed mid-way (SIGKILL, no clean-up) resumed to the end,
its fp16 loss scaler with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tier import CUDA, DEVICE, FP16, WORKERS

from helpers import zoo

pytestmark = pytest.mark.cuda
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def flags(data, out, *more) -> list[str]:
    return [
        "finetune",
        "--data",
        str(data),
        "--out",
        str(out),
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--image-size",
        "64",
        "--batch-size",
        "16",
        "--strategy",
        "finetune",
        "--no-tta",
        "--analysis",
        "off",
        "--workers",
        str(WORKERS),
        "--device",
        DEVICE,
        *map(str, more),
    ]


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ})


@pytest.mark.parametrize("processes", [1, 2])
def test_torchrun_trains_with_nccl_and_counts_every_validation_image_once(tmp_path, shapes, processes):
    if processes > (torch.cuda.device_count() if CUDA else 2):
        pytest.skip(f"{processes} processes need {processes} GPUs; torch sees {torch.cuda.device_count()}")
    out = tmp_path / "run"
    result = run([*TORCHRUN, "--nproc-per-node", str(processes), "-m", "zoo_adapt", *flags(shapes, out, "--epochs", 2)])
    assert result.returncode == 0, result.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["processes"] == processes and m["global_batch_size"] == 16 * processes
    assert m["device"].startswith(DEVICE) and m["num_val"] == 60
    assert sum(map(sum, m["confusion_matrix"])) == 60  # the shards' counts summed: each image once
    assert m["finished"] and len(m["history"]) == 2


# `zoo-adapt finetune` that SIGKILLs itself as it is about to replace checkpoint.pt for the
# second time: the folder holds epoch 1's checkpoint and a half-written temporary file.
KILLED_AT_THE_SECOND_CHECKPOINT = """
import os, signal, sys
import zoo_adapt.files as files
from zoo_adapt.cli import main
writes = []
def boundary(what):
    if what == "write checkpoint.pt":
        writes.append(what)
        if len(writes) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
files.on_boundary = boundary
sys.argv = ["zoo-adapt", *sys.argv[1:]]
main()
"""


def test_a_run_killed_mid_way_resumes_to_the_end_with_its_fp16_scaler(tmp_path, shapes):
    out = tmp_path / "run"
    args = flags(shapes, out, "--epochs", 3, "--precision", FP16)
    killed = run([sys.executable, "-c", KILLED_AT_THE_SECOND_CHECKPOINT, *args])
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    saved = torch.load(out / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert saved["epoch"] == 1 and ("scaler" in saved) == (FP16 == "fp16")
    resumed = zoo("finetune", "--out", out, "--resume", "--device", DEVICE, "--workers", WORKERS, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1 of 3" in resumed.stdout + resumed.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["finished"] and m["epochs_done"] == 3 and [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m["history"][0] == saved["history"][0]  # epoch 1 as the killed run recorded it
    assert m["precision"] == FP16 and (("skipped_steps" in m) == (FP16 == "fp16"))
    final = torch.load(out / "checkpoint.pt", weights_only=True, map_location="cpu")
    if FP16 == "fp16":  # the scaler went on from its checkpointed state: its count only grew
        assert final["skipped_steps"] >= saved["skipped_steps"] and "scale" in final["scaler"]
    assert not list(out.glob("*.zoo-tmp")), list(out.iterdir())  # the killed write's temporary was cleaned up
