"""Where the images are, from names alone: image files below a folder, the class
subfolders of an ImageFolder, a dataset root's train/ and val/ folders. Nothing is
decoded here and nothing heavy is imported (no torch, numpy or PIL), so the CLI can
check a --data folder before it loads torch."""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter
from pathlib import Path

from zoo_adapt.errors import ZooAdaptError

# every suffix of a format PIL reads without plugins (JPEG, PNG, GIF: its first frame,
# BMP, the PNM family, TIFF, WebP)
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".gif",
    ".bmp",
    ".dib",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tif",
    ".tiff",
    ".webp",
)
# files operating systems leave in folders (hidden names, .x, are skipped as well): never reported
JUNK = ("thumbs.db", "desktop.ini")
TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation", "test")
log = logging.getLogger("zoo_adapt")


class Listing:
    """The images below a folder as (path as reached, real path), sorted by path, and
    the other files passed over, counted by suffix."""

    def __init__(self) -> None:
        self.files: list[tuple[Path, str]] = []
        self.unsupported: Counter[str] = Counter()

    def add(self, other: Listing) -> None:
        self.files += other.files
        self.unsupported.update(other.unsupported)

    def report(self, where: str | Path) -> None:
        """One warning line naming what was passed over, by suffix (none if nothing was)."""
        line = unsupported_line(self.unsupported, where)
        if line:
            log.warning(line)


def unsupported_line(counts: Counter[str], where: str | Path) -> str | None:
    """`skipped 25 files with unsupported suffixes in ROOT (.heic: 25)`, or None."""
    total = sum(counts.values())
    if not total:
        return None
    what = "1 file with an unsupported suffix" if total == 1 else f"{total} files with unsupported suffixes"
    by_suffix = ", ".join(f"{suffix}: {n}" for suffix, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"skipped {what} in {where} ({by_suffix})"


def image_files(
    folder: str | Path, report: bool = False, unreadable: list[tuple[Path, str]] | None = None
) -> list[Path]:
    """Images below `folder`, at any depth, sorted. Links to folders and files are
    followed (a link loop is walked once), a file reached twice through links counts
    once (under its first path in sorted order), and hidden names (.x, such as macOS's
    ._x.jpg or a writer's temporary files) are skipped. `report`: warn, in one line,
    about the files left out for their suffix. An entry that cannot even be looked at
    (a link to itself) is an error naming it, or, given `unreadable`, is added there as
    (path, why) and the walk goes on."""
    listing = list_images(Path(folder), unreadable)
    if report:
        listing.report(folder)
    return [path for path, _ in listing.files]


def list_images(folder: Path, unreadable: list[tuple[Path, str]] | None = None) -> Listing:
    """The Listing of `folder` (see image_files)."""
    listing = Listing()
    found: list[tuple[Path, str]] = []
    seen_dirs: set[str] = set()

    def kind(entry: os.DirEntry) -> str | None:
        """'dir', 'file', or None (anything else, or an entry that cannot be looked at)."""
        try:
            return "dir" if entry.is_dir() else "file" if entry.is_file() else None
        except OSError as e:
            why = f"cannot read {entry.path}: {e.strerror or e}" + (
                " (a link that leads back to itself)" if e.errno == errno.ELOOP else ""
            )
            if unreadable is None:
                raise ZooAdaptError(why) from None
            unreadable.append((Path(entry.path), why))
            return None

    def walk(path: str, real: str) -> None:
        if real in seen_dirs:
            return
        seen_dirs.add(real)
        try:
            entries = list(os.scandir(path))
        except OSError as e:
            raise ZooAdaptError(f"cannot list folder {path}: {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            # a link's target is resolved; otherwise the real path follows from the folder's
            target = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
            what = kind(entry)
            if what == "dir":
                walk(entry.path, target)
            elif what != "file":
                continue
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                found.append((Path(entry.path), target))
            elif entry.name.lower() not in JUNK:
                listing.unsupported[os.path.splitext(entry.name)[1].lower() or "(no suffix)"] += 1

    walk(str(folder), os.path.realpath(folder))
    reals: set[str] = set()
    for path, real in sorted(found):
        if real not in reals:
            reals.add(real)
            listing.files.append((path, real))
    return listing


def class_folders(root: Path) -> list[str]:
    """The class subfolders of an ImageFolder, sorted (hidden ones left out)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """(train, val) subfolders of a dataset root, if it has them."""
    sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    train = next((sub[d] for d in TRAIN_DIRS if d in sub), None)
    val = next((sub[d] for d in VAL_DIRS if d in sub), None)
    return train, val


def check_data_folder(root: Path) -> None:
    """What a --data folder's names already say is wrong, before an image is read: it is
    missing or a file, or its val/ (or test/) has classes that its train/ lacks."""
    if not root.exists():
        raise ZooAdaptError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ZooAdaptError(f"--data must be a folder of class subfolders (or train/ and val/), not a file: {root}")
    train_dir, val_dir = split_dirs(root)
    if train_dir is not None and val_dir is not None:
        check_split_classes(train_dir, val_dir)


def check_split_classes(train_dir: Path, val_dir: Path) -> None:
    """Every class folder of the held-out split is a class of the training split (no
    model exists yet: the classes are train/'s)."""
    train = class_folders(train_dir)
    lacking = [name for name in class_folders(val_dir) if name not in train]
    if train and lacking:
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        raise ZooAdaptError(
            f"{val_dir.name}/ has classes that {train_dir.name}/ lacks: {', '.join(lacking[:5])}{more} "
            f"({train_dir.name}/ classes: {', '.join(train[:10])}{', ...' if len(train) > 10 else ''}); "
            f"add them to {train_dir.name}/ or remove them from {val_dir.name}/"
        )


def labelled_folder(path: str | Path) -> Path:
    """A folder of class subfolders; a dataset root with train/ and val/ or test/, or
    holding only a held-out split (val/ alone), means its held-out split: `val` is not
    a class."""
    path = Path(path)
    train, held_out = split_dirs(path)
    if held_out is None:
        return path
    if train is not None:
        return held_out
    names = {p.name.lower() for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return held_out if names <= set(VAL_DIRS) else path
