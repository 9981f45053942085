"""The evaluation metrics against independent implementations of the original MIMIR code's formulas and pingouin.

The ``original_*`` functions below are written from the formulas of
``cross_validation/scripts/storeEvaluation.py`` in the original MIMIR
repository (loops and intermediate names as there, not as in
:mod:`mimir.analysis.metrics`), so that the two implementations can be compared.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from mimir.analysis import metrics as M


def original_icc(gt: np.ndarray, out: np.ndarray) -> float:
    n, k = len(gt), 2
    table = np.vstack((gt, out)).T
    grand = np.mean(table)
    ms_r = np.sum(np.square(np.mean(table, axis=1) - grand)) * k / (n - 1)
    ms_c = np.sum(np.square(np.mean(table, axis=0) - grand)) / (k - 1)
    ss_e = 0.0
    for j in range(k):
        ss_e += np.sum(np.square(table[:, j] - np.mean(table, axis=1)))
    ms_e = ss_e / ((n - 1) * (k - 1))
    return (ms_r - ms_e) / (ms_r + (k - 1) * ms_e + k / n * (ms_c - ms_e))


def original_mape(gt: np.ndarray, out: np.ndarray) -> float:
    keep = np.abs(gt) > 0.0001
    return np.mean(np.abs(np.abs(gt[keep] - out[keep]) / gt[keep]))


def original_calibration_curve(abs_difs: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z_scores = np.abs(abs_difs / np.sqrt(variances))
    ps, fr = np.zeros(10), np.zeros(10)
    for i in range(10):
        p = (i + 1) / 10.0
        ps[i] = p
        fr[i] = np.sum(z_scores <= norm.ppf(0.5 + p / 2))
    fr /= len(abs_difs)
    return np.hstack((0, ps)), np.hstack((0, fr))


def original_auce(ps: np.ndarray, fr: np.ndarray) -> float:
    gap = np.abs(ps - fr)
    h = ps[1] - ps[0]
    return float(sum((gap[i] + gap[i + 1]) * h / 2 for i in range(len(gap) - 1)))


def original_sparsification(gt: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    idx = np.argsort(var)[::-1]
    return np.array([np.mean(np.abs(gt[idx[i:]] - mean[idx[i:]])) for i in range(len(idx))])


def original_anneal(abs_difs: np.ndarray, var: np.ndarray) -> float:
    factor = 1.0
    x, y = original_calibration_curve(abs_difs, var)
    err = np.sum(x - y)
    count = 0
    while abs(err) > 0.05 and count < 100:
        factor = factor / (2 * abs(err)) if err < 0 else factor * (2 * abs(err))
        x, y = original_calibration_curve(abs_difs, var * factor)
        err = np.sum(x - y)
        count += 1
    return factor


def sklearn_free_r2(gt: np.ndarray, out: np.ndarray) -> float:
    return 1 - np.sum((gt - out) ** 2) / np.sum((gt - gt.mean()) ** 2)


@pytest.fixture(params=[(300, 0.0, 3.0), (120, 2.5, 1.0), (40, -7.0, 6.0)], ids=["unbiased", "biased", "small"])
def pairs(request) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, bias, noise = request.param
    rng = np.random.default_rng(n)
    gt = rng.normal(75.0, 12.0, n)
    sd = noise * rng.uniform(0.5, 1.5, n)
    out = gt + bias + rng.normal(0.0, 1.0, n) * sd
    return gt, out, np.square(sd * 1.3)


def test_agreement_equals_the_original_formulas(pairs) -> None:
    gt, out, _ = pairs
    a = M.agreement(gt, out)
    assert a["n"] == gt.size
    assert a["icc_original"] == pytest.approx(original_icc(gt, out), abs=1e-9)
    assert a["r2"] == pytest.approx(sklearn_free_r2(gt, out), abs=1e-9)
    assert a["mae"] == pytest.approx(np.mean(np.abs(gt - out)), abs=1e-9)
    assert a["mape_percent"] == pytest.approx(100 * original_mape(gt, out), abs=1e-9)
    d = out - gt
    assert a["bias"] == pytest.approx(d.mean(), abs=1e-12)
    assert a["loa_high"] - a["loa_low"] == pytest.approx(2 * 1.96 * d.std(ddof=1), abs=1e-9)
    assert a["pearson_r"] == pytest.approx(np.corrcoef(gt, out)[0, 1], abs=1e-12)


def test_r2_equals_scikit_learn_where_installed(pairs) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    gt, out, _ = pairs
    assert M.r2(gt, out) == pytest.approx(metrics.r2_score(gt, out), abs=1e-9)


def test_icc_and_its_interval_equal_pingouins_icc2_row(pairs, monkeypatch) -> None:
    pg = pytest.importorskip("pingouin")
    monkeypatch.setitem(pg.options, "round.column.CI95", None)  # the interval unrounded
    gt, out, _ = pairs
    n = gt.size
    long = pd.DataFrame({"subject": np.r_[np.arange(n), np.arange(n)], "rater": ["ref"] * n + ["mimir"] * n,
                         "value": np.r_[gt, out]})
    row = pg.intraclass_corr(long, targets="subject", raters="rater", ratings="value").set_index("Type")
    icc2 = row.loc["ICC(A,1)"] if "ICC(A,1)" in row.index else row.loc["ICC2"]
    ci = icc2["CI95"] if "CI95" in row.columns else icc2["CI95%"]
    icc, low, high = M.icc_a1(gt, out)
    assert icc == pytest.approx(icc2["ICC"], abs=1e-9)
    assert (low, high) == pytest.approx((ci[0], ci[1]), abs=1e-9)


def test_the_originals_icc_falls_below_icc21_as_the_bias_grows() -> None:
    rng = np.random.default_rng(3)
    gt = rng.normal(70, 10, 500)
    noise = rng.normal(0, 3, 500)
    assert M.icc_original(gt, gt + noise) == pytest.approx(M.icc_a1(gt, gt + noise)[0], abs=2e-4)
    biased = gt + 5 + noise
    assert M.icc_original(gt, biased) < M.icc_a1(gt, biased)[0] - 0.005


def test_calibration_curve_auce_and_sparsification_equal_the_originals(pairs) -> None:
    gt, out, var = pairs
    ps, fr = M.calibration_curve(gt, out, var)
    ops, ofr = original_calibration_curve(np.abs(gt - out), var)
    np.testing.assert_allclose(ps, ops, atol=1e-12)
    np.testing.assert_allclose(fr, ofr, atol=1e-12)
    assert M.auce(gt, out, var) == pytest.approx(original_auce(ops, ofr), abs=1e-9)
    np.testing.assert_allclose(M.sparsification_curve(gt, out, var), original_sparsification(gt, out, var), atol=1e-9)
    factor, _ = M.anneal_scale(gt, out, var)
    assert factor == pytest.approx(original_anneal(np.abs(gt - out), var), rel=1e-12)


def test_coverage_of_gaussian_predictions_with_the_true_variance() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    sd = rng.uniform(1, 3, n)
    gt = rng.normal(0, 1, n) * sd + 50
    mean = np.full(n, 50.0)
    for level in (0.5, 0.8, 0.9, 0.95):
        assert M.coverage(gt, mean, sd**2, level) == pytest.approx(level, abs=0.01)
    assert M.auce(gt, mean, sd**2) < 0.01
    assert M.auce(gt, mean, 16 * sd**2) > 0.2  # intervals 4x too wide


def test_sparsification_summary_stops_where_fewer_than_min_count_remain() -> None:
    rng = np.random.default_rng(1)
    gt, out, var = rng.normal(size=25), rng.normal(size=25), rng.uniform(1, 2, 25)
    pts = M.sparsification_summary(gt, out, var, min_count=10)
    assert [p["removed"] for p in pts] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # 10 left at 0.6, 7 at 0.7
    full = M.sparsification_curve(gt, out, var)
    assert pts[2]["mae"] == full[5]
    assert pts[0]["oracle_mae"] == pytest.approx(np.mean(np.abs(gt - out)))


def test_binned_density_suppresses_small_cells_and_uses_round_edges() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(70, 10, 2000)
    y = x + rng.normal(0, 2, 2000)
    counts, xe, ye = M.binned_density(x, y, 20, min_count=10)
    assert np.nanmin(counts) >= 10
    assert np.isnan(counts).any()
    step = xe[1] - xe[0]
    assert np.allclose(xe / step, np.round(xe / step))
    assert not set(np.round(xe, 9)) & set(np.round(x, 9))


def test_too_few_pairs_give_nan_not_an_error() -> None:
    assert math.isnan(M.icc_a1([1.0, 2.0], [1.0, 2.5])[0])
    assert M.agreement([], [])["n"] == 0
    assert math.isnan(M.coverage([], [], [], 0.95))
