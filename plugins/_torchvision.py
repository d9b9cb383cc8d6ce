"""Shared by the torchvision plugins: building with a weights enum, the weights tag an
entry means, cache status."""

from __future__ import annotations

from zoo_adapt.plugin_api import Entry, Source, ZooAdaptError, download_failed, torch_hub_checkpoint


def tag(entry: Entry, model=None) -> str | None:
    """The weights enum member `entry` means: the tag registry.toml gives it, else
    torchvision's DEFAULT, which is looked up only once a model was built (`list` never
    imports torchvision), so None before."""
    if entry.weights not in (None, "DEFAULT"):
        return entry.weights
    if model is None:
        return None
    import torchvision

    return torchvision.models.get_model_weights(entry.upstream)["DEFAULT"].name


def build(entry: Entry, pretrained: bool):
    import torchvision

    wanted = entry.weights or "DEFAULT"
    try:
        enum = torchvision.models.get_model_weights(entry.upstream)
        weights = enum[wanted] if pretrained else None
    except (ValueError, KeyError):
        choices = ", ".join(w.name for w in enum) if "enum" in locals() else "?"
        raise ZooAdaptError(
            f"torchvision has no weights {wanted!r} for {entry.upstream} (choices: {choices})"
        ) from None
    try:
        return torchvision.models.get_model(entry.upstream, weights=weights)
    except OSError as e:  # URLError and friends: no network
        raise download_failed(
            entry.name, f"torchvision {entry.upstream} {getattr(weights, 'name', wanted)}", getattr(e, "reason", e)
        ) from None


def source(entry: Entry, files: dict[tuple[str, str], str]) -> Source:
    weights = tag(entry)
    filename = files.get((entry.upstream, weights)) if weights else None
    path = torch_hub_checkpoint(filename) if filename else None
    status = "cached" if path and path.is_file() else "download"
    return Source("torchvision", weights or "DEFAULT", status, str(path) if path else None)
