"""Plain-text tables for the CLI's listings (no torch, no click)."""
from __future__ import annotations


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, the header first."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)
