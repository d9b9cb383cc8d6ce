"""One macro F1: scikit-learn's f1_score(average="macro") in the run's metrics, the
analysis, the summary and the model card, with a class never predicted counting 0."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from zoo_adapt.metrics.evaluation import Tally
from zoo_adapt.ship.analysis import per_class_figures

from helpers import small

CLASSES = ["a", "b", "c", "d", "e"]
# c has images but is never predicted, d is predicted but has none, e is in neither
TRUTH = [0, 0, 0, 1, 1, 2, 2, 2, 1, 0]
PREDICTED = [0, 0, 1, 1, 1, 0, 1, 3, 3, 0]


def tally(truth, predicted) -> Tally:
    t = Tally(len(CLASSES), torch.device("cpu"))
    t.add(torch.nn.functional.one_hot(torch.tensor(predicted), len(CLASSES)).float(), torch.tensor(truth))
    return t


def test_the_tally_and_the_analysis_give_sklearns_macro_f1():
    want = f1_score(TRUTH, PREDICTED, average="macro")
    per_class = f1_score(TRUTH, PREDICTED, average=None, labels=range(len(CLASSES)), zero_division=0)
    result = tally(TRUTH, PREDICTED).result(CLASSES)
    assert result.macro_f1 == pytest.approx(want)
    assert [result.f1[c] for c in CLASSES[:4]] == pytest.approx(list(per_class[:4]))
    assert result.f1["c"] == 0 and result.f1["e"] is None  # never predicted: 0; in neither: left out

    confusion = np.array(result.confusion)
    figures = per_class_figures(confusion, CLASSES)
    assert [f.f1 for f in figures[:4]] == pytest.approx(list(per_class[:4])) and figures[4].f1 is None
    from zoo_adapt.metrics.scores import macro_f1

    assert macro_f1(f.f1 for f in figures) == pytest.approx(want)


def test_a_runs_analysis_summary_and_model_card_say_one_macro_f1(tmp_path, demo):
    from zoo_adapt.job.finetune import finetune

    lines: list[str] = []
    # one epoch from scratch: some demo class is left unpredicted (checked below)
    finetune(small(tmp_path, demo, epochs=1, analysis="auto"), log=lines.append)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    confusion = np.array(metrics["confusion_matrix"])
    truth = np.repeat(np.arange(len(confusion)), confusion.sum(1))
    predicted = np.concatenate([np.repeat(np.arange(len(row)), row) for row in confusion])
    assert (confusion.sum(0) == 0).any(), "every class predicted: the run does not test the rule"
    want = f1_score(truth, predicted, average="macro")
    assert metrics["val_macro_f1"] == pytest.approx(want) and analysis["macro_f1"] == pytest.approx(want)
    said = [float(x) for line in lines for x in re.findall(r"macro F1 ([\d.]+)%", line)]
    said += [100 * float(x) for line in lines for x in re.findall(r"macro F1 (0\.\d+)", line)]
    assert len(said) == 2 and all(abs(x - 100 * want) < 0.06 for x in said), lines
    card = (out / "README.md").read_text()
    assert f"| macro F1 | {want:.3f}" in card or f"| macro F1 | {want:.4f}" in card, card
