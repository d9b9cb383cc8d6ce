"""A cross-validated run exported as an ensemble (`finetune --folds K --folds-export
ensemble`): OUT/ensemble.json names the K fold models (each a plain model.safetensors),
and `predict` / `evaluate` given the run folder average their probabilities.

Each member's logits are divided by the temperature fitted on the out-of-fold
predictions (else by the member's own), then softmax (multi-label: sigmoid), then the
members' probabilities are averaged; the thresholds of a multi-label ensemble are those
chosen on the out-of-fold predictions. A temperature fitted on single members' OOF
predictions fits the average of K members a little less well: averaging softens, so
the ensemble's probabilities are, if anything, slightly under-confident."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.files import write_text
from zoo_adapt.ship.export import ModelCard, load_model, read_card
from zoo_adapt.ship.model_files import ENSEMBLE_FILE, model_path

FORMAT = "zoo-adapt-ensemble/1"


def write_ensemble(out: Path, models: list[Path], temperature: float | None, thresholds: list[float] | None) -> Path:
    """OUT/ensemble.json; returns the folder, which is what predict and evaluate take."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "models": [str(Path(m).relative_to(out)) for m in models],
        "temperature": temperature,
        "thresholds": thresholds,
    }
    write_text(out / ENSEMBLE_FILE, json.dumps(manifest, indent=2))
    return out


def is_ensemble(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ENSEMBLE_FILE).is_file()


def read_manifest(folder: Path) -> tuple[list[Path], float | None, list[float] | None]:
    where = folder / ENSEMBLE_FILE
    try:
        manifest = json.loads(where.read_text())
    except (OSError, ValueError) as e:
        raise ZooAdaptError(f"cannot read {where}: {e}") from None
    if not isinstance(manifest, dict):
        manifest = {}
    models = manifest.get("models")
    if manifest.get("format") != FORMAT or not isinstance(models, list) or not models:
        raise ZooAdaptError(f"{where} is not a zoo-adapt ensemble (format {FORMAT!r} with a list of models)")
    paths = []
    for name in models:
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ZooAdaptError(f"{where}: model {name!r} must be a path inside {folder}")
        paths.append(folder / name)
    temperature = manifest.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ZooAdaptError(f"{where}: temperature must be a positive finite number, not {temperature!r}")
    return paths, temperature, manifest.get("thresholds")


def read_any_card(path: str | Path) -> ModelCard:
    """The card of a model file, or of an ensemble (its first member's, with the
    ensemble's thresholds; temperature 1, as the ensemble applies its members' inside)."""
    path = model_path(path)
    if not is_ensemble(path):
        return read_card(path)[0]
    members, _, thresholds = read_manifest(path)
    cards = [read_card(m)[0] for m in members]
    first = cards[0]
    for member, card in zip(members[1:], cards[1:]):
        for key in ("classes", "normalization", "multi_label", "hflip"):
            if getattr(card, key) != getattr(first, key):
                raise ZooAdaptError(f"{member} differs from {members[0]} in its {key}: not one ensemble")
    return dataclasses.replace(first, temperature=1.0, thresholds=thresholds or first.thresholds)


class Ensemble(nn.Module):
    """The members' probabilities averaged; forward returns their log (multi-label: their
    logit), so the usual softmax (sigmoid) after it gives the average back."""

    def __init__(self, members: list[nn.Module], temperatures: list[float], multi_label: bool):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperatures, self.multi_label = temperatures, multi_label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            p = torch.stack([(m(x).float() / t).sigmoid() for m, t in zip(self.members, self.temperatures)]).mean(0)
            p = p.clamp(1e-7, 1 - 1e-7)
            return (p / (1 - p)).log()
        logs = torch.stack([(m(x).float() / t).log_softmax(-1) for m, t in zip(self.members, self.temperatures)])
        return logs.logsumexp(0) - math.log(len(self.members))


def load_any(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """A model file's model, or an ensemble's members as one module (see `Ensemble`)."""
    path = model_path(path)
    if not is_ensemble(path):
        return load_model(path, device)
    card = read_any_card(path)
    members, temperature, _ = read_manifest(path)
    loaded = [load_model(m, device) for m in members]
    temperatures = [temperature or c.temperature for _, c in loaded]
    return Ensemble([m for m, _ in loaded], temperatures, card.multi_label).to(device).eval(), card
