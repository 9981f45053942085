"""Agreement between predicted and true values of one target.

All functions take two 1-D arrays of the same length, ``truth`` and
``pred`` (any real unit), and use only the pairs where both are finite.

- ``mae``: mean absolute error, in the target's unit.
- ``r2``: coefficient of determination ``1 - SS_res / SS_tot`` of the
  predictions against the truth (can be negative; not the squared Pearson
  correlation).
- ``icc``: intraclass correlation ICC(2,1) of Shrout and Fleiss (1979):
  two-way random effects, absolute agreement, single measurement, with the
  truth and the prediction as the two "raters".
- ``mape``: mean absolute percentage error, ``100 * mean(|pred - truth| /
  |truth|)`` over the pairs whose truth is not 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _pairs(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"truth has {t.size} values, predictions {p.size}")
    ok = np.isfinite(t) & np.isfinite(p)
    return t[ok], p[ok]


def mae(truth: Any, pred: Any) -> float:
    """Mean absolute error (NaN when no pair is finite)."""
    t, p = _pairs(truth, pred)
    return float(np.mean(np.abs(p - t))) if t.size else math.nan


def r2(truth: Any, pred: Any) -> float:
    """Coefficient of determination ``1 - sum((p - t)^2) / sum((t - mean t)^2)``."""
    t, p = _pairs(truth, pred)
    if t.size < 2:
        return math.nan
    ss_tot = float(np.sum(np.square(t - t.mean())))
    ss_res = float(np.sum(np.square(p - t)))
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - ss_res / ss_tot


def icc21(truth: Any, pred: Any) -> float:
    """ICC(2,1): two-way random effects, absolute agreement, single rater.

    With the n x 2 table Y (columns truth and prediction)::

        MSR = 2 * sum_i (row mean_i - grand mean)^2 / (n - 1)
        MSC = n * sum_j (col mean_j - grand mean)^2 / (2 - 1)
        MSE = sum_ij (Y_ij - row_i - col_j + grand)^2 / ((n - 1) (2 - 1))
        ICC = (MSR - MSE) / (MSR + MSE + 2 (MSC - MSE) / n)
    """
    t, p = _pairs(truth, pred)
    n, k = t.size, 2
    if n < 2:
        return math.nan
    y = np.stack([t, p], axis=1)
    grand = y.mean()
    rows = y.mean(axis=1)
    cols = y.mean(axis=0)
    msr = k * float(np.sum(np.square(rows - grand))) / (n - 1)
    msc = n * float(np.sum(np.square(cols - grand))) / (k - 1)
    resid = y - rows[:, None] - cols[None, :] + grand
    mse = float(np.sum(np.square(resid))) / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if denom == 0.0:
        return math.nan
    return (msr - mse) / denom


def mape(truth: Any, pred: Any) -> float:
    """Mean absolute percentage error in percent, over pairs with non-zero truth."""
    t, p = _pairs(truth, pred)
    nz = t != 0
    if not nz.any():
        return math.nan
    return float(100.0 * np.mean(np.abs(p[nz] - t[nz]) / np.abs(t[nz])))


def agreement(truth: Any, pred: Any) -> dict[str, float | int]:
    """N, MAE, R2, ICC(2,1) and MAPE in one dict (keys as in module.json)."""
    t, _ = _pairs(truth, pred)
    return {
        "n": int(t.size),
        "mae": mae(truth, pred),
        "r2": r2(truth, pred),
        "icc": icc21(truth, pred),
        "mape_percent": mape(truth, pred),
    }
