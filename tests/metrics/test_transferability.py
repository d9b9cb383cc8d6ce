"""Transferability scores against direct formulas: LogME's evidence maximised by grid
search over (alpha, beta) on explicit matrices, kNN by brute force, Wilson's interval
and Kendall's tau against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from zoo_adapt.metrics.transferability import kendall_tau, knn_accuracy, knn_k, logme


def direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The paper's log evidence per image, term by term, with A and m formed explicitly."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, log_det = np.linalg.slogdet(a)
    return (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * float(np.sum((y - f @ m) ** 2))
        - alpha / 2 * float(m @ m)
        - log_det / 2
    ) / n


def grid_maximum(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of the direct evidence, by a log grid zoomed in four times."""
    centre, half = np.array([0.0, 0.0]), 6.0  # log10 alpha, log10 beta
    best = -np.inf
    for _ in range(5):
        grid = np.linspace(-half, half, 41)
        for la in centre[0] + grid:
            for lb in centre[1] + grid:
                value = direct_evidence(f, y, 10.0**la, 10.0**lb)
                if value > best:
                    best, arg = value, np.array([la, lb])
        centre, half = arg, half / 8
    return best


def direct_logme(f: np.ndarray, labels: np.ndarray) -> float:
    classes = int(labels.max()) + 1
    return float(np.mean([grid_maximum(f, (labels == c).astype(float)) for c in range(classes)]))


@pytest.mark.parametrize(
    "n, d, rank",
    [(40, 6, 6), (12, 20, 12), (30, 10, 5)],
    ids=["more images than dimensions", "fewer images than dimensions", "rank-deficient features"],
)
def test_logme_is_the_maximum_of_the_paper_s_evidence(n, d, rank):
    rng = np.random.default_rng(n + d)
    labels = np.arange(n) % 3
    # `rank` noisy directions, the classes' means among them, spread over d dimensions
    signal = rng.normal(size=(n, rank)) + 0.8 * np.eye(3)[labels] @ rng.normal(size=(3, rank))
    f = signal @ rng.normal(size=(rank, d))
    assert logme(f, labels) == pytest.approx(direct_logme(f, labels), abs=1e-3)


def test_logme_takes_the_edge_maximum_when_the_features_explain_a_class_worse_than_noise():
    """The evidence of pure-noise features can peak at alpha -> infinity (m = 0), beyond
    the interior point the fixed-point iteration stops at."""
    rng = np.random.default_rng(32)
    labels = np.arange(12) % 3
    f = rng.normal(size=(12, 20))
    y = (labels == 2).astype(float)
    null = 0.5 * (math.log(12 / (y @ y)) - math.log(2 * math.pi) - 1)
    assert grid_maximum(f, y) == pytest.approx(null, abs=1e-3)
    assert logme(f, labels) == pytest.approx(direct_logme(f, labels), abs=1e-3)


def test_logme_prefers_features_that_separate_the_classes():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 4
    noise = rng.normal(size=(60, 32))
    informative = noise + 3 * np.eye(4)[labels] @ rng.normal(size=(4, 32))
    assert logme(informative, labels) > logme(noise, labels) + 0.1


def test_logme_of_multi_hot_labels_averages_each_label_s_evidence():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(25, 7))
    multi_hot = rng.random((25, 3)) < 0.4
    each = [grid_maximum(f, multi_hot[:, c].astype(float)) for c in range(3)]
    assert logme(f, multi_hot) == pytest.approx(np.mean(each), abs=1e-3)


def test_knn_accuracy_matches_a_brute_force_cosine_vote():
    rng = np.random.default_rng(2)
    train, val = rng.normal(size=(30, 5)), rng.normal(size=(20, 5))
    train_y, val_y = np.arange(30) % 3, rng.integers(0, 3, 20)
    k = 4
    right = 0
    for x, y in zip(val, val_y):
        cos = train @ x / (np.linalg.norm(train, axis=1) * np.linalg.norm(x))
        nearest = np.argsort(-cos)[:k]
        votes = np.bincount(train_y[nearest], weights=cos[nearest], minlength=3)
        right += int(votes.argmax() == y)
    assert knn_accuracy(train, train_y, val, val_y, k) == pytest.approx(right / 20)
    # scaled features give the same neighbours by cosine
    assert knn_accuracy(train * 7.0, train_y, val, val_y, k) == knn_accuracy(train, train_y, val, val_y, k)


def test_knn_uses_five_neighbours_unless_a_class_is_smaller():
    assert knn_k([20, 30, 40]) == 5
    assert knn_k([3, 30, 40]) == 3
    assert knn_k([0, 1, 8]) == 1


def test_kendall_tau_matches_scipy_with_ties():
    a = [0.9, 0.8, 0.8, 0.3, 0.1, 0.5]
    b = [3.0, 2.0, 2.5, 2.5, -1.0, 0.0]
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None
