"""--vflip and --rot90: the symmetries of aerial, microscopy and medical images, drawn in
training (in the loader and on the device) and used in test-time augmentation, by the run
and by an exported model."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from zoo_adapt.data.device_images import crop_resize, quarter_turns
from zoo_adapt.data.transforms import TrainTransform
from zoo_adapt.metrics.evaluation import tta_views
from zoo_adapt.zoo.backbone import Normalization

NORM = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 8, 8), crop_pct=1.0)


def asymmetric() -> tuple[Image.Image, torch.Tensor]:
    """An 8 x 8 image no flip or turn maps onto itself."""
    x = torch.arange(3 * 64, dtype=torch.uint8).reshape(3, 8, 8)
    return Image.fromarray(x.permute(1, 2, 0).numpy()), x


def symmetries(x: torch.Tensor, vflip: bool, rot90: bool) -> set[bytes]:
    flips = [x, x.flip(-2)] if vflip else [x]
    return {torch.rot90(f, k, dims=(-2, -1)).numpy().tobytes() for f in flips for k in (range(4) if rot90 else [0])}


@pytest.mark.parametrize(
    ("vflip", "rot90", "count"), [(False, False, 1), (True, False, 2), (False, True, 4), (True, True, 8)]
)
def test_training_draws_exactly_the_asked_symmetries(vflip, rot90, count):
    image, x = asymmetric()
    transform = TrainTransform(NORM, min_scale=1.0, hflip=False, vflip=vflip, rot90=rot90)
    seen = {transform(image, random.Random(seed)).numpy().tobytes() for seed in range(200)}
    assert len(seen) == count and seen == symmetries(x, vflip, rot90)


def test_runs_without_them_draw_as_before():
    image, _ = asymmetric()
    before = TrainTransform(NORM, min_scale=0.5)
    now = TrainTransform(NORM, min_scale=0.5, vflip=False, rot90=False)
    for seed in range(20):
        assert torch.equal(before(image, random.Random(seed)), now(image, random.Random(seed)))


def test_device_crops_flip_vertically_and_turn():
    _, x = asymmetric()
    canvas = x[None].repeat(4, 1, 1, 1)
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 4)
    no = torch.zeros(4, dtype=torch.bool)
    upside = torch.tensor([True, False, True, False])
    flipped = crop_resize(canvas, whole, 8, no, upside).round().to(torch.uint8)
    assert torch.equal(flipped[0], x.flip(-2)) and torch.equal(flipped[1], x)
    turned = quarter_turns(canvas.float(), torch.tensor([0, 1, 2, 3]))
    assert all(torch.equal(turned[k].to(torch.uint8), torch.rot90(x, k, dims=(-2, -1))) for k in range(4))


def test_tta_views_follow_the_symmetries():
    x = torch.randn(2, 3, 8, 8)
    plain = tta_views(x)
    assert len(plain) == 4 and torch.equal(plain[1], x.flip(-1))  # as before
    views = tta_views(x, flip=False, vflip=True, rot90=True)
    assert len(views) == 2 * (1 + 1 + 3)
    assert torch.equal(views[1], x.flip(-2)) and torch.equal(views[2], torch.rot90(x, 1, dims=(-2, -1)))


def test_a_run_records_them_and_the_export_uses_them_in_tta(tmp_path, demo, monkeypatch):
    from zoo_adapt import finetune
    from zoo_adapt.metrics import evaluation
    from zoo_adapt.ship.export import read_card
    from zoo_adapt.ship.inference import evaluate_folder

    from helpers import small

    asked = []
    views = evaluation.tta_views

    def spy(x, *args, **kwargs):
        asked.append((kwargs.get("vflip"), kwargs.get("rot90")))
        return views(x, *args, **kwargs)

    monkeypatch.setattr(evaluation, "tta_views", spy)
    lines: list[str] = []
    finetune(small(tmp_path, demo, epochs=1, vflip=True, rot90=True, tta=True), log=lines.append)
    assert any("random vertical flips; random quarter turns" in line for line in lines), lines
    assert asked and set(asked) == {(True, True)}  # the run's own TTA
    card, _ = read_card(tmp_path / "run" / "model.safetensors")
    assert (card.vflip, card.rot90) == (True, True)
    asked.clear()
    evaluate_folder(tmp_path / "run" / "model.safetensors", demo / "val", tta=True, device="cpu", workers=0)
    assert asked and set(asked) == {(True, True)}


def test_a_checkpoint_made_before_these_options_existed_still_resumes(tmp_path):
    from zoo_adapt.job.config import FinetuneConfig, resolved_values
    from zoo_adapt.job.finetune import _check_resumable
    from zoo_adapt.job.run_folder import RunFolder

    config = FinetuneConfig(out=str(tmp_path))
    older = {k: v for k, v in resolved_values(config).items() if k not in ("vflip", "rot90", "grad_checkpointing")}
    stored = {"processes": 1, "backbone": config.backbone, "classes": ["a", "b"], "config": older, "history": []}
    _check_resumable(stored, config, ["a", "b"], RunFolder(tmp_path), 1)
    with pytest.raises(Exception, match="was made with --vflip False, not True"):
        _check_resumable(stored, FinetuneConfig(out=str(tmp_path), vflip=True), ["a", "b"], RunFolder(tmp_path), 1)
