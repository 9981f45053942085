"""Agreement and calibration metrics of predictions against reference values (pure NumPy/SciPy).

Every function takes 1-D float arrays of one target in one unit: ``reference``
(the UK Biobank field, shape (N,)), ``predicted`` (the ensemble mean, (N,)) and,
for the calibration metrics, ``variance`` (the predicted variance, unit squared,
(N,)). Callers drop pairs with a missing value first (:func:`complete`).

Agreement (:func:`agreement`):

- ``bias``: mean of ``predicted - reference``; ``sd_diff``: their standard
  deviation (ddof = 1); limits of agreement ``bias -+ 1.96 sd_diff``
  (Bland and Altman, 1986).
- ``icc``: ICC(2,1), two-way random effects, absolute agreement, single rater
  (McGraw and Wong's ICC(A,1)), from the two-way ANOVA of the N x 2 table
  (reference, prediction), with its 95 % confidence interval; the same
  numbers as pingouin's ``ICC(A,1)`` row.
- ``icc_original``: the formula of the original MIMIR evaluation code
  (``getIcc``), which sums the within-subject squares in place of the
  residual squares and leaves the factor N out of the rater mean square; it
  equals ``icc`` when the two raters have the same mean and falls below it
  as the bias grows. The published figures were computed with it.
- ``r2``: coefficient of determination of the predictions with the reference
  as truth, ``1 - SS_res / SS_tot`` (scikit-learn's ``r2_score(reference,
  predicted)``); ``pearson_r``: Pearson's correlation.
- ``mae``: mean absolute error; ``mape_percent``: 100 x the mean of
  ``|predicted - reference| / |reference|`` over the pairs with
  ``|reference| > 1e-4`` (the original's rule).

Calibration (the original's definitions):

- :func:`calibration_curve`: the observed fraction of references inside the
  central interval at the levels 0, 0.1, ..., 1.0 (11 points, the first (0, 0)).
- :func:`auce_trapezoid`: the area between that curve and the diagonal by the
  trapezoid rule (0 ideal).
- :func:`sparsification_curve`: the mean absolute error of the subjects left
  after removing the 0, 1, 2, ... subjects with the largest predicted variance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

#: Interval levels at which coverage is reported besides the output's own level.
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
#: |reference| at or below this is left out of MAPE (the original's epsilon).
MAPE_EPSILON = 1e-4
#: z of the Bland-Altman limits of agreement.
LOA_Z = 1.96


def complete(*arrays: Any) -> list[np.ndarray]:
    """The arrays (float64, same length) restricted to the positions where all are finite."""
    arrs = [np.asarray(a, dtype=np.float64) for a in arrays]
    ok = np.ones(arrs[0].shape, dtype=bool)
    for a in arrs:
        ok &= np.isfinite(a)
    return [a[ok] for a in arrs]


def _anova_two_raters(reference: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float, int]:
    """(MS subjects, MS raters, MS residual, n) of the two-way ANOVA of the (n, 2) table."""
    x = np.column_stack([reference, predicted])
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * np.sum(np.square(x.mean(axis=1) - grand))
    ss_cols = n * np.sum(np.square(x.mean(axis=0) - grand))
    ss_total = np.sum(np.square(x - grand))
    ss_res = ss_total - ss_rows - ss_cols
    return ss_rows / (n - 1), ss_cols / (k - 1), ss_res / ((n - 1) * (k - 1)), n


def icc_a1(reference: Any, predicted: Any, alpha: float = 0.05) -> tuple[float, float, float]:
    """ICC(2,1) (absolute agreement, single rater) and its ``1 - alpha`` confidence interval.

    Returns (icc, low, high); NaN for fewer than 3 pairs. The interval is McGraw
    and Wong's (1996, case 2A) with Satterthwaite's degrees of freedom.
    """
    r, p = complete(reference, predicted)
    if r.size < 3:
        return math.nan, math.nan, math.nan
    msr, msc, mse, n = _anova_two_raters(r, p)
    k = 2
    with np.errstate(divide="ignore", invalid="ignore"):
        icc = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        fj = msc / mse
        num = (n - 1) * (k - 1) * (k * icc * fj + n * (1 + (k - 1) * icc) - k * icc) ** 2
        den = (n - 1) * k**2 * icc**2 * fj**2 + (n * (1 + (k - 1) * icc) - k * icc) ** 2
        df = num / den
        f_upper = stats.f.ppf(1 - alpha / 2, n - 1, df)
        f_lower = stats.f.ppf(1 - alpha / 2, df, n - 1)
        low = n * (msr - f_upper * mse) / (f_upper * (k * msc + (k * n - k - n) * mse) + n * msr)
        high = n * (f_lower * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_lower * msr)
    return float(icc), float(low), float(high)


def icc_original(reference: Any, predicted: Any) -> float:
    """ICC as the original MIMIR evaluation code computes it (see the module docstring); NaN below 2 pairs."""
    r, p = complete(reference, predicted)
    n, k = r.size, 2
    if n < 2:
        return math.nan
    x = np.column_stack([r, p])
    grand = x.mean()
    row_means = x.mean(axis=1)
    ms_rows = k * np.sum(np.square(row_means - grand)) / (n - 1)
    ms_cols_unscaled = np.sum(np.square(x.mean(axis=0) - grand)) / (k - 1)
    ms_within = np.sum(np.square(x - row_means[:, None])) / ((n - 1) * (k - 1))
    return float((ms_rows - ms_within) / (ms_rows + (k - 1) * ms_within + k / n * (ms_cols_unscaled - ms_within)))


def r2(reference: Any, predicted: Any) -> float:
    """``1 - sum((reference - predicted)^2) / sum((reference - mean(reference))^2)``."""
    r, p = complete(reference, predicted)
    if r.size < 2:
        return math.nan
    ss_tot = np.sum(np.square(r - r.mean()))
    ss_res = np.sum(np.square(r - p))
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0  # scikit-learn's convention for a constant reference
    return float(1.0 - ss_res / ss_tot)


def mape_percent(reference: Any, predicted: Any) -> float:
    """100 x mean ``|predicted - reference| / |reference|`` over ``|reference| > 1e-4`` (percent)."""
    r, p = complete(reference, predicted)
    keep = np.abs(r) > MAPE_EPSILON
    if not keep.any():
        return math.nan
    return float(100.0 * np.mean(np.abs(p[keep] - r[keep]) / np.abs(r[keep])))


def agreement(reference: Any, predicted: Any) -> dict[str, float | int]:
    """N, bias, sd_diff, limits of agreement, ICC(2,1) with CI, the original's ICC, R2, Pearson r, MAE, MAPE (%)."""
    r, p = complete(reference, predicted)
    n = int(r.size)
    d = p - r
    bias = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    icc, lo, hi = icc_a1(r, p)
    if n > 2 and np.std(r) > 0 and np.std(p) > 0:
        pearson = float(np.corrcoef(r, p)[0, 1])
    else:
        pearson = math.nan
    return {
        "n": n, "bias": bias, "sd_diff": sd, "loa_low": bias - LOA_Z * sd, "loa_high": bias + LOA_Z * sd,
        "icc": icc, "icc_ci_low": lo, "icc_ci_high": hi, "icc_original": icc_original(r, p), "r2": r2(r, p),
        "pearson_r": pearson, "mae": float(np.mean(np.abs(d))) if n else math.nan,
        "mape_percent": mape_percent(r, p),
    }


# --------------------------------------------------------------------------- calibration


def z_of(level: Any) -> np.ndarray:
    """Half-width in standard deviations of the central normal interval at ``level`` (inf at 1)."""
    return stats.norm.ppf(0.5 + np.asarray(level, dtype=np.float64) / 2.0)


def coverage(reference: Any, predicted: Any, variance: Any, level: float) -> float:
    """Fraction of references inside ``predicted -+ z(level) sqrt(variance)`` (NaN without pairs)."""
    r, p, v = complete(reference, predicted, variance)
    if r.size == 0:
        return math.nan
    return float(np.mean(np.abs(r - p) <= z_of(level) * np.sqrt(v)))


def calibration_curve(reference: Any, predicted: Any, variance: Any) -> tuple[np.ndarray, np.ndarray]:
    """(levels, fractions), each (11,): levels 0, 0.1, ..., 1.0 and the fraction of |z| <= z(level)."""
    r, p, v = complete(reference, predicted, variance)
    levels = np.arange(11) / 10.0
    if r.size == 0:
        return levels, np.full(11, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(np.abs(r - p) / np.sqrt(v))
    fractions = np.array([0.0] + [np.sum(z <= z_of(level)) / r.size for level in levels[1:]])
    return levels, fractions


def auce_trapezoid(levels: Any, fractions: Any) -> float:
    """Area between a calibration curve and the diagonal, trapezoid rule on its even spacing."""
    x = np.asarray(levels, dtype=np.float64)
    gap = np.abs(x - np.asarray(fractions, dtype=np.float64))
    return float(np.trapezoid(gap, dx=x[1] - x[0]))


def auce(reference: Any, predicted: Any, variance: Any) -> float:
    """AUCE of the 10-level calibration curve (the original's; 0 is ideal)."""
    return auce_trapezoid(*calibration_curve(reference, predicted, variance))


def sparsification_curve(reference: Any, predicted: Any, variance: Any) -> np.ndarray:
    """(N,): entry i is the MAE of the N - i subjects left after removing the i most uncertain.

    Ties in the variance are broken as the original does (``argsort``, reversed).
    The last entries describe single subjects: export only :func:`sparsification_summary`.
    """
    r, p, v = complete(reference, predicted, variance)
    order = np.argsort(v)[::-1]
    err = np.abs(r[order] - p[order])
    tail_sums = np.cumsum(err[::-1])[::-1]
    return tail_sums / np.arange(err.size, 0, -1)


def sparsification_summary(reference: Any, predicted: Any, variance: Any, min_count: int,
                           steps: int = 10) -> list[dict[str, float]]:
    """The sparsification curve at removed fractions 0, 1/steps, ... where >= ``min_count`` subjects remain.

    Each point: ``removed`` (fraction), ``mae`` (of those left) and ``oracle_mae``
    (removing the largest errors instead: the best any uncertainty could do).
    """
    curve = sparsification_curve(reference, predicted, variance)
    r, p, _ = complete(reference, predicted, variance)
    err = np.sort(np.abs(r - p))  # ascending: removing the largest first leaves a prefix
    oracle = np.cumsum(err)
    n = curve.size
    out = []
    for s in range(steps):
        removed = int(round(n * s / steps))
        left = n - removed
        if left < max(min_count, 1):
            break
        out.append({"removed": s / steps, "mae": float(curve[removed]), "oracle_mae": float(oracle[left - 1] / left)})
    return out


def binned_density(x: Any, y: Any, bins: int, min_count: int,
                   x_edges: np.ndarray | None = None, y_edges: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D histogram (counts (bins, bins) as float, NaN where a cell holds fewer than ``min_count``) and its edges.

    Edges default to "nice" round numbers spanning the 1st-99th percentiles
    (:func:`nice_edges`), so that no edge is a subject's value; points outside
    fall into no cell.
    """
    xa, ya = complete(x, y)
    xe = nice_edges(xa, bins) if x_edges is None else x_edges
    ye = nice_edges(ya, bins) if y_edges is None else y_edges
    counts, _, _ = np.histogram2d(xa, ya, bins=[xe, ye])
    counts[counts < min_count] = np.nan
    return counts, xe, ye


def nice_edges(values: Any, bins: int) -> np.ndarray:
    """About ``bins + 1`` evenly spaced edges at round numbers (multiples of 1, 2, 2.5 or 5 x 10^k) that cover the 1st to 99th percentile of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = np.percentile(v, [1, 99])
    if not hi > lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / bins
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return step * np.arange(first, max(last, first + 1) + 1, dtype=np.float64)


def anneal_scale(reference: Any, predicted: Any, variance: Any, *, tolerance: float = 0.05,
                 max_steps: int = 100) -> tuple[float, bool]:
    """The variance scale factor found by the original MIMIR code's "annealing"; (factor, converged).

    Starting at 1, the signed calibration error ``e = sum(levels - fractions)``
    of the 10-level curve (:func:`calibration_curve`) is driven below
    ``tolerance``: the factor is multiplied by ``2 |e|`` when ``e > 0`` (intervals
    too narrow) and divided by ``2 |e|`` when ``e < 0``, at most ``max_steps``
    times. ``converged`` is False when the last error is still above ``tolerance``
    (the rule can overshoot and oscillate: a step of ``2 |e| < 1`` moves the wrong way).
    """
    r, p, v = complete(reference, predicted, variance)
    if r.size == 0:
        return 1.0, False
    factor = 1.0
    levels, fractions = calibration_curve(r, p, v)
    error = float(np.sum(levels - fractions))
    steps = 0
    while abs(error) > tolerance and steps < max_steps:
        if error < 0:
            factor /= 2 * abs(error)
        else:
            factor *= 2 * abs(error)
        levels, fractions = calibration_curve(r, p, v * factor)
        error = float(np.sum(levels - fractions))
        steps += 1
    return factor, abs(error) <= tolerance
