"""Shared by the torchvision plugins: building with a weights enum, cache status."""
from __future__ import annotations

from zoo_adapt.backbone import Entry, Source
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.hub import download_failed, torch_hub_checkpoint


def build(entry: Entry, pretrained: bool, tag: str | None):
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(entry.upstream)
        weights = enum[tag or "DEFAULT"] if pretrained else None
    except (ValueError, KeyError):
        choices = ", ".join(w.name for w in enum) if "enum" in locals() else "?"
        raise ZooAdaptError(f"torchvision has no weights {tag!r} for {entry.upstream} "
                            f"(choices: {choices})") from None
    try:
        return torchvision.models.get_model(entry.upstream, weights=weights)
    except OSError as e:  # URLError and friends: no network
        raise download_failed(entry.name, f"torchvision {entry.upstream} {weights.name}",
                              getattr(e, "reason", e)) from None


def source(entry: Entry, tag: str, files: dict[tuple[str, str], str]) -> Source:
    filename = files.get((entry.upstream, tag))
    path = torch_hub_checkpoint(filename) if filename else None
    status = "cached" if path and path.is_file() else "download"
    return Source("torchvision", tag, status, str(path) if path else None)
