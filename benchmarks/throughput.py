"""Training throughput (images/s) on one device, in one run: zoo-adapt, a plain PyTorch
loop, timm's train.py and the model alone, all on the same JPEG ImageFolder.

Data: ~500x375 px JPEGs (quality 90; default 12,800 images, 100 classes) made from the
photographs that ship with scikit-image and scikit-learn (random crops, rescales, colour
mixes), cached under --data-dir by parameters: DIR/images/<class>/ is the ImageFolder,
DIR/holdout/ a 1% validation split that only timm reads.

  zoo-adapt    `python -m zoo_adapt finetune --strategy finetune --no-pretrained ...` (bf16 on
               CUDA), each epoch's images_per_second from OUT/metrics.json: images decoded by
               loader workers (--data-on-device off), held decoded on the device (on), and
               with --compile when asked.
  plain loop   a tutorial's: ImageFolder, RandomResizedCrop/flip/ToTensor/Normalize,
               DataLoader(batch 64, shuffle, num_workers=0), fp32, SGD, the same model.
  timm         train.py (--timm-train PATH), augmenting as zoo-adapt does (--scale 0.35 1
               --color-jitter 0), AdamW; bf16 AMP, channels_last, pinned memory on CUDA. An
               epoch's rate is the average step time of its last log line "(0.123s, 2081.30/s)";
               "excluding data wait" takes off the logged average wait ("Data: 0.001 (0.004)").
  model alone  forward + backward + AdamW step on random tensors on the device (bf16 autocast,
               channels_last on CUDA), eager and torch.compile'd; warm steps only.

Rows: the mean over the epochs after the first, the best epoch ("warm"), and both as a
ratio to zoo-adapt's (loader workers) mean after the first epoch.

    python benchmarks/throughput.py --device cuda --backbone resnet50 --timm-train /path/to/train.py --compile
    python benchmarks/throughput.py --device cpu --tiny    # smoke test, well under a minute on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

VERSION = 1  # bump when the data recipe changes
TIMM_NAMES = {
    "resnet50": "resnet50",
    "resnet18": "resnet18",
    "vit_b16": "vit_base_patch16_224",
    "efficientnet_lite0": "efficientnet_lite0",
}
DEFAULTS = dict(
    backbone="resnet50", images=12800, classes=100, image_size=224, batch_size=256, epochs=3, plain_batch_size=64
)
TINY = dict(backbone="resnet18", images=48, classes=4, image_size=64, batch_size=16, epochs=2, plain_batch_size=16)
ORDER = (
    "zoo_adapt",
    "zoo_adapt_device_held",
    "zoo_adapt_compile",
    "timm",
    "timm_data_ready",
    "plain_loop",
    "model_eager",
    "model_compiled",
)
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
PHOTOS: list[np.ndarray] = []


def _load_photos() -> None:
    from zoo_adapt.data.demo import photographs  # the 15 photographs of the demo, as RGB arrays

    PHOTOS[:] = [p for _, p in sorted(photographs().items())]


def _make_image(job: tuple[str, int, int, int]) -> None:
    """One ~500x375 JPEG: a random crop of the class's photograph, rescaled, with the
    class's colour mix (so classes on one photograph differ) and its own brightness."""
    from PIL import Image

    path, label, index, seed = job
    rng = np.random.default_rng([seed, label, index])
    photo = PHOTOS[label % len(PHOTOS)]
    h, w = photo.shape[:2]
    aspect, area = rng.uniform(1.25, 1.42), rng.uniform(0.35, 1.0) * h * w
    cw = min(w, round((area * aspect) ** 0.5))
    ch = min(h, round(cw / aspect))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    width = int(rng.integers(480, 521))
    image = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((width, round(width * 0.75)), Image.BILINEAR)
    perm = list(itertools.permutations(range(3)))[(label // len(PHOTOS)) % 6]
    mix = np.eye(3)[list(perm)] * np.random.default_rng([seed, label]).uniform(0.75, 1.25, 3)[:, None]
    pixels = np.asarray(image, np.float32) @ mix.T.astype(np.float32) * rng.uniform(0.8, 1.2)
    pixels += rng.uniform(-20, 20, 3).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image.save(path, quality=90)


def build_data(root: Path, images: int, classes: int, seed: int = 0) -> Path:
    """DIR/images/<class>/*.jpg (`images` in all) and DIR/holdout/<class>/ (1%, at least
    one a class); reused when its stamp is there."""
    folder = root / f"jpeg-v{VERSION}-{images}img-{classes}cls-seed{seed}"
    if (folder / "done.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    holdout = max(1, round(0.01 * images / classes))
    jobs = []
    for split, count, offset in (("images", images, 0), ("holdout", holdout * classes, images)):
        for c in range(classes):
            (folder / split / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
        jobs += [
            (str(folder / split / f"class_{i % classes:03d}" / f"{i:06d}.jpg"), i % classes, offset + i, seed)
            for i in range(count)
        ]
    print(f"building {len(jobs)} JPEGs in {folder} ...", flush=True)
    start, _ = time.perf_counter(), _load_photos()
    if len(jobs) < 500 or cores() == 1:
        list(map(_make_image, jobs))
    else:
        import multiprocessing

        with multiprocessing.Pool(cores(), initializer=_load_photos) as pool:
            pool.map(_make_image, jobs, chunksize=64)
    (folder / "done.json").write_text(json.dumps({"images": images, "classes": classes, "seed": seed}))
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def row(name: str, rates: list[float] = (), note: str = "", warm: float | None = None) -> dict:
    """`rates`: images/s of each epoch; or `warm`: one rate of warm steps (no epochs)."""
    after = rates[1:] or rates
    return {
        "name": name,
        "epoch_rates": list(rates),
        "after_first": sum(after) / len(after) if after else None,
        "warm": max(rates) if rates else warm,
        "note": note,
    }


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_logged(cmd: list[str], log: Path) -> int:
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"  {time.perf_counter() - start:.0f} s, exit status {rc}, log {log}", flush=True)
    if rc:
        print("  " + "\n  ".join(log.read_text().splitlines()[-15:]), flush=True)
    return rc


def zoo_adapt(a, data: Path, work: Path, label: str, name: str, flags: list[str]) -> dict:
    out = work / label
    cmd = [
        sys.executable,
        "-m",
        "zoo_adapt",
        "finetune",
        "--data",
        str(data / "images"),
        "--backbone",
        a.backbone,
        "--strategy",
        "finetune",
        "--no-pretrained",
        "--batch-size",
        str(a.batch_size),
        "--epochs",
        str(a.epochs),
        "--image-size",
        str(a.image_size),
        "--out",
        str(out),
        "--overwrite",
        "--no-tta",
        "--analysis",
        "off",
        "--val-split",
        "0.01",
        "--device",
        a.device,
        *(["--precision", "bf16"] if a.device == "cuda" else []),
        *(["--workers", str(a.workers)] if a.workers is not None else []),
        *flags,
        *shlex.split(a.zoo_args),
    ]
    print(f"{name}: {shlex.join(cmd[1:])}", flush=True)
    if run_logged(cmd, work / f"{label}.log"):
        return row(name, note=f"failed, see {work / label}.log")
    found = re.search(r"; images (.*)", (work / f"{label}.log").read_text())  # how the images were fed
    history = json.loads((out / "metrics.json").read_text())["history"]
    compiled = f", compiling took {history[-1]['compile_seconds']:.0f} s" if "compile_seconds" in history[-1] else ""
    return row(name, [h["images_per_second"] for h in history], (found[1] if found else "") + compiled)


TIMM_LINE = re.compile(
    r"Train: (\d+) \[.*?Time: ([\d.]+)s,\s*([\d.]+)/s\s+\(([\d.]+)s,\s*([\d.]+)/s\)"
    r".*?Data: ([\d.]+) \(([\d.]+)\)"
)


def timm(a, data: Path, work: Path, workers: int) -> list[dict]:
    names = ("timm train.py", "timm train.py, excluding data wait")
    if not a.timm_train:
        return [row(n, note="not given (--timm-train PATH)") for n in names]
    from zoo_adapt import resolve

    model = TIMM_NAMES.get(a.backbone) or resolve(a.backbone).upstream
    cmd = [
        sys.executable,
        a.timm_train,
        "--data-dir",
        str(data),
        "--train-split",
        "images",
        "--val-split",
        "holdout",
        "--model",
        model,
        "--num-classes",
        str(a.classes),
        "--img-size",
        str(a.image_size),
        "-b",
        str(a.batch_size),
        "--epochs",
        str(a.epochs),
        "-j",
        str(workers),
        "--opt",
        "adamw",
        "--lr",
        "2e-3",
        "--weight-decay",
        "0.01",
        "--warmup-epochs",
        "0",
        "--scale",
        "0.35",
        "1",
        "--color-jitter",
        "0",
        "--device",
        a.device,
        "--output",
        str(work / "timm"),
        "--checkpoint-hist",
        "1",
        *(["--amp", "--amp-dtype", "bfloat16", "--channels-last", "--pin-mem"] if a.device == "cuda" else []),
    ]
    print(f"timm: {shlex.join(cmd[1:])}", flush=True)
    log = work / "timm.log"
    if run_logged(cmd, log):
        return [row(n, note=f"failed, see {log}") for n in names]
    last = {int(m[1]): m for m in TIMM_LINE.finditer(log.read_text())}  # each epoch's last line: its averages
    epochs = [last[e] for e in sorted(last)]  # m[4]: average step time, m[5]: its rate, m[7]: average data wait
    return [
        row(names[0], [float(m[5]) for m in epochs], f"-j {workers}" if epochs else f"no rates in {log}"),
        row(
            names[1],
            [float(m[5]) * float(m[4]) / max(float(m[4]) - float(m[7]), 1e-9) for m in epochs],
            "step time minus logged data wait" if epochs else f"no rates in {log}",
        ),
    ]


def plain_loop(a, data: Path) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from zoo_adapt import create_model

    name = f"plain loop (batch {a.plain_batch_size}, 0 workers, fp32)"
    print(f"{name} ...", flush=True)
    torch.manual_seed(0)
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(a.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(*IMAGENET),
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(str(data / "images"), tf), batch_size=a.plain_batch_size, shuffle=True, num_workers=0
    )
    model = create_model(a.backbone, num_classes=a.classes, pretrained=False).to(a.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    rates = []
    for epoch in range(a.epochs):
        model.train()
        running, seen, steps = 0.0, 0, 0
        sync(a.device)
        start = time.perf_counter()
        for x, y in itertools.islice(loader, a.plain_steps):  # plain_steps None: the whole epoch
            x, y = x.to(a.device), y.to(a.device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            running += loss.item()  # as tutorials do (it waits for the device each step)
            seen, steps = seen + len(y), steps + 1
        sync(a.device)
        rates.append(seen / (time.perf_counter() - start))
        print(f"  epoch {epoch + 1}: {rates[-1]:.1f} img/s, loss {running / max(steps, 1):.3f}", flush=True)
    return row(name, rates, f"{a.plain_steps} steps an epoch" if a.plain_steps else "")


def model_alone(a, compiled: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from zoo_adapt import create_model

    cuda = a.device == "cuda"
    name = f"model alone, {'torch.compile' if compiled else 'eager'} ({'bf16' if cuda else 'fp32'})"
    warmup, steps = (1, 3) if a.tiny else (10, 30)
    print(f"{name}: {warmup} warm-up + {steps} timed steps ...", flush=True)
    torch.manual_seed(0)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = create_model(a.backbone, num_classes=a.classes, pretrained=False).to(a.device, memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cuda or None)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=a.device).contiguous(memory_format=fmt)
    y = torch.randint(0, a.classes, (a.batch_size,), device=a.device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext

    def step(network):
        with autocast():
            loss = F.cross_entropy(network(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        network, times = torch.compile(model) if compiled else model, []
        for n in (warmup, steps):
            start = time.perf_counter()
            for _ in range(n):
                step(network)
            sync(a.device)
            times.append(time.perf_counter() - start)
        return row(name, warm=a.batch_size * steps / times[1], note=f"warm-up {times[0]:.0f} s" if compiled else "")
    except Exception as e:  # noqa: BLE001 - a compile failure is a finding, not a crash
        if not compiled:
            raise
        return row(name, note=f"compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:120]}")


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    return (
        f"{found[1] if found else 'unknown CPU'}, {cores()} cores (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)"
    )


def table(rows: list[dict], base: float | None) -> str:
    fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
    ratio = lambda v: "-" if v is None or not base else f"{v / base:.2f}x"  # noqa: E731
    lines = [["run", "img/s after 1st epoch", "warm img/s", "vs zoo-adapt", "warm vs zoo-adapt", "note"]]
    lines += [
        [r["name"], fmt(r["after_first"]), fmt(r["warm"]), ratio(r["after_first"]), ratio(r["warm"]), r["note"]]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) if 0 < i < 5 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    for flag, kind, what in (
        ("--backbone", str, "zoo-adapt backbone"),
        ("--images", int, "images in all"),
        ("--classes", int, "classes"),
        ("--image-size", int, "training size in px"),
        ("--batch-size", int, "batch of zoo-adapt, timm and the model alone"),
        ("--plain-batch-size", int, "batch of the plain loop"),
        ("--epochs", int, "epochs"),
    ):
        p.add_argument(
            flag,
            type=kind,
            help=f"{what} [default: {DEFAULTS[flag[2:].replace('-', '_')]}; "
            f"--tiny: {TINY[flag[2:].replace('-', '_')]}]",
        )
    p.add_argument("--plain-steps", type=int, help="plain loop: at most this many steps an epoch")
    p.add_argument("--workers", type=int, help="loader processes of zoo-adapt and timm [default: zoo-adapt's]")
    p.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "zoo-adapt" / "bench")
    p.add_argument("--timm-train", metavar="PATH", help="timm's train.py (huggingface/pytorch-image-models)")
    p.add_argument("--compile", action="store_true", help="also run zoo-adapt with --compile")
    p.add_argument("--no-compile-model", action="store_true", help="skip the torch.compile'd model alone")
    p.add_argument("--skip-device-held", action="store_true", help="skip zoo-adapt with --data-on-device on")
    p.add_argument("--zoo-args", default="", help='more flags for zoo-adapt finetune, e.g. "--workers 8"')
    p.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write every figure to this JSON file (rewritten after each run: a stopped benchmark keeps "
        'what it measured, "complete": false)',
    )
    p.add_argument("--tiny", action="store_true", help="CPU smoke-test size, no compile")
    a = p.parse_args(argv)
    for key, value in (TINY if a.tiny else DEFAULTS).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.tiny:
        a.no_compile_model, a.compile = True, False
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    started = time.perf_counter()
    data = build_data(a.data_dir.expanduser(), a.images, a.classes)  # before torch: workers fork a lighter process
    import torch

    from zoo_adapt.data.pipeline import default_workers

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = a.workers if a.workers is not None else default_workers(torch.device(a.device))
    rows: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="throughput-bench-"))  # run folders and logs; kept if a run fails
    device, settings = device_name(a.device), {**vars(a), "workers": workers, "data": data}

    def record(key: str, value: dict) -> None:
        """Keep a row, and every row so far in --json at once: a run stopped from outside
        (a time limit) keeps what it measured."""
        rows[key] = value
        if a.json:
            partial = dict(
                device=device, settings=settings, rows=rows, seconds=time.perf_counter() - started, complete=False
            )
            a.json.write_text(json.dumps(partial, indent=2, default=str))

    # measured in order of what the comparisons need most; shown in the table's order (ORDER)
    record("zoo_adapt", zoo_adapt(a, data, work, "zoo", "zoo-adapt finetune", ["--data-on-device", "off"]))
    record(
        "zoo_adapt_device_held",
        row("zoo-adapt, --data-on-device on", note="skipped (--skip-device-held)")
        if a.skip_device_held
        else zoo_adapt(a, data, work, "zoo-held", "zoo-adapt, --data-on-device on", ["--data-on-device", "on"]),
    )
    record("model_eager", model_alone(a, compiled=False))
    if a.device == "cuda":
        torch.cuda.empty_cache()
    record(
        "model_compiled",
        row("model alone, torch.compile", note="skipped (--no-compile-model)")
        if a.no_compile_model
        else model_alone(a, compiled=True),
    )
    timm_rows = timm(a, data, work, workers)
    record("timm", timm_rows[0])
    record("timm_data_ready", timm_rows[1])
    record("plain_loop", plain_loop(a, data))
    record(
        "zoo_adapt_compile",
        zoo_adapt(a, data, work, "zoo-compile", "zoo-adapt, --compile", ["--data-on-device", "off", "--compile"])
        if a.compile
        else row("zoo-adapt, --compile", note="not asked (--compile)"),
    )
    rows = {key: rows[key] for key in ORDER}
    print(f"\ndevice: {device}")
    print(
        f"{a.backbone}, {a.images:,} JPEGs in {a.classes} classes ({data}), {a.image_size} px, batch "
        f"{a.batch_size}, {a.epochs} epochs, {'bf16' if a.device == 'cuda' else 'fp32'}, {workers} loader workers"
    )
    print(table(list(rows.values()), rows["zoo_adapt"]["after_first"]))
    seconds = time.perf_counter() - started
    print(
        f"\nimages/s: mean over epochs 2..{a.epochs} and the best epoch (model alone: warm steps only); "
        f"ratios to zoo-adapt's mean after the first epoch. {seconds:.0f} s in all."
    )
    if any(r["note"].startswith("failed") for r in rows.values()):
        print(f"logs of the runs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(
            json.dumps(
                dict(device=device, settings=settings, rows=rows, seconds=seconds, complete=True), indent=2, default=str
            )
        )


if __name__ == "__main__":
    main()
