"""What several test files need (conftest.py puts this folder on sys.path): the CLI run
as a user runs it, the one-line error check, tiny configurations, a fixed batch source."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
CLASSES = ("brick", "coffee", "grass", "moon", "rocket")  # the demo photographs most tests use
ZOO = [sys.executable, "-m", "zoo_adapt"]  # `zoo-adapt`, as a new process
# a run that takes seconds: resnet18 from scratch at 32 px, no TTA, no analysis, no loader processes
TINY = [
    "--backbone",
    "resnet18",
    "--no-pretrained",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--no-tta",
    "--workers",
    "0",
    "--analysis",
    "off",
]


def zoo(*args, env: dict[str, str] | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`zoo-adapt ARGS` in a new process (as a user types it), output captured."""
    return subprocess.run(
        ZOO + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )


def one_line_error(result, *needles: str, code: int | None = 1) -> str:
    """`result` failed with one `Error: ...` line on stderr holding every needle, and no
    traceback; returns the line. `code` None: any non-zero exit status."""
    assert result.returncode != 0 if code is None else result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def small(tmp_path, data, **options):
    """A FinetuneConfig that runs in seconds: resnet18 from scratch at 32 px, 3 epochs, no
    TTA and no error analysis (tests of those turn them on); `options` override."""
    from zoo_adapt import FinetuneConfig

    base = dict(
        backbone="resnet18",
        data=str(data),
        out=str(tmp_path / "run"),
        pretrained=False,
        image_size=32,
        batch_size=8,
        epochs=3,
        workers=0,
        tta=False,
        analysis="off",
    )
    return FinetuneConfig(**{**base, **options})


class FixedBatches:
    """A batch source for engine.Loop that yields the same given (images, labels)
    batches every epoch, in order."""

    def __init__(self, batches):
        self.batches, self.num_samples = batches, sum(len(y) for _, y in batches)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch):
        pass


def bomb_png(path, side: int) -> None:
    """A tiny PNG whose header claims side x side pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
