"""Label-free scores of a model on the unlabelled target images, logged every epoch of
an adapted run: the only evidence a user without target labels has about which epoch
or setting is better. docs/adaptation.md measures how well each ranks epochs and
settings against the target accuracy; none of them selects the kept model.

- `target_snd`: soft neighbourhood density (Saito et al., ICCV 2021): the entropy of
  each image's softmax-weighted similarity to the others, on L2-normalised class
  probabilities, temperature 0.05, averaged; higher means predictions form denser
  clusters, which the paper found to track accuracy better than entropy does.
- `target_entropy`: the mean entropy of the predictions, divided by log(classes)
  (0: every prediction certain, 1: uniform). Lower is more confident, not more right.
- `target_class_balance`: the entropy of the mean prediction, divided by log(classes)
  (1: every class predicted equally often; low: the model has collapsed onto few
  classes, a failure entropy minimisation and adversarial training can both cause).
"""

from __future__ import annotations

import math

import torch

SND_TEMPERATURE = 0.05
SND_LIMIT = 2000  # images used for SND (its similarity matrix grows with the square)


def soft_neighbourhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND of class probabilities (N x K), on at most SND_LIMIT evenly spaced images."""
    if len(probs) > SND_LIMIT:
        probs = probs[torch.linspace(0, len(probs) - 1, SND_LIMIT).long()]
    if len(probs) < 2:
        return float("nan")
    x = torch.nn.functional.normalize(probs.float(), dim=1)
    sims = x @ x.t() / temperature
    sims.fill_diagonal_(float("-inf"))  # an image is not its own neighbour
    p = sims.softmax(1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
    return entropy.mean().item()


def target_scores(probs: torch.Tensor) -> dict[str, float]:
    """The label-free scores of class probabilities (N x K) on target images."""
    k = probs.shape[1]
    norm = math.log(k) if k > 1 else 1.0
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean().item() / norm
    mean = probs.mean(0)
    balance = -(mean * mean.clamp_min(1e-12).log()).sum().item() / norm
    return {"target_snd": soft_neighbourhood_density(probs), "target_entropy": entropy, "target_class_balance": balance}
