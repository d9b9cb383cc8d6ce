"""Plain-text tables for the CLI's listings (no torch, no click)."""

from __future__ import annotations

import json


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, the header first."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def json_text(obj) -> str:
    """What --json prints: indented JSON."""
    return json.dumps(obj, indent=2)
