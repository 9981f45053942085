"""``mimir calibrate``: refit a module's interval widths on the user's labelled subjects; install a derived module.

The subjects' predictions by the parent module (what ``mimir predict`` wrote)
are joined with their reference values (:func:`mimir.analysis.evaluate.join_reference`).
Per target a variance scale factor ``s`` is fitted so that the intervals
``mean -+ z sqrt(s * variance)`` cover as they claim, by one of:

- ``auce`` (default), ``ci95``, ``nll``: the objectives of ``mimir train``
  (:func:`mimir.training.calibration.fit_scale`: the 100-level calibration
  error, the 95 % coverage, or the Gaussian negative log-likelihood);
- ``anneal``: the original MIMIR code's annealing of the 10-level calibration
  error (:func:`mimir.analysis.metrics.anneal_scale`).

With ``recalibrate_means`` a straight line ``a + b * mean`` (least squares of the
reference on the prediction) is fitted first and ``s`` on its residuals.

A fit is reported as not converged (``Fit.converged``, with the reason in
``Fit.note``) when the annealing's error stays above its tolerance, or when the
best factor of the other objectives lies at the edge of their search range
(``1e-3`` to ``1e3``). The factor composed with the parent's own must lie in
module.json's calibration range (``CALIBRATION_RANGE``, ``1e-6`` to ``1e3``):
else nothing is written and a :class:`~mimir.errors.UsageError` names the target.

The figures reported are cross-fitted: the subjects are split into ``folds``
groups, and each group's "after" intervals come from factors fitted on the other
groups, so every figure is measured on subjects the fit did not see. The
derived module's factors are then fitted on all subjects.

The derived module keeps the parent's members and OOD reference byte for byte;
its module.json adds, per target, ``recalibration`` (applied after the ensemble
is mixed, composed with any recalibration of the parent) and records the
parent (``source.derived_from``) and the fit (``source.calibration``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimir.analysis import metrics as M
from mimir.analysis.evaluate import join_reference
from mimir.analysis.tables import PhenotypeTable, read_predictions
from mimir.errors import UsageError

#: Objectives accepted by :func:`calibrate_module` ("auce", "ci95", "nll" are mimir train's).
OBJECTIVES = ("auce", "ci95", "nll", "anneal")
DEFAULT_FOLDS = 5
#: Fewest labelled subjects of a target for a refit (else the target keeps the parent's intervals).
MIN_SUBJECTS = 20
#: Marks in the derived module's version: every output row carries the version.
VERSION_MARK = "calibrated"
VERSION_MARK_MEANS = "calibrated-means"


@dataclass
class Fit:
    """A refit of one target: mean' = intercept + slope * mean, variance' = scale * variance."""

    scale: float
    intercept: float = 0.0
    slope: float = 1.0
    converged: bool = True
    #: Why the fit did not converge ("" when it did).
    note: str = ""

    def apply(self, mean: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.intercept + self.slope * mean, self.scale * variance


def fit_target(reference: np.ndarray, mean: np.ndarray, variance: np.ndarray, objective: str,
               recalibrate_means: bool = False) -> Fit:
    """The refit of one target on (N,) arrays (finite, in one unit)."""
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}", hint=f"Choose one of {', '.join(OBJECTIVES)}.")
    intercept, slope = 0.0, 1.0
    if recalibrate_means:
        slope, intercept = (float(x) for x in np.polyfit(mean, reference, 1))
    adjusted = intercept + slope * mean
    if objective == "anneal":
        scale, converged = M.anneal_scale(reference, adjusted, variance)
        note = "" if converged else "not converged: the annealing's calibration error stayed above its tolerance"
    else:
        from mimir.training.calibration import SCALE_MAX, SCALE_MIN, fit_scale_converged

        scale, converged = fit_scale_converged(reference, adjusted, variance, objective)
        note = "" if converged else (f"not converged: the best scale lies at the edge of the search range "
                                     f"{SCALE_MIN:g} to {SCALE_MAX:g}")
    return Fit(scale=float(scale), intercept=intercept, slope=slope, converged=bool(converged), note=note)


def _figures(reference: np.ndarray, mean: np.ndarray, variance: np.ndarray, level: float) -> dict[str, float]:
    from mimir.training.calibration import auce as auce_100

    return {
        "coverage_95": M.coverage(reference, mean, variance, 0.95),
        "coverage_at_level": M.coverage(reference, mean, variance, level),
        "auce": M.auce(reference, mean, variance),
        "auce_100": auce_100(reference, mean, variance),
        "mae": float(np.mean(np.abs(reference - mean))),
    }


def cross_fit(reference: np.ndarray, mean: np.ndarray, variance: np.ndarray, groups: np.ndarray, objective: str,
              recalibrate_means: bool = False, level: float = 0.95) -> tuple[dict[str, float], dict[str, float]]:
    """Figures (coverage at 95 % and at ``level``, AUCE, MAE) before and after, each subject's "after"
    from a fit on the other groups (``groups``: (N,) int fold of each subject)."""
    after_m, after_v = np.empty_like(mean), np.empty_like(variance)
    for g in np.unique(groups):
        held = groups == g
        fit = fit_target(reference[~held], mean[~held], variance[~held], objective, recalibrate_means)
        after_m[held], after_v[held] = fit.apply(mean[held], variance[held])
    return _figures(reference, mean, variance, level), _figures(reference, after_m, after_v, level)


@dataclass
class TargetCalibration:
    """One target's refit and its cross-fitted effect."""

    target: str
    n: int
    fit: Fit | None
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        if self.fit is not None:
            out.update({"variance_scale": self.fit.scale, "mean_intercept": self.fit.intercept,
                        "mean_slope": self.fit.slope, "converged": self.fit.converged,
                        "held_out_before": self.before, "held_out_after": self.after})
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class CalibrationResult:
    """The derived module and the per-target report."""

    module: Any  # ModuleSpec
    parent: Any  # ModuleSpec
    targets: list[TargetCalibration]
    objective: str
    folds: int
    recalibrate_means: bool


def _compose(parent: dict[str, float] | None, fit: Fit) -> dict[str, float]:
    """The refit on top of the parent's own (predictions already carry the parent's)."""
    p = parent or {"variance_scale": 1.0, "mean_intercept": 0.0, "mean_slope": 1.0}
    return {"variance_scale": p["variance_scale"] * fit.scale,
            "mean_intercept": fit.intercept + fit.slope * p["mean_intercept"],
            "mean_slope": fit.slope * p["mean_slope"]}


def calibrate_module(module: str | os.PathLike[str], predictions: str | os.PathLike[str],
                     reference: str | os.PathLike[str], name: str, *, objective: str = "auce",
                     folds: int = DEFAULT_FOLDS, recalibrate_means: bool = False, maps: dict[str, str] | None = None,
                     seed: int = 0, force: bool = False, install: bool = True) -> CalibrationResult:
    """Refit the intervals of ``module`` on labelled predictions and install the derived module ``name``.

    ``predictions`` must hold the module's predictions (same version) for
    subjects in ``reference``. Targets with fewer than :data:`MIN_SUBJECTS`
    labelled subjects keep the parent's intervals (and say so). ``install=False``
    fits and reports without writing anything.
    """
    from mimir.models.module_format import valid_name
    from mimir.models.registry import _refuse_existing, get_module, install_derived
    from mimir.utils.hashing import file_sha256

    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}", hint=f"Choose one of {', '.join(OBJECTIVES)}.")
    if folds < 2:
        raise UsageError(f"--folds is {folds}; cross-fitting needs at least 2")
    if not valid_name(name):
        raise UsageError(f"invalid module name {name!r}", hint="Use letters, digits, '.', '_' or '-'.")
    parent = get_module(module)
    if name == parent.name:
        raise UsageError(f"the derived module needs a name of its own, not {parent.name!r}",
                         hint="Choose another name with -o.")
    if install:
        _refuse_existing(name, force)
    preds = read_predictions(predictions)
    mine = preds[preds["module"] == parent.name]
    if mine.empty:
        raise UsageError(f"holds no predictions of module {parent.name}", predictions,
                         f"Run mimir predict -m {parent.name} on the labelled subjects first.")
    versions = sorted({str(v) for v in mine["module_version"].dropna()})
    if versions and versions != [parent.version]:
        raise UsageError(f"was predicted by {parent.name} {', '.join(versions)}, the installed module is "
                         f"{parent.version}", predictions, "Predict again with the installed module.")
    joined = join_reference(mine, PhenotypeTable.read(reference), maps, predictions_path=Path(predictions))
    subject_key = joined["name"].astype(str)
    keys = np.unique(subject_key.to_numpy())
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(keys, rng.permutation(len(keys)) % folds))
    reports = []
    for t in parent.targets:
        part = joined[joined["target"] == t.name]
        r, m, v = (part[c].to_numpy(dtype=np.float64) for c in ("reference", "mean", "variance"))
        ok = np.isfinite(r) & np.isfinite(m) & np.isfinite(v) & (v > 0)
        n = int(ok.sum())
        if n < max(MIN_SUBJECTS, 2 * folds):
            reports.append(TargetCalibration(t.name, n, None, note=f"fewer than {max(MIN_SUBJECTS, 2 * folds)} "
                                             "labelled subjects: the parent's intervals are kept"))
            continue
        groups = np.array([fold_of[k] for k in subject_key[part.index[ok]]])
        levels = part["level"].dropna().unique()
        level = float(levels[0]) if len(levels) else 0.95
        before, after = cross_fit(r[ok], m[ok], v[ok], groups, objective, recalibrate_means, level)
        fit = fit_target(r[ok], m[ok], v[ok], objective, recalibrate_means)
        reports.append(TargetCalibration(t.name, n, fit, before, after, note=fit.note))
    if all(rep.fit is None for rep in reports):
        raise UsageError(f"matches fewer than {MIN_SUBJECTS} labelled subjects for every target of {parent.name}",
                         reference, "Pass more subjects, or map the targets to their columns with --map TARGET=COLUMN.")
    derived = _derived_spec(parent, name, reports, objective, folds, recalibrate_means,
                            parent_sha=file_sha256(parent.path / "module.json") if parent.path else "",
                            predictions=Path(predictions).name, reference=Path(reference).name)
    if install:
        derived = install_derived(derived, parent, force=force)
    return CalibrationResult(derived, parent, reports, objective, folds, recalibrate_means)


def _check_scales(parent: Any, reports: list[TargetCalibration]) -> None:
    """Refuse (one line, before anything is written) a refit that module.json could not hold.

    The composed recalibration (the refit on top of the parent's own) goes
    through module.json's own check: a variance scale outside
    ``CALIBRATION_RANGE`` (1e-6 to 1e3), or with ``--recalibrate-means`` a zero or
    absurd slope or intercept.
    """
    from mimir.models.module_format import CALIBRATION_RANGE, parse_recalibration

    by_name = {t.name: t for t in parent.targets}
    bad = []
    for rep in reports:
        if rep.fit is None:
            continue
        composed = _compose(by_name[rep.target].recalibration, rep.fit)
        try:
            parse_recalibration(composed)
        except ValueError as exc:
            bad.append((rep, composed, exc))
    if not bad:
        return
    rep, composed, exc = bad[0]
    own = (by_name[rep.target].recalibration or {}).get("variance_scale", 1.0)
    more = f" (and {len(bad) - 1} more target(s))" if len(bad) > 1 else ""
    lo, hi = CALIBRATION_RANGE
    if lo <= composed["variance_scale"] <= hi:  # the means' refit
        what = f"the refitted means cannot be stored ({exc})"
    else:
        what = (f"the calibrated variance scale would be {composed['variance_scale']:.4g} (fitted {rep.fit.scale:.4g} "
                f"x the parent {parent.name}'s {own:.4g}), outside the allowed {lo:g} to {hi:g}")
    raise UsageError(
        f"target {rep.target}{more}: {what}; nothing was installed",
        hint=f"Check that the predictions were made by {parent.name} and that the reference column of each target "
             "holds the same quantity in the same unit (--map TARGET=COLUMN).")


def _derived_spec(parent: Any, name: str, reports: list[TargetCalibration], objective: str, folds: int,
                  recalibrate_means: bool, *, parent_sha: str, predictions: str, reference: str) -> Any:
    _check_scales(parent, reports)
    spec = copy.deepcopy(parent)
    spec.name, spec.path, spec.builtin = name, None, False
    by_name = {rep.target: rep for rep in reports}
    for t in spec.targets:
        rep = by_name[t.name]
        if rep.fit is not None:
            t.recalibration = _compose(t.recalibration, rep.fit)
    mark = VERSION_MARK_MEANS if recalibrate_means else VERSION_MARK
    spec.version = f"{parent.version}+{mark}"[:100]
    what = ("interval widths and means (linear recalibration of the means)" if recalibrate_means
            else "interval widths only (means unchanged)")
    spec.intended_use_note = (f"Derived from {parent.name} {parent.version} by mimir calibrate: {what} refitted "
                              f"on {max(r.n for r in reports)} labelled subjects. {parent.intended_use_note}")[:2000]
    spec.description = (f"{parent.name} {parent.version} with {what} refitted by mimir calibrate "
                        f"({objective}). {parent.description}")[:10_000]
    n_total = max(r.n for r in reports)
    spec.source = {
        **{k: v for k, v in parent.source.items() if k not in ("derived_from", "calibration")},
        "derived_from": {"name": parent.name, "version": parent.version, "module_json_sha256": parent_sha,
                         "digest": parent.digest, **({"derived_from": parent.source["derived_from"]}
                                                     if "derived_from" in parent.source else {})},
        "calibration": {
            "tool": "mimir calibrate", "objective": objective, "n": n_total, "folds": folds,
            "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
            "recalibrated_means": recalibrate_means, "predictions": predictions, "reference": reference,
            "targets": {rep.target: _finite(rep.to_json()) for rep in reports},
        },
    }
    return spec


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
