"""Domain-adaptation methods the installed plugins offer (no torch here: `zoo-adapt
methods` only lists names). Method names are claimed like backbone names (claims.py):
a name two plugins register is an error naming both, unless one passes override=True."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .claims import Claim, settle
from .errors import PluginError, ZooAdaptError, first_line
from .plugins import plugin_info, report, require
from .routing import each


@dataclass(frozen=True)
class MethodInfo:
    name: str
    plugin: str
    factory: Callable[..., Any]
    description: str
    replaces: tuple[str, ...] = ()  # plugins whose method of this name it overrides
    # Per-method options (declared by the method, checked before a run) will go here.


def _settled():
    claims: dict[str, list[Claim]] = {}

    def kwargs_for(plugin: str):
        info = plugin_info(plugin)

        def register(name: str, factory: Callable, description: str = "", override: bool = False) -> None:
            if not callable(factory):
                raise ZooAdaptError(f"method {name!r}: the factory must be callable, not {type(factory).__name__}")
            method = MethodInfo(name, plugin, factory, description)
            claims.setdefault(plugin, []).append(Claim(name, method, info.label, info.shipped, bool(override)))
        return {"register": register}

    done = each("register_adaptation_methods", kwargs_for)
    settled = settle([c for plugin in done for c in claims.get(plugin, [])], "adaptation method")
    for problem in settled.problems:
        report(problem)
    return settled


def adaptation_methods() -> dict[str, MethodInfo]:
    """Every usable method registered through the `register_adaptation_methods` hook."""
    settled = _settled()
    out = {}
    for name, claim in settled.winners.items():
        replaced = tuple(c.value.plugin for c in settled.replaced.get(name, ()))
        out[name] = MethodInfo(**{**claim.value.__dict__, "replaces": replaced})
    return out


def make_method(name: str, in_features: int, num_classes: int, config: Any):
    """Build method `name` for a head taking `in_features` and `num_classes` outputs."""
    from .adaptation_method import AdaptationMethod

    settled = _settled()
    if name in settled.contested:
        raise ZooAdaptError(settled.contested[name])
    if name not in settled.winners:
        raise ZooAdaptError(f"unknown adaptation method {name!r}; installed: "
                            f"{', '.join(settled.winners) or 'none'} (see `zoo-adapt methods`)")
    info: MethodInfo = settled.winners[name].value
    label = require(info.plugin, f"adaptation method {name!r}").label
    try:
        method = info.factory(in_features=in_features, num_classes=num_classes, config=config)
    except ZooAdaptError:
        raise
    except Exception as e:
        raise PluginError(f"{label} failed building adaptation method {name!r}: {first_line(e)} "
                          "(ZOO_ADAPT_DEBUG=1 shows the traceback)", info.plugin) from e
    if not isinstance(method, AdaptationMethod):
        raise PluginError(f"{label}: method {name!r} did not build an AdaptationMethod "
                          f"(got {type(method).__name__})", info.plugin)
    return method
