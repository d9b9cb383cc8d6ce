"""Transferability scores plugins add to `zoo-adapt rank` (no torch, no numpy here: the
CLI lists them without importing either). Score names are claimed like tracker names
(claims.py): a name two plugins register is an error naming both, unless one passes
override=True; the built-in columns' names are reserved.

A score is a function of one backbone's cached features, called after the built-in
scores: ``score(train_features, train_labels, val_features, val_labels) -> float``
(numpy arrays: float32 N x D features, int64 class indices; the validation arrays are
None when the data has no validation images). Higher is better. Multi-label data is
scored by LogME alone, so plugins' scores are not asked there. Its value is one more
column of the leaderboard and of rank.json's rows (`scores`); the recommendation rule
does not read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.zoo.claims import settle
from zoo_adapt.zoo.plugins import report
from zoo_adapt.zoo.routing import registrations

BUILT_IN = ("logme", "probe", "probe_accuracy", "knn", "knn_accuracy")


@dataclass(frozen=True)
class ScoreInfo:
    name: str
    plugin: str
    function: Callable[..., Any]
    description: str = ""
    needs_validation: bool = False  # skipped (None) when the data has no validation images
    replaces: tuple[str, ...] = ()  # plugins whose score of this name it overrides


def _score(
    plugin: str,
    name: str,
    function: Callable,
    description: str = "",
    needs_validation: bool = False,
    override: bool = False,
) -> tuple[str, ScoreInfo, bool]:
    """One call of a plugin's `register(...)` in register_transferability_scores."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ZooAdaptError(f"transferability score names are identifiers (a column of rank.csv), not {name!r}")
    if name in BUILT_IN:
        raise ZooAdaptError(f"transferability score {name!r} is a built-in column of the ranking; choose another name")
    if not callable(function):
        raise ZooAdaptError(f"score {name!r}: the function must be callable, not {type(function).__name__}")
    return name, ScoreInfo(name, plugin, function, description, bool(needs_validation)), override


def transferability_scores() -> dict[str, ScoreInfo]:
    """Every usable score registered through the `register_transferability_scores` hook."""
    settled = settle(registrations("register_transferability_scores", _score), "transferability score", report)
    return settled.usable()
