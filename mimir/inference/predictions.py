"""The numerics of a prediction, and the per-subject result record.

Pure NumPy (no torch): from raw network output to values in real units, the
ensemble mixture, confidence intervals, and the record that every writer
(``predict``'s CSV/JSON/table, and later ``batch``) serialises.

For a module with T targets the network output (B, 2T) is viewed as (B, T, 2):
a standardised mean ``m`` and a log variance ``s``. Per target t, with
standardisation mean/sd ``mu_t``/``sd_t``, calibration factor ``c_t`` and
display divisor ``d_t``::

    mean     = (m * sd_t + mu_t) / d_t
    variance = exp(s) * sd_t**2 * c_t / d_t**2

The original MIMIR code divided the variance by ``d_t`` instead of ``d_t**2``;
that was harmless only because every published divisor is 1. Here the variance
is expressed in the squared display unit, as it must be.

K ensemble members combine as a uniform mixture::

    mean     = average of member means
    variance = average of member variances + population variance of member means

and a confidence interval at level L is ``mean +- z * sqrt(variance)`` with
``z`` the standard normal quantile of ``(1 + L) / 2``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

#: Default confidence level of the intervals.
DEFAULT_LEVEL = 0.95

# UK Biobank bulk file names: <eid>_<field>_<instance>_<array>
_UKB_NAME = re.compile(r"^(?P<eid>\d+)_(?P<field>\d+)_(?P<instance>\d+)_(?P<array>\d+)$")


# --------------------------------------------------------------------------- numerics


def convert_output(
    raw: np.ndarray,
    mean: Sequence[float] | np.ndarray,
    sd: Sequence[float] | np.ndarray,
    calibration: Sequence[float] | np.ndarray,
    divisor: Sequence[float] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw output (B, 2T) or (B, T, 2) -> (mean, variance), each (B, T), in display units.

    Computed in float64 whatever the input dtype.
    """
    raw = np.asarray(raw, dtype=np.float64)
    mu = np.asarray(mean, dtype=np.float64)
    sd_ = np.asarray(sd, dtype=np.float64)
    cal = np.asarray(calibration, dtype=np.float64)
    div = np.asarray(divisor, dtype=np.float64)
    t = mu.shape[0]
    if raw.ndim == 2:
        if raw.shape[1] != 2 * t:
            raise ValueError(f"raw output has {raw.shape[1]} columns, expected {2 * t}")
        raw = raw.reshape(raw.shape[0], t, 2)
    if raw.ndim != 3 or raw.shape[1:] != (t, 2):
        raise ValueError(f"raw output shape {raw.shape} does not fit {t} targets")
    with np.errstate(over="ignore"):
        m = raw[:, :, 0] * sd_ + mu
        v = np.exp(raw[:, :, 1]) * np.square(sd_) * cal
    return m / div, v / np.square(div)


def mixture(means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combine K members (axis 0) as a uniform mixture: (mean, variance).

    ``means`` and ``variances`` have shape (K, ...). With K = 1 the member is
    returned unchanged.
    """
    means = np.asarray(means, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    if means.shape != variances.shape or means.ndim < 1 or means.shape[0] < 1:
        raise ValueError("means and variances must have the same shape (K, ...) with K >= 1")
    if means.shape[0] == 1:
        return means[0].copy(), variances[0].copy()
    mean = means.mean(axis=0)
    # population variance (ddof=0) of the member means
    spread = np.mean(np.square(means - mean), axis=0)
    return mean, variances.mean(axis=0) + spread


def recalibrate(
    mean: np.ndarray, variance: np.ndarray, intercept: Sequence[float], slope: Sequence[float],
    scale: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """A derived module's refit on the mixed (mean, variance), each (B, T): ``a + b * mean``, ``s * variance``."""
    a, b, s = (np.asarray(x, dtype=np.float64) for x in (intercept, slope, scale))
    return a + b * np.asarray(mean, dtype=np.float64), s * np.asarray(variance, dtype=np.float64)


def z_value(level: float = DEFAULT_LEVEL) -> float:
    """The standard normal quantile for a two-sided interval at ``level`` (0.95 -> 1.95996...)."""
    if not (0.0 < level < 1.0):
        raise ValueError(f"confidence level must be between 0 and 1 (exclusive), got {level}")
    return NormalDist().inv_cdf((1.0 + level) / 2.0)


def interval(
    mean: Any,
    variance: Any,
    level: float = DEFAULT_LEVEL,
    support: tuple[float | None, float | None] | None = None,
) -> tuple[Any, Any]:
    """(low, high) = mean -+ z * sqrt(variance), element-wise, cut to ``support``.

    ``support`` (low, high), either None for unbounded, is the range of values
    the target can take: each bound of the interval is clipped into it (an
    interval wholly outside collapses onto the nearer end). The mean is never
    changed, so it may lie outside its clipped interval.
    """
    z = z_value(level)
    half = z * np.sqrt(variance)
    low, high = mean - half, mean + half
    if support is not None:
        lo, hi = support
        if lo is not None:
            low, high = np.maximum(low, lo), np.maximum(high, lo)
        if hi is not None:
            low, high = np.minimum(low, hi), np.minimum(high, hi)
    return low, high


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class OutputTarget:
    """One predicted target as it appears in the outputs of a run.

    ``key`` is the target name, or ``<module>.<name>`` when an earlier module
    of the same run (in request order) already predicts a target of that name
    (see :func:`layout_for`). ``intended_use`` is the module's: ``research`` or
    ``synthetic-demo``.
    """

    key: str
    name: str
    unit: str
    field: int | None
    module: str
    module_version: str
    intended_use: str = "research"
    #: (low, high) the values the target can take, either None for unbounded; None: unbounded
    support: tuple[float | None, float | None] | None = None

    def columns(self) -> tuple[str, str, str, str]:
        """CSV columns: mean and variance (MIMIR's names), then the interval bounds."""
        k, u = self.key, self.unit
        return (f"{k}_mean_in_{u}", f"{k}_variance_in_{u}", f"{k}_ci_low_in_{u}", f"{k}_ci_high_in_{u}")


@dataclass(frozen=True)
class TargetPrediction:
    """The prediction of one target for one subject."""

    target: OutputTarget
    value: float
    variance: float
    level: float = DEFAULT_LEVEL

    @property
    def sd(self) -> float:
        return math.sqrt(self.variance) if self.variance >= 0 else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        low, high = interval(self.value, self.variance, self.level, self.target.support)
        return float(low), float(high)

    def to_json(self) -> dict[str, Any]:
        low, high = self.ci
        t = self.target
        return {
            "value": _json_float(self.value),
            "variance": _json_float(self.variance),
            "sd": _json_float(self.sd),
            "ci_low": _json_float(low),
            "ci_high": _json_float(high),
            "level": self.level,
            "unit": t.unit,
            "field": t.field,
            "target": t.name,
            "module": t.module,
            "module_version": t.module_version,
            "intended_use": t.intended_use,
        }


@dataclass
class SubjectResult:
    """Everything predicted for one input file, or why it failed.

    ``name`` is the file name up to its first dot (as MIMIR names its rows);
    ``eid`` and ``instance`` are parsed from it when it has the UK Biobank
    form ``<eid>_<field>_<instance>_<array>``.
    """

    name: str
    source: str = ""
    eid: int | None = None
    instance: int | None = None
    predictions: list[TargetPrediction] = field(default_factory=list)
    error: str | None = None
    #: QC verdict of the input: "ok", "warn" or "fail"; None when not computed (e.g. a .npy input without QC)
    qc_status: str | None = None
    #: QC codes with details, e.g. ["fat_water_swap:station=3", "out_of_distribution:phantom-demo"]
    qc_flags: list[str] = field(default_factory=list)
    #: out-of-distribution score per module name; None when the module has no reference
    ood_scores: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def for_input(cls, path: str | Path) -> SubjectResult:
        name, eid, instance = parse_subject_name(path)
        return cls(name=name, source=str(path), eid=eid, instance=instance)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_row(self, layout: Sequence[OutputTarget] | None = None) -> dict[str, Any]:
        """One wide CSV row (the columns of :func:`csv_header`).

        With ``layout``, the columns follow it (targets this subject lacks are empty).
        """
        targets = list(layout) if layout is not None else [p.target for p in self.predictions]
        level = self.predictions[0].level if self.predictions else None
        row: dict[str, Any] = {
            "name": self.name,
            "eid": "" if self.eid is None else self.eid,
            "instance": "" if self.instance is None else self.instance,
            "qc_status": self.qc_status or "",
            "qc_flags": ";".join(self.qc_flags),
            "ci_level": "" if level is None else repr(float(level)),
        }
        for m in modules_of(targets):
            score = self.ood_scores.get(m.module)
            row[f"{m.module}_version"] = m.module_version
            row[f"{m.module}_intended_use"] = m.intended_use
            row[f"{m.module}_ood_score"] = "" if score is None else _csv_float(score)
        by_key = {p.target.key: p for p in self.predictions}
        for t in targets:
            cols = t.columns()
            p = by_key.get(t.key)
            if p is None:
                row.update(dict.fromkeys(cols, ""))
            else:
                low, high = p.ci
                row.update(zip(cols, (_csv_float(p.value), _csv_float(p.variance), _csv_float(low), _csv_float(high))))
        return row

    def to_json(self) -> dict[str, Any]:
        """The subject as a JSON object (see docs/outputs.md)."""
        level = self.predictions[0].level if self.predictions else None
        modules = {
            m.module: {"version": m.module_version, "intended_use": m.intended_use}
            for m in modules_of(p.target for p in self.predictions)
        }
        return {
            "name": self.name,
            "eid": self.eid,
            "instance": self.instance,
            "qc": {"status": self.qc_status, "flags": list(self.qc_flags)},
            "ood_scores": {k: (None if v is None else _json_float(v)) for k, v in self.ood_scores.items()},
            "ci_level": level,
            "modules": modules,
            "targets": {p.target.key: p.to_json() for p in self.predictions},
        }


#: QC code of a subject whose image lies outside a module's reference (``out_of_distribution:<module>``).
OOD_FLAG = "out_of_distribution"
#: An OOD score above this is flagged (scores are calibrated so that 1 is the flag line).
OOD_LIMIT = 1.0


def set_ood_score(record: SubjectResult, module: str, score: float | None) -> None:
    """Record a module's OOD score on ``record``; flag it when above :data:`OOD_LIMIT`.

    A flagged record gets ``out_of_distribution:<module>`` in ``qc_flags``
    (once) and a ``qc_status`` of at least ``"warn"``. A non-finite score (the
    features overflowed) counts as flagged. Calling it again for the same
    module replaces the earlier verdict.
    """
    code = f"{OOD_FLAG}:{module}"
    record.ood_scores[module] = None if score is None else (float(score) if math.isfinite(score) else math.inf)
    record.qc_flags = [f for f in record.qc_flags if f != code]
    if score is not None and not score <= OOD_LIMIT:
        record.qc_flags.append(code)
        if record.qc_status in (None, "ok"):
            record.qc_status = "warn"


#: The first columns of every wide CSV, in order.
WIDE_LEAD = ["name", "eid", "instance", "qc_status", "qc_flags", "ci_level"]
#: Per requested module, after :data:`WIDE_LEAD`: ``<module>`` + each suffix.
MODULE_COLUMN_SUFFIXES = ("_version", "_intended_use", "_ood_score")
#: The columns of the long (tidy) CSV: one row per subject x target.
LONG_HEADER = [
    "name", "eid", "instance", "qc_status", "qc_flags", "module", "module_version", "intended_use", "ood_score",
    "target", "field", "unit", "mean", "variance", "sd", "ci_low", "ci_high", "level",
]


def modules_of(targets: Iterable[OutputTarget]) -> list[OutputTarget]:
    """The first target of each module, in order (a stand-in for the module's name, version, use)."""
    seen: dict[str, OutputTarget] = {}
    for t in targets:
        seen.setdefault(t.module, t)
    return list(seen.values())


def csv_header(layout: Sequence[OutputTarget]) -> list[str]:
    """The wide CSV header for a run whose targets are ``layout`` (docs/outputs.md)."""
    header = list(WIDE_LEAD)
    for m in modules_of(layout):
        header.extend(m.module + suffix for suffix in MODULE_COLUMN_SUFFIXES)
    for t in layout:
        header.extend(t.columns())
    return header


def long_rows(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The long CSV rows (:data:`LONG_HEADER`) of one subject, from its JSON object (:meth:`SubjectResult.to_json`).

    Numbers are written as Python's ``repr`` of the float (exact round trip);
    empty cells are missing values (JSON ``null``: not finite, or not computed).
    """
    qc = obj.get("qc") or {}
    ood = obj.get("ood_scores") or {}
    lead = {
        "name": obj.get("name", ""),
        "eid": _cell(obj.get("eid")),
        "instance": _cell(obj.get("instance")),
        "qc_status": _cell(qc.get("status")),
        "qc_flags": ";".join(qc.get("flags") or []),
    }
    rows = []
    for key, t in (obj.get("targets") or {}).items():
        module = t.get("module", "")
        rows.append(
            {
                **lead,
                "module": module,
                "module_version": t.get("module_version", ""),
                "intended_use": t.get("intended_use", ""),
                "ood_score": _cell(ood.get(module)),
                "target": t.get("target", key),
                "field": _cell(t.get("field")),
                "unit": t.get("unit", ""),
                "mean": _cell(t.get("value")),
                "variance": _cell(t.get("variance")),
                "sd": _cell(t.get("sd")),
                "ci_low": _cell(t.get("ci_low")),
                "ci_high": _cell(t.get("ci_high")),
                "level": _cell(t.get("level")),
            }
        )
    return rows


def _cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x)
    return str(x)


def parse_subject_name(path: str | Path) -> tuple[str, int | None, int | None]:
    """(name, eid, instance) of an input file, e.g. ``1000001_20201_2_0.zip`` -> (..., 1000001, 2)."""
    name = Path(path).name.split(".")[0]
    m = _UKB_NAME.match(name)
    if m:
        return name, int(m["eid"]), int(m["instance"])
    return name, None, None


def layout_for(
    modules: Iterable[tuple[str, str, Sequence[tuple[str, str, int | None]]] | tuple[str, str, Sequence[tuple[str, str, int | None]], str]],
) -> list[OutputTarget]:
    """Output targets for modules given as (name, version, [(target, unit, field[, support]), ...][, intended_use]).

    Modules come in request order. A target keeps its plain name unless an
    earlier module of the run already uses that name; then it is keyed
    ``<module>.<name>``. So adding a module after the others never renames a
    column of the modules before it, and the columns depend only on the
    requested modules and their order.
    """
    out = []
    used: set[str] = set()
    for entry in modules:
        mname, mversion, targets = entry[0], entry[1], entry[2]
        use = entry[3] if len(entry) > 3 else "research"  # type: ignore[misc]
        for tname, unit, fid, *rest in targets:
            key = tname if tname not in used else f"{mname}.{tname}"
            used.add(tname)
            out.append(
                OutputTarget(key=key, name=tname, unit=unit, field=fid, module=mname, module_version=mversion,
                             intended_use=use, support=rest[0] if rest else None)
            )
    return out


def _csv_float(x: float) -> str:
    return repr(float(x))


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
