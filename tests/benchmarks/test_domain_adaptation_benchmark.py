"""The domain-adaptation benchmark (benchmarks/domain_adaptation.py) runs end to end at
its smoke-test size: every kind of row trains, each result lands in results.jsonl as it
finishes, and --report rebuilds the same tables from that file. Accuracies at this size
mean nothing and are not judged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib

from helpers import ROOT

SCRIPT = str(ROOT / "benchmarks" / "domain_adaptation.py")


@pytest.mark.slow  # a whole benchmark script at smoke size: the slow tier, run by CI after the suite
def test_tiny_run_writes_results_and_report_repeats_the_tables(tmp_path):
    work = tmp_path / "work"
    tiny = [
        "--tasks",
        "digits",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "1",
        "--scale",
        "0.05",
        "--image-size",
        "32",
        "--threads",
        "1",
        "--work",
        str(work),
    ]
    rows = ["source-only", "reference+adabn", "dann", "dann+warmup", "adabn"]
    proc = subprocess.run(
        [sys.executable, SCRIPT, *tiny, "--rows", *rows], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert [(r["row"], r["seed"]) for r in results] == [(row, seed) for seed in (0, 1) for row in rows]
    assert all(0 <= r["accuracy"] <= 100 for r in results)
    adapted = [r for r in results if r["row"].startswith("dann")]
    assert all("target_snd" in r["history"][-1] and "target_accuracy_oracle" in r["history"][-1] for r in adapted)
    warm = tomllib.loads((work / "runs" / "digits-dann+warmup-0" / "config.toml").read_text())
    plain = tomllib.loads((work / "runs" / "digits-dann-0" / "config.toml").read_text())
    assert (warm["warmup"], plain["warmup"]) == (0.1, 0.0)  # the ablation row changed its one setting
    assert (warm["target_bn"], plain["target_bn"]) == ("mixed", "target")  # ablations are of the paper's recipe
    adabn = tomllib.loads((work / "runs" / "digits-adabn-0" / "config.toml").read_text())
    assert adabn["adapt"] == "adabn"

    table = proc.stdout[proc.stdout.index("| task | row | target") :]
    assert "| digits | zoo-adapt DANN, 10% warm-up |" in table and "Label-free epoch selection" in table
    again = subprocess.run(
        [sys.executable, SCRIPT, "--report", str(work)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == table


# The README table's rows (its first column) and the benchmark rows they show.
README_ROWS = {
    "source only": "source-only",
    "minimal DANN loop, the paper's statistics": "reference",
    "zoo-adapt DANN, the paper's statistics (`--target-bn mixed`)": "dann-mixed",
    "minimal DANN loop, target statistics": "reference+adabn",
    "**zoo-adapt DANN** (the defaults)": "dann",
    "zoo-adapt MCC": "mcc",
    "zoo-adapt AdaBN (`--adapt adabn`)": "adabn",
    "oracle (labelled target)": "oracle",
}


def test_readme_table_is_the_committed_measurement():
    """The README's domain-adaptation table repeats what --report computes from the
    committed results (benchmarks/results/domain_adaptation/results.jsonl): every row,
    mean, spread and each seed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from domain_adaptation import LABELS

    out = subprocess.run(
        [sys.executable, SCRIPT, "--report", str(ROOT / "benchmarks" / "results" / "domain_adaptation")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    measured = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("photo", "digits"):
            mean_std, rest = cells[2].split(" (", 1)
            measured[(cells[0], cells[1])] = f"{mean_std} ({rest.split('; ', 1)[1]}"  # without min and max
    readme = (ROOT / "README.md").read_text()
    for label, row in README_ROWS.items():
        line = next(text for text in readme.splitlines() if text.startswith(f"| {label} |"))
        photo, digits = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")[1:3]]
        assert (photo, digits) == (measured[("photo", LABELS[row])], measured[("digits", LABELS[row])]), label
