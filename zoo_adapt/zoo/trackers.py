"""Experiment trackers the installed plugins offer (no torch, no tracker package here:
`zoo-adapt trackers` only lists names). Tracker names are claimed like adaptation-method
names (claims.py): a name two plugins register is an error naming both, unless one
passes override=True. `check` runs before a job touches its folder: an unknown name or
a tracker whose package is missing is one line saying what to install."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zoo_adapt.errors import ZooAdaptError, quote
from zoo_adapt.zoo.claims import settle
from zoo_adapt.zoo.plugins import report, require
from zoo_adapt.zoo.routing import build, registrations
from zoo_adapt.zoo.tracker_api import Tracker


@dataclass(frozen=True)
class TrackerInfo:
    name: str
    plugin: str
    factory: Callable[[], Any]
    description: str = ""
    requires: tuple[str, ...] = ()  # modules the tracker imports
    install: str = ""  # how to get them
    replaces: tuple[str, ...] = ()  # plugins whose tracker of this name it overrides

    def missing(self) -> list[str]:
        """The required modules that cannot be imported here (found without importing)."""
        out = []
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(module)
        return out


def _tracker(
    plugin: str,
    name: str,
    factory: Callable,
    description: str = "",
    requires: Sequence[str] = (),
    install: str | None = None,
    override: bool = False,
) -> tuple[str, TrackerInfo, bool]:
    """One call of a plugin's `register(...)` in register_trackers."""
    if not isinstance(name, str) or not name.strip():
        raise ZooAdaptError(f"tracker names are non-empty texts, not {quote(name)}")
    if not callable(factory):
        raise ZooAdaptError(f"tracker {name!r}: the factory must be callable, not {type(factory).__name__}")
    requires = (requires,) if isinstance(requires, str) else tuple(requires)
    install = install or (f"pip install {' '.join(requires)}" if requires else "")
    return name, TrackerInfo(name, plugin, factory, description, requires, install), override


def _settled():
    return settle(registrations("register_trackers", _tracker), "tracker", report)


def trackers() -> dict[str, TrackerInfo]:
    """Every usable tracker registered through the `register_trackers` hook."""
    return _settled().usable()


def check(names: Sequence[str]) -> list[TrackerInfo]:
    """The trackers `names` asks for, each known, usable and with its packages installed,
    or a one-line error: before anything is written."""
    if not names:
        return []
    settled = _settled()
    found = []
    for name in names:
        info: TrackerInfo = settled.get(
            name,
            f"--log {name}: no such tracker; installed: "
            f"{', '.join(settled.winners) or 'none'} (see `zoo-adapt trackers`)",
        )
        require(info.plugin, f"tracker {name!r}")
        missing = info.missing()
        if missing:
            raise ZooAdaptError(
                f"--log {name} needs the package {missing[0]!r}, which is not installed: {info.install}"
            )
        found.append(info)
    return found


def build_tracker(info: TrackerInfo) -> Tracker:
    """The tracker object of `info` (its plugin's factory, failures named)."""
    return build(info.plugin, f"tracker {info.name!r}", info.factory, Tracker)
