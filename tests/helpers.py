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


def adapting(tmp_path, digits, **options):
    """small() adapting the digit-shift set's labelled source to its unlabelled target
    domain: 2 epochs of 3 steps, no flips (digits have a handedness); `options` override."""
    base = dict(target_data=str(digits / "target" / "train"), epochs=2, steps_per_epoch=3, hflip=False)
    return small(tmp_path, digits / "source", **{**base, **options})


def forbid_device_reads_in_steps(monkeypatch) -> None:
    """Make every training step (`Loop._step`) fail if it reads a tensor back on the host
    (.item(), .tolist(), a truth test), which makes the host wait for the GPU; the
    optimizer reading its own step counter (a CPU tensor even on CUDA) is no wait."""
    import torch

    from zoo_adapt import Loop

    reads: list[str] = []
    for name in ("item", "tolist", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _original=original, **k):
            frame = sys._getframe(1)
            if "torch/optim/" not in frame.f_code.co_filename:
                reads.append(f"{_name} in {frame.f_code.co_filename}:{frame.f_lineno}")
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    original_step = Loop._step

    def watched(self, step):
        before = len(reads)
        original_step(self, step)
        assert len(reads) == before, f"a step read the device: {reads[before:]}"

    monkeypatch.setattr(Loop, "_step", watched)


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
