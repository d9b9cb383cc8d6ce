"""The files `predict --output FILE` writes, the format chosen by FILE's suffix: CSV and
JSON Lines are written and flushed batch by batch (a reader sees whole batches as they
come); parquet goes one row group per batch (pyarrow); JSON, one array, is streamed to a
temporary file that takes FILE's name when the last image is done, so FILE is never a
half-written array. Nothing but one batch is held in memory."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.files import remove, temporary

FORMATS = ("csv", "jsonl", "json", "parquet")


def output_format(output: Path) -> str:
    """The format FILE's suffix names, checked before anything is predicted."""
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ZooAdaptError(
            f"--output {output}: the suffix chooses the format: .csv, .jsonl (JSON Lines), .json or .parquet"
        )
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ZooAdaptError(f"--output {output}: parquet needs pyarrow (pip install pyarrow), or write .csv or .jsonl")
    return fmt


class PredictionFile:
    """One output file. `columns`: the flat columns of CSV and parquet (path, prediction,
    probability, label_i / probability_i for the top k, p_<class> for every class when
    asked, error); JSON and JSON Lines take each record as Prediction.to_dict() gives it."""

    def __init__(self, output: Path, fmt: str, columns: list[str], multi_label: bool):
        self.output, self.fmt, self.columns = output, fmt, columns
        self.path = temporary(output) if fmt == "json" else output
        self.records = 0
        self.writer: Any = None
        try:
            if fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                text = ("path", "prediction", "error") + (("probability",) if multi_label else ())
                self.schema = pa.schema(
                    [(c, pa.string() if c in text or c.startswith("label_") else pa.float64()) for c in columns]
                )
                self.writer = pq.ParquetWriter(str(self.path), self.schema)
                return
            self.handle = open(self.path, "w", newline="", encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise ZooAdaptError(f"cannot write {output}: {e.strerror or e}") from None
        if fmt == "csv":
            self.writer = csv.writer(self.handle, lineterminator="\n")
            self.writer.writerow(columns)
        elif fmt == "json":
            self.handle.write("[")
        self.handle.flush()

    def write(self, flat: list[dict[str, Any]], nested: list[dict[str, Any]]) -> None:
        """One batch: its flat rows (CSV, parquet) and its records (JSON, JSON Lines)."""
        if self.fmt == "parquet":
            import pyarrow as pa

            table = pa.Table.from_pylist([{c: row.get(c) for c in self.columns} for row in flat], self.schema)
            self.writer.write_table(table)
            return
        if self.fmt == "csv":
            for row in flat:
                self.writer.writerow([_cell(row.get(c)) for c in self.columns])
        elif self.fmt == "jsonl":
            for record in nested:
                self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            for record in nested:
                self.handle.write(("," if self.records else "") + "\n" + json.dumps(record, ensure_ascii=False))
                self.records += 1
        self.handle.flush()

    def close(self, complete: bool) -> None:
        """Finish the file; JSON takes its name only when `complete` (else it is removed)."""
        if self.fmt == "parquet":
            self.writer.close()
            return
        if self.fmt == "json" and complete:
            self.handle.write("\n]\n")
        self.handle.close()
        if self.fmt == "json":
            if complete:
                os.replace(self.path, self.output)
            else:
                remove(self.path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)
