"""How sure a figure measured on n images is: 95% intervals and paired comparisons,
torch-free (numpy and the standard library).

- A proportion (accuracy, top-5, a class's recall): the Wilson score interval, which
  stays inside [0, 1] and keeps its coverage near 95% at small n and near 0 or 1,
  where the textbook p +- 1.96 sqrt(p(1-p)/n) does not (Brown, Cai & DasGupta 2001).
- A figure that is not one proportion (balanced accuracy, macro F1, mAP): the
  percentile interval of a seeded bootstrap over the images (each draw resamples n
  images with replacement and recomputes the figure).
- Two models on the same images (TTA or not, the kept epoch or the last): the paired
  bootstrap's interval of the difference in accuracy, and McNemar's exact test on the
  discordant images (mid-p, Fagerland et al. 2013). A difference is "within noise" when
  its interval holds 0.

Every bootstrap is seeded (`SEED`), so the same images give the same interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
DRAWS = 1000
SEED = 0
_CHUNK = 250_000  # indices drawn at once (draws x images), so memory stays bounded for large sets

Interval = tuple[float, float]


def z_value(level: float = LEVEL) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, level: float = LEVEL) -> Interval | None:
    """The Wilson score interval of successes / n; None without images. Unlike the
    normal approximation it stays inside [0, 1] and is sound at 0 or n successes (whose
    ends are exactly 0 and 1)."""
    if n <= 0:
        return None
    z = z_value(level)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if successes == 0 else low), (1.0 if successes >= n else high)


# Student's t, 97.5th percentile, 1 to 30 degrees of freedom (the 95% two-sided interval)
_T95: tuple[float, ...] = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179)
_T95 += (2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052)
_T95 += (2.048, 2.045, 2.042)


def t_value(df: int, level: float = LEVEL) -> float:
    """Student's t quantile for a two-sided interval: the table at 95% up to 30 degrees
    of freedom, else the Cornish-Fisher expansion around the normal quantile."""
    if level == LEVEL and 1 <= df <= len(_T95):
        return _T95[df - 1]
    z = z_value(level)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values, level: float = LEVEL) -> Interval | None:
    """The t interval of the mean of a few scores (the folds' of a cross-validation)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if len(x) < 2:
        return None
    half = t_value(len(x) - 1, level) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def draws(n: int, count: int = DRAWS, seed: int = SEED) -> Iterator[np.ndarray]:
    """`count` bootstrap resamples of n images (index arrays), in chunks of rows."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < count:
        k = min(rows, count - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def percentile(values: np.ndarray, level: float = LEVEL) -> Interval | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(statistic: Callable[[np.ndarray], float | None], n: int, count: int = DRAWS, seed: int = SEED):
    """The percentile interval of `statistic(indices)` over `count` resamples of n images
    (a draw where the figure is undefined is left out); None without images."""
    if n <= 0:
        return None
    values = [statistic(idx) for chunk in draws(n, count, seed) for idx in chunk]
    return percentile(np.array([np.nan if v is None else v for v in values], dtype=float))


def class_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int, index: np.ndarray):
    """Per draw (rows of `index`): true positives, support and predicted counts of each
    class, as draws x classes arrays."""
    rows = np.arange(len(index))[:, None] * num_classes
    y, p = labels[index], predictions[index]
    size = len(index) * num_classes
    support = np.bincount((rows + y).ravel(), minlength=size).reshape(-1, num_classes)
    said = np.bincount((rows + p).ravel(), minlength=size).reshape(-1, num_classes)
    hit = (y == p).ravel()
    tp = np.bincount((rows + y).ravel()[hit], minlength=size).reshape(-1, num_classes)
    return tp, support, said


def single_label_bootstrap(
    labels, predictions, num_classes: int, count: int = DRAWS, seed: int = SEED, level: float = LEVEL
) -> dict[str, Interval | None]:
    """Intervals of balanced accuracy (mean recall over the classes present in a draw)
    and macro F1 (over the classes present or predicted), one bootstrap for both."""
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if not len(y):
        return {"balanced_accuracy": None, "macro_f1": None}
    balanced, macro = [], []
    for index in draws(len(y), count, seed):
        tp, support, said = class_counts(y, p, num_classes, index)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, tp / support, np.nan)
            f1 = np.where(support + said > 0, 2 * tp / (support + said), np.nan)
        balanced.append(np.nanmean(recall, 1))
        macro.append(np.nanmean(f1, 1))
    return {
        "balanced_accuracy": percentile(np.concatenate(balanced), level),
        "macro_f1": percentile(np.concatenate(macro), level),
    }


def multi_label_bootstrap(
    scores, positives, said, average_precision, count: int = DRAWS, seed: int = SEED, level: float = LEVEL
) -> dict[str, Interval | None]:
    """Intervals of mAP (`average_precision(scores, positive)` per class, None without
    positives), macro F1 and micro F1 at the given decisions `said`, over images."""
    scores, positives, said = np.asarray(scores), np.asarray(positives, dtype=bool), np.asarray(said, dtype=bool)
    n = len(scores)
    if not n:
        return {"map": None, "macro_f1": None, "micro_f1": None}
    maps, macro, micro = [], [], []
    for chunk in draws(n, count, seed):
        for idx in chunk:
            s, y, d = scores[idx], positives[idx], said[idx]
            aps = [average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])]
            aps = [a for a in aps if a is not None]
            maps.append(float(np.mean(aps)) if aps else np.nan)
            tp, n_pos, n_said = (d & y).sum(0), y.sum(0), d.sum(0)
            present = n_pos + n_said > 0
            macro.append(float(np.mean(2 * tp[present] / (n_pos + n_said)[present])) if present.any() else np.nan)
            total = n_pos.sum() + n_said.sum()
            micro.append(2 * tp.sum() / total if total else np.nan)
    return {
        "map": percentile(np.array(maps), level),
        "macro_f1": percentile(np.array(macro), level),
        "micro_f1": percentile(np.array(micro), level),
    }


def mcnemar(only_first: int, only_second: int) -> tuple[float, float]:
    """(exact, mid-p) two-sided p-values of McNemar's test from the discordant counts:
    images only the first model gets right, images only the second gets right. Exact:
    the binomial test of min(b, c) out of b + c at 1/2; mid-p counts the observed
    count's own probability half, which keeps the test's size near 5% where the exact
    one is conservative."""
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0, 1.0
    point = math.comb(n, k) / 2**n
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    exact = min(1.0, 2 * tail)
    mid = min(1.0, 2 * (tail - point / 2))
    return exact, mid


@dataclass(frozen=True)
class Paired:
    """Model B against model A on the same n images: the difference in accuracy (B - A),
    its paired-bootstrap interval, McNemar's mid-p value, and the discordant counts."""

    difference: float
    low: float
    high: float
    p_value: float
    only_a: int  # images only A got right
    only_b: int  # images only B got right
    n: int

    @property
    def within_noise(self) -> bool:
        return self.low <= 0 <= self.high

    def points(self) -> str:
        """'+1.7 points [-0.3, +3.7]'"""
        return f"{100 * self.difference:+.1f} points [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"

    def verdict(self) -> str:
        return (
            "within noise"
            if self.within_noise
            else ("beyond noise: a gain" if self.difference > 0 else "beyond noise: a loss")
        )

    def to_dict(self) -> dict:
        return {
            "difference": self.difference,
            "interval": [self.low, self.high],
            "p_value_mcnemar_midp": self.p_value,
            "only_a_right": self.only_a,
            "only_b_right": self.only_b,
            "images": self.n,
            "within_noise": self.within_noise,
        }


def paired(a_right, b_right, count: int = DRAWS, seed: int = SEED, level: float = LEVEL) -> Paired | None:
    """Compare two models' per-image correctness (booleans, same images, same order)."""
    a, b = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    if len(a) != len(b):
        raise ValueError(f"paired comparison of {len(a)} and {len(b)} images")
    if not len(a):
        return None
    change = b.astype(np.float64) - a.astype(np.float64)
    diffs = np.concatenate([change[index].mean(1) for index in draws(len(a), count, seed)])
    low, high = percentile(diffs, level) or (0.0, 0.0)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return Paired(float(change.mean()), low, high, mcnemar(only_a, only_b)[1], only_a, only_b, len(a))


def as_list(interval: Interval | None) -> list[float] | None:
    """How metrics.json holds an interval: [low, high], or null."""
    return None if interval is None else [float(interval[0]), float(interval[1])]


def bracket(interval, scale: float = 100, digits: int = 1) -> str:
    """' [90.0, 95.7]' (percentages by default), or '' without an interval."""
    if interval is None:
        return ""
    low, high = interval
    return f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
