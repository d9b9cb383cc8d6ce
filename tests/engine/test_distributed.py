"""Data-parallel training under torchrun, two processes on the CPU (gloo): one coherent
run folder, every validation image counted once, the same step as one process with the
global batch, resume after a kill, domain adaptation and the feature cache.
Deselect with `-m "not distributed"`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from zoo_adapt.data.demo import build_demo, build_digit_shift

from helpers import ZOO

pytestmark = pytest.mark.distributed
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "zoo_adapt"]
TINY = ["--device", "cpu", "--no-pretrained", "--image-size", "32", "--no-tta", "--workers", "0", "--analysis", "off"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """5 classes: 40 training images, 15 validation images (an odd count: a padded
    shard would count one twice)."""
    return build_demo(
        tmp_path_factory.mktemp("ddp"),
        train_per_class=8,
        val_per_class=3,
        classes=("brick", "coffee", "grass", "moon", "rocket"),
    )


def run(command, *args, env=None):
    result = subprocess.run(
        command + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    return result


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def same_weights(a, b, atol=0.0):
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=atol, rtol=0), (k, (ta[k] - tb[k]).abs().max())


def test_two_processes_write_one_coherent_run_folder(tmp_path, data):
    out = tmp_path / "ddp"
    result = ok(
        run(
            TORCHRUN,
            "finetune",
            "--backbone",
            "resnet18",
            "--data",
            data,
            "--out",
            out,
            *TINY,
            "--epochs",
            2,
            "--batch-size",
            8,
        )
    )
    assert "batch 8 per process x 2 = 16" in result.stdout
    assert result.stdout.count("val_accuracy") == 1  # rank 0 speaks
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["num_val"] == 15 and metrics["num_train"] == 40
    assert sum(map(sum, metrics["confusion_matrix"])) == 15  # every validation image once, no padding
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "README.md",
        "checkpoint.pt",
        "config.toml",
        "confusion_matrix.png",
        "curves.png",
        "history.csv",
        "metrics.json",
        "model.safetensors",
    ]
    import torchvision

    torchvision.models.resnet18(num_classes=5).load_state_dict(load_file(out / "model.safetensors"), strict=True)


def test_one_step_of_two_processes_equals_one_process_with_the_global_batch(tmp_path, data):
    """Batch 20 on each of two processes against batch 40 on one: the same 40 images
    (augmented the same: each image's augmentation is seeded by the image, not the
    process), gradients averaged by DDP. ViT: no BatchNorm, whose batch statistics would
    differ by design; SGD: its step is linear in the gradient (Adam's first step turns
    rounding-level differences of near-zero gradients into differences of ~1e-5).
    Measured: 6e-8 apart, against 0.1 for one process taking two steps of 20."""
    common = [
        "finetune",
        "--backbone",
        "vit_t16",
        "--data",
        data,
        *TINY,
        "--strategy",
        "finetune",
        "--epochs",
        1,
        "--keep",
        "last",
        "--data-on-device",
        "off",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
    ]
    ok(run(TORCHRUN, *common, "--batch-size", 20, "--out", tmp_path / "two"))
    ok(run(ZOO, *common, "--batch-size", 40, "--out", tmp_path / "one"))
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["history"][0]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["history"][0]
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-6)
    same_weights(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors", atol=1e-6)


def test_resume_under_torchrun_after_a_kill_ends_where_the_uninterrupted_run_ends(tmp_path, data):
    args = [
        "finetune",
        "--backbone",
        "resnet18",
        "--data",
        data,
        *TINY,
        "--epochs",
        3,
        "--batch-size",
        8,
        "--keep",
        "best",
    ]
    ok(run(TORCHRUN, *args, "--out", tmp_path / "straight"))
    killed = run(TORCHRUN, *args, "--out", tmp_path / "killed", env={"ZOO_ADAPT_CRASH_AT": "6"})
    assert killed.returncode != 0
    assert (tmp_path / "killed" / "checkpoint.pt").exists()
    ok(run(TORCHRUN, "finetune", "--out", tmp_path / "killed", "--resume"))
    same_weights(tmp_path / "straight" / "model.safetensors", tmp_path / "killed" / "model.safetensors")
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_bad_input_is_one_line_from_one_process(tmp_path, data):
    result = run(TORCHRUN, "finetune", "--backbone", "resnt18", "--data", data, *TINY, "--out", tmp_path / "x")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert ours == [ours[0]] and "unknown backbone 'resnt18'" in ours[0]
    via_flag = run(
        ZOO, "finetune", "--nproc-per-node", 2, "--backbone", "resnt18", "--data", data, *TINY, "--out", tmp_path / "y"
    )
    lines = [line for line in via_flag.stderr.splitlines() if line.strip()]
    assert via_flag.returncode == 1 and len(lines) == 1 and "unknown backbone" in lines[0], via_flag.stderr


def test_domain_adaptation_and_a_cached_linear_probe_under_two_processes(tmp_path, data):
    digits = build_digit_shift(tmp_path / "digits", size=32, limit=120)
    out = tmp_path / "dann"
    ok(
        run(
            TORCHRUN,
            "finetune",
            "--backbone",
            "resnet18",
            "--data",
            digits / "source",
            "--target-data",
            digits / "target" / "train",
            "--target-val",
            digits / "target" / "test",
            *TINY,
            "--epochs",
            2,
            "--steps-per-epoch",
            2,
            "--batch-size",
            8,
            "--no-hflip",
            "--out",
            out,
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert "domain_accuracy" in metrics["history"][-1] and (out / "adaptation.safetensors").exists()
    assert metrics["target_accuracy_oracle"] is not None
    probe = tmp_path / "probe"
    result = ok(
        run(
            TORCHRUN,
            "finetune",
            "--backbone",
            "resnet18",
            "--data",
            data,
            *TINY,
            "--strategy",
            "linear-probe",
            "--epochs",
            3,
            "--batch-size",
            8,
            "--out",
            probe,
        )
    )
    assert "cached features" in result.stdout
    assert json.loads((probe / "metrics.json").read_text())["num_val"] == 15
