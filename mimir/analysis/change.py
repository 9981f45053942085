"""Visit-to-visit change of a prediction, with its uncertainty.

Pure numerics (:func:`change_statistics`) and the pairing of a long prediction
frame (:func:`visit_change`, :func:`change_summary`); no file I/O here (see
:mod:`mimir.analysis.change_io`).

For one subject and target with predictions ``a`` (first visit) and ``b``
(second visit) and predictive variances ``var_a``, ``var_b`` (the module's
calibrated variance, in the target's unit squared)::

    change = b - a
    se     = sqrt(var_a + var_b - 2 rho sqrt(var_a var_b))     (rho = 0: independent errors)
    z      = change / se
    p      = 2 (1 - Phi(|z|))                                    (two-sided)
    flag   = |z| > Phi^-1(1 - (1 - level) / 2)                   (1.96 at level 0.95)
    ci     = change -/+ Phi^-1(1 - (1 - level) / 2) se

and, where both visit dates are known, ``years = (date_b - date_a) / 365.25 days``,
``change_per_year = change / years`` and its se ``se / years``. ``rho`` is the
correlation of the two visits' prediction errors, assumed 0 (docs/derived.md).

A row keeps its place whatever is missing; its ``status`` says what (a failed
visit, no variance and, when dates were given, a missing or out-of-order date:
:func:`date_problems`), several problems joined by ``"; "``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from mimir.errors import UsageError

#: Version of the change table's schema (docs/derived.md); raised whenever a column changes.
#: 2: with --dates/--zips, a row without years says why in ``status`` (1 left it "ok" with empty years).
CHANGE_SCHEMA_VERSION = "2"

#: Columns of the change table, in order (docs/derived.md).
CHANGE_COLUMNS: tuple[str, ...] = (
    "eid", "module", "target", "field", "unit", "instance_a", "instance_b", "name_a", "name_b",
    "value_a", "sd_a", "value_b", "sd_b", "change", "change_se", "z", "p", "level", "ci_low", "ci_high", "flagged",
    "error_correlation", "date_a", "date_b", "date_source", "years", "change_per_year", "change_per_year_se",
    "qc_status_a", "qc_status_b", "ood_flag_a", "ood_flag_b", "status", "schema_version",
)


@dataclass(frozen=True)
class ChangeStatistics:
    """Arrays of shape (n,) for n pairs: the change (b - a), its se, z, two-sided p, interval and flag."""

    change: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    flagged: np.ndarray  # bool; False where z is not finite


def critical_z(level: float) -> float:
    """The two-sided standard normal quantile of ``level`` (1.959964 at 0.95)."""
    if not 0.0 < level < 1.0:
        raise UsageError(f"level {level} is not between 0 and 1", hint="Use for example 0.95.")
    return float(norm.ppf(0.5 + level / 2.0))


def change_statistics(a: np.ndarray, var_a: np.ndarray, b: np.ndarray, var_b: np.ndarray, level: float = 0.95,
                      rho: float = 0.0) -> ChangeStatistics:
    """Change ``b - a`` and its uncertainty, elementwise (see the module docstring for the formulas).

    ``a``, ``b``: predictions, shape (n,), in the target's unit; ``var_a``, ``var_b``:
    their variances (unit squared); ``rho``: the assumed correlation of the two
    errors, in [-1, 1). NaN inputs give NaN outputs and ``flagged`` False.
    """
    if not -1.0 <= rho < 1.0:
        raise UsageError(f"error correlation {rho} is not in [-1, 1)", hint="Use 0 (independent errors) unless "
                         "you have measured it.")
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = np.asarray(var_a, float), np.asarray(var_b, float)
    change = b - a
    with np.errstate(invalid="ignore", divide="ignore"):
        var = va + vb - 2.0 * rho * np.sqrt(va * vb)
        se = np.sqrt(np.where(var >= 0, var, np.nan))
        z = change / se
    zc = critical_z(level)
    p = 2.0 * norm.sf(np.abs(z))
    finite = np.isfinite(z)
    return ChangeStatistics(change=change, se=se, z=z, p=np.where(finite, p, np.nan), ci_low=change - zc * se,
                            ci_high=change + zc * se, flagged=finite & (np.abs(np.where(finite, z, 0.0)) > zc))


#: Status of a row whose change is complete.
STATUS_OK = "ok"


def date_problems(date_a: pd.Series, date_b: pd.Series, first: int, second: int) -> np.ndarray:
    """Per row, why ``years`` is empty although dates were given ("" where both dates are known and in order)."""
    miss_a, miss_b = date_a.isna().to_numpy(), date_b.isna().to_numpy()
    out = np.full(len(date_a), "", dtype=object)
    out[miss_a] = f"no visit date for instance {first}"
    out[miss_b] = f"no visit date for instance {second}"
    out[miss_a & miss_b] = "no visit date for either instance"
    both = ~miss_a & ~miss_b
    order = np.zeros(len(date_a), dtype=bool)
    order[both] = (date_b[both] <= date_a[both]).to_numpy()
    out[order] = f"visit date of instance {second} is not after instance {first}'s"
    return out


def _check_visits(preds: pd.DataFrame, first: int, second: int) -> None:
    if first == second:
        raise UsageError(f"the two visits are the same instance ({first})", hint="Pass two different instances.")
    keyed = preds.dropna(subset=["eid", "instance"])
    dup = keyed.duplicated(subset=["eid", "instance", "module", "target"], keep=False)
    if dup.any():
        row = keyed[dup].iloc[0]
        n = int(keyed[dup][["eid", "instance"]].drop_duplicates().shape[0])
        raise UsageError(f"{n} subject visit(s) appear more than once (first: {row['name']}, target {row['target']})",
                         hint="Pass one prediction per subject, instance and target (merge the runs with "
                              "mimir merge, which keeps one).")
    units = keyed.groupby(["module", "target"])["unit"].nunique(dropna=False)
    mixed = units[units > 1]
    if len(mixed):
        module, target = mixed.index[0]
        found = sorted(map(str, keyed[(keyed["module"] == module) & (keyed["target"] == target)]["unit"].unique()))
        raise UsageError(f"target {target} of {module} comes in several units ({', '.join(found)})",
                         hint="Pass predictions of one module version (one unit per target).")


def visit_change(preds: pd.DataFrame, first: int = 2, second: int = 3, level: float = 0.95, rho: float = 0.0,
                 dates: pd.DataFrame | None = None, targets: list[str] | None = None) -> tuple[pd.DataFrame, int]:
    """Per subject and target, the change between instances ``first`` and ``second``.

    Parameters
    ----------
    preds:
        A long prediction frame (:func:`~mimir.analysis.tables.read_predictions`).
    first, second:
        The two instances (UK Biobank: 2 = first imaging visit, 3 = repeat imaging).
    level, rho:
        The flag's level and the assumed error correlation (see the module docstring).
    dates:
        Optional visit dates: columns ``eid``, ``instance``, ``date`` (datetime64) and
        ``source`` (text).
    targets:
        Only these targets (names or ``module.target`` keys); default all.

    Returns the change table (:data:`CHANGE_COLUMNS`, one row per eid, module and
    target seen at both instances; a visit whose prediction failed gives NaN values
    and a ``status`` saying which; when ``dates`` is given, a row whose years stay
    empty, for a missing date or a second visit not after the first, says so in its
    ``status`` too) and the number of eids seen at only one of the two instances
    (not in the table). Raises :class:`~mimir.errors.UsageError` for
    duplicate subject visits or a target in several units.
    """
    _check_visits(preds, first, second)
    frame = preds.dropna(subset=["eid", "instance"])
    if targets:
        known = set(frame["target"]) | set(frame["key"])
        missing = [t for t in targets if t not in known]
        if missing:
            raise UsageError(f"no predictions for target {missing[0]!r}",
                             hint=f"Targets: {', '.join(sorted(set(frame['key'])))}.")
        frame = frame[frame["target"].isin(targets) | frame["key"].isin(targets)]
    va = frame[frame["instance"] == first]
    vb = frame[frame["instance"] == second]
    eids_a, eids_b = set(va["eid"]), set(vb["eid"])
    unpaired = len(eids_a ^ eids_b)
    cols = ["eid", "module", "target", "field", "unit", "name", "mean", "variance", "sd", "qc_status", "ood_flag",
            "instance"]
    m = va[cols].merge(vb[cols], on=["eid", "module", "target"], suffixes=("_a", "_b"), how="inner")
    m = m.sort_values(["eid", "module", "target"], kind="stable").reset_index(drop=True)
    stats = change_statistics(m["mean_a"].to_numpy(float), m["variance_a"].to_numpy(float),
                              m["mean_b"].to_numpy(float), m["variance_b"].to_numpy(float), level, rho)
    out = pd.DataFrame({
        "eid": m["eid"].astype("int64"), "module": m["module"], "target": m["target"], "field": m["field_a"],
        "unit": m["unit_a"], "instance_a": first, "instance_b": second, "name_a": m["name_a"], "name_b": m["name_b"],
        "value_a": m["mean_a"], "sd_a": m["sd_a"], "value_b": m["mean_b"], "sd_b": m["sd_b"],
        "change": stats.change, "change_se": stats.se, "z": stats.z, "p": stats.p, "level": level,
        "ci_low": stats.ci_low, "ci_high": stats.ci_high, "flagged": stats.flagged, "error_correlation": rho,
    })
    date_a = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns]")
    date_b = date_a.copy()
    source = pd.Series("", index=out.index, dtype=object)
    if dates is not None and len(dates):
        d = dates.drop_duplicates(subset=["eid", "instance"]).set_index(["eid", "instance"])
        ia = pd.MultiIndex.from_arrays([out["eid"], [first] * len(out)])
        ib = pd.MultiIndex.from_arrays([out["eid"], [second] * len(out)])
        date_a = pd.Series(d["date"].reindex(ia).to_numpy(), index=out.index)
        date_b = pd.Series(d["date"].reindex(ib).to_numpy(), index=out.index)
        sa = d["source"].reindex(ia).to_numpy()
        sb = d["source"].reindex(ib).to_numpy()
        source = pd.Series([a if a == b else f"{a}; {b}" if isinstance(a, str) and isinstance(b, str) else ""
                            for a, b in zip(sa, sb)], index=out.index, dtype=object)
        source[date_a.isna() | date_b.isna()] = ""
    years = (date_b - date_a).dt.days.to_numpy(float) / 365.25
    years = np.where(years > 0, years, np.nan)
    out["date_a"] = date_a.dt.strftime("%Y-%m-%d")
    out["date_b"] = date_b.dt.strftime("%Y-%m-%d")
    out["date_source"] = source
    out["years"] = years
    out["change_per_year"] = stats.change / years
    out["change_per_year_se"] = stats.se / years
    out["qc_status_a"], out["qc_status_b"] = m["qc_status_a"], m["qc_status_b"]
    out["ood_flag_a"], out["ood_flag_b"] = m["ood_flag_a"].astype(bool), m["ood_flag_b"].astype(bool)
    status = np.full(len(out), "", dtype=object)
    status[~np.isfinite(m["mean_b"].to_numpy(float))] = f"no prediction at instance {second}"
    status[~np.isfinite(m["mean_a"].to_numpy(float))] = f"no prediction at instance {first}"
    status[(~np.isfinite(m["mean_a"].to_numpy(float))) & (~np.isfinite(m["mean_b"].to_numpy(float)))] = \
        "no prediction at either instance"
    bad_var = np.isfinite(stats.change) & ~np.isfinite(stats.se)
    status[bad_var] = "no variance"
    if dates is not None:  # dates were asked for: a row without years says why (it is never dropped)
        no_years = date_problems(date_a, date_b, first, second)
        status = np.array(["; ".join(x for x in pair if x) for pair in zip(status, no_years)], dtype=object)
    status[status == ""] = STATUS_OK
    out["status"] = status
    out["schema_version"] = CHANGE_SCHEMA_VERSION
    return out[list(CHANGE_COLUMNS)], unpaired


def change_summary(table: pd.DataFrame, unpaired: int = 0) -> dict[str, object]:
    """Aggregates of a change table, per module and target: no per-subject values.

    Per target: pairs, pairs with a change, share flagged, mean and sd of the
    change, the root mean square se, the sd of z (1 if the variances are right and
    the errors independent with no true change), and N with dates with the mean
    interval in years. Safe to export from a secure platform when every N is large
    enough for its rules (UK Biobank's RAP: aggregates only).
    """
    rows = []
    for (module, target), g in table.groupby(["module", "target"], sort=True):
        ok = g[np.isfinite(g["change"].to_numpy(float)) & np.isfinite(g["change_se"].to_numpy(float))]
        years = g["years"].to_numpy(float)
        rows.append({
            "module": module, "target": target, "unit": str(g["unit"].iloc[0]), "pairs": int(len(g)),
            "pairs_with_change": int(len(ok)),
            "flagged": int(ok["flagged"].sum()), "flagged_share": float(ok["flagged"].mean()) if len(ok) else math.nan,
            "mean_change": float(ok["change"].mean()) if len(ok) else math.nan,
            "sd_change": float(ok["change"].std(ddof=1)) if len(ok) > 1 else math.nan,
            "rms_se": float(np.sqrt(np.mean(ok["change_se"].to_numpy(float) ** 2))) if len(ok) else math.nan,
            "sd_z": float(ok["z"].std(ddof=1)) if len(ok) > 1 else math.nan,
            "pairs_with_dates": int(np.isfinite(years).sum()),
            "mean_years": float(np.nanmean(years)) if np.isfinite(years).any() else math.nan,
        })
    level = float(table["level"].iloc[0]) if len(table) else math.nan
    rho = float(table["error_correlation"].iloc[0]) if len(table) else 0.0
    return {"kind": "mimir change summary", "schema_version": CHANGE_SCHEMA_VERSION, "level": level,
            "error_correlation": rho, "subjects_with_one_visit": int(unpaired), "targets": rows,
            "note": "aggregates only (no per-subject values)"}
