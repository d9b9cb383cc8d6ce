"""Error analysis: the files a run's analysis/ holds, per-class figures against a direct
computation, the `analyse` command, and class activation maps for a CNN and a ViT."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import zoo_adapt
from zoo_adapt.data.folders import ImageDataset, scan_folder
from zoo_adapt.job.finetune import finetune
from zoo_adapt.ship.analysis import _cams, analyse, find_cam_target, per_class_figures
from zoo_adapt.ship.export import load_model
from zoo_adapt.ship.inference import iter_predictions

from helpers import CLASSES, small


@pytest.fixture(scope="module")
def run(module_tmp, demo):
    """A run whose analysis ran at its end (resnet18 from scratch, 64 px: a 2x2 final map)."""
    out = module_tmp / "run"
    config = small(module_tmp, demo, out=str(out), image_size=64, epochs=1, strategy="finetune", analysis="auto")
    return finetune(config, log=None, overwrite=True)


def test_the_run_folder_holds_the_analysis(run):
    folder = run.out / "analysis"
    for name in ("per_class.csv", "analysis.json", "top_losses.png"):
        assert (folder / name).is_file(), name
    analysis = json.loads((folder / "analysis.json").read_text())
    if pytest.importorskip("pytorch_grad_cam"):
        assert (folder / "cams.png").stat().st_size > 10_000
        (coarse,) = [n for n in analysis["notes"] if "too coarse to read" in n]  # 64 px: a 2x2 map at layer4
        assert coarse.startswith("class activation maps on a 2x2 grid at layer4 (64 px input)")
    assert analysis["num_images"] == 20 and analysis["accuracy"] == pytest.approx(run.metrics["val_accuracy"])
    assert len(analysis["top_losses"]) == 12
    losses = [t["loss"] for t in analysis["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    assert all(t["path"].endswith(".png") for t in analysis["top_losses"])


def test_per_class_figures_match_a_direct_computation(run, demo):
    """Predictions made here, independently, and scikit-learn's figures from them."""
    from sklearn.metrics import precision_recall_fscore_support

    samples = scan_folder(demo / "val", classes=list(CLASSES))
    predicted = [
        CLASSES.index(p.top[0][0])
        for p in iter_predictions(run.out / "model.safetensors", [p for p, _ in samples.items], top_k=1, device="cpu")
    ]
    truth = samples.labels()
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=range(5), zero_division=np.nan
    )
    analysis = json.loads((run.out / "analysis" / "analysis.json").read_text())
    for i, c in enumerate(analysis["per_class"]):
        assert c["name"] == CLASSES[i] and c["support"] == support[i]
        for ours, theirs in ((c["precision"], precision[i]), (c["recall"], recall[i])):
            assert (ours is None and np.isnan(theirs)) or ours == pytest.approx(theirs)
        if c["f1"] is not None and not np.isnan(f1[i]):
            assert c["f1"] == pytest.approx(f1[i])
    with open(run.out / "analysis" / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(CLASSES) and [int(r["support"]) for r in rows] == list(support)
    confusion = np.zeros((5, 5), int)
    for t, p in zip(truth, predicted):
        confusion[t, p] += 1
    pairs = sorted(
        ((confusion[i, j], CLASSES[i], CLASSES[j]) for i in range(5) for j in range(5) if i != j and confusion[i, j]),
        key=lambda x: (-x[0], x[1], x[2]),
    )
    assert [(c["count"], c["true"], c["predicted"]) for c in analysis["confused"]] == pairs[:10]


def test_per_class_figures_without_predictions_or_examples():
    figures = per_class_figures(np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert (figures[0].precision, figures[0].recall, figures[0].support) == (pytest.approx(2 / 3), 1.0, 2)
    # b is never predicted: F1 0, as scikit-learn's (it counts in macro F1); c is in neither: undefined
    assert figures[1].precision is None and figures[1].recall == 0 and figures[1].f1 == 0
    assert figures[2].recall is None and figures[2].support == 0 and figures[2].f1 is None


def test_analyse_command(run, demo, run_cli, tmp_path):
    result = run_cli(
        "analyse",
        "--model",
        run.out / "model.safetensors",
        "--data",
        demo,
        "--out",
        tmp_path / "a",
        "--top",
        4,
        "--cams",
        "off",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["num_images"] == 20 and len(report["top_losses"]) == 4  # data/ has val/: its held-out split
    assert (tmp_path / "a" / "top_losses.png").is_file() and not (tmp_path / "a" / "cams.png").exists()
    text = run_cli(
        "analyse",
        "--model",
        run.out / "model.safetensors",
        "--data",
        demo / "val",
        "--out",
        tmp_path / "b",
        "--cams",
        "off",
    )
    assert text.exit_code == 0 and "precision" in text.output and "most confused" in text.output
    bad = run_cli("analyse", "--model", run.out / "model.safetensors", "--data", tmp_path / "missing")
    assert bad.exit_code == 1 and "not found" in bad.output


def test_cams_for_a_cnn_and_a_vit(tmp_path, demo):
    pytest.importorskip("pytorch_grad_cam")
    from PIL import Image

    from zoo_adapt.data.transforms import EvalTransform, normalize

    samples = scan_folder(demo / "val", classes=list(CLASSES))
    for name, size in (("resnet18", 64), ("vit_t16", 64)):
        torch.manual_seed(0)
        model = zoo_adapt.create_model(name, num_classes=5, pretrained=False).eval()
        norm = model.zoo_adapt.normalization
        transform = EvalTransform(norm.at(size))
        crops = [transform(Image.open(p).convert("RGB")) for p, _ in samples.items[:2]]
        target = find_cam_target(model, normalize(torch.stack(crops), norm))
        if name == "vit_t16":
            assert target.layer == "blocks.11.norm1" and target.prefix_tokens == 1  # the plugin's answer
        else:
            assert target.layer == "layer4" and target.prefix_tokens is None  # the last spatial map
        path = tmp_path / f"{name}.png"
        written, note = _cams(
            model, crops, [0, 1], [1, 1], [0.5, 0.6], list(CLASSES), norm, torch.device("cpu"), path, name
        )
        assert written
        if name == "vit_t16":
            assert note is None  # 16 px patches of 64 px: a 4x4 grid
        else:
            assert "2x2 grid at layer4" in note and "too coarse to read" in note
        assert path.stat().st_size > 10_000
        assert all(p.grad is None for p in model.parameters())


def test_analysis_of_a_model_loaded_from_its_file_equals_the_runs(run, demo, tmp_path):
    model, card = load_model(run.out / "model.safetensors")
    dataset = ImageDataset(scan_folder(demo / "val", classes=card.classes))
    again = analyse(model, dataset, card.classes, card.normalization, tmp_path, cams="off")
    saved = json.loads((run.out / "analysis" / "analysis.json").read_text())
    assert [c.f1 for c in again.per_class] == [c["f1"] for c in saved["per_class"]]
    assert [t["path"] for t in again.top_losses] == [t["path"] for t in saved["top_losses"]]


def test_a_coarse_cam_is_said_in_the_log(run, demo, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    model, card = load_model(run.out / "model.safetensors")
    dataset = ImageDataset(scan_folder(demo / "val", classes=card.classes))
    lines = []
    analyse(model, dataset, card.classes, card.normalization, tmp_path, cams="on", num_cams=2, log=lines.append)
    (line,) = lines
    assert "class activation maps on a 2x2 grid at layer4" in line and "a larger --image-size gives finer maps" in line
