"""The age gap (predicted minus chronological age), corrected for regression to the mean, cross-fitted.

Numerics on arrays (:func:`fit_line`, :func:`fold_of`, :func:`correct_age_gap`)
and the table built from a long prediction frame and the ages
(:func:`age_gap_table`, :func:`age_gap_summary`); no file I/O here.

A model's predicted age ``p`` regresses to the mean: the raw gap ``p - age`` is
negatively correlated with ``age``. Two corrections, each fitted by ordinary least
squares on a reference group (docs/derived.md has the formulas and references):

- ``gap``: fit ``p - age = a + b age``; corrected gap ``= p - age - (a + b age)``
  (Beheshti et al. 2019; Smith et al. 2019's basic model; identical to the
  offset ``p + age - (a' + b' age)`` with ``p = a' + b' age``, de Lange and Cole 2020).
- ``inverse``: fit ``p = a + b age``; corrected predicted age ``(p - a) / b``,
  corrected gap ``= (p - a) / b - age`` (the inversion discussed by de Lange and Cole 2020).

Cross-fitting: the folds are dealt per subject (eid), not per row: every subject
is given one of ``K`` folds (a seeded permutation of the subjects in the order of
their first row) and all its rows (its visits, instances 2 and 3) share that fold;
a row whose eid is unknown counts as a subject of its own. A reference row's
correction is fitted on the reference rows of the other folds, a row outside the
reference is corrected with the fit on the whole reference. No subject's own
values, from any of its visits, enter its correction.

Standard error of the corrected gap (delta method), with ``var_p`` the
prediction's variance and ``S`` the 2 x 2 covariance of the fit ``(a, b)``:

- ``gap``: ``se^2 = var_p + [1, age] S [1, age]^T``
- ``inverse``: ``se^2 = var_p / b^2 + g S g^T`` with ``g = [-1 / b, -(p - a) / b^2]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mimir.errors import UsageError

#: Correction methods.
METHODS: tuple[str, ...] = ("gap", "inverse")
#: Version of the age-gap table's schema (docs/derived.md); raised whenever a column changes.
AGE_GAP_SCHEMA_VERSION = "1"
#: Columns of the age-gap table, in order (docs/derived.md).
AGE_GAP_COLUMNS: tuple[str, ...] = (
    "eid", "instance", "name", "module", "target", "age", "predicted_age", "predicted_sd", "raw_gap",
    "corrected_gap", "corrected_gap_se", "level", "ci_low", "ci_high", "corrected_predicted_age", "method",
    "in_reference", "fold", "intercept", "slope", "qc_status", "ood_flag", "status", "schema_version",
)
#: Spellings of a unit in years.
YEAR_UNITS = frozenset({"years", "year", "yr", "yrs", "y", "a"})


@dataclass(frozen=True)
class LinearFit:
    """An ordinary least squares line ``y = intercept + slope x``.

    ``cov``: (2, 2) covariance of (intercept, slope), ``s^2 (X^T X)^-1`` with
    ``s^2`` the residual variance on ``n - 2`` degrees of freedom; ``n``: points used.
    """

    intercept: float
    slope: float
    cov: np.ndarray
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Coefficients and their standard errors (aggregates only)."""
        return {"intercept": self.intercept, "slope": self.slope,
                "intercept_se": math.sqrt(self.cov[0, 0]), "slope_se": math.sqrt(self.cov[1, 1]), "n": self.n}


def fit_line(x: np.ndarray, y: np.ndarray) -> LinearFit:
    """OLS fit of ``y`` on ``x`` (shape (n,), n >= 3, ``x`` not constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    if n < 3:
        raise UsageError(f"the correction needs at least 3 reference subjects, got {n}",
                         hint="Use a larger reference group or fewer folds.")
    X = np.column_stack([np.ones(n), x])
    xtx = X.T @ X
    if np.linalg.cond(xtx) > 1e12:
        raise UsageError("the reference subjects' ages do not vary", hint="The correction needs a range of ages.")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    s2 = float(resid @ resid) / (n - 2)
    return LinearFit(float(coef[0]), float(coef[1]), s2 * np.linalg.inv(xtx), n)


def subject_codes(eid: np.ndarray | pd.Series | None, n: int) -> np.ndarray:
    """Subject number (0 .. m-1) of each of ``n`` rows, in the order of each subject's first row. Shape (n,), int.

    Rows with the same ``eid`` share a number; a row whose eid is unknown (None,
    NaN) is a subject of its own; without ``eid`` every row is (codes ``0 .. n-1``).
    """
    if eid is None:
        return np.arange(n, dtype=np.int64)
    codes, _ = pd.factorize(pd.Series(np.asarray(eid, dtype=object)), sort=False, use_na_sentinel=True)
    if codes.size != n:
        raise ValueError(f"eid has {codes.size} rows, expected {n}")
    first = np.arange(n, dtype=np.int64)  # row of each row's subject's first row (its own when unknown)
    known = codes >= 0
    if known.any():
        first_of_code = np.full(int(codes.max()) + 1, n, dtype=np.int64)
        np.minimum.at(first_of_code, codes[known], np.flatnonzero(known))
        first[known] = first_of_code[codes[known]]
    return np.unique(first, return_inverse=True)[1].astype(np.int64).reshape(n)


def fold_of(n: int, folds: int, seed: int = 0, eid: np.ndarray | pd.Series | None = None) -> np.ndarray:
    """Fold (0 .. folds-1) of each of ``n`` rows. Shape (n,), int.

    The subjects (:func:`subject_codes` of ``eid``; without it every row is a
    subject) are dealt round robin in a seeded permutation, and each row takes its
    subject's fold: all rows of an eid share one fold. With one row per eid this is
    the same as dealing the rows.
    """
    if folds < 2:
        raise UsageError(f"--folds {folds}: cross-fitting needs at least 2 folds", hint="Use for example 5 or 10.")
    subject = subject_codes(eid, n)
    m = int(subject.max()) + 1 if n else 0
    order = np.random.default_rng([int(seed), 0xA6E]).permutation(m)
    per_subject = np.empty(m, dtype=np.int64)
    per_subject[order] = np.arange(m) % folds
    return per_subject[subject]


@dataclass
class AgeGapResult:
    """Per row, i.e. per subject visit (arrays of shape (n,)), and the fits used.

    ``fold``: the fold of the row's subject (eid); ``fits[k]`` is the fit on the
    reference outside fold ``k``; ``fit_all`` the fit on the whole reference (used
    for rows outside the reference and reported).
    """

    raw_gap: np.ndarray
    corrected_gap: np.ndarray
    se: np.ndarray
    corrected_predicted: np.ndarray
    fold: np.ndarray
    intercept: np.ndarray
    slope: np.ndarray
    fit_all: LinearFit
    fits: dict[int, LinearFit] = field(default_factory=dict)


def _fit(method: str, age: np.ndarray, pred: np.ndarray) -> LinearFit:
    return fit_line(age, pred - age if method == "gap" else pred)


def correct_age_gap(predicted: np.ndarray, age: np.ndarray, variance: np.ndarray, reference: np.ndarray | None = None,
                    method: str = "gap", folds: int = 5, seed: int = 0,
                    eid: np.ndarray | pd.Series | None = None) -> AgeGapResult:
    """Raw and cross-fitted corrected age gaps with standard errors (see the module docstring).

    ``predicted``, ``age`` (years) and ``variance`` (years^2) have shape (n,);
    ``reference`` is a boolean mask (default: every row). ``eid``: the subject of
    each row, shape (n,); the folds are dealt per subject, so a subject's other
    visits never enter the fit that corrects one of its rows (default: every row a
    subject of its own; None/NaN: a subject of its own). Rows with a non-finite
    prediction or age get NaN results and take no part in any fit.
    """
    if method not in METHODS:
        raise UsageError(f"unknown correction method {method!r}", hint=f"Choose one of: {', '.join(METHODS)}.")
    p = np.asarray(predicted, float)
    a = np.asarray(age, float)
    v = np.asarray(variance, float)
    n = p.size
    ref = np.ones(n, bool) if reference is None else np.asarray(reference, bool)
    ok = np.isfinite(p) & np.isfinite(a)
    use = ok & ref
    fold = fold_of(n, folds, seed, eid)
    fit_all = _fit(method, a[use], p[use])
    fits = {k: _fit(method, a[use & (fold != k)], p[use & (fold != k)]) for k in range(folds)}
    intercept = np.full(n, fit_all.intercept)
    slope = np.full(n, fit_all.slope)
    cov = np.broadcast_to(fit_all.cov, (n, 2, 2)).copy()
    for k, f in fits.items():
        sel = ref & (fold == k)
        intercept[sel], slope[sel], cov[sel] = f.intercept, f.slope, f.cov
    raw = p - a
    if method == "gap":
        corrected = raw - (intercept + slope * a)
        g = np.stack([np.ones(n), a], axis=1)  # d(correction)/d(a, b), sign irrelevant for the variance
        var = v + np.einsum("ni,nij,nj->n", g, cov, g)
        corrected_pred = a + corrected
    else:
        if np.any(np.abs(slope[ok]) < 1e-6):
            raise UsageError("the fit of predicted on chronological age is flat (slope ~0): it cannot be inverted",
                             hint="Use --method gap.")
        corrected_pred = (p - intercept) / slope
        corrected = corrected_pred - a
        g = np.stack([-1.0 / slope, -(p - intercept) / slope**2], axis=1)
        var = v / slope**2 + np.einsum("ni,nij,nj->n", g, cov, g)
    with np.errstate(invalid="ignore"):
        se = np.sqrt(var)
    nan = ~ok
    for arr in (raw, corrected, se, corrected_pred):
        arr[nan] = np.nan
    return AgeGapResult(raw_gap=raw, corrected_gap=corrected, se=se, corrected_predicted=corrected_pred, fold=fold,
                        intercept=intercept, slope=slope, fit_all=fit_all, fits=fits)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return math.nan
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def age_gap_table(preds: pd.DataFrame, ages: pd.Series, target: str, method: str = "gap", folds: int = 5,
                  seed: int = 0, reference: set[int] | None = None, level: float = 0.95,
                  ) -> tuple[pd.DataFrame, AgeGapResult]:
    """The age-gap table (:data:`AGE_GAP_COLUMNS`) of ``target`` in a long prediction frame.

    ``ages``: chronological age in years at each row's visit, aligned with the rows
    of ``preds`` for ``target`` (see :func:`select_target`); ``reference``: eids of the
    reference group (default all). Rows are sorted by eid and instance; the folds
    are dealt per subject (eid) in that order, all visits of an eid in one fold.
    """
    from mimir.analysis.change import critical_z

    zc = critical_z(level)
    ref = np.ones(len(preds), bool) if reference is None else preds["eid"].isin(reference).to_numpy()
    if reference is not None and not ref.any():
        raise UsageError("none of the --reference eids is in the predictions",
                         hint="Pass eids of subjects in the prediction file.")
    res = correct_age_gap(preds["mean"].to_numpy(float), ages.to_numpy(float), preds["variance"].to_numpy(float),
                          ref, method, folds, seed, preds["eid"].to_numpy())
    status = np.where(np.isfinite(preds["mean"].to_numpy(float)), "ok", "no prediction")
    status = np.where(np.isfinite(preds["mean"].to_numpy(float)) & ~np.isfinite(res.se), "no variance", status)
    out = pd.DataFrame({
        "eid": preds["eid"].to_numpy(), "instance": preds["instance"].to_numpy(), "name": preds["name"].to_numpy(),
        "module": preds["module"].to_numpy(), "target": preds["target"].to_numpy(), "age": ages.to_numpy(float),
        "predicted_age": preds["mean"].to_numpy(float), "predicted_sd": preds["sd"].to_numpy(float),
        "raw_gap": res.raw_gap, "corrected_gap": res.corrected_gap, "corrected_gap_se": res.se, "level": level,
        "ci_low": res.corrected_gap - zc * res.se, "ci_high": res.corrected_gap + zc * res.se,
        "corrected_predicted_age": res.corrected_predicted, "method": method, "in_reference": ref,
        "fold": np.where(ref, res.fold, -1), "intercept": res.intercept, "slope": res.slope,
        "qc_status": preds["qc_status"].to_numpy(), "ood_flag": preds["ood_flag"].astype(bool).to_numpy(),
        "status": status, "schema_version": AGE_GAP_SCHEMA_VERSION,
    })
    return out[list(AGE_GAP_COLUMNS)], res


def select_target(preds: pd.DataFrame, target: str | None, path: object = None) -> pd.DataFrame:
    """The rows of one age target (name or ``module.target`` key), sorted by eid and instance.

    Without ``target``, the only target whose unit is in years. Refuses (one line) a
    target that is missing or not in years, a target in several units, rows without
    eid/instance, and duplicate eid-instance rows.
    """
    years = preds[preds["unit"].astype(str).str.strip().str.lower().isin(YEAR_UNITS)]
    if target is None:
        keys = sorted(set(years["key"]))
        if len(keys) != 1:
            raise UsageError("holds no age target (a target in years)" if not keys
                             else f"holds several targets in years ({', '.join(keys)})", path,
                             "Choose one with --target." if keys else "Pass predictions of a module that predicts age.")
        target = keys[0]
    module, dot, name = target.partition(".")
    rows = preds[(preds["key"] == target) | (preds["target"] == target)
                 | ((preds["module"] == module) & (preds["target"] == name) if dot else False)]
    if rows.empty:
        raise UsageError(f"has no target {target!r}", path, f"Targets: {', '.join(sorted(set(preds['key'])))}.")
    if rows["module"].nunique() > 1:
        raise UsageError(f"target {target!r} comes from several modules ({', '.join(sorted(set(rows['module'])))})",
                         path, "Name one with --target MODULE.TARGET.")
    units = sorted(set(rows["unit"].astype(str)))
    if len(units) > 1:
        raise UsageError(f"target {target!r} comes in several units ({', '.join(units)})", path,
                         "Pass predictions of one module version.")
    if units[0].strip().lower() not in YEAR_UNITS:
        raise UsageError(f"target {target!r} is in {units[0]!r}, not in years: it is not an age", path,
                         "Choose the age target with --target.")
    if rows["eid"].isna().any() or rows["instance"].isna().any():
        name = rows[rows["eid"].isna() | rows["instance"].isna()]["name"].iloc[0]
        raise UsageError(f"subject {name!r} has no eid and instance in its name", path,
                         "Name the zips <eid>_20201_<instance>_0.zip as UK Biobank does.")
    dup = rows.duplicated(subset=["eid", "instance"], keep=False)
    if dup.any():
        first = rows[dup].iloc[0]
        raise UsageError(f"{int(dup.sum())} rows share an eid and instance (first: {first['name']})", path,
                         "Pass one prediction per subject visit.")
    return rows.sort_values(["eid", "instance"], kind="stable").reset_index(drop=True)


def age_gap_summary(table: pd.DataFrame, result: AgeGapResult) -> dict[str, object]:
    """Aggregates of an age-gap table: coefficients, N, MAE, correlations with age. No per-subject values."""
    ok = table["status"] == "ok"
    ref = ok & table["in_reference"]
    age = table["age"].to_numpy(float)
    raw = table["raw_gap"].to_numpy(float)
    cor = table["corrected_gap"].to_numpy(float)

    def block(mask: pd.Series) -> dict[str, float | int]:
        m = mask.to_numpy()
        return {
            "n": int(m.sum()),
            "mae_raw": float(np.mean(np.abs(raw[m]))) if m.any() else math.nan,
            "mae_corrected": float(np.mean(np.abs(cor[m]))) if m.any() else math.nan,
            "mean_raw_gap": float(np.mean(raw[m])) if m.any() else math.nan,
            "mean_corrected_gap": float(np.mean(cor[m])) if m.any() else math.nan,
            "sd_corrected_gap": float(np.std(cor[m], ddof=1)) if m.sum() > 1 else math.nan,
            "corr_raw_gap_age": _corr(raw[m], age[m]),
            "corr_corrected_gap_age": _corr(cor[m], age[m]),
            "mean_age": float(np.mean(age[m])) if m.any() else math.nan,
            "sd_age": float(np.std(age[m], ddof=1)) if m.sum() > 1 else math.nan,
        }

    return {
        "kind": "mimir age-gap summary", "schema_version": AGE_GAP_SCHEMA_VERSION,
        "module": str(table["module"].iloc[0]) if len(table) else None,
        "target": str(table["target"].iloc[0]) if len(table) else None,
        "method": str(table["method"].iloc[0]) if len(table) else None,
        "folds": len(result.fits), "n_rows": int(len(table)), "n_without_prediction": int((~ok).sum()),
        "fit_on_reference": result.fit_all.to_dict(),
        "fits_per_fold": [result.fits[k].to_dict() for k in sorted(result.fits)],
        "all": block(ok), "reference": block(ref), "outside_reference": block(ok & ~table["in_reference"]),
        "note": "aggregates only (no per-subject values)",
    }
