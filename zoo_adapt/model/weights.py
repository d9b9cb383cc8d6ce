"""Reading weights files (safetensors or PyTorch checkpoints) into a model, with errors
that say which file and what does not fit."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from zoo_adapt.errors import ZooAdaptError

WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "ema")


def looks_like_path(weights: str) -> bool:
    return weights.endswith(WEIGHTS_SUFFIXES) or "/" in weights or Path(weights).exists()


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "history", "best")
NEVER_UNPICKLED = (
    "not a weights-only PyTorch checkpoint or safetensors file (zoo-adapt never unpickles arbitrary objects)"
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a (possibly wrapped) PyTorch checkpoint."""
    path = Path(path)
    _regular_file(path, "weights file")
    sd = _load(path, "weights file")
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not _tensor_dict(sd):
        raise ZooAdaptError(f"weights file {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", required: tuple[str, ...] = CHECKPOINT_KEYS
) -> dict[str, Any]:
    """A zoo-adapt training checkpoint (checkpoint.pt), loaded weights-only. A missing,
    empty, truncated, random or foreign file (another program's checkpoint, a plain
    state dict, a pickle of objects) is a ZooAdaptError naming it, never a traceback,
    and never an EOFError, which click would report as Ctrl-C ("Aborted.", exit 130)."""
    path = Path(path)
    _regular_file(path, "checkpoint")
    state = _load(path, "checkpoint", map_location)
    missing = [k for k in required if k not in state] if isinstance(state, dict) else list(required)
    if missing:
        raise ZooAdaptError(f"{path} is not a zoo-adapt checkpoint (it lacks {', '.join(missing)})")
    if not _tensor_dict(state.get("model")) or not isinstance(state.get("epoch", 0), int):
        raise ZooAdaptError(f"{path} is not a zoo-adapt checkpoint (its model or epoch is not what zoo-adapt writes)")
    return state


def _regular_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ZooAdaptError(f"{what} not found: {path}")
    if not path.is_file():
        raise ZooAdaptError(f"{what} {path} is not a regular file")


def _tensor_dict(sd: Any) -> bool:
    return isinstance(sd, dict) and bool(sd) and all(isinstance(v, torch.Tensor) for v in sd.values())


def is_safetensors(path: Path) -> bool:
    """By content, not name: 8 bytes of header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size and head[8:] == b"{"


def _load(path: Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """The file's contents, weights only: safetensors, or torch.load(weights_only=True),
    which refuses to build any object but tensors and plain containers."""
    try:
        if path.stat().st_size == 0:
            raise ZooAdaptError(f"cannot read {what} {path}: the file is empty (0 bytes)")
        if is_safetensors(path) or path.suffix == ".safetensors":
            return load_file(str(path), device=str(map_location))
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except ZooAdaptError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, RuntimeError, SafetensorError, OSError, ...
        raise ZooAdaptError(f"cannot read {what} {path}: {load_error(e)}") from e


def load_error(e: Exception) -> str:
    """Why a file did not load, in zoo-adapt's words: never torch's advice to retry with
    weights_only=False, which would run whatever code the file carries."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        return f"it holds Python objects ({found.group(1)}), so it is {NEVER_UNPICKLED}" if found else NEVER_UNPICKLED
    if isinstance(e, EOFError) or "EOF" in text or "central directory" in text:
        return "the file ends too early (truncated?)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if type(e).__name__ == "SafetensorError":
        return f"not a valid safetensors file ({text.strip().splitlines()[0]}; truncated?)"
    return f"truncated, damaged, or {NEVER_UNPICKLED}"


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    return safetensors_header(path)[0]


def safetensors_header(path: str | Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """The header of a safetensors file, read without its tensors: the metadata, and
    each tensor's shape."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooAdaptError(f"cannot read model file {path}: {first} (truncated or not a safetensors file?)") from e


def fit_report(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> str | None:
    """None when `sd` fits `own` exactly (ignoring keys under `skip`), else what does not."""

    def skipped(k: str) -> bool:
        return any(k == s or k.startswith(s + ".") for s in skip)

    missing = [k for k in own if k not in sd and not skipped(k)]
    unexpected = [k for k in sd if k not in own and not skipped(k)]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and not skipped(k) and sd[k].shape != own[k].shape
    ]
    parts = [
        f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
        for what, v in (("missing", missing), ("unexpected", unexpected), ("with other shapes", shapes))
        if v
    ]
    return "; ".join(parts) or None
