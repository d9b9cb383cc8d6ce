"""Shipping a model: ONNX export checked with onnxruntime, the model card and timm's
config in the run folder (plain timm loads the folder with the same logits), push to the
Hub (offline: one line), and `predict --output` streaming a CSV over a large folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import zoo_adapt
from zoo_adapt import ZooAdaptError, hookimpl
from zoo_adapt.data.demo import build_demo
from zoo_adapt.data.folders import open_image, scan_folder
from zoo_adapt.data.transforms import eval_transform
from zoo_adapt.job.finetune import finetune
from zoo_adapt.plugin_api import IMAGENET, Head, LayerGroup, Normalization
from zoo_adapt.ship.export import export_model, load_model

from helpers import CLASSES, ZOO, small

ONNX_TOLERANCE = 1e-4  # largest |logit difference| between onnxruntime and PyTorch on real images


@pytest.fixture(scope="module")
def timm_run(module_tmp, demo):
    """A timm backbone (EfficientNet-Lite0, random start, 32 px, 1 epoch)."""
    out = module_tmp / "timm_run"
    return finetune(
        small(module_tmp, demo, backbone="efficientnet_lite0", out=str(out), epochs=1), log=None, overwrite=True
    )


@pytest.fixture(scope="module")
def onnx_run(module_tmp, demo):
    """finetune --export onnx (ResNet-18: the quickest real network to export)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = module_tmp / "onnx_run"
    return finetune(small(module_tmp, demo, out=str(out), epochs=1, export=["onnx"]), log=None, overwrite=True)


def real_images(demo, norm, size, n=8):
    items = scan_folder(demo / "val", classes=list(CLASSES)).items[:n]
    transform = eval_transform(norm.at(size))
    return torch.stack([transform(open_image(p)) for p, _ in items])


def test_onnx_export_equals_pytorch_under_onnxruntime(onnx_run, demo):
    import onnx
    import onnxruntime

    path = onnx_run.out / "model.onnx"
    assert "model.onnx" in (onnx_run.out / "README.md").read_text()
    model, card = load_model(onnx_run.out / "model.safetensors")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == list(CLASSES) and json.loads(props["input_size"]) == [3, 32, 32]
    assert json.loads(props["mean"]) == list(card.normalization.mean) and "outside" in props["normalization"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = real_images(demo, card.normalization, 32)
    for batch in (x, x[:1], x[:5]):  # the batch dimension is dynamic
        with torch.no_grad():
            expected = model(batch).numpy()
        got = session.run(["logits"], {"pixel_values": batch.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < ONNX_TOLERANCE


def test_export_command_folds_the_normalization_and_reports_the_difference(onnx_run, demo, run_cli, tmp_path):
    import onnxruntime

    out = tmp_path / "folded.onnx"
    result = run_cli(
        "export",
        "--model",
        onnx_run.out / "model.safetensors",
        "--format",
        "onnx",
        "--out",
        out,
        "--fold-normalization",
        "--data",
        demo / "val",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["real_images"] and report["images"] == 8 and report["max_abs_diff"] < ONNX_TOLERANCE
    model, card = load_model(onnx_run.out / "model.safetensors")
    x = real_images(demo, card.normalization, 32)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    mean, std = torch.tensor(card.normalization.mean).view(3, 1, 1), torch.tensor(card.normalization.std).view(3, 1, 1)
    rgb = x * std + mean  # back to RGB in [0, 1]: what the folded model takes
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(session.run(None, {"pixel_values": rgb.numpy()})[0] - expected).max() < ONNX_TOLERANCE


class Eig(nn.Module):
    """A network with an op ONNX has no translation for (torch.linalg.eigvals)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        v = self.conv(x).mean((2, 3))
        return self.fc(torch.linalg.eigvals(v[:, :, None] * v[:, None, :]).real)


class EigZoo:
    @hookimpl
    def register_backbones(self, register):
        register("eignet", upstream="Eig")

    @hookimpl
    def build_backbone(self, entry, pretrained):
        return Eig()

    @hookimpl
    def backbone_head(self, entry):
        return Head("fc", 4)

    @hookimpl
    def backbone_groups(self, entry):
        return [LayerGroup("conv", ("conv",)), LayerGroup("head", ("fc",))]

    @hookimpl
    def backbone_normalization(self, entry):
        return Normalization(**IMAGENET, input_size=(3, 16, 16))


def test_a_model_onnx_cannot_express_is_one_line(plugin, tmp_path, run_cli):
    pytest.importorskip("onnxruntime")
    plugin(EigZoo(), "eigzoo")
    model = zoo_adapt.create_model("eignet", num_classes=3)
    export_model(model, tmp_path / "model.safetensors", ["a", "b", "c"])
    result = run_cli("export", "--model", tmp_path / "model.safetensors", "--format", "onnx")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: cannot export eignet (Eig) to ONNX: ") and "linalg_eig" in line
    assert not (tmp_path / "model.onnx").exists()


def test_model_card_front_matter_is_yaml_and_says_how_to_load(timm_run):
    import yaml

    text = (timm_run.out / "README.md").read_text()
    assert text.startswith("---\n")
    matter = yaml.safe_load(text.split("---\n")[1])
    assert matter["library_name"] == "timm" and matter["pipeline_tag"] == "image-classification"
    assert {"zoo-adapt", "efficientnet_lite0", "image-classification"} <= set(matter["tags"])
    assert matter["metrics"] == ["accuracy"]
    # a local folder is no Hub dataset and a model from scratch has no base model (tests/ship/test_model_card.py)
    assert not {"datasets", "base_model", "license", "model-index"} & set(matter)
    body = text.split("---\n", 2)[2]
    assert f"{timm_run.metrics['val_accuracy']:.1%}" in body  # the results are in the body
    for needle in (
        'timm.create_model("local-dir:',
        "zoo-adapt predict --model",
        "load_model(",
        "## Training",
        "| strategy | two-stage |",
    ):
        assert needle in body, needle


def test_plain_timm_loads_the_run_folder_with_the_same_logits(timm_run, demo):
    import timm

    plain = timm.create_model(f"local-dir:{timm_run.out}", pretrained=True).eval()
    ours, card = load_model(timm_run.out / "model.safetensors")
    assert plain.pretrained_cfg["label_names"] == list(CLASSES)
    config = timm.data.resolve_model_data_config(plain)
    assert config["input_size"] == (3, 32, 32) and tuple(config["mean"]) == card.normalization.mean
    assert config["crop_pct"] == card.normalization.crop_pct
    x = real_images(demo, card.normalization, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), ours(x))


def test_torchvision_runs_get_a_card_without_timm_config(onnx_run):
    run = onnx_run
    text = (run.out / "README.md").read_text()
    assert "library_name: pytorch" in text and 'torchvision.models.get_model("resnet18"' in text
    assert not (run.out / "config.json").exists()


def test_push_offline_is_one_line(timm_run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        ZOO + ["push", "--model", str(timm_run.out), "--repo", "someone/demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("Error: cannot push") and "unreachable" in line


def test_push_refuses_a_folder_without_a_model(tmp_path, run_cli, offline):
    result = run_cli("push", "--model", tmp_path, "--repo", "someone/demo")
    assert result.exit_code == 1 and "holds no model.safetensors" in result.output


def test_push_when_the_network_fails_midway_is_one_line(timm_run, monkeypatch, offline):
    from zoo_adapt.ship import push as hub_push

    monkeypatch.setattr(hub_push, "reachable", lambda host: True)  # DNS answered; the upload then fails
    with pytest.raises(ZooAdaptError, match=r"^cannot push .* to someone/demo: ") as caught:
        hub_push.push_run(timm_run.out, "someone/demo", token="hf_x")
    assert "\n" not in str(caught.value)


def test_predict_output_streams_rows_over_a_large_folder(tmp_path, timm_run, run_cli, monkeypatch):
    """300 images: rows reach the file batch by batch, as the predictions come."""
    from zoo_adapt.ship import inference

    folder = build_demo(tmp_path / "many", train_per_class=20, val_per_class=1) / "train"
    seen = []
    real = inference.iter_predictions

    def watched(*args, **kwargs):
        for i, prediction in enumerate(real(*args, **kwargs)):
            if i % 64 == 0:  # the first of each batch: what the file holds before it is written
                seen.append(sum(1 for _ in open(output)))
            yield prediction

    monkeypatch.setattr(inference, "iter_predictions", watched)
    output = tmp_path / "predictions.csv"
    result = run_cli(
        "predict",
        "--model",
        timm_run.out / "model.safetensors",
        folder,
        "--output",
        output,
        "--top-k",
        2,
        "--batch-size",
        64,
    )
    assert result.exit_code == 0, result.output
    assert seen == [1, 65, 129, 193, 257]  # the header, then whole batches as they were predicted
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and "300 images predicted" in result.output
    assert list(rows[0]) == [
        "path",
        "prediction",
        "probability",
        "label_1",
        "probability_1",
        "label_2",
        "probability_2",
        "error",
    ]
    assert all(r["label_1"] == r["prediction"] and r["label_1"] in CLASSES and not r["error"] for r in rows)
    assert all(1 >= float(r["probability_1"]) >= float(r["probability_2"]) >= 0 for r in rows)
    assert len({r["path"] for r in rows}) == 300


def test_predict_output_keeps_going_past_unreadable_files(timm_run, demo, run_cli, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a picture")
    output = tmp_path / "p.csv"
    result = run_cli(
        "predict", "--model", timm_run.out / "model.safetensors", demo / "val" / "moon", bad, "--output", output
    )
    assert result.exit_code == 1
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[-1]["path"] == str(bad) and "broken.jpg" in rows[-1]["error"]
