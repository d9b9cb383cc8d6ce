"""Temperature scaling end to end: fitted on the demo's validation images, it lowers the
negative log-likelihood on held-out images; the stored temperature changes predict's
probabilities, never their ranking; load_plain's logits divided by it give predict's
probabilities; a header with a bad temperature is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

import zoo_adapt
from zoo_adapt.data.demo import build_demo
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.finetune import finetune
from zoo_adapt.ship.export import read_card, rewrite_header
from zoo_adapt.ship.inference import evaluate_folder, predict_paths

from helpers import CLASSES, small


@pytest.fixture(scope="module")
def calibrated(module_tmp):
    """A linear probe (resnet18 from scratch, 32 px, no label smoothing) calibrated on 60
    validation images; 60 more of the same cells held out in test/."""
    root = build_demo(module_tmp / "demo", train_per_class=12, val_per_class=24, classes=CLASSES)
    test = module_tmp / "test"
    for name in CLASSES:
        (test / name).mkdir(parents=True)
        for f in sorted((root / "val" / name).glob("*.png"))[1::2]:
            shutil.move(str(f), test / name / f.name)
    config = small(module_tmp, root, epochs=4, strategy="linear-probe", lr=0.03, label_smoothing=0.0)
    result = finetune(config, log=None)
    return result, test


def test_temperature_scaling_lowers_the_nll_on_held_out_images(calibrated, tmp_path):
    result, test = calibrated
    m = result.metrics
    assert m["num_val"] == 60
    assert m["temperature"] > 0 and m["temperature"] != 1.0
    assert m["val_nll_calibrated"] < m["val_nll"] and m["val_ece_calibrated"] <= m["val_ece"]
    model = result.out / "model.safetensors"
    assert read_card(model)[0].temperature == pytest.approx(m["temperature"])
    assert (result.out / "calibration.png").stat().st_size > 10_000
    plain = rewrite_header(model, tmp_path / "plain.safetensors", {"temperature": 1.0})
    scored = evaluate_folder(model, test, device="cpu", workers=0)
    unscaled = evaluate_folder(plain, test, device="cpu", workers=0)
    assert scored.num_images == 60 and scored.accuracy == unscaled.accuracy  # the ranking never changes
    assert scored.loss < unscaled.loss  # the loss is the NLL of the held-out images


def test_the_stored_temperature_changes_predict_probabilities_not_their_ranking(calibrated, tmp_path):
    result, test = calibrated
    model = result.out / "model.safetensors"
    images = sorted(test.rglob("*.png"))[:8]
    hot = rewrite_header(model, tmp_path / "hot.safetensors", {"temperature": 3.0})
    cold = rewrite_header(model, tmp_path / "cold.safetensors", {"temperature": 1.0})
    for a, b in zip(predict_paths(hot, images, top_k=5, device="cpu"), predict_paths(cold, images, top_k=5)):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        assert a.top[0][1] < b.top[0][1]  # softened
    plain, preprocess = zoo_adapt.load_plain(hot)
    temperature = zoo_adapt.read_card(hot)[0].temperature
    expected = {r.path: dict(r.top) for r in predict_paths(hot, images, top_k=5, device="cpu")}
    for image in images:
        with torch.no_grad():
            probs = (plain(preprocess(Image.open(image))[None]) / temperature).softmax(-1)[0]
        assert probs.tolist() == pytest.approx([expected[str(image)][c] for c in CLASSES], abs=1e-5)


@pytest.mark.parametrize("bad", ["0", "-1.5", "NaN", '"warm"', "Infinity"])
def test_a_bad_temperature_in_the_header_is_one_line(calibrated, tmp_path, bad):
    result, _ = calibrated
    path = tmp_path / "bad.safetensors"
    rewrite_header(result.out / "model.safetensors", path, {"temperature": 2.0})
    from safetensors.torch import load_file, save_file

    from zoo_adapt.ship.export import safetensors_header

    meta, _ = safetensors_header(path)
    save_file(load_file(path), str(path), metadata={**meta, "temperature": bad})
    with pytest.raises(ZooAdaptError, match="header field 'temperature' must be a positive finite number"):
        read_card(path)


def test_model_card_and_metrics_say_the_calibration(calibrated):
    result, _ = calibrated
    card = (result.out / "README.md").read_text()
    assert f"calibration (temperature {result.metrics['temperature']:.2f})" in card
    assert 'temperature = float(meta.get("temperature", 1.0))' in card  # the plain torchvision snippet divides
    saved = json.loads((result.out / "metrics.json").read_text())
    for key in ("val_ece", "val_nll", "val_ece_calibrated", "val_nll_calibrated", "temperature"):
        assert saved[key] == pytest.approx(result.metrics[key])
    assert saved["val_accuracy_interval"][0] <= saved["val_accuracy"] <= saved["val_accuracy_interval"][1]


def test_the_onnx_export_bakes_the_temperature_into_its_logits(calibrated, tmp_path):
    import onnx
    import onnxruntime

    from zoo_adapt.ship.export import load_model
    from zoo_adapt.ship.onnx_export import export_onnx

    result, test = calibrated
    model_file = result.out / "model.safetensors"
    temperature = read_card(model_file)[0].temperature
    report = export_onnx(model_file, tmp_path / "model.onnx", images=test)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert float(meta["temperature"]) == pytest.approx(temperature) and "divided by the temperature" in meta["logits"]
    x = torch.randn(2, 3, 32, 32)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"pixel_values": x.numpy()})[0])
    with torch.no_grad():
        plain = load_model(model_file)[0](x)
    assert torch.allclose(got, plain / temperature, atol=1e-4) and report.images == 8
