"""What a fine-tuning job adds when given --target-data: the target images as batches,
the method, the oracle's labelled target images and the domain gap before training
(`start_adaptation`); the adaptation's summary, plot and method file after it
(`finish_adaptation`). The loop callback itself is zoo_adapt.adapt.callback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from zoo_adapt.adapt.callback import Adaptation, domain_gap
from zoo_adapt.adapt.method import make_method
from zoo_adapt.data.folders import ImageDataset, scan_folder, unlabelled_images
from zoo_adapt.engine.processes import Processes
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.inputs import FeedMaker, Feeds
from zoo_adapt.model.build import head_of
from zoo_adapt.report import plot_adaptation
from zoo_adapt.zoo.methods import method_info


def start_adaptation(
    config: FinetuneConfig,
    model: nn.Module,
    classes: list[str],
    maker: FeedMaker,
    feeds: Feeds,
    log: Callable[[str], None],
    procs: Processes,
) -> tuple[Adaptation, float | None]:
    """What a fine-tuning job adds when given --target-data: the target batches (each
    process its shard), the method, the oracle's labelled target images; and the domain
    gap before training (measured by rank 0)."""
    target = ImageDataset(unlabelled_images(str(config.target_data)))
    held = maker.on_device(len(target), 0)
    target_train = maker.training(target, held, seed_offset=1)
    # in a seeded random order: the BatchNorm statistics measured on it batch by batch (AdaBN) need batches
    # that sample the whole target set, not runs of one folder's images
    target_eval = maker.evaluation(target, held, shuffle=True)
    target_val = None
    if config.target_val:
        target_val = maker.evaluation(ImageDataset(scan_folder(config.target_val, classes=classes)), held)
    method = make_method(config.adapt, head_of(model).in_features, len(classes), config).to(maker.device)
    adaptation = Adaptation(
        method,
        target_train,
        target_eval,
        target_val,
        config.select_with_target_labels,
        target_bn=config.target_bn == "target",
        num_target=len(target),
    )
    gap = None
    if procs.main:
        gap = domain_gap(model, feeds.val_images or feeds.train, target_eval, config.seed, maker.runtime.autocast)
        options = ", ".join(f"{k}={v}" for k, v in config.adapt_options.items())
        log(
            f"adapting to {len(target)} unlabelled target images ({config.target_data}) with {config.adapt}"
            f"{f' ({options})' if options else ''}; domain gap before (proxy A-distance): {gap:.2f}"
        )
        if not method.forwards_target and not adaptation.target_bn:
            log(
                f"warning: {config.adapt} trains on no target image and --target-bn mixed keeps the source's "
                "BatchNorm statistics: this run is source-only training (the target images are only scored)"
            )
    return adaptation, gap


def finish_adaptation(
    adaptation: Adaptation,
    config: FinetuneConfig,
    loop,
    feeds,
    gap_before: float | None,
    metrics: dict[str, Any],
    method_file: Path,
    write: bool = True,
) -> None:
    """The adaptation's summary (the method's options and last figures), the oracle of
    the kept model (every process evaluates its shard); with `write` (rank 0) the gap
    after training, the plot of every figure the method and the label-free scores logged,
    and the method's file."""

    model, autocast = loop.model, loop.autocast
    declared = method_info(config.adapt).figures
    figures = list(dict.fromkeys([*adaptation.figure_names, *declared]))
    last = metrics["history"][-1] if metrics["history"] else {}
    metrics["adaptation"] = {
        "method": config.adapt,
        "options": dict(config.adapt_options),
        "target_bn": config.target_bn,
        "target_data": str(config.target_data),
        "num_target": adaptation.num_target,
        "figures": {k: declared.get(k, "") for k in figures},
        **{k: last[k] for k in figures if k in last},
    }
    if adaptation.target_val is not None:
        metrics["target_accuracy_oracle"] = loop.validate(batches=adaptation.target_val, network=model).accuracy
        metrics["target_accuracy_oracle_note"] = (
            "measured with target labels and USED to select the epoch"
            if config.select_with_target_labels
            else "measured with target labels (--target-val): a figure for reporting, not used for selection"
        )
    if not write:
        return
    target = adaptation.target_eval or adaptation.target
    after = domain_gap(model, feeds.val_images or feeds.train, target, config.seed, autocast)
    metrics["proxy_a_distance"] = {"before": gap_before, "after": after}
    scores = [
        k for k in ("target_snd", "target_entropy", "target_class_balance", "target_accuracy_oracle") if k in last
    ]
    plot_adaptation(
        metrics["proxy_a_distance"],
        metrics["history"],
        figures + scores,
        method_file.with_name("adaptation.png"),
        title=f"{config.adapt} ({config.target_data})",
    )
    adaptation.save_method(method_file, config.adapt)
