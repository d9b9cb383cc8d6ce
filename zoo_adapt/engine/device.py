"""Choosing the device and setting it up for speed."""

from __future__ import annotations

import torch

from zoo_adapt.errors import ZooAdaptError, clip, quote


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZooAdaptError("--device cuda asked for, but torch sees no CUDA device")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ZooAdaptError(f"unknown device {quote(name)}: {clip(str(e), 60)}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ZooAdaptError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def prepare_device(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithms for the (fixed) input shapes, and
    float32 matrix products may use TF32 (what timm's train.py does too)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `--precision` means on `device` (None: fp32). auto: bf16 on a
    CUDA device with bf16 support (Ampere and newer), fp16 with loss scaling on older
    ones (T4, V100), fp32 on the CPU."""
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and not cuda:
        raise ZooAdaptError(
            "--precision fp16 needs a CUDA device (its loss scaling is for GPUs without bf16); on "
            "the CPU use --precision bf16 or fp32"
        )
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
