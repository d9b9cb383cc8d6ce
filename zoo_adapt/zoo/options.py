"""How a declared option's value is checked: type, range, choices, and the closest
known name for a misspelt one. Shared by the job's own options (config.py) and the
options an adaptation method declares when its plugin registers it (methods.py), so a
value is checked the same way whoever declared it. No torch: the CLI and `zoo-adapt
methods` read these without importing it."""

from __future__ import annotations

import builtins
import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zoo_adapt.errors import ZooAdaptError, quote

WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a text", dict: "a table of KEY = VALUE"}
KINDS = (bool, int, float, str)


def check(
    value: Any,
    kind: type,
    label: str,
    *,
    optional: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple | None = None,
) -> Any:
    """`value`, checked; errors are one line naming `label` (a flag, a config file's key,
    a method's option). An int is a valid float."""
    if value is None:
        if optional:
            return None
        raise ZooAdaptError(f"{label} needs a value")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ZooAdaptError(f"{label} must be {WORDS.get(kind, kind.__name__)}, not {quote(value)}")
    if kind is float and not math.isfinite(value):  # nan passes every comparison, inf every lower bound
        raise ZooAdaptError(f"{label} must be a finite number, not {value}")
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ZooAdaptError(
                f"{label}: {quote(value.encode('utf-8', 'surrogateescape'))} is not valid UTF-8; "
                "rename it (zoo-adapt writes every option to config.toml)"
            ) from None
    if choices and value not in choices:
        raise ZooAdaptError(f"{label} must be one of {', '.join(map(str, choices))}, not {quote(value)}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ZooAdaptError(f"{label} must be {'greater than' if low_open else 'at least'} {low}, not {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ZooAdaptError(f"{label} must be {'less than' if high_open else 'at most'} {high}, not {value}")
    return value


def closest(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def range_text(low=None, high=None, low_open=False, high_open=False, choices=None) -> str:
    """'>= 1', '0 <= x < 1', 'one of a, b', or '' for the help tables."""
    if choices:
        return "one of " + ", ".join(map(str, choices))
    below = f"{'<' if high_open else '<='} {high}" if high is not None else ""
    if low is None:
        return below
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{low} {'<' if low_open else '<='} x {below}"


@dataclass(frozen=True)
class Option:
    """An option an adaptation method declares (see `option`)."""

    name: str
    default: Any
    help: str
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None

    def check(self, value: Any, label: str) -> Any:
        value = check(
            value,
            self.kind,
            label,
            low=self.low,
            high=self.high,
            low_open=self.low_open,
            high_open=self.high_open,
            choices=self.choices,
        )
        return float(value) if self.kind is float else value

    @property
    def range(self) -> str:
        return range_text(self.low, self.high, self.low_open, self.high_open, self.choices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind.__name__,
            "default": self.default,
            "range": self.range,
            "help": self.help,
        }


def option(
    name: str,
    default: Any,
    help: str,
    *,
    type: type | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple | None = None,
) -> Option:
    """Declare an option of an adaptation method: its name (a Python identifier, given as
    `--adapt-option NAME=VALUE` or in a config file's `[adapt_options]` table), default,
    help, and optionally its type (else the default's: bool, int, float or str), bounds
    (`low`/`high`; `*_open`: the bound itself not allowed) and choices. The default must
    pass its own checks."""
    kind = type or builtins.type(default)
    if kind not in KINDS:
        raise ZooAdaptError(f"option {name!r}: the type must be bool, int, float or str, not {kind.__name__}")
    if not isinstance(name, str) or not name.isidentifier():
        raise ZooAdaptError(f"option name {name!r} is not an identifier")
    declared = Option(name, default, help, kind, low, high, low_open, high_open, tuple(choices) if choices else None)
    return Option(**{**declared.__dict__, "default": declared.check(default, f"the default of option {name!r}")})
