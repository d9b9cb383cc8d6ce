"""A job's inputs: the labelled images a configuration names (an ImageFolder, a
torchvision dataset or the embedded demo), and the batch sources that feed the loop:
loader workers, images held on the device, or a linear probe's cached features."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from zoo_adapt.data import folders
from zoo_adapt.data import label_file as label_files
from zoo_adapt.data.augment import image_recipe
from zoo_adapt.data.demo import build_demo
from zoo_adapt.data.device_images import DeviceEvalImages, DeviceImages, fits
from zoo_adapt.data.feature_cache import FeatureBatches, cached_views, extract_features, head_network
from zoo_adapt.data.paths import check_data_folder
from zoo_adapt.data.pipeline import Batches, EpochOrder, LoaderBatches, default_workers, eval_batches
from zoo_adapt.data.transforms import TrainTransform
from zoo_adapt.engine.distributed import gather_shards
from zoo_adapt.engine.processes import SINGLE, Processes
from zoo_adapt.engine.runtime import Runtime
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.zoo.backbone import Normalization


@dataclass
class Datasets:
    """Decoded images with labels (transforms come later, once the image size is known).
    With --folds, `train` and `val` are one fold's, and the rest says where they come from."""

    train: folders.ImageSource
    val: folders.ImageSource | None
    classes: list[str]
    where: str
    held_out: folders.ImageSource | None = None  # --folds: the val/ or test/ split, scored once at the end
    pool: folders.Samples | None = None  # --folds: every training image, in order (the folds' union)
    train_index: list[int] | None = None  # --folds: positions of `train` in `pool`
    val_index: list[int] | None = None  # --folds: positions of `val` in `pool`
    warnings: list[str] = field(default_factory=list)  # about the data, shown when the run starts


def is_demo(config: FinetuneConfig) -> bool:
    """No data given: the embedded demo."""
    return not config.data and not config.dataset and not config.labels


def demo_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "zoo-adapt" / "demo"


def load_datasets(config: FinetuneConfig) -> Datasets:
    if config.dataset:
        train, val, classes = folders.torchvision_dataset(config.dataset, config.data_dir, None, None)
        return Datasets(train, val, classes, f"torchvision {config.dataset} in {config.data_dir}")
    if config.labels:
        return _from_label_file(config)
    if is_demo(config):
        root = build_demo(demo_root())
    else:
        root = Path(str(config.data))
    check_data_folder(root)
    train_dir, val_dir = folders.split_dirs(root)
    if train_dir is not None:
        train = folders.scan_folder(train_dir)
        if val_dir is not None:
            val = folders.scan_folder(val_dir, classes=train.classes)
            where = f"{train_dir} / {val_dir}"
        else:
            train, val = _split(train, config)
            where = f"{train_dir}, {config.held_out_fraction:.0%} held out" if val else str(train_dir)
    else:
        train, val = _split(folders.scan_folder(root), config)
        where = f"{root}, {config.held_out_fraction:.0%} held out" if val else str(root)
    return _datasets(train, val, train.classes, where, config)


def _datasets(train: folders.Samples, val: folders.Samples | None, classes, where: str, config) -> Datasets:
    if len(train.items) < 2:
        raise ZooAdaptError("training needs at least two images")
    if config.folds:
        return fold_datasets(train, val, classes, where, config)
    return Datasets(folders.ImageDataset(train), folders.ImageDataset(val) if val else None, classes, where)


def fold_assignment(train: folders.Samples, config: FinetuneConfig) -> list[int]:
    """Each training image's fold (0-based), after checking every class can be in every fold."""
    assert config.folds is not None
    labels = train.labels()
    counts = folders.class_counts(labels, len(train.classes))
    fewest = min(range(len(counts)), key=lambda c: counts[c])
    if counts[fewest] < config.folds:
        raise ZooAdaptError(
            f"--folds {config.folds} needs at least {config.folds} training images of every class; "
            f"{train.classes[fewest]!r} has {counts[fewest]}: give fewer folds or more images"
        )
    return folders.stratified_folds(labels, config.folds, config.seed, len(train.classes))


def fold_datasets(train: folders.Samples, held: folders.Samples | None, classes, where: str, config) -> Datasets:
    """--folds: fold k's training images (the other folds) and validation images (fold
    k), or with fold 0 (or none, the run as a whole) every training image and no
    validation; a val/ or test/ split rides along as `held_out`."""
    assignment = fold_assignment(train, config)
    n, k = len(train.items), config.fold or 0
    held_set = folders.ImageDataset(held) if held and held.items else None
    where = where if held_set is None else where + " (held out: scored once at the end, never used for a choice)"
    if k == 0:
        every = list(range(n))
        return Datasets(
            folders.ImageDataset(train),
            None,
            classes,
            f"{where}; all {n} training images, no validation",
            held_set,
            train,
            every,
            [],
        )
    train_index = [i for i, a in enumerate(assignment) if a != k - 1]
    val_index = [i for i, a in enumerate(assignment) if a == k - 1]
    return Datasets(
        folders.ImageDataset(folders.subset(train, train_index)),
        folders.ImageDataset(folders.subset(train, val_index)),
        classes,
        f"{where}; fold {k} of {config.folds}: validates on {len(val_index)} of the {n} training images",
        held_set,
        train,
        train_index,
        val_index,
    )


def label_columns(config: FinetuneConfig) -> label_files.LabelColumns:
    return label_files.LabelColumns(
        config.path_column, config.label_column, config.split_column, config.multi_label, config.label_delimiter
    )


def _from_label_file(config: FinetuneConfig) -> Datasets:
    """Training and validation images from a label file: its val rows (else its test
    rows, as a test/ folder counts as validation), else a held-out fraction."""
    file = Path(str(config.labels))
    rows = label_files.read_rows(file, config.data, label_columns(config))
    classes = label_files.training_classes(rows, file)
    train_rows, val_rows, test_rows = label_files.split_rows(rows)
    held = val_rows or test_rows

    def samples(part):
        found = label_files.rows_to_samples(part, classes, file, config.multi_label)
        bad = folders.checked([path for path, _ in found.items], str(file))
        if bad:
            dropped = {path for path, _ in bad}
            found.items = [item for item in found.items if item[0] not in dropped]
        return found

    train = samples(train_rows)
    if held:
        val = samples(held)
        where = f"{file}, {'val' if val_rows else 'test'} rows held out"
    else:
        train, val = _split(train, config)
        where = f"{file}, {config.held_out_fraction:.0%} held out" if val else str(file)
    data = _datasets(train, val, classes, where, config)
    warning = label_files.delimiter_warning(rows, file, config.label_delimiter) if config.multi_label else None
    if warning:
        data.warnings.append(warning)
    return data


def _split(samples, config):
    fraction = config.held_out_fraction
    if fraction == 0:
        return samples, None
    train, val = folders.stratified_split(samples, fraction, config.seed)
    if not val.items:  # every class has a single image: nothing can be held out
        raise ZooAdaptError(
            f"--val-split {fraction} holds out no image: every class has only one; add "
            "images, a val/ folder, or --val-split 0 to train without validation"
        )
    return train, val


def weights_checksum(model: nn.Module) -> float:
    """A cheap fingerprint of a model's weights (the sum of every floating-point tensor)."""
    return float(sum(float(t.double().sum()) for t in model.state_dict().values() if t.is_floating_point()))


@dataclass(frozen=True)
class Feeds:
    """What the loop consumes. `val_images` are the validation images themselves (for
    test-time augmentation), also when `val` is cached features; `network` is what
    runs on `train` (the head alone on cached features, else the whole model)."""

    train: Batches
    val: Batches | None
    val_images: Batches | None
    network: nn.Module | None
    how: str
    held: bool = False  # images held decoded on the device


class FeedMaker:
    """Builds batch sources for one job: the same normalization (and with it the image
    size), device and memory layout (`runtime`), workers, and process shard for all of
    them."""

    def __init__(self, config: FinetuneConfig, norm: Normalization, runtime: Runtime, procs: Processes = SINGLE):
        self.config, self.norm, self.runtime, self.procs = config, norm, runtime, procs
        self.device = runtime.device
        self.workers = default_workers(self.device) if config.workers is None else config.workers
        self.recipe = image_recipe(config.augment, config.color_jitter, norm)

    def order(self, n: int, shuffle: bool, seed_offset: int = 0, weights: list[float] | None = None) -> EpochOrder:
        return EpochOrder(
            n,
            shuffle=shuffle,
            seed=self.config.seed + seed_offset,
            rank=self.procs.rank,
            world=self.procs.world,
            pad=shuffle,
            weights=weights,
        )

    def sample_weights(self, dataset: folders.ImageSource) -> list[float] | None:
        """--balance sampler: each training image's weight, 1 / its class's count
        (multi-label: of its rarest class; an image without labels counts as a class
        of its own)."""
        if self.config.balance != "sampler":
            return None
        labels = folders.dataset_labels(dataset)
        counts = folders.class_counts(labels, len(dataset.classes))
        unlabelled = sum(1 for label in labels if label == ())
        return [
            1.0 / (min(counts[c] for c in label) if label else unlabelled)
            if isinstance(label, tuple)
            else 1.0 / counts[label]
            for label in labels
        ]

    def on_device(self, num_train: int, num_eval: int) -> bool:
        choice = self.config.data_on_device
        if self.recipe is not None:  # timm's recipes work on PIL images, in the loader workers
            return False
        return choice == "on" or (choice == "auto" and fits(num_train, num_eval, self.norm, self.device))

    def training(
        self,
        dataset: folders.ImageSource,
        held: bool,
        seed_offset: int = 0,
        shuffle: bool = True,
        balanced: bool = False,
    ) -> Batches:
        """`balanced`: the labelled training set, drawn with --balance sampler's weights."""
        c = self.config
        weights = self.sample_weights(dataset) if balanced and shuffle else None
        order = self.order(len(dataset), shuffle, seed_offset, weights)
        channels_last = self.runtime.channels_last
        if held:
            return DeviceImages(
                dataset,
                norm=self.norm,
                device=self.device,
                batch_size=c.batch_size,
                order=order,
                min_scale=c.crop_scale,
                hflip=c.hflip,
                vflip=c.vflip,
                rot90=c.rot90,
                workers=self.workers,
                channels_last=channels_last,
                seed=c.seed + seed_offset,
            )
        tf = TrainTransform(
            self.norm, min_scale=c.crop_scale, hflip=c.hflip, recipe=self.recipe, vflip=c.vflip, rot90=c.rot90
        )
        return LoaderBatches(
            dataset.with_transform(tf),
            batch_size=c.batch_size,
            norm=self.norm,
            device=self.device,
            order=order,
            workers=self.workers,
            channels_last=channels_last,
        )

    def evaluation(self, dataset: folders.ImageSource, held: bool, shuffle: bool = False) -> Batches:
        """Evaluation views in file order, or (`shuffle`) in one seeded random order."""
        batch = self.config.batch_size * 2
        order = self.order(len(dataset), shuffle=shuffle, seed_offset=2 if shuffle else 0)
        if held:
            return DeviceEvalImages(
                dataset,
                norm=self.norm,
                device=self.device,
                batch_size=batch,
                order=order,
                workers=self.workers,
                channels_last=self.runtime.channels_last,
            )
        return eval_batches(
            dataset,
            self.norm,
            self.device,
            batch_size=batch,
            workers=self.workers,
            order=order,
            channels_last=self.runtime.channels_last,
        )

    def feeds(self, data: Datasets) -> Feeds:
        """Batches of images for training and validation (no collective step: safe to
        run where any process may fail on bad input)."""
        num_val = len(data.val) if data.val is not None else 0
        held = self.on_device(len(data.train), num_val)
        where = "held on the device" if held else f"decoded by {self.workers} loader worker(s)"
        if self.recipe is not None:
            where += f", {self.recipe} on each training image"
            if self.config.data_on_device == "on":
                where += " (not held on the device, as --data-on-device on asked: timm's recipes run on PIL images)"
        val = self.evaluation(data.val, held) if data.val is not None else None
        return Feeds(self.training(data.train, held, balanced=True), val, val, None, f"images {where}", held)

    def wants_cache(self) -> bool:
        c = self.config
        batch_recipe = c.random_erase > 0 or c.mixup > 0 or c.cutmix > 0  # these act on images, not features
        return c.strategy == "linear-probe" and c.feature_cache and not c.target_data and not batch_recipe

    def cached(self, data: Datasets, feeds: Feeds, model: nn.Module, memo: dict | None = None) -> Feeds:
        """A linear probe's feeds on cached features: each process extracts its shard of
        the training set, then all gather the whole (every process then draws its padded
        shard of each epoch from it, as it would of images); validation stays sharded.
        `memo` (--folds): features of every training image, extracted by the first fold
        and taken by the others, as long as the body's weights are the same."""
        c, held, autocast = self.config, feeds.held, self.runtime.autocast
        pooled = memo is not None and data.pool is not None and c.cache_views == 1 and data.train_index is not None
        if pooled:
            assert memo is not None and data.pool is not None and data.train_index is not None
            pool_features, pool_labels = self.pool_features(data.pool, model, held, memo)
            features, labels = pool_features[:, data.train_index], pool_labels[data.train_index]
            val_index = (data.val_index or [])[self.procs.rank :: self.procs.world]  # this process's shard
            return self.cached_feeds(
                data, feeds, model, features, labels, (pool_features[0, val_index], pool_labels[val_index])
            )
        plain = self.evaluation(data.train, held) if c.cache_views == 1 else None
        augmented = self.training(data.train, held, shuffle=False) if c.cache_views > 1 else None
        features, labels = cached_views(model, plain, augmented, c.cache_views, autocast)
        n = len(data.train)
        features = gather_shards(features.transpose(0, 1), n, self.procs).transpose(0, 1).contiguous()
        labels = gather_shards(labels, n, self.procs)
        return self.cached_feeds(data, feeds, model, features, labels, None)

    def pool_features(self, pool: folders.Samples, model: nn.Module, held: bool, memo: dict):
        """(1 x N x width features, labels) of every training image, from `memo` when the
        same body made them."""
        key = (weights_checksum(model), self.norm.image_size, len(pool.items))
        if memo.get("key") != key:
            images = folders.ImageDataset(pool)
            features, labels = cached_views(model, self.evaluation(images, held), None, 1, self.runtime.autocast)
            n = len(images)
            features = gather_shards(features.transpose(0, 1), n, self.procs).transpose(0, 1).contiguous()
            memo.update(key=key, features=features, labels=gather_shards(labels, n, self.procs))
        return memo["features"], memo["labels"]

    def cached_feeds(self, data: Datasets, feeds: Feeds, model: nn.Module, features, labels, val_cached) -> Feeds:
        c, held = self.config, feeds.held
        autocast = self.runtime.autocast
        train = FeatureBatches(
            features,
            labels,
            batch_size=c.batch_size,
            order=self.order(len(labels), shuffle=True, weights=self.sample_weights(data.train)),
            seed=c.seed,
        )
        val_features = None
        if feeds.val is not None:
            vf, vl = val_cached if val_cached is not None else extract_features(model, feeds.val, autocast)
            val_features = FeatureBatches(vf, vl, batch_size=c.batch_size * 2, order=EpochOrder(len(vl), shuffle=False))
        views = "its eval view" if c.cache_views == 1 else f"{c.cache_views} augmented views"
        where = "held on the device" if held else f"decoded by {self.workers} loader worker(s)"
        if val_cached is not None:
            where += "; extracted once for every fold"
        return Feeds(
            train,
            val_features,
            feeds.val,
            head_network(model),
            f"cached features ({views} of each image, {where})",
            held,
        )
