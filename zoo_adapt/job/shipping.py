"""What a finished run's folder carries beyond the model: the error analysis, the other
export formats (ONNX), the model card and timm's config."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from zoo_adapt.data.folders import ImageSource
from zoo_adapt.data.pipeline import default_workers
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.run_folder import MODEL_FILE, RunFolder
from zoo_adapt.ship.analysis import analyse
from zoo_adapt.ship.model_card import write_hub_files
from zoo_adapt.ship.onnx_export import export_onnx
from zoo_adapt.zoo.backbone import Normalization


def ship(
    c: FinetuneConfig,
    model: nn.Module,
    val: ImageSource | None,
    classes: list[str],
    norm: Normalization,
    folder: RunFolder,
    device: torch.device,
    log: Callable[[str], None],
) -> None:
    workers = c.workers if c.workers is not None else default_workers(device)
    if c.analysis != "off" and val is not None and c.multi_label:
        log("error analysis skipped: it covers single-label models (per-class figures are in metrics.json)")
    elif c.analysis != "off" and val is not None:
        analyse(
            model,
            val,
            classes,
            norm,
            folder.path("analysis"),
            device,
            cams=c.analysis,
            workers=workers,
            title=f"{c.backbone} ({c.strategy})",
            log=log,
        )
    if "onnx" in c.export:
        export_onnx(folder.path(MODEL_FILE), folder.path("model.onnx"), images=val, log=log)
    write_hub_files(folder.out, model=model, log=log)
