"""How the network runs, kept apart from what it computes: the processes training
together, the autocast dtype and the fp16 loss scaler, channels-last memory, the
wrappers around the network (DDP, torch.compile) and a weight average evaluated in
place of the model. The job makes one `Runtime` per run and hands it to the batch
sources and the loop; the callbacks that own each aspect (DataParallel,
MixedPrecision, Compile, WeightAverage) fill it in at `setup`, and the loop and the
batch sources only read it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Wrapper = Callable[[nn.Module], nn.Module]


@dataclass
class Runtime:
    device: torch.device
    world: int = 1  # processes training together
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # sums a tensor across them
    autocast_dtype: torch.dtype | None = None  # None: fp32
    scaler: Any = None  # torch.amp.GradScaler under fp16
    channels_last: bool = False  # images and the model in NHWC (CUDA)
    wrappers: list[tuple[Wrapper, bool]] = field(default_factory=list)  # (wrap, train_only), applied in order
    averaged: nn.Module | None = None  # a weight average (timm's ModelEmaV3) kept instead of the model

    @property
    def precision(self) -> str:
        """'fp32', 'bf16' or 'fp16', as metrics.json records it."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            self.autocast_dtype, str(self.autocast_dtype)
        )

    def autocast(self):
        """The context every forward pass of the run runs in."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def wrap(self, network: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(training network, evaluation network): `network` with every wrapper
        applied, the train-only ones (DDP) left out of the evaluation network."""
        train = evaluate = network
        for wrap, train_only in self.wrappers:
            train = wrap(train)
            if not train_only:
                evaluate = wrap(evaluate)
        return train, evaluate

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the processes (itself with one)."""
        return self.all_reduce(t) if self.all_reduce is not None else t
