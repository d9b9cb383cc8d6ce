"""The throughput benchmark (benchmarks/throughput.py) runs end to end at its smoke-test
size on the CPU and reports positive rates; the rates themselves are not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


@pytest.mark.slow  # a whole benchmark script at smoke size: the slow tier, run by CI after the suite
def test_tiny_run_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "throughput.py"),
            "--device",
            "cpu",
            "--tiny",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "device: " in text and "img/s after 1st epoch" in text and "warm img/s" in text
    for label in ("zoo-adapt finetune", "plain loop", "model alone, eager", "timm train.py"):
        assert label in text

    figures = json.loads(out.read_text())
    rows = figures["rows"]
    for key in ("zoo_adapt", "zoo_adapt_device_held", "plain_loop"):
        assert len(rows[key]["epoch_rates"]) == 2, rows[key]
        assert all(rate > 0 for rate in rows[key]["epoch_rates"])
        assert rows[key]["after_first"] > 0 and rows[key]["warm"] > 0
    assert rows["model_eager"]["warm"] > 0
    assert rows["timm"]["warm"] is None and "not given" in rows["timm"]["note"]
    assert rows["model_compiled"]["warm"] is None  # --tiny never compiles
    assert figures["device"] and figures["settings"]["backbone"] == "resnet18"
    # the data set is cached: a second build finds it
    data = Path(figures["settings"]["data"])
    assert (data / "done.json").is_file() and len(list((data / "images").rglob("*.jpg"))) == 48
