"""Domain-adaptation methods the installed plugins offer, with the options and figures
each declares (no torch here: `zoo-adapt methods` only reads declarations). Method
names are claimed like backbone names (claims.py): a name two plugins register is an
error naming both, unless one passes override=True.

A method owns its options: the plugin declares them when it registers the method
(`options=[option(...)]`), and `resolve_options` checks what a run gives (from
`--adapt-option KEY=VALUE` or a config file's `[adapt_options]` table) against that
declaration and fills in the defaults, so config.toml and metrics.json record every
value the method ran with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zoo_adapt.errors import ZooAdaptError, quote
from zoo_adapt.zoo.claims import settle
from zoo_adapt.zoo.options import Option, closest
from zoo_adapt.zoo.plugins import report
from zoo_adapt.zoo.routing import registrations


@dataclass(frozen=True)
class MethodInfo:
    name: str
    plugin: str
    factory: Callable[..., Any]
    description: str
    options: tuple[Option, ...] = ()
    figures: dict[str, str] = field(default_factory=dict)  # what its loss logs -> what it means
    replaces: tuple[str, ...] = ()  # plugins whose method of this name it overrides


def _declared(name: str, options: Any, figures: Any) -> tuple[tuple[Option, ...], dict[str, str]]:
    """A registration's options and figures, checked (a plugin that gets them wrong is
    reported broken, naming the method)."""
    options = tuple(options or ())
    bad = next((o for o in options if not isinstance(o, Option)), None)
    if bad is not None:
        raise ZooAdaptError(
            f"method {name!r}: options must be made with zoo_adapt.plugin_api.option(), not {type(bad).__name__}"
        )
    names = [o.name for o in options]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ZooAdaptError(f"method {name!r}: option {twice!r} is declared twice")
    figures = dict(figures or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in figures.items()):
        raise ZooAdaptError(f"method {name!r}: figures must map names to descriptions (text)")
    return options, figures


def _method(
    plugin: str, name: str, factory: Callable, description: str = "", override: bool = False, options=(), figures=None
) -> tuple[str, MethodInfo, bool]:
    """One call of a plugin's `register(...)` in register_adaptation_methods."""
    if not callable(factory):
        raise ZooAdaptError(f"method {name!r}: the factory must be callable, not {type(factory).__name__}")
    return name, MethodInfo(name, plugin, factory, description, *_declared(name, options, figures)), override


def _settled():
    return settle(registrations("register_adaptation_methods", _method), "adaptation method", report)


def adaptation_methods() -> dict[str, MethodInfo]:
    """Every usable method registered through the `register_adaptation_methods` hook."""
    return _settled().usable()


def method_info(name: str) -> MethodInfo:
    """The method called `name`; an error saying why when there is none to use."""
    settled = _settled()
    return settled.get(
        name,
        f"unknown adaptation method {quote(name)}; installed: "
        f"{', '.join(settled.winners) or 'none'} (see `zoo-adapt methods`)",
    )


def resolve_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every option of method `name`: the given values, checked against its declaration,
    and the defaults of the others. An undeclared key is an error suggesting the
    closest declared one."""
    info = method_info(name)
    declared = {o.name: o for o in info.options}
    for key in given:
        if key not in declared:
            have = f"its options: {', '.join(declared)}" if declared else "it has no options"
            raise ZooAdaptError(
                f"adaptation method {name!r} has no option {quote(key)}{closest(key, declared)}; "
                f"{have} (zoo-adapt methods {name})"
            )
    return {
        o.name: o.check(given.get(o.name, o.default), f"option {o.name!r} of adaptation method {name!r}")
        for o in info.options
    }
