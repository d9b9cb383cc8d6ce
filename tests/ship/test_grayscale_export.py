"""--in-chans 1 end to end: a tiny one-channel run trains, its export records one
channel's normalization, reloads into the plain upstream models built with one input
channel (torchvision's through load_plain, timm's with `in_chans=1`), and `zoo-adapt
predict`, evaluate, load_plain and ONNX agree on a grayscale PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import zoo_adapt
from zoo_adapt.model.build import create_model, first_conv
from zoo_adapt.model.weights import read_state_dict, safetensors_header
from zoo_adapt.ship.export import export_model, read_card
from zoo_adapt.ship.inference import evaluate_folder, predict_paths

from helpers import CLASSES, small


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory, demo):
    out = tmp_path_factory.mktemp("gray")
    lines: list[str] = []
    zoo_adapt.finetune(small(out, demo, epochs=2, head_epochs=1, in_chans=1, tta=True), log=lines.append)
    return out / "run", lines


@pytest.fixture(scope="module")
def gray_png(tmp_path_factory, demo):
    """A 16-bit grayscale PNG of a demo photograph (as X-ray and microscopy files come),
    in a folder named after its class."""
    source = sorted((demo / "val" / CLASSES[3]).iterdir())[0]
    folder = tmp_path_factory.mktemp("png") / CLASSES[3]
    folder.mkdir()
    path = folder / "gray16.png"
    grey = np.asarray(Image.open(source).convert("L"), np.uint16) * 257  # 0..255 -> 0..65535
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return path


def probabilities(model, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        return (model(x[None]) / temperature).softmax(-1)[0]


def test_one_channel_run_trains_and_records_one_channel(gray_run):
    run, lines = gray_run
    assert any(line.startswith("val_accuracy") for line in lines), lines
    card, meta = read_card(run / "model.safetensors")
    assert json.loads(meta["input_size"]) == [1, 32, 32] and card.normalization.channels == 1
    assert card.normalization.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert card.normalization.std == pytest.approx((sum((0.229, 0.224, 0.225)) / 3,))
    _, shapes = safetensors_header(run / "model.safetensors")
    assert shapes["conv1.weight"] == [64, 1, 7, 7]
    model, _ = zoo_adapt.load_model(run / "model.safetensors")
    assert first_conv(model)[1].in_channels == 1


def test_predict_load_plain_evaluate_and_onnx_agree_on_a_grayscale_png(gray_run, gray_png, tmp_path, run_cli):
    path = gray_run[0] / "model.safetensors"
    card, _ = read_card(path)
    (row,) = predict_paths(path, [gray_png], top_k=len(CLASSES), device="cpu")
    predicted = torch.tensor([dict(row.top)[c] for c in CLASSES])

    model, preprocess = zoo_adapt.load_plain(path)  # plain torchvision, first convolution one channel
    assert type(model).__module__.startswith("torchvision") and first_conv(model)[1].in_channels == 1
    x = preprocess(Image.open(gray_png))
    assert x.shape == (1, 32, 32)
    plain = probabilities(model, x, card.temperature)
    assert torch.allclose(predicted, plain, atol=1e-4), (predicted, plain)

    result = run_cli("predict", "--model", path, gray_png, "--json", "--top-k", len(CLASSES))
    assert result.exit_code == 0, result.output
    (cli_row,) = json.loads(result.output)
    shown = {entry["class"]: entry["probability"] for entry in cli_row["top"]}
    assert torch.allclose(torch.tensor([shown[c] for c in CLASSES]), plain, atol=1e-4)

    tta = predict_paths(path, [gray_png], top_k=len(CLASSES), tta=True, device="cpu")[0]
    assert sum(p for _, p in tta.top) == pytest.approx(1.0, abs=1e-4)
    scored = evaluate_folder(path, gray_png.parent.parent, device="cpu", workers=0)  # its class: the only one
    assert scored.loss == pytest.approx(-float(plain[CLASSES.index(gray_png.parent.name)].log()), abs=1e-4)

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime

    from zoo_adapt.ship.onnx_export import export_onnx

    report = export_onnx(path, tmp_path / "model.onnx", images=[gray_png])
    assert report.real_images and report.same_top1 == 1
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 1
    logits = session.run(None, {session.get_inputs()[0].name: x[None].numpy()})[0][0]
    assert torch.allclose(torch.from_numpy(logits).softmax(-1), plain, atol=1e-4)


def test_bundled_timm_export_loads_into_plain_timm_with_one_channel(gray_png, tmp_path):
    import timm

    model = create_model("efficientnet_lite0", num_classes=len(CLASSES), in_chans=1)  # pretrained, bundled
    path = export_model(model, tmp_path / "model.safetensors", list(CLASSES), model.zoo_adapt.normalization.at(64))
    plain = timm.create_model("efficientnet_lite0", num_classes=len(CLASSES), in_chans=1)
    plain.load_state_dict(read_state_dict(path), strict=True)
    plain.eval()
    _, preprocess = zoo_adapt.load_plain(path)
    (row,) = predict_paths(path, [gray_png], top_k=len(CLASSES), device="cpu")
    predicted = torch.tensor([dict(row.top)[c] for c in CLASSES])
    assert torch.allclose(predicted, probabilities(plain, preprocess(Image.open(gray_png))), atol=1e-4)


def test_resume_with_another_channel_count_is_one_line(gray_run, run_cli):
    result = run_cli("finetune", "--resume", "--out", gray_run[0], "--in-chans", "3")
    assert result.exit_code == 1 and "not --in-chans 3 (the run was started with 1)" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_timm_config_builds_the_one_channel_model_from_the_folder(tmp_path):
    """The model card's config.json: `timm.create_model("local-dir:RUN", pretrained=True)`
    builds one input channel (model_args) and loads the fine-tuned stem."""
    import timm

    from zoo_adapt.ship.model_card import TIMM_CONFIG, timm_config

    model = create_model("efficientnet_lite0", num_classes=len(CLASSES), in_chans=1)
    path = export_model(model, tmp_path / "model.safetensors", list(CLASSES), model.zoo_adapt.normalization.at(64))
    config = timm_config(model, read_card(path)[0])
    assert config is not None and config["model_args"]["in_chans"] == 1
    (tmp_path / TIMM_CONFIG).write_text(json.dumps(config))
    plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert torch.equal(plain.conv_stem.weight, model.conv_stem.weight)
