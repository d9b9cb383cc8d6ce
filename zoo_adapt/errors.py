"""The one exception type users see: the CLI prints its message as a single line and
exits 1. A plugin's failure is a ZooAdaptError too (PluginError), naming the plugin,
so that one broken plugin reads as one line, not as zoo-adapt's traceback."""

from __future__ import annotations

import os

DEBUG_VAR = "ZOO_ADAPT_DEBUG"


class ZooAdaptError(Exception):
    """A problem with the user's input or environment (not a bug in zoo-adapt)."""


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
