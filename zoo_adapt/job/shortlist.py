"""`zoo-adapt rank --finetune-top K`: fine-tune the K best of a ranking with one set of
options, each in OUT/<backbone>/, and set their fine-tuned results beside the cheap
scores, so the user sees whether the scores picked right."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo_adapt.files import write_text
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.job.rank import Ranking, Row

Log = Callable[[str], None]


def run_folder_name(row: Row) -> str:
    return row.backbone.replace("/", "--") + ("" if row.pretrained else "-random-init")


def finetune_best(
    config: FinetuneConfig, ranking: Ranking, k: int, log: Log | None = print, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Fine-tune the first `k` ranked rows (the leaderboard's order) with `config`'s
    options, each in `config.out`/<backbone>/; returns one result per fine-tune (also
    added to `config.out`/rank.json as "finetuned") and logs their leaderboard."""
    say: Log = log or (lambda s: None)
    chosen = [r for r in ranking.rows if r.error is None][:k]
    out = Path(config.out)
    results = []
    for i, row in enumerate(chosen, 1):
        say(f"fine-tuning {i}/{len(chosen)}: {row.label}")
        run = dataclasses.replace(
            config, backbone=row.backbone, pretrained=row.pretrained, out=str(out / run_folder_name(row))
        )
        start = time.perf_counter()
        result = finetune(run, log=log, overwrite=overwrite)
        m = result.metrics
        results.append(
            {
                "backbone": row.backbone,
                "pretrained": row.pretrained,
                "rank": ranking.rows.index(row) + 1,
                "kept_epoch": m.get("kept_epoch"),
                "val_accuracy": m.get("val_accuracy"),
                "val_accuracy_tta": m.get("val_accuracy_tta"),
                "seconds": time.perf_counter() - start,
                "out": str(result.out),
            }
        )
    for line in leaderboard_lines(results, ranking):
        say(line)
    if (out / "rank.json").is_file():
        record = json.loads((out / "rank.json").read_text(encoding="utf-8"))
        write_text(out / "rank.json", json.dumps({**record, "finetuned": results}, indent=2) + "\n")
    return results


def leaderboard_lines(results: list[dict[str, Any]], ranking: Ranking) -> list[str]:
    """The fine-tuned leaderboard, best validation accuracy first, with each backbone's
    rank by the scores, and whether the recommendation fine-tuned best."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    ordered = sorted(results, key=lambda r: -(r["val_accuracy"] or 0.0))
    headers = ["BACKBONE", "SCORE RANK", "KEPT EPOCH", "VAL ACCURACY", "WITH TTA", "SECONDS"]
    rows = [
        [
            r["backbone"] + ("" if r["pretrained"] else " (random init)"),
            str(r["rank"]),
            str(r["kept_epoch"]),
            pct(r["val_accuracy"]),
            pct(r["val_accuracy_tta"]),
            f"{r['seconds']:.0f}",
        ]
        for r in ordered
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["fine-tuned:"] + ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    rec = ranking.recommended
    if ordered and rec is not None:
        best = ordered[0]
        same = best["backbone"] == rec.backbone and best["pretrained"] == rec.pretrained
        lines.append(
            f"the recommendation ({rec.label}) fine-tuned best"
            if same
            else f"fine-tuned best: {best['backbone']} (score rank {best['rank']}); the recommendation was {rec.label}"
        )
    return lines
