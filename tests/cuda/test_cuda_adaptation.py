"""Domain adaptation and the LR finder on CUDA: DANN (bf16 and fp16 with loss scaling),
MCC and AdaBN on the digits task, their figures finite and their steps never waiting for
the GPU; lr-find in both precisions."""

from __future__ import annotations

import math

import pytest
from tier import CUDA, DEVICE, FP16, auto_precision, run_config

from zoo_adapt.job.finetune import finetune, lr_find

pytestmark = pytest.mark.cuda


def adapt_config(tmp_path, digits, **options):
    """The digits task at 32 px (48 source training images: 6 steps of 8 an epoch)."""
    return run_config(
        tmp_path,
        digits / "source",
        target_data=str(digits / "target" / "train"),
        target_val=str(digits / "target" / "test"),
        image_size=32,
        batch_size=8,
        hflip=False,
        **options,
    )


@pytest.mark.parametrize(
    "method, precision", [("dann", "auto"), ("dann", "fp16"), ("mcc", "auto"), ("mcc", "fp16"), ("adabn", "auto")]
)
def test_each_method_adapts_on_the_gpu_with_finite_figures_and_no_waiting(
    tmp_path, digits, no_host_sync, method, precision
):
    callbacks, guard = no_host_sync
    lines: list[str] = []
    asked = precision if precision == "auto" else FP16
    result = finetune(
        adapt_config(tmp_path, digits, adapt=method, precision=asked), callbacks=callbacks, log=lines.append
    )
    m, last = result.metrics, result.history[-1]
    assert m["precision"] == (auto_precision() if precision == "auto" else FP16)
    assert m["device"].startswith(DEVICE) and len(result.history) == 2
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    for score in ("target_snd", "target_entropy", "target_class_balance", "target_accuracy_oracle"):
        assert math.isfinite(last[score]), score
    assert 0 <= m["target_accuracy_oracle"] <= 1 and m["adaptation"]["method"] == method
    if method == "dann":
        assert all(0 < r["domain_loss"] < 5 and 0 < r["lambda"] <= 1 for r in result.history)
        assert 0 <= last["domain_accuracy"] <= 1
    if method == "mcc":
        assert all(0 <= r["mcc_loss"] <= 1 for r in result.history)
    # every method ends with the target images' BatchNorm statistics (--target-bn target, the default)
    assert any("BatchNorm statistics of the" in line and "target images" in line for line in lines), lines[-6:]
    if m["precision"] == "fp16":
        assert 0 <= m["skipped_steps"] < 12
    if CUDA and method != "adabn":  # adabn forwards no target images: steps as plain fine-tuning's
        assert guard.guarded >= 3


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_lr_find_on_the_gpu_gives_a_finite_curve_and_a_suggestion(tmp_path, shapes, precision):
    config = run_config(tmp_path, shapes, precision=precision if precision == "auto" else FP16, strategy="two-stage")
    curve = lr_find(config, log=None)
    assert len(curve.lrs) >= 20 and all(math.isfinite(v) for v in curve.losses)
    assert 1e-7 <= curve.suggestion <= 10 and 1e-7 <= curve.steepest <= 10
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 0
