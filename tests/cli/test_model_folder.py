"""`--model` takes a run folder as `push` (and timm's local-dir:) do: evaluate, predict,
analyse and export use its model.safetensors; a folder without one is one line."""

from __future__ import annotations

import json

import pytest

import zoo_adapt
from zoo_adapt.plugin_api import IMAGENET, Normalization
from zoo_adapt.ship.export import export_model

from helpers import CLASSES


@pytest.fixture(scope="module")
def run(module_tmp):
    """A folder holding a model.safetensors (ResNet-18 at 32 px, random weights)."""
    net = zoo_adapt.create_model("resnet18", num_classes=len(CLASSES), pretrained=False)
    folder = module_tmp / "run"
    folder.mkdir()
    export_model(net, folder / "model.safetensors", list(CLASSES), Normalization(**IMAGENET, input_size=(3, 32, 32)))
    return folder


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_run_folder_is_its_model(run, demo, run_cli, command):
    given = ("--data", demo / "val", "--json") if command == "evaluate" else (demo / "val" / "moon", "--json")
    by_folder = run_cli(command, "--model", run, *given)
    by_file = run_cli(command, "--model", run / "model.safetensors", *given)
    assert by_folder.exit_code == 0, by_folder.output
    assert json.loads(by_folder.output) == json.loads(by_file.output)


def test_a_folder_without_a_model_is_one_line(tmp_path, demo, run_cli):
    for command in (("predict", demo / "val"), ("evaluate", "--data", demo / "val")):
        result = run_cli(command[0], "--model", tmp_path, *command[1:])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"Error: --model {tmp_path}: the folder holds no model.safetensors or ensemble.json; give a run folder "
            "written by zoo-adapt finetune, or a model file"
        ]


@pytest.mark.parametrize("command", ["analyse", "export"])
def test_commands_of_one_network_refuse_an_ensemble_folder(tmp_path, demo, run_cli, command):
    (tmp_path / "ensemble.json").write_text("{}")
    given = ("--data", demo / "val") if command == "analyse" else ("--format", "onnx")
    result = run_cli(command, "--model", tmp_path, *given)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --model {tmp_path}: a cross-validated run's ensemble takes several networks; give one of its "
        "fold models (its folds' model.safetensors)"
    ]
