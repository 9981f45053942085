"""Variance calibration of an ensemble on held-out predictions.

A module's prediction for one target is a uniform mixture of K Gaussian
members (see :mod:`mimir.inference.predictions`). The calibration factor ``c`` of a
target multiplies every member's variance before the members are mixed, so
the calibrated ensemble variance is::

    var(c) = c * mean_k(var_k) + var_k(mean_k)        (ddof = 0 over members)

and the central interval at level ``p`` is ``mean +- z_p * sqrt(var(c))``
with ``z_p`` the standard normal quantile of ``(1 + p) / 2``.

The *calibration error curve* of a set of predictions is the observed
coverage of those intervals as a function of ``p``; its area,

    AUCE = integral over p in (0, 1) of |coverage(p) - p| dp,

is 0 for perfectly calibrated Gaussian predictions. It is evaluated at
``p = 0.005, 0.015, ..., 0.995`` (midpoint rule, 100 levels).

:func:`fit_scale` chooses ``c`` on held-out predictions by one of three
objectives:

- ``auce`` (default): minimise the AUCE, i.e. make the central intervals of
  every level cover the right fraction of true values;
- ``ci95``: make the central 95 % interval cover 95 % of the true values
  (only that level);
- ``nll``: minimise the Gaussian negative log-likelihood
  ``mean(log var(c) + (y - mean)^2 / var(c))``.

The search is on a log grid from ``1e-3`` to ``1e3`` followed by a finer grid
around the best value; among equally good values the geometric middle of
the best run is taken. When the best run of the coarse grid reaches either
bound, the best factor may lie beyond it: :func:`fit_scale_converged` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtri

#: Levels at which the calibration error curve is evaluated (midpoints).
LEVELS = (np.arange(100) + 0.5) / 100.0
#: Bounds of the variance scale factor.
SCALE_MIN, SCALE_MAX = 1e-3, 1e3


def z_of(levels: Any) -> np.ndarray:
    """Half-width in standard deviations of the central interval at each level."""
    return ndtri((1.0 + np.asarray(levels, dtype=np.float64)) / 2.0)


def ensemble_variance(means: Any, variances: Any, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of the mixture of K members with member variances scaled by ``scale``.

    ``means`` and ``variances`` have shape (K, N) (or (N,) for one member).
    """
    m = np.atleast_2d(np.asarray(means, dtype=np.float64))
    v = np.atleast_2d(np.asarray(variances, dtype=np.float64))
    mean = m.mean(axis=0)
    spread = np.mean(np.square(m - mean), axis=0)
    return mean, scale * v.mean(axis=0) + spread


def coverage(truth: Any, mean: Any, variance: Any, level: float = 0.95) -> float:
    """Fraction of finite ``truth`` values inside ``mean +- z * sqrt(variance)``."""
    t = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(t)
    if not ok.any():
        return math.nan
    half = float(z_of(level)) * np.sqrt(np.asarray(variance, dtype=np.float64)[ok])
    return float(np.mean(np.abs(t[ok] - np.asarray(mean, dtype=np.float64)[ok]) <= half))


def coverage_curve(truth: Any, mean: Any, variance: Any, levels: Any = LEVELS) -> np.ndarray:
    """Observed coverage of the central intervals at each of ``levels``."""
    t = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(t)
    levels = np.asarray(levels, dtype=np.float64)
    if not ok.any():
        return np.full(levels.shape, np.nan)
    sd = np.sqrt(np.asarray(variance, dtype=np.float64)[ok])
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(t[ok] - np.asarray(mean, dtype=np.float64)[ok]) / sd
    r = np.sort(np.where(np.isnan(r), np.inf, r))
    return np.searchsorted(r, z_of(levels), side="right") / r.size


def auce(truth: Any, mean: Any, variance: Any) -> float:
    """Area under the calibration error curve, ``mean_p |coverage(p) - p|`` (0 is ideal, 0.5 worst)."""
    curve = coverage_curve(truth, mean, variance)
    return float(np.mean(np.abs(curve - LEVELS)))


#: Calibration objectives accepted by :func:`fit_scale`.
OBJECTIVES = ("auce", "ci95", "nll")


def fit_scale(truth: Any, means: Any, variances: Any, objective: str = "auce") -> float:
    """The variance scale factor that best calibrates the ensemble by ``objective``.

    ``truth`` (N,), ``means``/``variances`` (K, N) or (N,), all in one unit;
    missing truths (NaN) are ignored. Returns 1.0 when no truth is present.
    """
    return fit_scale_converged(truth, means, variances, objective)[0]


def fit_scale_converged(truth: Any, means: Any, variances: Any, objective: str = "auce") -> tuple[float, bool]:
    """:func:`fit_scale`'s factor and whether the search converged inside its bounds.

    ``converged`` is False when the best factors of the coarse grid reach
    :data:`SCALE_MIN` or :data:`SCALE_MAX` (the best factor may lie beyond the
    bound, so the one returned is not the optimum), and when no truth is present
    (1.0 is returned, nothing was fitted).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown calibration objective {objective!r} (choose {', '.join(OBJECTIVES)})")
    t = np.asarray(truth, dtype=np.float64)
    m = np.atleast_2d(np.asarray(means, dtype=np.float64))
    v = np.atleast_2d(np.asarray(variances, dtype=np.float64))
    ok = np.isfinite(t) & np.all(np.isfinite(m), axis=0) & np.all(np.isfinite(v), axis=0)
    if not ok.any():
        return 1.0, False
    t, m, v = t[ok], m[:, ok], v[:, ok]
    mean, _ = ensemble_variance(m, v, 0.0)
    spread = np.mean(np.square(m - mean), axis=0)
    alea = v.mean(axis=0)
    resid2 = np.square(t - mean)

    levels = LEVELS if objective == "auce" else np.array([0.95])
    z2 = np.square(z_of(levels))

    def cost(log_scales: np.ndarray) -> np.ndarray:
        var = np.maximum(np.exp(log_scales)[:, None] * alea[None, :] + spread[None, :], 1e-300)  # (S, N)
        if objective == "nll":
            return np.mean(np.log(var) + resid2[None, :] / var, axis=1)
        # coverage(p, c) = mean_i [ resid2_i <= z_p^2 (c alea_i + spread_i) ]
        ratio = np.sort(resid2[None, :] / var, axis=1)  # (S, N)
        cov = np.stack([np.searchsorted(row, z2, side="right") for row in ratio]) / t.size  # (S, L)
        return np.mean(np.abs(cov - levels[None, :]), axis=1)

    lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
    grid = np.linspace(lo, hi, 241)
    i, j = _best_run(cost(grid))
    best = float((grid[i] + grid[j]) / 2.0)
    converged = i > 0 and j < grid.size - 1  # a best run at a bound: the optimum may lie beyond it
    step = grid[1] - grid[0]
    fine = np.linspace(max(lo, best - 2 * step), min(hi, best + 2 * step), 201)
    return float(math.exp(_middle_of_best(fine, cost(fine)))), converged


def _best_run(costs: np.ndarray) -> tuple[int, int]:
    """First and last index of the first contiguous run of grid points with the lowest cost."""
    i = int(np.argmin(costs))
    j = i
    while j + 1 < costs.size and costs[j + 1] <= costs[i] + 1e-12:
        j += 1
    return i, j


def _middle_of_best(grid: np.ndarray, costs: np.ndarray) -> float:
    """The middle of the first contiguous run of grid points with the lowest cost."""
    i, j = _best_run(costs)
    return float((grid[i] + grid[j]) / 2.0)


@dataclass
class CalibrationReport:
    """Calibration of one target: the factor and its effect on held-out data."""

    scale: float
    coverage95_before: float
    coverage95_after: float
    auce_before: float
    auce_after: float

    def to_json(self) -> dict[str, float]:
        return {
            "calibration_factor": self.scale,
            "coverage95_uncalibrated": self.coverage95_before,
            "coverage95_calibrated": self.coverage95_after,
            "auce_uncalibrated": self.auce_before,
            "auce_calibrated": self.auce_after,
        }


def calibrate(truth: Any, means: Any, variances: Any, objective: str = "auce") -> CalibrationReport:
    """Fit the scale factor and measure 95 % coverage and AUCE before and after."""
    t = np.asarray(truth, dtype=np.float64)
    scale = fit_scale(t, means, variances, objective)
    m1, v1 = ensemble_variance(means, variances, 1.0)
    mc, vc = ensemble_variance(means, variances, scale)
    ok = np.isfinite(t)
    return CalibrationReport(
        scale=scale,
        coverage95_before=coverage(t, m1, v1),
        coverage95_after=coverage(t, mc, vc),
        auce_before=auce(t[ok], m1[ok], v1[ok]) if ok.any() else math.nan,
        auce_after=auce(t[ok], mc[ok], vc[ok]) if ok.any() else math.nan,
    )
