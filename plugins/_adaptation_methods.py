"""DANN, MCC and AdaBN as zoo-adapt AdaptationMethods (imported when a method is built)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo_adapt.plugin_api import AdaptationMethod, grad_reverse


def discriminator(in_features: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    """An MLP from features to one logit, source (1) or target (0): Linear-ReLU layers,
    dropout after the first (Ganin et al.'s placement)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU(inplace=True)]
        if i == 0 and dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class DANN(AdaptationMethod):
    """Domain-adversarial training. The discriminator learns to tell source from target
    features; through the reversal layer the backbone learns to make that impossible.
    lambda rises from 0 as 2 / (1 + exp(-gamma p)) - 1, times --adapt-weight."""

    def __init__(self, in_features, num_classes, config):
        super().__init__(in_features, num_classes, config)
        o = self.options
        self.domain_classifier = discriminator(in_features, o["width"], o["depth"], o["dropout"])
        self.weight = config.adapt_weight

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return super().param_groups(self.options["lr_factor"] * lr, weight_decay)

    def coefficient(self, progress: float) -> float:
        return self.weight * (2 / (1 + math.exp(-self.options["gamma"] * progress)) - 1)

    def loss(self, source_features, target_features, source_logits, target_logits, progress):
        lambda_ = self.coefficient(progress)
        features = torch.cat([source_features, target_features]).flatten(1)
        logits = self.domain_classifier(grad_reverse(features, lambda_)).squeeze(-1).float()
        # made where the logits are: a copy from the host would make every step wait for the GPU
        domains = torch.cat([logits.new_ones(len(source_features)), logits.new_zeros(len(target_features))])
        loss = F.binary_cross_entropy_with_logits(logits, domains)  # in fp32: safe under bf16 autocast
        accuracy = ((logits.detach() > 0).float() == domains).float().mean()
        return loss, {"domain_loss": loss.detach(), "domain_accuracy": accuracy, "lambda": lambda_}


class MCC(AdaptationMethod):
    """Minimum class confusion: on target predictions (softened by a temperature, each
    sample weighted by its certainty), penalise the probability mass that pairs of classes
    share, normalised per class. No extra modules, no target labels."""

    def __init__(self, in_features, num_classes, config):
        super().__init__(in_features, num_classes, config)
        self.temperature, self.weight = self.options["temperature"], config.adapt_weight

    def loss(self, source_features, target_features, source_logits, target_logits, progress):
        probs = F.softmax(target_logits.float() / self.temperature, dim=1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).detach()
        weights = 1 + torch.exp(-entropy)
        weights = (len(probs) * weights / weights.sum()).unsqueeze(1)
        confusion = (probs * weights).t() @ probs
        confusion = confusion / confusion.sum(dim=1, keepdim=True)  # category normalisation (rows)
        mcc = (confusion.sum() - confusion.trace()) / self.num_classes
        return self.weight * mcc, {"mcc_loss": mcc.detach()}


class AdaBN(AdaptationMethod):
    """No adaptation loss, and no target images in the training steps: the model trains
    on the source alone, as source-only training does, and adapts through the BatchNorm
    statistics it keeps, measured on the target images (--target-bn target, the default):
    Li et al.'s AdaBN. Weights are never trained on target images."""

    forwards_target = False

    def loss(self, source_features, target_features, source_logits, target_logits, progress):
        return source_logits.new_zeros(()), {}
