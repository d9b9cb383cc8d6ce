"""Domain-adaptation methods the installed plugins offer (no torch here: `zoo-adapt
methods` only lists names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import ZooAdaptError
from .plugins import call_each


@dataclass(frozen=True)
class MethodInfo:
    name: str
    plugin: str
    factory: Callable[..., Any]
    description: str


def adaptation_methods() -> dict[str, MethodInfo]:
    """Every method registered through the `register_adaptation_methods` hook."""
    found: dict[str, MethodInfo] = {}

    def kwargs_for(plugin: str):
        def register(name: str, factory: Callable, description: str = "") -> None:
            found[name] = MethodInfo(name, plugin, factory, description)
        return {"register": register}

    call_each("register_adaptation_methods", kwargs_for)
    return found


def make_method(name: str, in_features: int, num_classes: int, config: Any):
    """Build method `name` for a head taking `in_features` and `num_classes` outputs."""
    from .adaptation import AdaptationMethod

    methods = adaptation_methods()
    if name not in methods:
        raise ZooAdaptError(f"unknown adaptation method {name!r}; installed: {', '.join(methods) or 'none'} "
                            "(see `zoo-adapt methods`)")
    method = methods[name].factory(in_features=in_features, num_classes=num_classes, config=config)
    if not isinstance(method, AdaptationMethod):
        raise ZooAdaptError(f"plugin {methods[name].plugin!r}: method {name!r} did not build an "
                            "AdaptationMethod")
    return method
