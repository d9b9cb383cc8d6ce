"""What a run can be told before torch is imported (seconds on an idle machine, minutes
on a loaded one): a backbone name no plugin serves, data, label and target paths that do
not exist, a val/ folder with classes train/ lacks. Names and paths only, no image is
read (the job checks every image before training starts)."""

from __future__ import annotations

from pathlib import Path

from zoo_adapt.data.paths import check_data_folder
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.rank_options import AUTO
from zoo_adapt.zoo.registry import resolve


def precheck(config: FinetuneConfig) -> None:
    """Raise the first problem found from names and paths alone (a ZooAdaptError). Every
    process of a torchrun job checks the same names and paths, so the error is marked as
    seen by all (rank 0 reports it, once)."""
    try:
        _check_names_and_paths(config)
    except ZooAdaptError as e:
        e.seen_by = 0
        raise


def _check_names_and_paths(config: FinetuneConfig) -> None:
    if config.backbone != AUTO:  # auto: the ranking chooses among the registry's names
        resolve(config.backbone)
    if config.labels:
        if not Path(str(config.labels)).is_file():
            raise ZooAdaptError(f"label file not found: {config.labels}")
    elif config.data and not config.dataset:
        check_data_folder(Path(str(config.data)))
    if config.target_data and not Path(str(config.target_data)).is_dir():
        raise ZooAdaptError(f"target folder not found: {config.target_data}")
    if config.target_val and not Path(str(config.target_val)).is_dir():
        raise ZooAdaptError(f"--target-val folder not found: {config.target_val}")
