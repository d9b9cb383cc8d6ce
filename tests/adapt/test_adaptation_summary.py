"""A run that exports target BatchNorm statistics (--target-bn target) states both source
accuracies, labelled: the kept epoch's as its line said (training's statistics) and the
export's (the target's), so a drop between them does not read as a collapse."""

from __future__ import annotations

from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune

from helpers import adapting


def config(tmp_path, digits, **kw) -> FinetuneConfig:
    return adapting(tmp_path, digits, **{"epochs": 1, **kw})


def test_both_source_accuracies_are_said_and_labelled(tmp_path, digits):
    lines = []
    result = finetune(config(tmp_path, digits, adapt="adabn"), log=lines.append)
    m = result.metrics
    assert m["adaptation"]["target_bn"] == "target"
    trained = result.history[m["kept_epoch"] - 1]["val_accuracy"]
    assert m["val_accuracy_trained_bn"] == trained
    (said,) = [line for line in lines if line.startswith("source validation accuracy: ")]
    assert said.startswith(
        f"source validation accuracy: {trained:.1%} with training's BatchNorm statistics (epoch {m['kept_epoch']}, "
        f"as its line says), {m['val_accuracy']:.1%} with the target images' statistics, which the exported model "
        "carries"
    )
    assert lines[-1].startswith(f"val_accuracy {m['val_accuracy']:.1%} [")
    assert "] with target BatchNorm statistics (top-5" in lines[-1]
    epoch_line = next(line for line in lines if line.startswith("epoch 1/1"))
    assert f"top1 {trained:.1%}" in epoch_line  # the figure named is the one the epoch line showed


def test_training_statistics_kept_means_one_figure(tmp_path, digits):
    lines = []
    result = finetune(config(tmp_path, digits, adapt="adabn", target_bn="mixed"), log=lines.append)
    assert "val_accuracy_trained_bn" not in result.metrics
    assert not [line for line in lines if line.startswith("source validation accuracy: ")]
    assert "BatchNorm" not in lines[-1]
