"""Names users type: zoo-adapt's registry.toml, names plugins register in code, and the
user's own registry files (`--registry FILE` or $ZOO_ADAPT_REGISTRY), applied last.

registry.toml and plugins claim names under one rule (claims.py): a collision is
reported naming both sides, never settled silently by load order. A user file may
deliberately re-point a name (a table of the same name) or rename one (``rename =
"old"``); `zoo-adapt list` says so. `plugin/upstream` (e.g. `timm/convnext_tiny`) names
any model a plugin serves without a registry entry."""

from __future__ import annotations

import dataclasses
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

from zoo_adapt.errors import ZooAdaptError, quote
from zoo_adapt.zoo import plugins
from zoo_adapt.zoo.backbone import Entry
from zoo_adapt.zoo.claims import Claim, settle
from zoo_adapt.zoo.plugins import plugin_info, plugin_names, report
from zoo_adapt.zoo.routing import registrations

ENV_VAR = "ZOO_ADAPT_REGISTRY"
BUILTIN = "registry.toml"
_FIELDS = ("plugin", "upstream", "weights", "description")
# the other keys zoo-adapt reads (registry.toml's header); any further key is passed to the plugin
STATIC_FACTS = ("params", "head", "in_features", "num_groups", "input_size", "mean", "std", "interpolation", "crop_pct")
KNOWN_KEYS = (*_FIELDS, *STATIC_FACTS, "rename")
_user_files: list[Path] = []
_cache: tuple[int, dict[str, Entry], dict[str, str]] | None = None


def builtin_registry_file() -> Path:
    """The repository's top-level registry.toml (zoo_adapt/registry.toml links to it,
    and a wheel carries it as a file)."""
    return Path(str(files("zoo_adapt") / BUILTIN))


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
        _report_misspelt(spec, name, origin)
        entries[name] = Entry(name=name, extra=spec, origin=origin, **known)
    return entries


def _report_misspelt(extra: dict[str, Any], name: str, origin: str) -> None:
    """A key that is none of zoo-adapt's but close to one (`weigths`) is most likely a
    typo that silently leaves the real key at its default: say so. Other keys are the
    plugin's own and pass without a word."""
    for key in extra:
        if key in KNOWN_KEYS:
            continue
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.75)
        if close:
            report(
                f"{origin}: [{name}] has key {key!r}, which zoo-adapt does not read: did you mean {close[0]!r}? "
                "(kept as an extra key for the plugin)"
            )


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ZooAdaptError(f"registry file {path} is not valid TOML: {e}") from e
    except OSError as e:
        raise ZooAdaptError(f"cannot read registry file {path}: {e.strerror}") from e


def _backbone(
    plugin: str,
    name: str,
    upstream: str,
    weights: str | None = None,
    description: str = "",
    override: bool = False,
    **extra: Any,
) -> tuple[str, Entry, bool]:
    """One call of a plugin's `register(...)` in register_backbones."""
    spec = dict(upstream=upstream, weights=weights, description=description, **extra)
    return name, parse_entries({name: spec}, f"plugin {plugin}", plugin=plugin)[name], override


def _user_file(known: dict[str, Entry], contested: dict[str, str], path: Path) -> dict[str, Entry]:
    """Apply one user registry file: new names, re-pointed names, renamed names."""
    for name, spec in _read(path).items():
        spec = dict(spec) if isinstance(spec, dict) else spec
        old_name = spec.pop("rename", None) if isinstance(spec, dict) else None
        note = ""
        if old_name is not None:
            base = known.get(old_name)
            if base is None:
                why = (
                    "its plugins collide; define the name with plugin and upstream instead"
                    if old_name in contested
                    else "no backbone has that name"
                )
                raise ZooAdaptError(f"{path}: [{name}] renames {old_name!r}, but {why}")
            spec = {**{k: v for k, v in base.to_dict().items() if k != "name"}, **spec}
            known = {(name if k == old_name else k): v for k, v in known.items()}
            note = f"renames {old_name} ({base.origin})"
        entry = parse_entries({name: spec}, str(path))[name]
        old = known.get(name)
        if not note and name in contested:
            note = "settles a collision of plugins"
        elif not note and old is not None:
            note = f"re-points {name} (was {old.plugin}/{old.upstream}, {old.origin})"
        contested.pop(name, None)
        known[name] = dataclasses.replace(entry, note=note)
    return known


def _load() -> tuple[dict[str, Entry], dict[str, str]]:
    files_ = registry_files()
    shipped = parse_entries(_read(files_[0]), BUILTIN)
    claims = [Claim(n, e, f"zoo-adapt's {BUILTIN}", shipped=True) for n, e in shipped.items()]
    settled = settle(claims + registrations("register_backbones", _backbone), "backbone name", report)
    known = {name: claim.value for name, claim in settled.winners.items()}
    contested = dict(settled.contested)
    for path in files_[1:]:
        known = _user_file(known, contested, path)
    return known, contested


def _loaded() -> tuple[dict[str, Entry], dict[str, str]]:
    global _cache
    plugins.get_plugin_manager()
    if _cache is None or _cache[0] != plugins.generation:
        known, contested = _load()
        _cache = (plugins.generation, known, contested)
    return _cache[1], _cache[2]


def entries() -> dict[str, Entry]:
    """Every usable backbone name, in registry order."""
    return dict(_loaded()[0])


def resolve(name: str) -> Entry:
    """The entry for a name users typed, or a one-line error suggesting close names."""
    known, contested = _loaded()
    if name in known:
        return known[name]
    if name in contested:
        raise ZooAdaptError(contested[name])
    plugin, sep, upstream = name.partition("/")
    if sep and upstream and plugin_info(plugin) is not None:
        return Entry(name=name, plugin=plugin, upstream=upstream, origin="command line")
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if sep and plugin not in plugin_names():
        hint = f" No plugin named {quote(plugin)} is installed (see `zoo-adapt plugins`).{hint}"
    raise ZooAdaptError(f"unknown backbone {quote(name)}.{hint} Run `zoo-adapt list` to see them all.")
