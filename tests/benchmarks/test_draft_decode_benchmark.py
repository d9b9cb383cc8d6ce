"""The draft-decoding benchmark (benchmarks/draft_decode.py) runs at a small size and
prints one row per side; the times themselves are not judged."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import ROOT


def test_it_prints_full_and_draft_times_side_by_side(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "draft_decode.py"), "--sides", "300", "800"]
        + ["--repeat", "1", "--image-size", "96"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    assert [row[0] for row in rows] == ["300", "800"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 and row[3].endswith("x") for row in rows)
    assert "not reduced" in " ".join(rows[0]) and "not reduced" not in " ".join(rows[1])  # 225 px vs 600 px short sides
