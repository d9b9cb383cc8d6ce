"""--compile on CUDA (its own file: compiling takes about a minute, and the tier's files
run in parallel): the compiled run trains without waiting for the GPU, reports its
compile time apart, and exports the plain model, which predicts on the CPU as the
CUDA-trained one does."""

from __future__ import annotations

import math

import pytest
from tier import export_matches, only_on_cuda, run_config

from zoo_adapt.job.finetune import finetune

pytestmark = pytest.mark.cuda


@only_on_cuda("torch.compile with inductor")
def test_compile_trains_and_exports_a_model_that_predicts_the_same_on_the_cpu(tmp_path, shapes, no_host_sync):
    callbacks, guard = no_host_sync
    result = finetune(run_config(tmp_path, shapes, compile=True, data_on_device="on"), callbacks=callbacks, log=None)
    history = result.history
    assert history[-1]["compile_seconds"] > 0 and all(math.isfinite(r["train_loss"]) for r in history)
    assert guard.guarded >= 4
    assert result.metrics["val_accuracy"] is not None
    export_matches(result.out / "model.safetensors", result.model, shapes / "val")
