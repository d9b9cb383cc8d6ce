"""Writing files so that a crash never leaves half of one: every write goes to a
temporary beside its target, is flushed to disk, and replaces the target in one rename.

Every replacement and removal is a *write boundary*; `boundary()` is called at each,
so tests can stop a run exactly there (`on_boundary`, in-process) or kill it
(`ZOO_ADAPT_CRASH_AT=N` kills the process with SIGKILL at the N-th boundary, with
`ZOO_ADAPT_CRASH_LOG=FILE` recording the boundaries passed). File-system errors (a full
disk, no permission, a read-only folder) become one-line ZooAdaptErrors naming the file.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from zoo_adapt.errors import ZooAdaptError

TMP_SUFFIX = ".zoo-tmp"
on_boundary: Callable[[str], None] | None = None  # tests: called with a description at each boundary
_count = 0


def boundary(what: str) -> None:
    global _count
    _count += 1
    log = os.environ.get("ZOO_ADAPT_CRASH_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{_count} {what}\n")
    if on_boundary is not None:
        on_boundary(what)
    if os.environ.get("ZOO_ADAPT_CRASH_AT") == str(_count):
        os.kill(os.getpid(), signal.SIGKILL)


def temporary(path: Path) -> Path:
    """The temporary name of `path` (hidden, recognisable, cleaned up by `clean_temporaries`)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def write_bytes(path: Path, data: bytes | Callable[[Path], None]) -> Path:
    """Write `data` (bytes, or a function that writes the temporary file it is given) to
    `path` atomically and durably; the file's mode follows the umask."""
    path = Path(path)
    tmp = temporary(path)
    try:
        if callable(data):
            data(tmp)
            _fsync_file(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        boundary(f"write {path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _discard(tmp)
        raise ZooAdaptError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def remove(path: Path, folders: bool = False) -> None:
    """Remove `path` if it exists (a boundary too); with `folders`, a folder and all it holds."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        boundary(f"remove {path.name}")
        try:
            if folders and path.is_dir() and not path.is_symlink():
                import shutil

                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as e:
            raise ZooAdaptError(f"cannot remove {path}: {e.strerror or e}") from None


def clean_temporaries(folder: Path) -> list[Path]:
    """Remove temporaries a killed run left behind (only call while holding the folder's lock)."""
    found = sorted(folder.glob(f".*{TMP_SUFFIX}")) if folder.is_dir() else []
    for tmp in found:
        _discard(tmp)
    return found


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except OSError:
        pass


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
