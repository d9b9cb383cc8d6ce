"""How well a frozen backbone's features fit a task's labels, from the features alone:
LogME, kNN accuracy, and Kendall's tau to compare rankings (the probe's interval is
metrics.intervals.wilson). Pure functions of arrays (numpy), so they are tested against
direct formulas.

LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021) is the log marginal evidence, per image, of a Bayesian linear
regression from the features to each class's one-vs-rest target, with the prior
precision alpha and noise precision beta that maximise it, averaged over classes:

    L(alpha, beta) = D/2 log alpha + N/2 log beta - N/2 log 2pi
                     - beta/2 |y - F m|^2 - alpha/2 |m|^2 - 1/2 log |A|,
    A = alpha I + beta F^T F,   m = beta A^-1 F^T y.

alpha and beta come from MacKay's fixed-point iteration in the eigenbasis of F^T F, as
in the paper. The evidence has one more maximum, at the edge alpha -> infinity (m = 0:
the features explain nothing and all of y is noise, N/2 (log(N/|y|^2) - log 2pi - 1));
for a class the features barely separate it can be the higher one, and then it is the
class's evidence (the fixed point stops at the interior one). Unlike the reference
code's fast path, the D - rank zero eigenvalues of F^T F count in log |A| (each adds
log alpha), as the formula says: with fewer images than feature dimensions (the usual
case when ranking) leaving them out adds (D - rank)/2 log alpha, which rewards features
by their width rather than their fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-5  # keeps the fixed point finite on a perfect fit (as the paper's code does)
MAX_ITERATIONS = 100
TOLERANCE = 1e-4  # relative change of alpha / beta at which the fixed point has converged


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, sigma^2): the left singular vectors of F with non-zero singular values, and
    those values squared. Through the D x D Gram matrix when N > D, which is cheaper."""
    n, d = features.shape
    if n > d:
        sigma2, v = np.linalg.eigh(features.T @ features)
        keep = sigma2 > max(sigma2.max(), 0.0) * d * np.finfo(np.float64).eps
        sigma2, v = sigma2[keep], v[:, keep]
        u = features @ v / np.sqrt(sigma2)
        return u, sigma2
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    keep = s > max(s.max(initial=0.0), 0.0) * max(n, d) * np.finfo(np.float64).eps
    return u[:, keep], s[keep] ** 2


def _evidence_of_target(u: np.ndarray, sigma2: np.ndarray, y: np.ndarray, n: int, d: int) -> float:
    """Maximum log evidence per image of one target column `y` (see the module doc)."""
    x2 = (u.T @ y) ** 2  # the target's energy along each singular direction
    outside = float(y @ y - x2.sum())  # ... and outside F's column space
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITERATIONS):
        t = alpha / beta
        gamma = float((sigma2 / (sigma2 + t)).sum())  # effective number of parameters
        m2 = float((sigma2 * x2 / (sigma2 + t) ** 2).sum())  # |m|^2
        residual = float((x2 * (t / (sigma2 + t)) ** 2).sum()) + outside  # |y - F m|^2
        alpha = gamma / (m2 + EPSILON)
        beta = (n - gamma) / (residual + EPSILON)
        if abs(alpha / beta - t) / t < TOLERANCE:
            break
    t = alpha / beta
    m2 = float((sigma2 * x2 / (sigma2 + t) ** 2).sum())
    residual = float((x2 * (t / (sigma2 + t)) ** 2).sum()) + outside
    log_det = float(np.log(alpha + beta * sigma2).sum()) + (d - len(sigma2)) * math.log(alpha)
    evidence = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * residual
        - alpha / 2 * m2
        - log_det / 2
    )
    return max(evidence, _null_evidence(float(y @ y), n)) / n


def _null_evidence(energy: float, n: int) -> float:
    """The evidence as alpha -> infinity, at its best beta = N / |y|^2."""
    return n / 2 * (math.log(n / max(energy, EPSILON)) - math.log(2 * math.pi) - 1)


def logme(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LogME of `features` (N x D) for `labels`: class indices (N,), or a multi-hot
    matrix (N x C) where each column is one label's binary target. The average over
    classes of each one-vs-rest target's maximum evidence per image; higher is better.
    Scale: comparable between backbones on the same images and labels only."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n, d = f.shape
    if labels.ndim == 1:
        classes = num_classes or int(labels.max()) + 1
        targets = (labels[:, None] == np.arange(classes)[None, :]).astype(np.float64)
    else:
        targets = labels.astype(np.float64)
    u, sigma2 = _spectrum(f)
    return float(np.mean([_evidence_of_target(u, sigma2, targets[:, c], n, d) for c in range(targets.shape[1])]))


def knn_k(train_counts: Sequence[int], k: int = 5) -> int:
    """Neighbours the kNN score uses: 5, or fewer when the smallest class has fewer
    training images (so every class can still win a vote on its own)."""
    return max(1, min(k, min(c for c in train_counts if c > 0)))


def knn_accuracy(
    train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray, k: int
) -> float:
    """Accuracy on the validation images of a k-nearest-neighbour vote among the training
    images by cosine similarity, each neighbour voting with its similarity (so there are
    no ties to break)."""
    train = _unit_rows(np.asarray(train_features, dtype=np.float64))
    val = _unit_rows(np.asarray(val_features, dtype=np.float64))
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    similarity = val @ train.T
    k = min(k, len(train))
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    classes = int(max(train_labels.max(), val_labels.max())) + 1
    votes = np.zeros((len(val), classes))
    rows = np.repeat(np.arange(len(val)), k)
    np.add.at(votes, (rows, train_labels[nearest].ravel()), np.take_along_axis(similarity, nearest, 1).ravel())
    return float((votes.argmax(1) == val_labels).mean())


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b rank correlation of two equally long sequences (ties in either
    count as neither agreeing nor disagreeing); None when one of them is constant."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else None
