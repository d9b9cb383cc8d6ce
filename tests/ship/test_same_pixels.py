"""Every way of scoring an image decodes it the same way: `predict`, `evaluate`,
`load_plain` with its preprocessing, and an ONNX user reading the file with PIL agree
to 1e-4 on a large JPEG (a reduced draft decode used to give other pixels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import zoo_adapt
from zoo_adapt.model.build import create_model
from zoo_adapt.ship.export import export_model
from zoo_adapt.ship.inference import evaluate_folder, predict_paths

CLASSES = ["astronaut", "cat", "coffee"]


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory):
    """skimage's astronaut at 1000 px, as a camera JPEG: far above what a 64 px model needs."""
    from skimage import data

    folder = tmp_path_factory.mktemp("jpeg")
    (folder / "astronaut").mkdir()
    path = folder / "astronaut" / "large.jpg"
    Image.fromarray(data.astronaut()).resize((1000, 1000), Image.BICUBIC).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet18", pretrained=False, num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return export_model(model, path, CLASSES, model.zoo_adapt.normalization.at(64))


def onnx_user(onnx_path, image_path) -> np.ndarray:
    """What an ONNX user writes from the file's metadata: PIL decodes, resizes the
    shorter side, cuts the centre, divides by 255 (normalization folded in)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    size, resize = json.loads(meta["input_size"])[-1], int(meta["resize"])
    image = Image.open(image_path).convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new = (resize, int(resize * long / short)) if w <= h else (int(resize * long / short), resize)
    image = image.resize(new, Image.BILINEAR)
    top, left = int(round((new[1] - size) / 2)), int(round((new[0] - size) / 2))
    x = np.asarray(image.crop((left, top, left + size, top + size)), np.float32).transpose(2, 0, 1)[None] / 255
    logits = session.run(["logits"], {"pixel_values": x})[0][0]
    return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


def test_predict_load_plain_evaluate_and_onnx_agree_on_a_large_jpeg(large_jpeg, model_file, tmp_path):
    (row,) = predict_paths(model_file, [large_jpeg], top_k=len(CLASSES), device="cpu")
    predicted = torch.tensor([dict(row.top)[c] for c in CLASSES])
    model, preprocess = zoo_adapt.load_plain(model_file)
    with torch.no_grad():
        plain = model(preprocess(Image.open(large_jpeg))[None]).softmax(-1)[0]
    assert torch.allclose(predicted, plain, atol=1e-4), (predicted, plain)

    result = evaluate_folder(model_file, large_jpeg.parent.parent, device="cpu")  # its one class: index 0
    assert result.loss == pytest.approx(-float(plain[0].log()), abs=1e-4)

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from zoo_adapt.ship.onnx_export import export_onnx

    report = export_onnx(model_file, tmp_path / "model.onnx", images=[large_jpeg], fold_normalization=True)
    assert report.real_images and report.same_top1 == 1
    theirs = torch.from_numpy(onnx_user(tmp_path / "model.onnx", large_jpeg)).float()
    assert torch.allclose(theirs, plain, atol=1e-4), (theirs, plain)
