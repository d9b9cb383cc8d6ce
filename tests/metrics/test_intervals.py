"""The intervals, paired tests and calibration against scipy and closed forms, and the
folds' stratification (all torch-light: seconds in all)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from zoo_adapt.data.folders import stratified_folds
from zoo_adapt.metrics import calibration
from zoo_adapt.metrics import intervals as ci


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (280, 300), (1, 1), (17, 40)])
def test_wilson_matches_scipy(k, n):
    want = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = ci.wilson(k, n)
    assert (low, high) == pytest.approx((want.low, want.high), abs=1e-9)
    assert ci.wilson(0, 0) is None


def test_wilson_closed_form_at_one_half():
    """k = n/2: centred on 1/2 with half-width z sqrt(n + z^2/4)... / (n + z^2)."""
    z, n = ci.z_value(), 100
    half = z * math.sqrt(n / 4 + z * z / 4) / (n + z * z)
    assert ci.wilson(50, n) == pytest.approx((0.5 - half, 0.5 + half))


@pytest.mark.parametrize("b, c", [(0, 5), (3, 9), (10, 10), (1, 0), (25, 40)])
def test_mcnemar_exact_is_the_binomial_test_and_mid_p_the_closed_form(b, c):
    exact, mid = ci.mcnemar(b, c)
    assert exact == pytest.approx(stats.binomtest(min(b, c), b + c, 0.5).pvalue)
    k, n = min(b, c), b + c
    point = stats.binom.pmf(k, n, 0.5)
    assert mid == pytest.approx(min(1.0, 2 * stats.binom.cdf(k, n, 0.5) - point))
    assert mid <= exact


def test_mcnemar_known_case():
    assert ci.mcnemar(0, 5) == pytest.approx((2 / 32, 1 / 32))
    assert ci.mcnemar(0, 0) == (1.0, 1.0)


def test_paired_difference_is_seeded_covers_the_truth_and_says_noise():
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.80
    flip = rng.random(300) < 0.05
    b = a ^ flip  # a few images change, both ways
    result = ci.paired(a, b)
    assert result == ci.paired(a, b)  # seeded
    assert result.low <= result.difference <= result.high
    assert result.only_a == int((a & ~b).sum()) and result.only_b == int((b & ~a).sum())
    same = ci.paired(a, a)
    assert same.difference == 0 and same.within_noise and same.points() == "+0.0 points [+0.0, +0.0]"
    better = ci.paired(np.zeros(200, bool), np.r_[np.ones(60, bool), np.zeros(140, bool)])
    assert not better.within_noise and better.low > 0 and better.verdict() == "beyond noise: a gain"
    with pytest.raises(ValueError):
        ci.paired([True], [True, False])


def test_bootstrap_intervals_hold_the_point_and_shrink_with_more_images():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 5, n)
        p = np.where(rng.random(n) < 0.7, y, rng.integers(0, 5, n))
        boot = ci.single_label_bootstrap(y, p, 5)
        low, high = boot["balanced_accuracy"]
        recall = [np.mean(p[y == c] == c) for c in range(5)]
        assert low <= np.mean(recall) <= high
        return high - low

    assert width(1000) < width(60)
    perfect = ci.single_label_bootstrap([0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2], 3)
    assert perfect == {"balanced_accuracy": (1.0, 1.0), "macro_f1": (1.0, 1.0)}


def test_t_values_and_the_interval_over_folds_match_scipy():
    for df in range(1, 60):
        assert ci.t_value(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)
    scores = [0.81, 0.86, 0.79, 0.84, 0.90]
    want = stats.t.interval(0.95, len(scores) - 1, loc=np.mean(scores), scale=stats.sem(scores))
    assert ci.mean_interval(scores) == pytest.approx(want, abs=1e-4)
    assert ci.mean_interval([0.5]) is None


def test_temperature_scaling_recovers_the_temperature_of_overconfident_logits():
    """Labels drawn from softmax(z / 2): the logits z are twice too sharp, T is about 2."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 6)) * 4
    p = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    y = np.array([rng.choice(6, p=row) for row in p])
    log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))
    fitted = calibration.calibrate(log_probs, y)
    assert fitted.temperature == pytest.approx(2.0, rel=0.1)
    assert fitted.nll_calibrated < fitted.nll and fitted.ece_calibrated < fitted.ece
    by_hand = -np.mean(np.log(p[np.arange(len(y)), y]))
    assert calibration.nll(log_probs, y, 2.0) == pytest.approx(by_hand, rel=1e-6)
    assert fitted.ece_calibrated < 0.03  # calibrated: confidence matches accuracy bin by bin


def test_ece_by_hand():
    log_probs = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]))
    y = np.array([0, 1, 0, 0])
    # bin of 0.9: accuracy 0.5 (gap 0.4, 2 images); bin of 0.6: accuracy 1.0 (gap 0.4, 2 images)
    assert calibration.ece(log_probs, y) == pytest.approx(0.4)


def test_the_calibration_rule():
    assert calibration.why_not([0, 1] * 10, 2).startswith("20 validation images, fewer than the 50")
    assert "a class has 1 validation image" in calibration.why_not([0] * 60 + [1], 2)
    assert calibration.why_not([0, 1] * 30, 2) is None


def test_stratified_folds_spread_every_class_evenly_and_are_seeded():
    labels = [0] * 10 + [1] * 7 + [2] * 3
    folds = stratified_folds(labels, 3, seed=0, num_classes=3)
    assert folds == stratified_folds(labels, 3, seed=0, num_classes=3)
    assert folds != stratified_folds(labels, 3, seed=1, num_classes=3)
    sizes = np.bincount(folds, minlength=3)
    assert sizes.max() - sizes.min() <= 1
    for c, count in ((0, 10), (1, 7), (2, 3)):
        per_fold = np.bincount([f for f, y in zip(folds, labels) if y == c], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == count
    multi = [(0,), (0, 1), (0, 1), (0,), (1, 2), (2,), (0,), (0, 2), (), (1,)]
    rare = stratified_folds(multi, 3, seed=0, num_classes=3)
    assert len(set(rare[i] for i, y in enumerate(multi) if 2 in y)) == 3  # the rarest label in every fold


def test_the_summary_line_gives_each_figure_with_its_interval():
    from zoo_adapt.report import summary_lines

    n, right = 300, 280
    low, high = ci.wilson(right, n)
    tta = ci.paired([True] * 280 + [False] * 20, [True] * 285 + [False] * 15).to_dict()
    metrics = {
        "val_accuracy": right / n,
        "val_accuracy_interval": [low, high],
        "val_top5": 1.0,
        "val_top5_interval": list(ci.wilson(300, 300)),
        "val_accuracy_tta": 285 / n,
        "tta_vs_plain": tta,
        "num_val": n,
        "kept_epoch": 5,
        "epochs": 5,
        "temperature": 1.5,
        "val_ece": 0.081,
        "val_ece_calibrated": 0.02,
        "val_nll": 0.312,
        "val_nll_calibrated": 0.25,
        "selection": {"why": "the last epoch"},
    }
    lines = summary_lines(metrics, "runs/x")
    assert lines[-1].startswith(f"val_accuracy 93.3% [{100 * low:.1f}, {100 * high:.1f}] (top-5 100.0% [98.7, 100.0]")
    assert "with TTA 95.0%: TTA +1.7 points [" in lines[-1] and "on 300 validation images" in lines[-1]
    assert lines[0] == (
        "calibration: temperature 1.50 fitted on 300 validation images: ECE 8.1% -> 2.0%, NLL 0.312 -> 0.250; "
        "predict and evaluate apply it"
    )
