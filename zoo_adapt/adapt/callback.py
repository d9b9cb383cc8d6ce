"""Domain adaptation: fine-tuning that also sees unlabelled images of the target domain.

Each step takes a labelled source batch and an unlabelled target batch of the same size
and runs ONE forward pass over both together. That choice is deliberate: BatchNorm
layers then normalise with statistics of the mixed batch and their running statistics
track both domains, so the exported model meets target images with statistics that
include them (tllib's DANN does the same; two passes would keep source-only statistics).

Methods (DANN, MCC, third parties') come from the `register_adaptation_methods` hook.
They see the features the head receives (captured at the head the plugin names) and the
logits; target labels are never read. `Adaptation` is the loop callback that does it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from zoo_adapt.adapt.method import AdaptationMethod, batch_norms
from zoo_adapt.adapt.selection import SND_LIMIT, target_scores
from zoo_adapt.data.pipeline import Batches, cycle
from zoo_adapt.engine.callbacks import Callback
from zoo_adapt.model.build import HeadFeatures


class Adaptation(Callback):
    """Adds a target batch to every step's forward pass (unless the method forwards
    none) and the method's loss to the step's loss. After each validation it logs the
    label-free target scores (selection.py) on `target_eval`, the unlabelled target
    images in evaluation form, and, given labelled target images (`target_val`), the
    oracle accuracy, which selects the kept epoch only with `select_with_target_labels`.
    With `target_bn` those figures are of the model with BatchNorm statistics of the
    target images, as the export will have them (`use_target_statistics`)."""

    def __init__(
        self,
        method: AdaptationMethod,
        target: Batches,
        target_eval: Batches | None = None,
        target_val: Batches | None = None,
        select_with_target_labels: bool = False,
        target_bn: bool = False,
        num_target: int = 0,
    ):
        self.method, self.target, self.target_eval, self.target_val = method, target, target_eval, target_val
        self.select_with_target_labels, self.target_bn = select_with_target_labels, target_bn
        self.num_target = num_target  # unlabelled target images in all
        self.figure_names: list[str] = []  # what the method's loss logged, in the order first seen

    def setup(self, loop) -> None:
        self.features = HeadFeatures(loop.model)
        if self.select_with_target_labels:
            loop.select = "target_accuracy_oracle"

    def epoch_start(self, loop, epoch: int) -> None:
        if self.method.forwards_target:
            self.target.set_epoch(epoch)
            self.batches = cycle(self.target, loop.steps_per_epoch)
        self.method.train()

    def before_forward(self, loop, step) -> None:
        if self.method.forwards_target:
            xt, _ = next(self.batches)
            step.x = torch.cat([step.x, xt])

    def after_loss(self, loop, step) -> None:
        n, features, logits = step.n, self.features.value, step.logits
        assert features is not None and logits is not None  # after the forward pass
        extra, figures = self.method.loss(features[:n], features[n:], logits[:n], logits[n:], loop.progress)
        step.loss = step.loss + extra
        step.figures.update(figures)
        if len(self.figure_names) < len(figures):
            self.figure_names += [k for k in figures if k not in self.figure_names]

    def after_validate(self, loop, record) -> None:
        with bn_statistics_kept(loop.model) if self.target_bn else nullcontext():
            if self.target_bn:
                self.use_target_statistics(loop)
            if self.target_eval is not None:
                probs = probabilities(loop.eval_network, self.target_eval, SCORED, loop.autocast)
                record.extra.update(target_scores(probs))
            if self.target_val is not None:
                record.extra["target_accuracy_oracle"] = loop.validate(batches=self.target_val).accuracy

    def use_target_statistics(self, loop) -> int:
        """The model's BatchNorm statistics measured on the target images (AdaBN); under
        torchrun every process measures its shard and all take the average."""
        if self.target_eval is None:
            return 0
        return estimate_bn_statistics(loop.model, self.target_eval, loop.autocast, loop.runtime.all_reduce, loop.world)

    def close(self, loop) -> None:
        self.features.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict(), "figure_names": self.figure_names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.figure_names = list(state.get("figure_names", []))

    def save_method(self, path: Path, name: str) -> None:
        """The method's own modules (a domain classifier), beside the model."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.method.state_dict().items()}
        if state:
            save_file(state, str(path), metadata={"method": name})


SCORED = SND_LIMIT  # target images the label-free scores read each epoch


def estimate_bn_statistics(model: nn.Module, batches: Batches, autocast=None, all_reduce=None, world: int = 1) -> int:
    """AdaBN (Li et al. 2016): every BatchNorm layer's running mean and variance replaced
    by their average over `batches` (the target images, evaluation view), with the rest
    of the model in eval mode (no dropout or stochastic depth) and no weight changed, so
    the model normalises target images with target statistics. `all_reduce` (a sum over
    `world` processes, each with its shard) averages the processes' statistics. Returns
    how many BatchNorm layers there are (0: nothing to do, a ViT say)."""
    norms = [m for m in batch_norms(model) if m.running_mean is not None]
    if not norms:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    try:
        with torch.no_grad(), (autocast or nullcontext)():
            for x, _ in batches:
                model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if all_reduce is not None and world > 1:
        for mean, var in _statistics(norms):
            mean.copy_(all_reduce(mean.clone()) / world)
            var.copy_(all_reduce(var.clone()) / world)
    return len(norms)


@contextmanager
def bn_statistics_kept(model: nn.Module):
    """The model's BatchNorm statistics as they are now, back after the block."""
    live = [
        t
        for m in batch_norms(model)
        if m.running_mean is not None
        for t in (m.running_mean, m.running_var, m.num_batches_tracked)
        if t is not None
    ]
    saved = [t.clone() for t in live]
    try:
        yield
    finally:
        for t, value in zip(live, saved):
            t.copy_(value)


def _statistics(norms: list[nn.modules.batchnorm._BatchNorm]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(running mean, running variance) of each BatchNorm layer that tracks them."""
    return [(m.running_mean, m.running_var) for m in norms if m.running_mean is not None and m.running_var is not None]


def probabilities(network: nn.Module, batches: Batches, limit: int, autocast=None) -> torch.Tensor:
    """Class probabilities of up to `limit` images, in eval mode (labels not read)."""
    out, count = [], 0
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), (autocast or nullcontext)():
            for x, _ in batches:
                out.append(network(x).float().softmax(1))
                count += len(x)
                if count >= limit:
                    break
    finally:
        network.train(was_training)
    return torch.cat(out)[:limit]


def pooled_features(model: nn.Module, batches: Batches, limit: int, autocast=None) -> torch.Tensor:
    """The features the head receives, for up to `limit` images, in eval mode."""
    out, count = [], 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), HeadFeatures(model) as hook, (autocast or nullcontext)():
            for x, _ in batches:
                model(x)
                assert hook.value is not None  # the head ran
                out.append(hook.value.float().flatten(1).cpu())
                count += len(x)
                if count >= limit:
                    break
    finally:
        model.train(was_training)
    return torch.cat(out)[:limit]


def proxy_a_distance(source: torch.Tensor, target: torch.Tensor, seed: int = 0, epochs: int = 200) -> float:
    """2 (1 - 2 err): `err` is the held-out error of a logistic regression telling source
    features from target features (Ben-David et al. 2007). 0: indistinguishable; 2: fully
    separable."""
    n = min(len(source), len(target))
    g = torch.Generator().manual_seed(seed)
    x = torch.cat(
        [source[torch.randperm(len(source), generator=g)[:n]], target[torch.randperm(len(target), generator=g)[:n]]]
    )
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    order = torch.randperm(2 * n, generator=g)
    x, y = x[order], y[order]
    half = n  # train on one half, measure on the other
    mean, std = x[:half].mean(0), x[:half].std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=epochs, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x[:half] @ w + b, y[:half]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        err = ((x[half:] @ w + b > 0).float() != y[half:]).float().mean().item()
    return 2 * (1 - 2 * min(err, 0.5))


def domain_gap(model: nn.Module, source: Batches, target: Batches, seed: int, autocast=None, limit: int = 512) -> float:
    """Proxy A-distance between the features of (up to `limit`) source and target images."""
    fs = pooled_features(model, source, limit, autocast)
    ft = pooled_features(model, target, limit, autocast)
    return proxy_a_distance(fs, ft, seed=seed)
