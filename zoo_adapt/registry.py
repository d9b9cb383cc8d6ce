"""Names users type: the built-in registry.toml, names plugins register in code, and
the user's own registry files (`--registry FILE` or $ZOO_ADAPT_REGISTRY), later ones
winning. `plugin/upstream` (e.g. `timm/convnext_tiny`) names any model a plugin serves
without a registry entry."""
from __future__ import annotations

import difflib
import os
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import plugins
from .backbone import Entry
from .errors import ZooAdaptError
from .plugins import call_each, plugin_names

ENV_VAR = "ZOO_ADAPT_REGISTRY"
_FIELDS = ("plugin", "upstream", "weights", "description")
_user_files: list[Path] = []
_cache: tuple[int, dict[str, Entry]] | None = None


def builtin_registry_file() -> Path:
    return Path(str(files("zoo_adapt") / "registry.toml"))


def add_registry(path: str | os.PathLike) -> None:
    """Also read this registry file (after the built-in one and $ZOO_ADAPT_REGISTRY)."""
    p = Path(path)
    if not p.is_file():
        raise ZooAdaptError(f"registry file not found: {p}")
    _user_files.append(p)
    reset()


def reset() -> None:
    """Forget the loaded entries (after a plugin or registry file was added)."""
    global _cache
    _cache = None


def registry_files() -> list[Path]:
    env = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    for p in env:
        if not p.is_file():
            raise ZooAdaptError(f"${ENV_VAR} names a registry file that does not exist: {p}")
    return [builtin_registry_file(), *env, *_user_files]


def parse_entries(table: dict[str, Any], origin: str, plugin: str | None = None) -> dict[str, Entry]:
    entries = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise ZooAdaptError(f"{origin}: [{name}] must be a table with plugin and upstream keys")
        if "/" in name:
            raise ZooAdaptError(f"{origin}: backbone name {name!r} may not contain '/'")
        spec = dict(spec)
        spec.setdefault("plugin", plugin)
        missing = [k for k in ("plugin", "upstream") if not spec.get(k)]
        if missing:
            raise ZooAdaptError(f"{origin}: [{name}] lacks {' and '.join(missing)}")
        known = {k: spec.pop(k) for k in _FIELDS if k in spec}
        entries[name] = Entry(name=name, extra=spec, origin=origin, **known)
    return entries


def _read(path: Path) -> dict[str, Entry]:
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ZooAdaptError(f"registry file {path} is not valid TOML: {e}") from e
    except OSError as e:
        raise ZooAdaptError(f"cannot read registry file {path}: {e.strerror}") from e
    return parse_entries(table, str(path))


def _from_plugins() -> dict[str, Entry]:
    entries: dict[str, Entry] = {}

    def kwargs_for(plugin: str):
        def register(name: str, upstream: str, weights: str | None = None,
                     description: str = "", **extra: Any) -> None:
            spec = dict(upstream=upstream, weights=weights, description=description, **extra)
            entries.update(parse_entries({name: spec}, f"plugin {plugin}", plugin=plugin))
        return {"register": register}

    call_each("register_backbones", kwargs_for)
    return entries


def entries() -> dict[str, Entry]:
    """Every named backbone, in registry order."""
    global _cache
    plugins.get_plugin_manager()
    if _cache is None or _cache[0] != plugins.generation:
        files_ = registry_files()
        merged = _read(files_[0])
        merged.update(_from_plugins())
        for path in files_[1:]:
            merged.update(_read(path))
        _cache = (plugins.generation, merged)
    return dict(_cache[1])


def resolve(name: str) -> Entry:
    """The entry for a name users typed, or a one-line error suggesting close names."""
    known = entries()
    if name in known:
        return known[name]
    plugin, sep, upstream = name.partition("/")
    if sep and upstream and plugin in plugin_names():
        return Entry(name=name, plugin=plugin, upstream=upstream, origin="command line")
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if sep and plugin not in plugin_names():
        hint = f" No plugin named {plugin!r} is installed (see `zoo-adapt plugins`).{hint}"
    raise ZooAdaptError(f"unknown backbone {name!r}.{hint} Run `zoo-adapt list` to see them all.")
