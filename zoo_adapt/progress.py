"""Progress of long loops (training steps, validation, TTA, evaluate, predict) for a
person watching: a bar in a terminal; elsewhere (a log file, a notebook, CI) a line every
`every` seconds with the rate and the time left. Always on stderr, so stdout keeps only
results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
EVERY = 10.0


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Ticker:
    """Counts steps of a loop of `total` steps (items are `unit`, counted by `update`'s
    `items`). `figures()` is asked for the figures to show at most once a second in a
    terminal or once per line elsewhere (it may read the GPU)."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "img",
        every: float = EVERY,
        stream=None,
        figures: Callable[[], dict[str, str]] | None = None,
    ):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.figures = figures or (lambda: {})
        self.steps = self.items = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, file=self.stream, dynamic_ncols=True)

    def update(self, items: int = 0) -> None:
        self.steps += 1
        self.items += items
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update()
            if now - self.last >= 1.0:
                self.last = now
                self.bar.set_postfix(self.figures())
        elif now - self.last >= self.every and self.steps < self.total:
            self.last = now
            elapsed = now - self.start
            left = (self.total - self.steps) * elapsed / self.steps
            shown = "".join(f" {k} {v}" for k, v in self.figures().items())
            rate = f" | {self.items / elapsed:.0f} {self.unit}/s" if self.items else ""
            print(
                f"  {self.desc}: {self.steps}/{self.total}{shown}{rate}, {format_seconds(left)} left",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def track(
    items: Iterable[T], total: int, desc: str, count: Callable[[T], int] = lambda x: 0, enabled: bool = True
) -> Iterator[T]:
    """`items`, with a Ticker over them."""
    if not enabled:
        yield from items
        return
    ticker = Ticker(total, desc)
    try:
        for item in items:
            yield item
            ticker.update(count(item))
    finally:
        ticker.close()
