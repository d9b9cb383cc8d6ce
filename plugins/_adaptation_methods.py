"""DANN and MCC as zoo-adapt AdaptationMethods (imported when a method is built)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo_adapt.plugin_api import AdaptationMethod, grad_reverse


class DomainClassifier(nn.Module):
    """An MLP from features to one logit: source (1) or target (0)."""

    def __init__(self, in_features: int, hidden: list[int], dropout: float):
        super().__init__()
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(-1)


class DANN(AdaptationMethod):
    """Domain-adversarial training. The domain classifier learns to tell source from target
    features; through the reversal layer the backbone learns to make that impossible.
    lambda rises from 0 as 2 / (1 + exp(-gamma p)) - 1, times --adapt-weight."""

    def __init__(self, in_features, num_classes, config):
        super().__init__(in_features, num_classes, config)
        self.domain_classifier = DomainClassifier(in_features, config.hidden_sizes(), config.domain_dropout)
        self.weight, self.gamma = config.adapt_weight, config.adapt_gamma

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The domain classifier learns at 0.3 x the head's rate by default: at the head's
        rate it overpowered the backbone, no faster than the body it lost (measured in
        docs/adaptation.md)."""
        return super().param_groups(0.3 * lr, weight_decay)

    def coefficient(self, progress: float) -> float:
        return self.weight * (2 / (1 + math.exp(-self.gamma * progress)) - 1)

    def loss(self, source_features, target_features, source_logits, target_logits, progress):
        lambda_ = self.coefficient(progress)
        features = torch.cat([source_features, target_features])
        logits = self.domain_classifier(grad_reverse(features, lambda_)).float()
        domains = torch.cat([torch.ones(len(source_features)), torch.zeros(len(target_features))]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, domains)  # in fp32: safe under bf16 autocast
        accuracy = ((logits.detach() > 0).float() == domains).float().mean()
        return loss, {"domain_loss": loss.detach(), "domain_accuracy": accuracy, "lambda": lambda_}


class MCC(AdaptationMethod):
    """Minimum class confusion: on target predictions (softened by a temperature, each
    sample weighted by its certainty), penalise the probability mass that pairs of classes
    share, normalised per class. No extra modules, no target labels."""

    def __init__(self, in_features, num_classes, config):
        super().__init__(in_features, num_classes, config)
        self.temperature = float(config.adapt_options.get("temperature", 2.5))
        self.weight = config.adapt_weight

    def loss(self, source_features, target_features, source_logits, target_logits, progress):
        probs = F.softmax(target_logits.float() / self.temperature, dim=1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).detach()
        weights = 1 + torch.exp(-entropy)
        weights = (len(probs) * weights / weights.sum()).unsqueeze(1)
        confusion = (probs * weights).t() @ probs
        confusion = confusion / confusion.sum(dim=1, keepdim=True)  # category normalisation (rows)
        mcc = (confusion.sum() - confusion.trace()) / self.num_classes
        return self.weight * mcc, {"mcc_loss": mcc.detach()}
