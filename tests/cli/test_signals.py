"""Ctrl-C (SIGINT) stops a run even where the process was started with SIGINT ignored,
as a script's `zoo-adapt finetune ... &` is: the run stops as on Ctrl-C and can be resumed."""

from __future__ import annotations

import signal
import subprocess
import time

from helpers import TINY, ZOO


def test_sigint_is_honoured_when_it_was_ignored_at_start(tmp_path, demo):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        ZOO + ["finetune", *TINY, "--data", str(demo), "--epochs", "12", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` in a script starts it
    )
    start = time.time()
    while not (out / "metrics.json").exists() and proc.poll() is None and time.time() - start < 300:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
