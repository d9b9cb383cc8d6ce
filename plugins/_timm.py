"""Shared by the plugins that build timm models: creation with a pretrained tag,
normalization from timm's pretrained_cfg, cache status of the Hugging Face hub."""

from __future__ import annotations

import difflib

from zoo_adapt.plugin_api import (
    Entry,
    Normalization,
    Source,
    ZooAdaptError,
    download_failed,
    hf_hub_cached,
    reachable,
)


def build(entry: Entry, pretrained: bool, tag: str | None, **kwargs):
    import timm

    if not timm.is_model(entry.upstream):
        close = difflib.get_close_matches(entry.upstream, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ZooAdaptError(f"timm has no model {entry.upstream!r}.{hint}")
    name = f"{entry.upstream}.{tag}" if tag else entry.upstream
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            raise ZooAdaptError(f"timm has no pretrained weights {name!r}")
        if cfg.hf_hub_id and not hf_hub_cached(cfg.hf_hub_id) and not reachable("huggingface.co"):
            raise download_failed(entry.name, f"timm {name}", "huggingface.co is unreachable")
    try:
        return timm.create_model(name, pretrained=pretrained, **options(entry), **kwargs)
    except (OSError, RuntimeError) as e:
        if pretrained and ("connect" in str(e).lower() or isinstance(e, OSError)):
            raise download_failed(entry.name, f"timm {name}", str(e).splitlines()[0]) from None
        raise


def options(entry: Entry) -> dict:
    """What the run asks of the model beyond its name: a drop-path rate (--drop-path),
    one input channel (--in-chans 1: timm sums the pretrained RGB kernels of the stem)."""
    rate, chans = entry.extra.get("drop_path_rate"), entry.extra.get("in_chans")
    return {**({"drop_path_rate": float(rate)} if rate else {}), **({"in_chans": int(chans)} if chans else {})}


def normalization(model) -> Normalization:
    cfg = model.pretrained_cfg
    return Normalization(
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        input_size=tuple(cfg["input_size"]),
        interpolation=cfg.get("interpolation") or "bicubic",
        crop_pct=float(cfg.get("crop_pct") or 0.875),
    )


def source(entry: Entry) -> Source:
    if not entry.weights:
        return Source("timm", None, "download")
    repo = f"timm/{entry.upstream}.{entry.weights}"
    path = hf_hub_cached(repo)
    return Source(
        "timm", entry.weights, "cached" if path else "download", str(path) if path else f"https://huggingface.co/{repo}"
    )
