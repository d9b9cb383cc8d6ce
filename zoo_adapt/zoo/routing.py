"""Which plugin answers which question, asked through pluggy.

A backbone question goes to the plugin that serves the entry, or to the one plugin that
declared an override for that backbone and hook; `pm.subset_hook_caller` leaves out
every other plugin that answers the hook, keeping wrappers, so pluggy's own call loop
(firstresult, wrappers, tracing) runs with the answerer known beforehand. An exception
in a plugin becomes one PluginError naming the plugin (found by matching traceback
frames to hook implementations) and the hook; the traceback stays as its cause."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from zoo_adapt.errors import PluginError, ZooAdaptError, environment_problem, first_line
from zoo_adapt.zoo.backbone import Entry
from zoo_adapt.zoo.claims import Claim
from zoo_adapt.zoo.plugins import PluginInfo, get_plugin_manager, installed_plugins, mark_broken, plugin_info, require


def route(entry: Entry, hook: str) -> str:
    """The plugin that answers `hook` for `entry`."""
    overriders = sorted(
        (p for p in installed_plugins() if p.status == "ok" and (entry.name, hook) in p.overrides), key=lambda p: p.name
    )
    if len(overriders) > 1:
        raise PluginError(
            f"backbone {entry.name!r}: {' and '.join(p.label for p in overriders)} both "
            f"override {hook}; disable one of them (--disable-plugin NAME)",
            overriders[0].name,
            hook,
        )
    return overriders[0].name if overriders else entry.plugin


def _only(hook: str, plugin: str):
    """`hook`'s caller without the other plugins that answer it (wrappers stay)."""
    pm = get_plugin_manager()
    others = {
        impl.plugin
        for impl in getattr(pm.hook, hook).get_hookimpls()
        if impl.plugin_name != plugin and not (impl.wrapper or impl.hookwrapper)
    }
    return pm.subset_hook_caller(hook, others)


def ask(entry: Entry, hook: str, **kwargs: Any) -> tuple[str, Any]:
    """(answering plugin, its answer or None) for a backbone hook."""
    plugin = route(entry, hook)
    require(plugin, f"backbone {entry.name!r}")
    caller = _only(hook, plugin)
    try:
        return plugin, caller(entry=entry, **kwargs)
    except ZooAdaptError:  # a plugin's own message for the user
        raise
    except (Exception, SystemExit) as e:
        problem = environment_problem(e)  # torch/torchvision that cannot work here: not the plugin's fault
        if problem:
            raise ZooAdaptError(problem) from e
        raise failure(e, caller.get_hookimpls(), hook, f"for {entry.name!r}", plugin) from e


def each(hook: str, kwargs_for: Callable[[str], dict[str, Any]]) -> list[str]:
    """Call a registering hook once per plugin, in pluggy's order, with arguments bound
    to that plugin (`kwargs_for(name)`, e.g. its own `register`). A plugin that raises
    is marked broken; returns the plugins that completed."""
    impls = [i for i in getattr(get_plugin_manager().hook, hook).get_hookimpls() if not (i.wrapper or i.hookwrapper)]
    done = []
    for impl in reversed(impls):
        name = impl.plugin_name
        caller = _only(hook, name)
        try:
            caller(**kwargs_for(name))
        except (Exception, SystemExit) as e:
            detail = str(e) if isinstance(e, ZooAdaptError) else first_line(e)
            mark_broken(name, f"{hook} raised {detail}")
        else:
            done.append(name)
    return done


def registrations(hook: str, build: Callable[..., tuple[str, Any, bool]]) -> list[Claim]:
    """The names plugins register through `hook`, as claims in pluggy's order. Each
    plugin gets its own `register(...)`, whose arguments go to `build(plugin, ...)` ->
    (name, value, override); a plugin whose call raises (bad arguments included) is
    marked broken and claims nothing."""
    claims: dict[str, list[Claim]] = {}

    def kwargs_for(plugin: str):
        info = plugin_info(plugin) or PluginInfo(plugin)

        def register(*args: Any, **kwargs: Any) -> None:
            try:
                inspect.signature(build).bind(plugin, *args, **kwargs)
            except TypeError as e:
                raise ZooAdaptError(f"register(): {e}") from None
            name, value, override = build(plugin, *args, **kwargs)
            claims.setdefault(plugin, []).append(Claim(name, value, info.label, info.shipped, bool(override)))

        return {"register": register}

    return [c for plugin in each(hook, kwargs_for) for c in claims.get(plugin, [])]


def blame(exc: BaseException, impls: Iterable[Any]) -> str | None:
    """The plugin whose hook implementation is the innermost frame of `exc`'s traceback."""
    codes = {}
    for impl in impls:
        function = inspect.unwrap(getattr(impl.function, "__func__", impl.function))
        if hasattr(function, "__code__"):
            codes[function.__code__] = impl.plugin_name
    found, tb = None, exc.__traceback__
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found


def failure(exc: BaseException, impls: Iterable[Any], hook: str, what: str, default: str) -> PluginError:
    """One line for a plugin's exception: which plugin, which hook, what went wrong."""
    name = blame(exc, impls) or default
    info = plugin_info(name)
    label = info.label if info else f"plugin {name!r}"
    return PluginError(
        f"{label} failed in {hook} {what}: {first_line(exc)} (ZOO_ADAPT_DEBUG=1 shows the traceback)", name, hook
    )


def build(plugin: str, what: str, factory: Callable[..., Any], expected: type, **kwargs: Any) -> Any:
    """What a plugin's factory makes (an adaptation method, a tracker), checked: a
    factory that raises, or makes something that is not an `expected`, is one
    PluginError naming the plugin and `what` it was building."""
    label = require(plugin, what).label
    try:
        made = factory(**kwargs)
    except ZooAdaptError:
        raise
    except (Exception, SystemExit) as e:
        problem = environment_problem(e)
        if problem:
            raise ZooAdaptError(problem) from e
        raise PluginError(
            f"{label} failed building {what}: {first_line(e)} (ZOO_ADAPT_DEBUG=1 shows the traceback)", plugin
        ) from e
    if not isinstance(made, expected):
        raise PluginError(f"{label}: {what} must be a {expected.__name__}, not {type(made).__name__}", plugin)
    return made
