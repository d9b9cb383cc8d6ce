"""Reading weights files (safetensors or PyTorch checkpoints) into a model, with errors
that say which file and what does not fit."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import ZooAdaptError

WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "ema")


def looks_like_path(weights: str) -> bool:
    return weights.endswith(WEIGHTS_SUFFIXES) or "/" in weights or Path(weights).exists()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a (possibly wrapped) PyTorch checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ZooAdaptError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooAdaptError(f"cannot read weights file {path}: {first} (truncated or not a "
                            "weights file?)") from e
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ZooAdaptError(f"weights file {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ZooAdaptError(f"cannot read model file {path}: {e} (truncated or not a "
                            "safetensors file?)") from e


def fit_report(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor],
               skip: tuple[str, ...] = ()) -> str | None:
    """None when `sd` fits `own` exactly (ignoring keys under `skip`), else what does not."""
    def skipped(k: str) -> bool:
        return any(k == s or k.startswith(s + ".") for s in skip)

    missing = [k for k in own if k not in sd and not skipped(k)]
    unexpected = [k for k in sd if k not in own and not skipped(k)]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and not skipped(k) and sd[k].shape != own[k].shape]
    parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for what, v in (("missing", missing), ("unexpected", unexpected),
                             ("with other shapes", shapes)) if v]
    return "; ".join(parts) or None
