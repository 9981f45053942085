"""Calibration (variance scale fitting, coverage, AUCE) and the agreement metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimir.inference.predictions import mixture
from mimir.training.calibration import (
    LEVELS,
    auce,
    calibrate,
    coverage,
    coverage_curve,
    ensemble_variance,
    fit_scale,
)
from mimir.training.metrics import agreement, icc21, mae, mape, r2


def _simulate(scale: float, n: int, k: int, seed: int, spread: float = 0.0):
    """Member means/variances (K, n) and truths drawn from the ensemble with variance scaled by ``scale``."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(50, 10, size=n)
    means = centre[None, :] + rng.normal(0, spread, size=(k, n))
    variances = rng.uniform(0.5, 4.0, size=(k, n))
    mean, var = ensemble_variance(means, variances, scale)
    truth = mean + rng.normal(size=n) * np.sqrt(var)
    return truth, means, variances


@pytest.mark.parametrize("scale", [0.25, 1.0, 3.0, 12.0])
def test_fit_recovers_a_known_scale_single_member(scale: float) -> None:
    truth, means, variances = _simulate(scale, 20000, 1, seed=1)
    assert fit_scale(truth, means, variances) == pytest.approx(scale, rel=0.06)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_fit_recovers_a_known_scale_with_member_spread(scale: float) -> None:
    # The factor scales only the members' own variance, not the spread of their means.
    truth, means, variances = _simulate(scale, 20000, 4, seed=2, spread=1.0)
    assert fit_scale(truth, means, variances) == pytest.approx(scale, rel=0.08)


@pytest.mark.parametrize("objective", ["ci95", "nll"])
def test_other_objectives_recover_a_known_scale(objective: str) -> None:
    truth, means, variances = _simulate(3.0, 20000, 3, seed=8, spread=0.5)
    assert fit_scale(truth, means, variances, objective) == pytest.approx(3.0, rel=0.08)
    with pytest.raises(ValueError, match="objective"):
        fit_scale(truth, means, variances, "bogus")


def test_calibrated_95_interval_covers_95_percent() -> None:
    truth, means, variances = _simulate(4.0, 10000, 3, seed=3, spread=0.5)
    rep = calibrate(truth, means, variances)
    assert rep.coverage95_before < 0.85
    assert rep.coverage95_after == pytest.approx(0.95, abs=0.01)
    assert rep.auce_after < 0.01 < rep.auce_before


def test_fit_ignores_missing_truth() -> None:
    truth, means, variances = _simulate(2.0, 8000, 2, seed=4)
    truth[::3] = np.nan
    assert fit_scale(truth, means, variances) == pytest.approx(2.0, rel=0.1)
    assert fit_scale(np.full(5, np.nan), means[:, :5], variances[:, :5]) == 1.0


def test_ensemble_variance_matches_the_inference_mixture() -> None:
    rng = np.random.default_rng(5)
    means, variances = rng.normal(size=(3, 7)), rng.uniform(0.1, 1, size=(3, 7))
    m1, v1 = ensemble_variance(means, variances, 2.5)
    m2, v2 = mixture(means, 2.5 * variances)  # what mimir.inference.predictor does with calibration factor 2.5
    np.testing.assert_allclose(m1, m2)
    np.testing.assert_allclose(v1, v2)


def test_coverage_curve_and_auce_of_perfect_predictions() -> None:
    rng = np.random.default_rng(6)
    n = 50000
    truth = rng.normal(size=n)
    curve = coverage_curve(truth, np.zeros(n), np.ones(n))
    np.testing.assert_allclose(curve, LEVELS, atol=0.01)
    assert auce(truth, np.zeros(n), np.ones(n)) < 0.005
    # Far too wide intervals cover everything: error p at each level, area about 0.5
    assert auce(truth, np.zeros(n), np.full(n, 1e6)) == pytest.approx(0.5, abs=0.01)
    assert coverage(truth, np.zeros(n), np.ones(n), 0.95) == pytest.approx(0.95, abs=0.005)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 100.0), st.integers(0, 10_000))
def test_fit_is_within_bounds_and_scale_equivariant(scale: float, seed: int) -> None:
    truth, means, variances = _simulate(1.0, 400, 2, seed=seed)
    c1 = fit_scale(truth, means, variances)
    assert 1e-3 <= c1 <= 1e3
    # Scaling every member variance by s divides the fitted factor by s (up to the grid).
    c2 = fit_scale(truth, means, variances * scale)
    if 2e-3 < c1 / scale < 5e2:
        assert c2 == pytest.approx(c1 / scale, rel=0.05)


# --------------------------------------------------------------------------- metrics


def test_metrics_on_a_hand_worked_example() -> None:
    truth = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    pred = truth + 1.0
    assert mae(truth, pred) == pytest.approx(1.0)
    # SS_res = 5, SS_tot = 10
    assert r2(truth, pred) == pytest.approx(0.5)
    # MSR = 5, MSC = 2.5, MSE = 0  ->  5 / (5 + 2 * 2.5 / 5) = 5/6
    assert icc21(truth, pred) == pytest.approx(5.0 / 6.0)
    assert mape(truth, pred) == pytest.approx(100 * np.mean(1 / truth))


def test_icc_is_one_for_perfect_agreement_and_penalises_scale() -> None:
    rng = np.random.default_rng(7)
    t = rng.normal(10, 2, size=200)
    assert icc21(t, t) == pytest.approx(1.0)
    assert icc21(t, 2 * t) < 0.6  # consistency alone is not absolute agreement


def test_metrics_skip_missing_pairs() -> None:
    truth = np.array([1.0, np.nan, 3.0, 4.0, 0.0])
    pred = np.array([1.5, 2.0, np.nan, 4.5, 0.5])
    m = agreement(truth, pred)
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(0.5)
    assert m["mape_percent"] == pytest.approx(100 * np.mean([0.5, 0.5 / 4]))  # the zero truth is skipped
    assert math.isnan(r2([1.0], [1.0]))
