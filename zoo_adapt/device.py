"""Choosing the device and setting it up for speed."""
from __future__ import annotations

import torch

from .errors import ZooAdaptError


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZooAdaptError("--device cuda asked for, but torch sees no CUDA device")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ZooAdaptError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ZooAdaptError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def prepare(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithms for the (fixed) input shapes, and
    float32 matrix products may use TF32 (what timm's train.py does too)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
