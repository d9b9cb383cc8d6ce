"""Labels from a CSV or TSV file instead of folder names: one row per image, a path
column (relative to the data folder, or absolute), a label column and an optional
split column (train / val / test). With `multi_label`, the label column holds any
number of labels separated by `delimiter` (an empty cell: none of the classes).

The checks are those of a folder: class order (sorted training labels, or the
model's), labels the model does not know, missing and unreadable images; each error
names the file and the line (the spreadsheet row; the header is line 1)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo_adapt.errors import ZooAdaptError, clip, quote

SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "": "",
}
MULTI_LABEL_DELIMITER = "|"


@dataclass
class Row:
    line: int
    path: Path
    labels: list[str]
    split: str  # train, val, test or "" (not given)


@dataclass
class LabelColumns:
    path: str = "path"
    label: str = "label"
    split: str = "split"
    multi_label: bool = False
    delimiter: str = MULTI_LABEL_DELIMITER


def read_rows(file: str | Path, root: str | Path | None, columns: LabelColumns) -> list[Row]:
    """Every row of the file, checked one by one: a path and a label (unless
    multi-label), a known split, an image that exists, no image twice."""
    file = Path(file)
    if file.is_dir():
        raise ZooAdaptError(f"--labels takes a CSV or TSV file; {file} is a folder")
    if not file.is_file():
        raise ZooAdaptError(f"label file not found: {file}")
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq"):
        raise ZooAdaptError(
            f"{file}: parquet label files are not supported; write it as CSV or TSV "
            "(pandas: df.to_csv('labels.csv', index=False))"
        )
    base = Path(root) if root else file.parent
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t" if suffix in (".tsv", ".tab") else ",")
            header = next(reader, None)
            if not header:
                raise ZooAdaptError(
                    f"{file} is empty; expected a header line with columns {columns.path!r} and {columns.label!r}"
                )
            header = [h.strip() for h in header]
            where = {
                name: header.index(name) for name in (columns.path, columns.label, columns.split) if name in header
            }
            for name, flag in ((columns.path, "--path-column"), (columns.label, "--label-column")):
                if name not in where:
                    raise ZooAdaptError(
                        f"{file} has no column {name!r} (its columns: {clip(', '.join(header), 120)}); "
                        f"name the column with {flag}"
                    )
            rows: list[Row] = []
            seen: dict[str, int] = {}
            start = reader.line_num + 1  # the line the next row starts on
            for cells in reader:
                if any(c.strip() for c in cells):
                    _check_quotes(file, start, reader.line_num, [cells[i] for i in where.values() if i < len(cells)])
                    rows.append(_row(file, start, cells, where, columns, base, seen))
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise ZooAdaptError(f"{file} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise ZooAdaptError(f"{file} line {start}: not valid CSV ({clip(str(e))})") from None
    if not rows:
        raise ZooAdaptError(f"{file} has a header but no rows")
    return rows


def _check_quotes(file: Path, start: int, end: int, cells: list[str]) -> None:
    """A row running over several lines is legal CSV (a quoted cell may hold line
    breaks, in a notes column, say), but no path, label or split (`cells`) holds one: it
    is a quote left open, which makes the reader swallow the lines after it. Name the
    line where it was opened."""
    if end > start and any("\n" in cell or "\r" in cell for cell in cells):
        opened = next(cell for cell in cells if "\n" in cell or "\r" in cell)
        raise ZooAdaptError(
            f"{file} line {start}: a quote opened here is not closed (the cell {quote(opened)} runs "
            f"to line {end}); close the quote or remove it"
        )


def _row(
    file: Path,
    line: int,
    cells: list[str],
    where: dict[str, int],
    columns: LabelColumns,
    base: Path,
    seen: dict[str, int],
) -> Row:
    def cell(name: str) -> str:
        i = where.get(name)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    at = f"{file} line {line}"
    raw_path = cell(columns.path)
    if not raw_path:
        raise ZooAdaptError(f"{at}: no path in column {columns.path!r}")
    path = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
    if not path.is_file():
        raise ZooAdaptError(
            f"{at}: image {path} not found" + ("" if path.parent.is_dir() else f" (paths are relative to {base})")
        )
    key = str(path.resolve())
    if key in seen:
        raise ZooAdaptError(
            f"{at}: image {raw_path} is listed again (first on line {seen[key]}); "
            "list each image once" + (", with all its labels" if columns.multi_label else "")
        )
    seen[key] = line
    label = cell(columns.label)
    if columns.multi_label:
        labels = sorted({part.strip() for part in label.split(columns.delimiter) if part.strip()})
    else:
        if not label:
            raise ZooAdaptError(f"{at}: no label in column {columns.label!r}")
        if columns.delimiter in label:
            raise ZooAdaptError(
                f"{at}: label {quote(label)} holds several labels; give --multi-label for images with several labels"
            )
        labels = [label]
    split = cell(columns.split).lower()
    if split not in SPLITS:
        raise ZooAdaptError(f"{at}: split {quote(split)} must be train, val or test (column {columns.split!r})")
    return Row(line, path, labels, SPLITS[split])


OTHER_DELIMITERS = (";", ",", "/")


def delimiter_warning(rows: Sequence[Row], file: Path, delimiter: str) -> str | None:
    """Multi-label cells that look written with another delimiter (`brick;sky` where
    `|` separates labels) would each become one new class: say so when another common
    delimiter is in most labelled cells."""
    cells = [r.labels for r in rows if r.labels]
    for other in OTHER_DELIMITERS:
        if other == delimiter:
            continue
        holding = [labels for labels in cells if any(other in label for label in labels)]
        if cells and len(holding) > len(cells) / 2:
            return (
                f"{file}: {len(holding)} of {len(cells)} label cells hold {other!r} (e.g. "
                f"{quote(other.join(holding[0]))}) but labels are split at {delimiter!r}, so each such cell is "
                f"one class; give --label-delimiter {other!r} if {other!r} separates labels"
            )
    return None


def rows_to_samples(rows: Sequence[Row], classes: Sequence[str], file: Path, multi_label: bool):
    """Samples with labels as class indices (tuples of them when multi-label); a label
    outside `classes` is an error naming its line."""
    from zoo_adapt.data.folders import Samples  # folders imports torch; reading a label file does not

    index = {name: i for i, name in enumerate(classes)}
    items = []
    for row in rows:
        unknown = [label for label in row.labels if label not in index]
        if unknown:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise ZooAdaptError(f"{file} line {row.line}: class {quote(unknown[0])} is not among the classes ({shown})")
        ids = tuple(index[label] for label in row.labels)
        items.append((row.path, ids if multi_label else ids[0]))
    return Samples(items, list(classes), multi_label=multi_label)


def training_classes(rows: Sequence[Row], file: Path) -> list[str]:
    """The classes, sorted: the labels of the training rows (all rows when no split is
    given). A label seen only in validation rows is an error naming its line."""
    train = [r for r in rows if r.split in ("train", "")]
    if not train:
        raise ZooAdaptError(f"{file} has no training rows (split column: train)")
    classes = sorted({label for r in train for label in r.labels})
    if not classes:
        raise ZooAdaptError(f"{file}: no training row has a label")
    known = set(classes)
    for r in rows:
        missing = [label for label in r.labels if label not in known]
        if missing:
            raise ZooAdaptError(
                f"{file} line {r.line}: class {quote(missing[0])} has no training images; every class needs some"
            )
    return classes


def split_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row], list[Row]]:
    """(train, val, test) rows; rows without a split go to training."""
    return (
        [r for r in rows if r.split in ("train", "")],
        [r for r in rows if r.split == "val"],
        [r for r in rows if r.split == "test"],
    )
