"""`predict --output FILE`: the suffix chooses the format (CSV, JSON Lines, JSON, parquet),
every format holds the same predictions, `--all-probabilities` adds every class's
probability, JSON appears only when complete, and a suffix it cannot write is one line
before anything is predicted."""

from __future__ import annotations

import csv
import json

import pytest

import zoo_adapt
from zoo_adapt.plugin_api import IMAGENET, Normalization
from zoo_adapt.ship import inference
from zoo_adapt.ship.export import export_model

from helpers import CLASSES


@pytest.fixture(scope="module")
def model(module_tmp):
    """ResNet-18 at 32 px (random weights: the predictions only need to be the same everywhere)."""
    net = zoo_adapt.create_model("resnet18", num_classes=len(CLASSES), pretrained=False)
    norm = Normalization(**IMAGENET, input_size=(3, 32, 32))
    return export_model(net, module_tmp / "model.safetensors", list(CLASSES), normalization=norm)


def predict(run_cli, model, images, output, *more):
    result = run_cli("predict", "--model", model, images, "--output", output, "--top-k", 2, *more)
    assert result.exit_code == 0, result.output
    return result


def test_every_format_holds_the_same_predictions(model, demo, run_cli, tmp_path):
    images = demo / "val"
    predict(run_cli, model, images, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20
    predict(run_cli, model, images, tmp_path / "p.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    predict(run_cli, model, images, tmp_path / "p.json")
    array = json.loads((tmp_path / "p.json").read_text())
    assert lines == array and len(array) == 20
    for row, record in zip(rows, array):
        assert row["path"] == record["path"] and row["prediction"] == record["prediction"]
        assert [t["class"] for t in record["top"]] == [row["label_1"], row["label_2"]]
        assert float(row["probability_1"]) == pytest.approx(record["top"][0]["probability"], abs=1e-6)
    assert not list(tmp_path.glob(".*zoo-tmp"))  # the JSON's temporary took its name


def test_parquet_holds_the_csv_rows(model, demo, run_cli, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    predict(run_cli, model, demo / "val", tmp_path / "p.csv")
    predict(run_cli, model, demo / "val", tmp_path / "p.parquet", "--batch-size", 8)  # three row groups
    table = pq.read_table(tmp_path / "p.parquet")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert table.column_names == list(rows[0]) and table.num_rows == 20
    assert pq.ParquetFile(tmp_path / "p.parquet").num_row_groups == 3
    for row, got in zip(rows, table.to_pylist()):
        assert got["path"] == row["path"] and got["label_2"] == row["label_2"]
        assert got["probability_1"] == pytest.approx(float(row["probability_1"]), abs=1e-6)


def test_all_probabilities_gives_every_class(model, demo, run_cli, tmp_path):
    predict(run_cli, model, demo / "val", tmp_path / "p.csv", "--all-probabilities")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [c for c in rows[0] if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    for row in rows:
        every = {c: float(row[f"p_{c}"]) for c in CLASSES}
        assert sum(every.values()) == pytest.approx(1, abs=1e-4)
        assert max(every, key=every.get) == row["prediction"] == row["label_1"]
        assert "label_3" not in row  # still the top 2 beside them
    predict(run_cli, model, demo / "val", tmp_path / "p.jsonl", "--all-probabilities")
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert list(first["probabilities"]) == list(CLASSES) and len(first["top"]) == 2
    assert first["probabilities"][first["prediction"]] == pytest.approx(float(rows[0]["probability"]), abs=1e-6)


def test_an_interrupted_json_leaves_no_half_array(model, demo, run_cli, tmp_path, monkeypatch):
    real = inference.iter_predictions

    def stopped(*args, **kwargs):
        for i, prediction in enumerate(real(*args, **kwargs)):
            if i == 10:
                raise KeyboardInterrupt
            yield prediction

    monkeypatch.setattr(inference, "iter_predictions", stopped)
    with pytest.raises(KeyboardInterrupt):
        inference.write_predictions(model, [demo / "val"], tmp_path / "p.json", batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_suffix_or_a_missing_parquet_writer_is_one_line(model, demo, run_cli, tmp_path, monkeypatch):
    result = run_cli("predict", "--model", model, demo / "val", "--output", tmp_path / "p.txt")
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"Error: --output {tmp_path / 'p.txt'}: the suffix chooses the format: .csv, .jsonl (JSON Lines), .json "
        "or .parquet"
    ]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    result = run_cli("predict", "--model", model, demo / "val", "--output", tmp_path / "p.parquet")
    assert result.exit_code == 1 and "parquet needs pyarrow (pip install pyarrow)" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = run_cli("predict", "--model", model, demo / "val", "--all-probabilities")
    assert result.exit_code == 1 and "--all-probabilities goes with --output" in result.output
    assert list(tmp_path.iterdir()) == []
