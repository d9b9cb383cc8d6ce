"""Cached features for linear probes. With the body frozen (BatchNorm and dropout in
eval mode too), the features the head receives never change, so they are computed once
and the head trains on them: epochs after the first cost almost nothing.

With one view per image (the default) each image's view is its eval crop, so training
on the cache is exactly training on un-augmented images. With `views` > 1, that many
randomly augmented crops (the training transform) of each image are cached and every
epoch draws one of them per image: augmentation at `views` times the cost of one
extraction pass, but with only `views` distinct crops instead of a fresh one per epoch.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from zoo_adapt.data.pipeline import Batches, EpochBatches, EpochOrder, batch_sizes, device_index
from zoo_adapt.model.build import HeadFeatures, head_of
from zoo_adapt.seeds import process_seed


@torch.no_grad()
def extract_features(model: nn.Module, batches: Batches, autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every batch, in order, through the body in eval mode, with
    no autograd graph (the features are constants for whatever trains on them)."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        with HeadFeatures(model) as hook, autocast(), torch.no_grad():
            for x, y in batches:
                model(x)
                assert hook.value is not None  # the head ran
                features.append(hook.value.flatten(1).float())
                labels.append(y)
    finally:
        model.train(was_training)
    return torch.cat(features), torch.cat(labels)


class FeatureBatches:
    """Batches of cached features (views x samples x width), in the order `order` gives."""

    def __init__(
        self, features: torch.Tensor, labels: torch.Tensor, *, batch_size: int, order: EpochOrder, seed: int = 0
    ):
        self.features = features if features.dim() == 3 else features[None]
        self.labels, self.batch_size, self.order, self.seed = labels, batch_size, order, seed
        self.num_samples = len(order)
        self.generator = torch.Generator(device=features.device)

    def __len__(self) -> int:
        return len(batch_sizes(len(self.order), self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        self.generator.manual_seed(process_seed(self.seed, epoch, self.order.rank))

    def __iter__(self):
        views = len(self.features)
        for batch in EpochBatches(self.order, self.batch_size):
            index = device_index(batch, self.features.device)
            view = (
                torch.randint(views, (len(index),), generator=self.generator, device=index.device)
                if views > 1
                else torch.zeros_like(index)
            )
            yield self.features[view, index], self.labels[index]


def cached_views(
    model: nn.Module, train_eval: Batches | None, train_augmented: Batches | None, views: int, autocast=nullcontext
) -> tuple[torch.Tensor, torch.Tensor]:
    """(views x N x width features, labels): the eval view when `views` is 1, else
    `views` passes of the augmented training batches (which must be in a fixed order)."""
    if views == 1:
        assert train_eval is not None
        features, labels = extract_features(model, train_eval, autocast)
        return features[None], labels
    assert train_augmented is not None
    passes = []
    for v in range(views):
        train_augmented.set_epoch(v)
        features, labels = extract_features(model, train_augmented, autocast)
        passes.append(features)
    return torch.stack(passes), labels


def head_network(model: nn.Module) -> nn.Module:
    """What runs on cached features: the head alone (shared with the described model)."""
    return head_of(model)
