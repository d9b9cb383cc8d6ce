"""Which backbone? Rank candidate backbones on the user's labelled images before any
fine-tuning: each backbone's frozen features are extracted once (its own eval
preprocessing, at the size a fine-tune would use, batched on the chosen device), then
scored by how well they fit the labels, with the cost of getting them. `zoo-adapt rank`
and `finetune --backbone auto` are thin layers over `rank` and `choose_backbone`.

Scores (higher is better; metrics/transferability.py has the formulas):
- LogME: the evidence of a Bayesian linear model from the training features to the
  labels (per class one-vs-rest, averaged): labels only, no training;
- probe accuracy: the head trained on the cached training features exactly as
  `finetune --strategy linear-probe` trains it (the engine's loop, the run's optimizer,
  rate, schedule and epochs), scored on the validation images after its last epoch
  (no epoch chosen on them), with a 95% Wilson interval;
- kNN accuracy: validation images classified by their k nearest training images by
  cosine similarity, k = 5 or the smallest class's training count if lower.

RULE (the recommendation): among the pretrained backbones (random-init bodies are a
floor, recommended only when nothing pretrained could be ranked), those whose probe
accuracy is within one standard error of the best one's (sqrt(p(1-p)/n) on the n
validation images, at least one image) are tied; of those, the highest LogME wins,
then the fewer parameters. Without validation images, or with multi-label data (only
LogME applies), LogME alone decides.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo_adapt.data.demo import IMAGE_SIZE as DEMO_IMAGE_SIZE
from zoo_adapt.data.feature_cache import FeatureBatches, extract_features
from zoo_adapt.data.folders import ImageSource, class_counts, dataset_labels
from zoo_adapt.data.pipeline import EpochOrder, default_workers, eval_batches
from zoo_adapt.data.transforms import run_normalization
from zoo_adapt.engine.device import autocast_dtype, prepare_device, resolve_device
from zoo_adapt.engine.loop import Loop
from zoo_adapt.engine.runtime import Runtime
from zoo_adapt.engine.tasks import SingleLabel
from zoo_adapt.errors import ZooAdaptError, debugging, first_line
from zoo_adapt.files import write_text
from zoo_adapt.job.config import FinetuneConfig, declarations
from zoo_adapt.job.inputs import Datasets, is_demo, load_datasets
from zoo_adapt.job.rank_options import Candidate, RankOptions, candidates, offline_hint
from zoo_adapt.metrics.intervals import wilson
from zoo_adapt.metrics.transferability import knn_accuracy, knn_k, logme
from zoo_adapt.model.build import create_model, head_of, swap_head
from zoo_adapt.model.optim import make_optimizer, param_groups
from zoo_adapt.model.recipes import freeze_plan, stage_schedule
from zoo_adapt.progress import track
from zoo_adapt.report import plot_ranking
from zoo_adapt.seeds import seed_everything
from zoo_adapt.zoo.backbone import backbone_of
from zoo_adapt.zoo.plugins import report
from zoo_adapt.zoo.rank_scores import ScoreInfo, transferability_scores

Log = Callable[[str], None]
DEFAULT_OUT = "runs/rank"
RULE = (
    "the pretrained backbones whose probe accuracy is within one standard error of the best one's are tied; "
    "of those the highest LogME wins, then the fewer parameters (LogME alone without probe accuracies)"
)


@dataclass
class Row:
    """One candidate's scores and costs, or the one-line reason it could not be ranked."""

    backbone: str
    pretrained: bool
    logme: float | None = None
    probe_accuracy: float | None = None
    probe_interval: tuple[float, float] | None = None  # 95% Wilson interval
    knn_accuracy: float | None = None
    knn_k: int | None = None
    params: int | None = None  # the upstream model's, ImageNet head included
    seconds: float | None = None  # building, features and scores
    feature_seconds: float | None = None
    images_per_second: float | None = None  # feature extraction
    image_size: int | None = None
    feature_mb: float | None = None  # the features held (float32), train and validation
    peak_gpu_mb: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)  # plugins' scores
    error: str | None = None

    @property
    def label(self) -> str:
        return self.backbone if self.pretrained else f"{self.backbone} (random init)"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["probe_interval"] = list(self.probe_interval) if self.probe_interval else None
        return d


@dataclass
class Ranking:
    rows: list[Row]  # leaderboard order: the recommendation first, failures last
    recommended: Row | None
    classes: list[str]
    num_train: int
    num_val: int
    where: str
    device: str
    seconds: float
    peak_memory_mb: float
    multi_label: bool = False
    notes: list[str] = field(default_factory=list)
    extra_scores: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "rows": [r.to_dict() for r in self.rows],
            "recommended": rec.backbone if rec else None,
            "recommended_pretrained": rec.pretrained if rec else None,
            "rule": RULE,
            "classes": self.classes,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "data": self.where,
            "device": self.device,
            "seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "multi_label": self.multi_label,
            "notes": self.notes,
        }

    def csv_text(self) -> str:
        columns = ["rank", "backbone", "pretrained", "logme", "probe_accuracy", "probe_low", "probe_high"]
        columns += ["knn_accuracy", "knn_k", "params", "seconds", "images_per_second", "image_size", "feature_mb"]
        columns += [*self.extra_scores, "error"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for i, r in enumerate(self.rows, 1):
            low, high = r.probe_interval or (None, None)
            values = [i if r.error is None else "", r.backbone, r.pretrained, r.logme, r.probe_accuracy, low, high]
            values += [r.knn_accuracy, r.knn_k, r.params, r.seconds, r.images_per_second, r.image_size, r.feature_mb]
            values += [r.scores.get(name) for name in self.extra_scores] + [r.error or ""]
            writer.writerow(["" if v is None else v for v in values])
        return buffer.getvalue()

    def lines(self) -> list[str]:
        """The leaderboard as the terminal shows it, and the recommendation."""
        headers = ["RANK", "BACKBONE", "LOGME", "PROBE (95% CI)", "KNN", "PARAMS", "SECONDS", "IMG/S"]
        headers += [name.upper() for name in self.extra_scores]
        table = []
        for i, r in enumerate(self.rows, 1):
            if r.error is not None:
                table.append(["-", r.label, f"error: {r.error}"])
                continue
            probe = "-"
            if r.probe_accuracy is not None and r.probe_interval is not None:
                probe = f"{r.probe_accuracy:.1%} ({r.probe_interval[0]:.1%}-{r.probe_interval[1]:.1%})"
            mark = "*" if r is self.recommended else ""
            table.append(
                [
                    f"{i}{mark}",
                    r.label,
                    _number(r.logme, "{:.3f}"),
                    probe,
                    _number(r.knn_accuracy, "{:.1%}"),
                    _number(r.params / 1e6 if r.params else None, "{:.1f}M"),
                    _number(r.seconds, "{:.1f}"),
                    _number(r.images_per_second, "{:.0f}"),
                    *[_number(r.scores.get(name), "{:.3f}") for name in self.extra_scores],
                ]
            )
        out = _columns(headers, table)
        rec = self.recommended
        out.append(
            f"recommended: {rec.label} (* above; {RULE})"
            if rec
            else "nothing could be ranked: every candidate failed (see the errors above)"
        )
        return out


def _number(value: float | None, form: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else form.format(value)


def _columns(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; a failed row's error runs on past them."""
    full = [headers, *(row for row in rows if len(row) == len(headers))]
    widths = [max(len(row[i]) for row in full) for i in range(len(headers))]
    return ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers, *rows]]


# -- the ranking ----------------------------------------------------------------------
@dataclass
class Features:
    """One backbone's features of the training and validation images (on the device)."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor | None
    val_labels: torch.Tensor | None


def rank(
    config: FinetuneConfig,
    backbones: Sequence[str] | None = None,
    *,
    max_params: float | None = None,
    include_random: bool = False,
    log: Log | None = print,
    out: str | Path | None = None,
    write: bool = True,
) -> Ranking:
    """Rank `backbones` (default: every registry entry whose weights are here without a
    download) on the images `config` names, at the size its fine-tune would use, on its
    device; the probe trains as its linear-probe would. With `write`, rank.json,
    rank.csv and rank.png go to `out` (default: `config.out`, or runs/rank where that is
    finetune's default). Returns the leaderboard; raises ZooAdaptError when nothing
    could be ranked."""
    options = RankOptions(list(backbones or []), max_params, include_random).check()
    folder = Path(out or (config.out if config.out != declarations()["out"].default else DEFAULT_OUT))
    return rank_with(config, options, log, folder if write else None)


def rank_with(config: FinetuneConfig, options: RankOptions, log: Log | None, out: Path | None) -> Ranking:
    """`rank` with its options checked; `out` None writes nothing (--backbone auto: the
    run folder keeps rank.json)."""
    say: Log = log or (lambda s: None)
    config = _checked(config)
    rows_to_rank, notes = candidates(options)
    start = time.perf_counter()
    device = resolve_device(config.device)
    prepare_device(device)
    data = load_datasets(config)
    counts = _check_counts(data)
    extra = list(transferability_scores().values())
    num_val = len(data.val) if data.val is not None else 0
    if config.multi_label:
        notes.append(
            "multi-label: LogME only (one binary target per label); kNN and the probe need one label per image"
        )
    elif data.val is None:
        notes.append("no validation images: LogME only (the probe and kNN are scored on validation images)")
    for note in notes:
        say(f"note: {note}")
    say(
        f"ranking {len(rows_to_rank)} candidate(s) on {len(data.classes)} classes, {len(data.train)} training and "
        f"{num_val} validation images ({data.where}), {device}"
    )
    rows = []
    for i, candidate in enumerate(rows_to_rank, 1):
        say(f"[{i}/{len(rows_to_rank)}] {candidate.label}")
        row = _ranked(candidate, config, data, counts, device, extra)
        if row.error is not None:
            say(f"  {candidate.label}: {row.error}")
        rows.append(row)
    ordered, recommended = order(rows, num_val)
    ranking = Ranking(
        ordered,
        recommended,
        data.classes,
        len(data.train),
        num_val,
        data.where,
        str(device),
        time.perf_counter() - start,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        config.multi_label,
        notes,
        [s.name for s in extra],
    )
    for line in ranking.lines():
        say(line)
    if out is not None:
        paths = write_ranking(ranking, out)
        say(f"ranking in {', '.join(str(p) for p in paths)}")
    if recommended is None:
        reasons = "; ".join(f"{r.label}: {(r.error or '').split('. ')[0]}" for r in rows)
        raise ZooAdaptError(f"nothing could be ranked ({reasons}); {offline_hint()}")
    return ranking


def _checked(config: FinetuneConfig) -> FinetuneConfig:
    config.validate()
    if config.target_data:
        raise ZooAdaptError("rank compares backbones on labelled images; --target-data is for finetune")
    if config.lr == "auto":  # the LR finder is per backbone: the probe takes the default head rate
        config = dataclasses.replace(config, lr=None)
    return config


def _check_counts(data: Datasets) -> list[int]:
    """Training images per class; LogME (and kNN) need at least two of every class."""
    counts = class_counts(dataset_labels(data.train), len(data.classes))
    few = [(name, n) for name, n in zip(data.classes, counts) if n < 2]
    if few:
        name, n = few[0]
        more = f" and {len(few) - 1} more" if len(few) > 1 else ""
        raise ZooAdaptError(
            f"ranking needs at least two training images per class (LogME fits each class against the rest); "
            f"class {name!r}{more} has {n}: add images{', or lower --val-split' if 'held out' in data.where else ''}"
        )
    return counts


def _ranked(
    candidate: Candidate,
    config: FinetuneConfig,
    data: Datasets,
    counts: list[int],
    device: torch.device,
    extra: list[ScoreInfo],
) -> Row:
    """One candidate's row; whatever fails (no weights offline, out of memory, a broken
    plugin) is the row's one-line error, and the ranking goes on."""
    row = Row(candidate.name, candidate.pretrained, params=candidate.params)
    if candidate.problem is not None:
        row.error = candidate.problem
        return row
    start = time.perf_counter()
    try:
        _score(row, config, data, counts, device, extra)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if debugging():
            raise
        text = first_line(e) if not isinstance(e, ZooAdaptError) else str(e)
        if "out of memory" in text.lower():
            text = f"out of memory ({text[:120]}); lower --batch-size or --image-size"
        row.error = text
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.seconds = time.perf_counter() - start
    return row


def _score(
    row: Row, config: FinetuneConfig, data: Datasets, counts: list[int], device: torch.device, extra: list[ScoreInfo]
) -> None:
    c = config
    seed_everything(c.seed)  # a random-init body is the same body every time
    model = create_model(row.backbone, pretrained=row.pretrained, in_chans=c.in_chans)
    row.params = sum(p.numel() for p in model.parameters())
    backbone_norm = backbone_of(model).built_normalization
    size = c.image_size or (DEMO_IMAGE_SIZE if is_demo(c) else backbone_norm.image_size)
    norm = run_normalization(backbone_norm, size, c.crop_scale)
    row.image_size = size
    seed_everything(c.seed)
    swap_head(model, len(data.classes))
    # NHWC for the extraction, on the CPU too: Lite0/Lite2 forwards ran 1.4-1.8x faster so
    # on 2 cores at 160 px (the model is the ranking's own; only its head trains after)
    model.to(device).to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runtime = Runtime(device, autocast_dtype=autocast_dtype(c.precision, device))
    workers = default_workers(device) if c.workers is None else c.workers
    tick = time.perf_counter()
    features = Features(
        *_features(model, data.train, norm, runtime, c, workers, f"{row.label}: training images"), None, None
    )
    if data.val is not None:
        features.val, features.val_labels = _features(
            model, data.val, norm, runtime, c, workers, f"{row.label}: validation images"
        )
    row.feature_seconds = time.perf_counter() - tick
    images = len(data.train) + (len(data.val) if data.val is not None else 0)
    row.images_per_second = images / max(row.feature_seconds, 1e-9)
    held = [features.train] + ([features.val] if features.val is not None else [])
    row.feature_mb = sum(t.numel() * 4 for t in held) / 2**20
    if device.type == "cuda":
        row.peak_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20
    train = features.train.double().cpu().numpy()
    labels = features.train_labels.cpu().numpy()
    row.logme = logme(train, labels, len(data.classes))
    if not c.multi_label and features.val is not None and features.val_labels is not None:
        val, val_labels = features.val.double().cpu().numpy(), features.val_labels.cpu().numpy()
        row.knn_k = knn_k(counts)
        row.knn_accuracy = knn_accuracy(train, labels, val, val_labels, row.knn_k)
        row.probe_accuracy = probe(model, c, features, data.classes, counts, device)
        right = round(row.probe_accuracy * len(val_labels))
        row.probe_interval = wilson(right, len(val_labels))
    for score in extra if not c.multi_label else ():  # plugins' scores take class indices
        row.scores[score.name] = _plugin_score(score, row, features)


def _features(
    model: nn.Module,
    dataset: ImageSource,
    norm,
    runtime: Runtime,
    config: FinetuneConfig,
    workers: int,
    what: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's eval view through the frozen body, in file order, with progress."""
    batches = eval_batches(
        dataset, norm, runtime.device, batch_size=config.batch_size * 2, workers=workers, channels_last=True
    )
    tracked = _Tracked(batches, what)
    return extract_features(model, tracked, runtime.autocast)  # type: ignore[arg-type]


class _Tracked:
    """Batches with a progress display over them."""

    def __init__(self, batches, what: str):
        self.batches, self.what = batches, what

    def __iter__(self):
        return track(iter(self.batches), len(self.batches), self.what, count=lambda b: len(b[1]))


def probe(
    model: nn.Module,
    config: FinetuneConfig,
    features: Features,
    classes: list[str],
    counts: list[int],
    device: torch.device,
) -> float:
    """The linear probe `finetune --strategy linear-probe` would train on these cached
    features (same optimizer, rates, schedule, epochs, label smoothing, balance), on
    the model's freshly initialised head; its validation accuracy after the last epoch."""
    assert features.val is not None and features.val_labels is not None
    c = config
    n = len(features.train_labels)
    groups = backbone_of(model).built_groups
    plan = freeze_plan("linear-probe", c.epochs, len(groups), c.head_epochs, c.unfreeze_every)
    lr = c.head_lr
    optimizer = make_optimizer(
        param_groups(
            model,
            lr,
            lr_body=c.lr_body or lr / 100,
            lr_decay=c.lr_decay,
            weight_decay=c.weight_decay,
            spread=c.lr_spread,
        ),
        c.optimizer,
        c.momentum,
    )
    weights = [1.0 / counts[int(y)] for y in features.train_labels.tolist()] if c.balance == "sampler" else None
    train = FeatureBatches(
        features.train,
        features.train_labels,
        batch_size=c.batch_size,
        order=EpochOrder(n, shuffle=True, seed=c.seed, weights=weights),
        seed=c.seed,
    )
    val = FeatureBatches(
        features.val,
        features.val_labels,
        batch_size=c.batch_size * 2,
        order=EpochOrder(len(features.val_labels), shuffle=False),
    )
    class_weights = [n / (len(counts) * max(k, 1)) for k in counts] if c.balance == "loss" else None
    loop = Loop(
        model,
        train=train,
        val=val,
        classes=classes,
        plan=plan,
        optimizer=optimizer,
        schedule=stage_schedule(plan, -(-len(train) // c.accumulate), c.schedule, c.warmup),
        accumulate=c.accumulate,
        task=SingleLabel(c.label_smoothing, class_weights),
        seed=c.seed,
        bn="frozen",
        eval_body=True,
        network=head_of(model),
        runtime=Runtime(device),
    )
    history = loop.fit()
    accuracy = history[-1].val_accuracy
    assert accuracy is not None
    return accuracy


def _plugin_score(score: ScoreInfo, row: Row, features: Features) -> float | None:
    """A plugin's score of one backbone's features; a failure is reported once, as one
    line, and leaves the cell empty."""
    if features.val is None and score.needs_validation:
        return None
    val = features.val.cpu().numpy() if features.val is not None else None
    val_labels = features.val_labels.cpu().numpy() if features.val_labels is not None else None
    try:
        value = score.function(features.train.cpu().numpy(), features.train_labels.cpu().numpy(), val, val_labels)
        return float(value)
    except Exception as e:
        if debugging():
            raise
        report(
            f"transferability score {score.name!r} of plugin {score.plugin!r} failed on {row.label}: {first_line(e)}"
        )
        return None


# -- the recommendation -----------------------------------------------------------------
def recommend(rows: Sequence[Row], num_val: int) -> Row | None:
    """The row RULE picks (see the module doc), or None when none was ranked."""
    ranked = [r for r in rows if r.error is None]
    pool = [r for r in ranked if r.pretrained] or ranked
    if not pool:
        return None
    tied = pool
    if num_val and all(r.probe_accuracy is not None for r in pool):
        best = max(r.probe_accuracy or 0.0 for r in pool)
        noise = max(math.sqrt(best * (1 - best) / num_val), 1 / num_val)
        tied = [r for r in pool if (r.probe_accuracy or 0.0) >= best - noise - 1e-12]
    return max(tied, key=lambda r: (r.logme if r.logme is not None else -math.inf, -(r.params or math.inf)))


def order(rows: Sequence[Row], num_val: int) -> tuple[list[Row], Row | None]:
    """The leaderboard: the recommendation first, then by probe accuracy (else LogME),
    then LogME; rows that failed last, in the order they were tried."""
    recommended = recommend(rows, num_val)
    ranked = [r for r in rows if r.error is None and r is not recommended]
    ranked.sort(
        key=lambda r: (
            -(r.probe_accuracy if r.probe_accuracy is not None else -1.0),
            -(r.logme if r.logme is not None else -math.inf),
        )
    )
    failed = [r for r in rows if r.error is not None]
    return ([recommended] if recommended else []) + ranked + failed, recommended


# -- outputs --------------------------------------------------------------------------------
def write_ranking(ranking: Ranking, folder: Path) -> list[Path]:
    """rank.json, rank.csv and rank.png (score against cost, the recommendation marked)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooAdaptError(f"cannot write to --out {folder}: {e.strerror or e}") from None
    paths = [
        write_text(folder / "rank.json", json.dumps(ranking.to_dict(), indent=2) + "\n"),
        write_text(folder / "rank.csv", ranking.csv_text()),
    ]
    if any(r.error is None for r in ranking.rows):
        rec = ranking.recommended
        chosen = (rec.backbone, rec.pretrained) if rec else None
        paths.append(plot_ranking([r.to_dict() for r in ranking.rows], chosen, folder / "rank.png"))
    return paths


def read_ranking(path: str | Path) -> dict[str, Any]:
    """A rank.json `zoo-adapt rank` wrote, checked enough to choose from."""
    file = Path(path)
    try:
        found = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooAdaptError(f"--rank-from {file}: no such file (zoo-adapt rank writes OUT/rank.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooAdaptError(f"--rank-from {file} is not a rank.json: {first_line(e)}") from None
    if not isinstance(found, dict) or not isinstance(found.get("rows"), list) or "recommended" not in found:
        raise ZooAdaptError(f"--rank-from {file} is not a rank.json (it has no rows and recommended)")
    if not isinstance(found["recommended"], str) or not found["recommended"]:
        raise ZooAdaptError(f"--rank-from {file} recommends nothing: every candidate failed when it was ranked")
    return found


def choose_backbone(config: FinetuneConfig, log: Log | None) -> tuple[FinetuneConfig, dict[str, Any]]:
    """`finetune --backbone auto`: the ranking (run now on the config's images, or read
    from --rank-from) and the config with its recommendation as the backbone, so
    config.toml reruns the same one."""
    say: Log = log or (lambda s: None)
    if not config.pretrained or config.weights:
        raise ZooAdaptError(
            "--backbone auto ranks the zoo's pretrained backbones; with --no-pretrained or --weights name the backbone"
        )
    if config.rank_from:
        ranking = read_ranking(config.rank_from)
        say(f"--backbone auto: {ranking['recommended']}, the recommendation of {config.rank_from}")
    else:
        say("--backbone auto: ranking the backbones whose weights are here first (zoo-adapt rank)")
        ranking = rank_with(config, RankOptions().check(), log, None).to_dict()
        say(f"--backbone auto: fine-tuning {ranking['recommended']}")
    pretrained = ranking.get("recommended_pretrained") is not False
    chosen = dataclasses.replace(config, backbone=ranking["recommended"], pretrained=pretrained, rank_from=None)
    return chosen, ranking
