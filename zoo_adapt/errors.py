"""The one exception type users see: the CLI prints its message as a single line and
exits 1. A plugin's failure is a ZooAdaptError too (PluginError), naming the plugin,
so that one broken plugin reads as one line, not as zoo-adapt's traceback."""

from __future__ import annotations

import importlib.metadata
import os
import re

DEBUG_VAR = "ZOO_ADAPT_DEBUG"


class ZooAdaptError(Exception):
    """A problem with the user's input or environment (not a bug in zoo-adapt)."""

    # set when every process of a torchrun job raised it together (the rank that saw it
    # first), so that rank 0 alone reports it
    seen_by: int | None = None


class PluginError(ZooAdaptError):
    """A plugin failed or cannot be used. `plugin` names it; the original exception, if
    any, is the ``__cause__`` (shown with ZOO_ADAPT_DEBUG=1 or ``zoo-adapt --debug``)."""

    def __init__(self, message: str, plugin: str | None = None, hook: str | None = None):
        super().__init__(message)
        self.plugin, self.hook = plugin, hook


class ZooAdaptWarning(UserWarning):
    """A plugin problem that does not stop zoo-adapt (a broken or colliding plugin): the
    CLI prints each one once, on one line."""


def debugging() -> bool:
    """Whether the user asked for full tracebacks ($ZOO_ADAPT_DEBUG set to 1/true/yes)."""
    return os.environ.get(DEBUG_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for reports that must stay on one line."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"


# what a torch install that cannot work on this machine says, and what it means
_MISMATCH = re.compile(r"operator torchvision::\w+ does not exist|Couldn't load custom C\+\+ ops")
_NATIVE = re.compile(
    r"cannot open shared object file|undefined symbol|DLL load failed|Library not loaded|image not found", re.I
)
_DRIVER = re.compile(
    r"CUDA driver version is insufficient|Found no NVIDIA driver|NVIDIA driver on your system is too old", re.I
)


def environment_problem(exc: BaseException) -> str | None:
    """One line for an exception that says the installed torch/torchvision cannot work
    here (torchvision built for another torch, missing or mismatched CUDA libraries, a
    driver too old for torch's CUDA), naming the versions and the fix; None for any
    other exception. Looks through the chain of causes (a plugin's failure wraps it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).split())
        torch_v, vision_v = _version("torch"), _version("torchvision")
        if _MISMATCH.search(text):
            return (
                f"torchvision {vision_v} and torch {torch_v} do not work together ({text[:100]}): install the "
                f"pair built together, e.g. {install_line(torch_v)}"
            )
        if isinstance(exc, (ImportError, OSError)) and _NATIVE.search(text):
            return (
                f"torch {torch_v} (torchvision {vision_v}) cannot load its native libraries ({text[:160]}): the "
                f"install is broken or built for another CUDA; reinstall it, e.g. {install_line(torch_v, force=True)}"
            )
        if _DRIVER.search(text):
            return (
                f"torch {torch_v} cannot use this machine's NVIDIA driver ({text[:120]}): update the driver, "
                "install a torch build for an older CUDA (https://pytorch.org/get-started/locally/), or "
                "run on the CPU with --device cpu"
            )
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _version(dist: str) -> str:
    """An installed distribution's version, read without importing it."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def install_line(torch_version: str, force: bool = False) -> str:
    """The pip line for torch at `torch_version` with its own torchvision (0.(minor+15)
    since torch 2.0: 2.5.1 -> 0.20.1) from the index that built it (+cu121: PyTorch's)."""
    release, _, local = torch_version.partition("+")
    parts = release.split(".")
    line = "pip install " + ("--force-reinstall " if force else "")
    if len(parts) < 2 or parts[0] != "2" or not parts[1].isdigit():
        return line + "torch torchvision (matching versions: https://pytorch.org/get-started/locally/)"
    vision = ".".join(["0", str(int(parts[1]) + 15), *parts[2:3]])
    index = f" --index-url https://download.pytorch.org/whl/{local}" if local else ""
    return f"{line}torch=={release} torchvision=={vision}{index}"


QUOTE_LIMIT = 40  # characters of a user's value an error message quotes


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters (a 10 MB value
    pasted into an option must not make a 10 MB error line)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, (str, bytes)) else ""
    return text[: limit - 3] + "..." + size


def clip(text: str, limit: int = 120) -> str:
    """A library's message about a user's value, cut to `limit` characters (it may quote
    the whole value)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
