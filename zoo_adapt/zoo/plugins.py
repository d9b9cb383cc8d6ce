"""The plugin manager: every plugin, built-in or third-party, comes in through the
`zoo_adapt` entry-point group (or `register_plugin`, in-process) and is validated on
the way in.

A plugin that cannot be used (it fails to import, implements a hook no spec knows,
shares its entry-point name with another distribution, or fails while registering
names) is kept as *broken* with its reason, blocked in pluggy and reported once, on
one line: everything that does not need it keeps working, and only using it fails.
A third party's entry point named like a built-in plugin is skipped and reported: the
built-in keeps its name (as claims.py rules for backbone names). A plugin that takes
more than SLOW_IMPORT_S to import is named, since every command waits for it.
$ZOO_ADAPT_DISABLE_PLUGINS=a,b (or `zoo-adapt --disable-plugin a`) blocks plugins by
name before they are imported (pluggy's set_blocked)."""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pluggy

from zoo_adapt.errors import PluginError, ZooAdaptWarning, environment_problem, first_line
from zoo_adapt.zoo import hookspecs
from zoo_adapt.zoo.options import closest

ENTRY_POINT_GROUP = "zoo_adapt"
DISABLE_VAR = "ZOO_ADAPT_DISABLE_PLUGINS"
SHIPPED = "zoo-adapt"  # the distribution of the built-in plugins
SLOW_IMPORT_S = 1.0  # a plugin slower than this to import is named (`zoo-adapt list` takes ~0.3 s)
HEAVY_MODULES = ("torch", "torchvision", "timm", "tensorflow", "jax")  # what usually makes an import slow


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str | None = None
    distribution: str | None = None
    version: str | None = None
    hooks: tuple[str, ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()  # (backbone name, hook) it answers for another plugin
    status: str = "ok"  # ok | broken | disabled
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"{self.distribution} {self.version or ''}".strip() if self.distribution else "registered in-process"

    @property
    def label(self) -> str:
        """How messages name it: plugin 'mobilenet' (zoo-adapt-mobilenet 0.1.0)."""
        return f"plugin {self.name!r} ({self.where})"

    @property
    def shipped(self) -> bool:
        return self.distribution == SHIPPED


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
_entry_points: dict[str, importlib.metadata.EntryPoint] = {}
_blocked_here: list[str] = []  # names `disabled()` blocks for now
_pending: list[str] = []  # entry points re-enabled after `disabled()`, loaded on next use
_reported: set[str] = set()
_shadowed: dict[str, list[PluginInfo]] = {}  # built-in plugin name -> third parties skipped for using it
generation = 0  # bumped whenever the set of plugins changes, so caches of answers expire


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, with every installed plugin loaded (on first use)."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("zoo_adapt")
        pm.add_hookspecs(hookspecs)
        for name in [*_disabled_by_environment(), *_blocked_here]:
            pm.set_blocked(name)
        _pm = pm
        try:
            _load_entry_points(pm)
        except BaseException:
            _pm = None
            _infos.clear()
            raise
        _check_names(_disabled_by_environment(), f"${DISABLE_VAR}")
        _check_names(_blocked_here, "--disable-plugin")
    while _pending:
        _load(_pm, _entry_points[_pending.pop(0)])
    return _pm


def _disabled_by_environment() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_VAR, "").split(",") if n.strip()]


def _check_names(names: Iterable[str], where: str) -> None:
    """A name given to disable that no plugin has disables nothing: say so, once, with
    the closest plugin name."""
    known = set(_entry_points) | set(_infos)
    for name in dict.fromkeys(names):
        if name not in known:
            report(f"{where} {name}: no plugin of that name is installed{closest(name, sorted(known))}")


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"].lower().replace("_", "-") if dist else ep.value


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    by_name: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        # A distribution seen twice on sys.path counts once; two distributions are a collision.
        by_name.setdefault(ep.name, {}).setdefault(_dist_name(ep), ep)
    for name, eps in sorted(by_name.items()):
        first = eps.get(SHIPPED) or eps[min(eps)]
        _entry_points[name] = first
        if SHIPPED in eps and len(eps) > 1:
            _shadowed[name] = [_info_of(eps[d]) for d in sorted(eps) if d != SHIPPED]
            _report_shadowed(name, blocked=pm.is_blocked(name))
            _load(pm, first)
        elif len(eps) > 1 and not pm.is_blocked(name):
            both = " and ".join(_info_of(eps[d]).where for d in sorted(eps))
            _broken(
                PluginInfo(name, distribution=both),
                "two distributions define this entry-point name; uninstall one of them",
            )
        else:
            _load(pm, first)


def _report_shadowed(name: str, blocked: bool) -> None:
    """One line per third party skipped for naming its entry point like a built-in; when
    the name is disabled, that it is the built-in that --disable-plugin disables."""
    for other in _shadowed.get(name, ()):
        if blocked:
            report(
                f"--disable-plugin {name} (or ${DISABLE_VAR}) disables zoo-adapt's built-in plugin {name!r}; "
                f"{other.label} stays skipped, its entry-point name being the built-in's (rename it to use it)"
            )
        else:
            report(
                f"{other.label} was skipped: its entry-point name {name!r} is zoo-adapt's built-in plugin's, "
                "which keeps it; rename the entry point to use both"
            )


def _info_of(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(
        ep.name, ep.value.partition(":")[0], dist.metadata["Name"] if dist else None, dist.version if dist else None
    )


def _load(pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint) -> None:
    info = _info_of(ep)
    if pm.is_blocked(ep.name):
        _infos[ep.name] = replace(info, status="disabled", problem=f"disabled (${DISABLE_VAR} or --disable-plugin)")
        return
    heavy_before = {m for m in HEAVY_MODULES if m in sys.modules}
    start = time.perf_counter()
    try:
        obj = ep.load()
    except (Exception, SystemExit) as e:  # sys.exit() in a plugin must not end every command
        return _broken(info, f"failed to import: {environment_problem(e) or first_line(e)}")
    took = time.perf_counter() - start
    if took > SLOW_IMPORT_S:
        heavy = [m for m in HEAVY_MODULES if m in sys.modules and m not in heavy_before]
        why = f" (it imports {', '.join(heavy)} at import time; import them inside the hooks)" if heavy else ""
        report(f"{info.label} took {took:.1f} s to import{why}; every zoo-adapt command waits for it")
    try:
        _register(pm, obj, info)
    except PluginError as e:
        _broken(info, str(e).removeprefix(info.label).lstrip(": "))


def register_plugin(obj: Any, name: str | None = None) -> str:
    """Register a plugin (module, class or instance with @hookimpl functions) in this
    process, as an installed package would be. Raises PluginError naming the plugin
    when its name is taken or one of its hook implementations is misspelt or has
    arguments no spec knows (zoo_adapt.testing.registered replaces an installed copy)."""
    pm = get_plugin_manager()
    name = name or getattr(obj, "__name__", None) or type(obj).__name__
    taken = _infos.get(name)
    if pm.is_blocked(name) or (taken and pm.has_plugin(name)):
        state = f"is {taken.status}" if taken and taken.status != "ok" else "is taken"
        raise PluginError(
            f"plugin name {name!r} {state} ({taken.where if taken else 'blocked'}); "
            "zoo_adapt.testing.registered() replaces an installed plugin for a test",
            name,
        )
    module = getattr(obj, "__name__", None) or type(obj).__module__
    return _register(pm, obj, PluginInfo(name, module))


def _register(pm: pluggy.PluginManager, obj: Any, info: PluginInfo) -> str:
    global generation
    name = info.name
    try:
        pm.register(obj, name=name)
    except pluggy.PluginValidationError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines())
        raise PluginError(f"{info.label}: {detail.replace(f'Plugin {name!r} ', '')}", name) from None
    except ValueError as e:  # the object is registered already
        raise PluginError(f"{info.label}: {str(e).splitlines()[0]}", name) from None
    callers = pm.get_hookcallers(obj) or []
    unknown = [c.name for c in callers if not c.has_spec()]
    overrides = sorted(
        (backbone, c.name)
        for c in callers
        for impl in c.get_hookimpls()
        if impl.plugin is obj
        for backbone in getattr(impl.function, hookspecs.OVERRIDES_ATTR, ())
    )
    misplaced = sorted({hook for _, hook in overrides if hook not in hookspecs.BACKBONE_HOOKS})
    if unknown or misplaced:
        pm.unregister(obj)
        known = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "zoo_adapt_spec")]
        hints = [
            f"{h!r}" + "".join(f" (did you mean {c!r}?)" for c in difflib.get_close_matches(h, known, n=1))
            for h in unknown
        ]
        what = (
            f"implements unknown hook {', '.join(hints)}"
            if unknown
            else f"uses override() on {', '.join(misplaced)}, which is not a backbone hook"
        )
        raise PluginError(f"{info.label} {what}", name)
    _infos[name] = replace(info, hooks=tuple(sorted(c.name for c in callers)), overrides=tuple(overrides))
    generation += 1
    return name


def unregister_plugin(name: str) -> None:
    global generation
    pm = get_plugin_manager()
    if pm.get_plugin(name) is not None:
        pm.unregister(name=name)
    _infos.pop(name, None)
    generation += 1


def _broken(info: PluginInfo, reason: str) -> None:
    global generation
    _infos[info.name] = replace(info, status="broken", problem=reason)
    if _pm is not None:
        if _pm.get_plugin(info.name) is not None:
            _pm.unregister(name=info.name)
        _pm.set_blocked(info.name)
    generation += 1
    report(f"{info.label} is broken and was skipped: {reason}")


def mark_broken(name: str, reason: str) -> None:
    """Take a plugin out of use (it failed while registering names, say), keeping why."""
    _broken(_infos.get(name) or PluginInfo(name), reason)


@contextlib.contextmanager
def disabled(names: Iterable[str]) -> Iterator[None]:
    """Block plugins by name for the duration (the CLI's --disable-plugin). Before the
    manager exists this stops them being imported; afterwards they are unregistered
    and registered again on exit."""
    global generation
    names = [n for n in dict.fromkeys(names) if n and not (_pm and _pm.is_blocked(n))]
    if not names:
        yield
        return
    if _pm is not None:
        _check_names(names, "--disable-plugin")
    for n in names:
        _report_shadowed(n, blocked=True)
    kept: dict[str, tuple[Any, PluginInfo]] = {}
    _blocked_here.extend(names)
    pm = _pm
    for n in names if pm is not None else ():
        assert pm is not None
        obj = pm.get_plugin(n)
        if obj is not None:
            kept[n] = (pm.unregister(name=n), _infos[n])
        pm.set_blocked(n)
        if n in _infos:
            _infos[n] = replace(_infos[n], status="disabled", problem="disabled (--disable-plugin)")
    generation += 1
    try:
        yield
    finally:
        for n in names:
            _blocked_here.remove(n)
            if _pm is None or n in _disabled_by_environment():
                continue
            _pm.unblock(n)
            if n in kept:
                obj, info = kept[n]
                _pm.register(obj, name=n)
                _infos[n] = info
            elif n in _entry_points and _infos.get(n, PluginInfo(n)).status == "disabled":
                _pending.append(n)
        generation += 1


@contextlib.contextmanager
def standing_in(obj: Any, name: str | None = None) -> Iterator[str]:
    """Register `obj` as plugin `name` (default: the module's name) for the duration,
    putting aside whatever holds that name now (an installed copy, a disabled or broken
    one) and restoring it afterwards: a plugin's tests run against its source tree even
    where it is installed too."""
    global generation
    name = name or getattr(obj, "__name__", None)
    if not name:
        raise TypeError("registered(plugin, name): name the plugin (its entry-point name)")
    pm = get_plugin_manager()
    if pm.get_plugin(name) is obj:  # the installed copy is this very object
        yield name
        return
    old = pm.unregister(name=name) if pm.get_plugin(name) is not None else None
    old_info, blocked = _infos.pop(name, None), pm.is_blocked(name)
    if blocked:
        pm.unblock(name)
    try:
        _register(pm, obj, PluginInfo(name, getattr(obj, "__name__", None) or type(obj).__module__))
        yield name
    finally:
        if pm.get_plugin(name) is obj:
            pm.unregister(name=name)
        if pm.is_blocked(name) != blocked:  # it broke meanwhile, or was blocked before
            pm.set_blocked(name) if blocked else pm.unblock(name)
        _infos.pop(name, None)
        if old is not None:
            pm.register(old, name=name)
        if old_info is not None:
            _infos[name] = old_info
        generation += 1


def report(message: str) -> None:
    """Tell the user about a plugin problem that does not stop zoo-adapt, once."""
    if message not in _reported:
        _reported.add(message)
        warnings.warn(message, ZooAdaptWarning, stacklevel=2)


def installed_plugins() -> list[PluginInfo]:
    """Every plugin zoo-adapt knows of, usable or not (see `status`)."""
    get_plugin_manager()
    return list(_infos.values())


def plugin_info(name: str) -> PluginInfo | None:
    get_plugin_manager()
    return _infos.get(name)


def plugin_names() -> list[str]:
    """The plugins that can be used now."""
    return [p.name for p in installed_plugins() if p.status == "ok"]


def require(name: str, needed_by: str) -> PluginInfo:
    """The plugin, or a one-line error saying why `needed_by` cannot have it."""
    info = plugin_info(name)
    if info is None:
        raise PluginError(f"{needed_by} needs plugin {name!r}, which is not installed (see `zoo-adapt plugins`)", name)
    if info.status != "ok":
        raise PluginError(
            f"{needed_by} needs {info.label}, which is {info.problem}"
            if info.status == "disabled"
            else f"{needed_by} needs {info.label}, which is broken: {info.problem}",
            name,
        )
    return info
