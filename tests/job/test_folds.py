"""--folds K: a 3-fold linear probe on the demo (30 training images, the 20 of val/ held
out) writes every training image once to oof.csv, extracts the features once, ships a
refit model that evaluate scores; Ctrl-C in fold 2 then --resume ends identical to an
uninterrupted run; an ensemble export averages the fold models; bad input is one line."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.job import inputs
from zoo_adapt.job.finetune import finetune
from zoo_adapt.ship.export import load_model, read_card
from zoo_adapt.ship.inference import predict_paths

from helpers import CLASSES, TINY, small


def probe(tmp, demo, **options):
    return small(tmp, demo, **{"folds": 3, "epochs": 2, "strategy": "linear-probe", "lr": 0.03, **options})


@pytest.fixture(scope="module")
def folded(module_tmp, demo):
    lines: list[str] = []
    extractions = []
    original = inputs.cached_views

    def counted(*args, **kwargs):
        extractions.append(1)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inputs, "cached_views", counted)
        result = finetune(probe(module_tmp / "whole", demo), log=lines.append)
    return result, lines, len(extractions)


def test_three_folds_write_every_training_image_once_and_a_refit_that_evaluate_scores(folded, demo, run_cli):
    result, lines, extractions = folded
    out = result.out
    assert extractions == 1  # the first fold extracts every training image's features; the others and the refit reuse
    with open(out / "oof.csv") as f:
        rows = list(csv.DictReader(f))
    train = sorted(str(p.relative_to(demo)) for p in (demo / "train").rglob("*.png"))
    assert sorted(r["path"] for r in rows) == train  # every training image exactly once, named as the folder names it
    assert all(r["label"] == r["path"].split("/")[1] for r in rows)
    assert sorted(int(r["fold"]) for r in rows) == [1] * 10 + [2] * 10 + [3] * 10
    for r in rows:
        probs = [float(r[f"probability_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and r["prediction"] == CLASSES[probs.index(max(probs))]
    m = json.loads((out / "metrics.json").read_text())
    assert m["folds"] == 3 and m["num_val"] == 30 and len(m["per_fold"]) == 3
    assert m["val_accuracy"] == pytest.approx(sum(r["label"] == r["prediction"] for r in rows) / 30)
    low, high = m["val_accuracy_interval"]
    assert low <= m["val_accuracy"] <= high and m["cv_accuracy_interval"] is not None
    assert m["held_out"]["num_images"] == 20 and "test_accuracy_interval" in m["held_out"]
    assert m["calibration_skipped"].startswith("30 out-of-fold predictions, fewer than the 50")
    with open(out / "folds.csv") as f:
        assert [row["fold"] for row in csv.DictReader(f)] == ["1", "2", "3"]
    card, meta = read_card(out / "model.safetensors")
    assert json.loads(meta["folds"]) == 3 and json.loads(meta["refit_epochs"]) == m["refit_epochs"] == 2
    assert any(line.startswith("fold 2 of 3") and "left" in line for line in lines)
    assert any("held-out images" in line and "never used for a choice" in line for line in lines)
    assert lines[-1].startswith("cross-validated (3 folds) val_accuracy ")
    scored = run_cli("evaluate", "--model", out, "--data", demo, "--json", "--device", "cpu")
    assert scored.exit_code == 0, scored.output
    figures = json.loads(scored.output)
    assert figures["num_images"] == 20 and figures["accuracy"] == pytest.approx(m["held_out"]["test_accuracy"])
    assert figures["accuracy_interval"][0] <= figures["accuracy"] <= figures["accuracy_interval"][1]


class StopInFold(Callback):
    """Ctrl-C after the first epoch of the given fold (its checkpoint written)."""

    order = 95  # after the recorder

    def __init__(self, fold: int):
        self.fold, self.loops = fold, 0

    def setup(self, loop) -> None:
        self.loops += 1

    def epoch_end(self, loop, record, improved) -> None:
        if self.loops == self.fold and record.epoch == 1:
            raise KeyboardInterrupt


def test_ctrl_c_in_fold_2_then_resume_ends_identical(folded, module_tmp, demo):
    result, _, _ = folded
    config = probe(module_tmp / "stopped", demo)
    with pytest.raises(KeyboardInterrupt) as stop:
        finetune(config, callbacks=[StopInFold(2)], log=None)
    assert "fold 2 of 3" in stop.value.message and "--resume" in stop.value.message
    out = module_tmp / "stopped" / "run"
    assert (out / "fold-1" / "oof.npz").is_file() and (out / "fold-2" / "checkpoint.pt").is_file()
    assert not (out / "fold-3").exists() and not (out / "oof.csv").exists()
    resumed = finetune(probe(module_tmp / "stopped", demo, resume=True), log=None)
    for name in ("oof.csv", "folds.csv"):
        assert (out / name).read_text() == (result.out / name).read_text(), name
    ours, theirs = (json.loads((o / "metrics.json").read_text()) for o in (out, result.out))
    for m in (ours, theirs):
        del m["history"], m["model_sha256"]  # the refit's history has timings
        m["held_out"].pop("where"), m.pop("data")
    assert ours == theirs
    ours_state = load_model(out / "model.safetensors")[0].state_dict()
    theirs_state = load_model(result.out / "model.safetensors")[0].state_dict()
    assert all(torch.equal(ours_state[k], theirs_state[k]) for k in theirs_state)
    assert resumed.metrics["val_accuracy"] == result.metrics["val_accuracy"]


def test_an_ensemble_export_averages_the_fold_models(module_tmp, demo):
    result = finetune(probe(module_tmp / "ensemble", demo, folds_export="ensemble", epochs=1), log=None)
    out = result.out
    assert (out / "ensemble.json").is_file() and not (out / "model.safetensors").exists()
    images = sorted((demo / "val").rglob("*.png"))[:5]
    averaged = predict_paths(out, images, top_k=5, device="cpu")
    members = [predict_paths(out / f"fold-{k}" / "model.safetensors", images, top_k=5) for k in (1, 2, 3)]
    for i, prediction in enumerate(averaged):
        want = {c: sum(dict(m[i].top)[c] for m in members) / 3 for c in CLASSES}
        assert dict(prediction.top) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--folds", "1"], ["--folds 1 is no cross-validation", "2 or more"]),
        (["--folds", "7"], ["--folds 7 needs at least 7 training images of every class", "has 6"]),
        (["--folds", "3", "--val-split", "0.2"], ["--val-split does not apply", "scored once at the end"]),
        (["--folds-export", "ensemble"], ["give --folds K too", "a single run has one model"]),
        (["--folds", "3", "--fold", "4"], ["--folds 3 has folds 1 to 3"]),
        (["--calibrate", "on"], ["--calibrate on: 20 validation images, fewer than the 50"]),
    ],
)
def test_bad_fold_and_calibration_options_are_one_line_and_write_nothing(run_cli, demo, tmp_path, args, needles):
    out = tmp_path / "never"
    result = run_cli("finetune", *TINY, "--data", demo, "--out", out, "--epochs", "1", *args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not out.exists()
