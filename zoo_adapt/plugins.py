"""The plugin manager: every plugin, built-in or third-party, comes in through the
`zoo_adapt` entry-point group and is validated on the way in."""
from __future__ import annotations

import difflib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import ZooAdaptError

ENTRY_POINT_GROUP = "zoo_adapt"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
generation = 0  # bumped whenever the set of plugins changes, so caches of answers expire


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, with every installed plugin loaded (on first use)."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("zoo_adapt")
        pm.add_hookspecs(hookspecs)
        _pm = pm
        try:
            _load_entry_points(pm)
        except BaseException:
            _pm = None
            _infos.clear()
            raise
    return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.has_plugin(ep.name):  # the same distribution seen twice on sys.path
            continue
        dist = getattr(ep, "dist", None)
        where = f"{dist.metadata['Name']} {dist.version}" if dist else ep.value
        try:
            obj = ep.load()
        except Exception as e:
            raise ZooAdaptError(f"plugin {ep.name!r} ({where}) failed to import: {e}") from e
        register_plugin(obj, ep.name, _dist=dist)


def register_plugin(obj: Any, name: str | None = None, *, _dist=None) -> str:
    """Register a plugin (module, class or instance with @hookimpl functions) in this
    process, as an installed package would be. Raises ZooAdaptError naming the plugin
    when one of its hook implementations is misspelt or has arguments no spec knows."""
    pm = get_plugin_manager()
    name = name or getattr(obj, "__name__", None) or type(obj).__name__
    try:
        pm.register(obj, name=name)
    except pluggy.PluginValidationError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines())
        raise ZooAdaptError(f"plugin {name!r}: {detail.replace(f'Plugin {name!r} ', '')}") from e
    except ValueError as e:  # name already taken
        raise ZooAdaptError(f"plugin {name!r}: {e}") from e
    unknown = [c.name for c in pm.get_hookcallers(obj) or [] if not c.has_spec()]
    if unknown:
        pm.unregister(obj)
        known = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "zoo_adapt_spec")]
        hints = []
        for hook in unknown:
            close = difflib.get_close_matches(hook, known, n=1)
            hints.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ZooAdaptError(f"plugin {name!r} implements unknown hook {', '.join(hints)}")
    global generation
    generation += 1
    hooks = tuple(sorted(c.name for c in pm.get_hookcallers(obj) or []))
    _infos[name] = PluginInfo(
        name=name,
        module=getattr(obj, "__name__", type(obj).__module__),
        distribution=_dist.metadata["Name"] if _dist else None,
        version=_dist.version if _dist else None,
        hooks=hooks,
    )
    return name


def unregister_plugin(name: str) -> None:
    global generation
    generation += 1
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _infos.pop(name, None)


def installed_plugins() -> list[PluginInfo]:
    get_plugin_manager()
    return list(_infos.values())


def plugin_names() -> list[str]:
    return [name for name, _ in get_plugin_manager().list_name_plugin() if name]


def ask(hook: str, **kwargs: Any) -> tuple[str | None, Any]:
    """Call a firstresult hook the way pluggy does, but also say which plugin answered,
    so errors and `zoo-adapt info` can name it."""
    caller = getattr(get_plugin_manager().hook, hook)
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        result = impl.function(*(kwargs[a] for a in impl.argnames))
        if result is not None:
            return impl.plugin_name, result
    return None, None


def call_each(hook: str, kwargs_for) -> list[tuple[str, Any]]:
    """Call every implementation in pluggy's order with its own arguments,
    `kwargs_for(plugin_name)`: for hooks that hand each plugin something bound to it
    (such as a `register` callback). Returns (plugin name, result) pairs."""
    caller = getattr(get_plugin_manager().hook, hook)
    results = []
    for impl in reversed(caller.get_hookimpls()):
        kwargs = kwargs_for(impl.plugin_name)
        results.append((impl.plugin_name, impl.function(*(kwargs[a] for a in impl.argnames))))
    return results
