"""The embedded demo under each strategy, pretrained and from scratch, with and without
test-time augmentation: the README's demo table.

    python benchmarks/demo.py                 # every row (about 10 minutes on 2 CPU cores)
    python benchmarks/demo.py --rows two-stage
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune

# row name -> FinetuneConfig options (the demo: no data given)
ROWS = {
    "two-stage": {},
    "linear-probe": {"strategy": "linear-probe"},
    "finetune": {"strategy": "finetune"},
    "gradual": {"strategy": "gradual", "epochs": 8},
    "two-stage, from scratch": {"pretrained": False},
    "finetune, from scratch, uniform rate": {"pretrained": False, "strategy": "finetune", "lr_decay": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="zoo-adapt-demo-"))
    print("| run | epochs | val accuracy | with TTA | wall time |")
    print("| --- | --- | --- | --- | --- |")
    for i, name in enumerate(args.rows):
        config = FinetuneConfig(out=str(work / f"run{i}"), seed=args.seed, **ROWS[name])
        start = time.perf_counter()
        m = finetune(config, log=None, overwrite=True).metrics
        print(
            f"| {name} | {m['epochs']} | {m['val_accuracy']:.1%} | {m['val_accuracy_tta']:.1%} | "
            f"{time.perf_counter() - start:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
