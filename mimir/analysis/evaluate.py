"""``mimir evaluate``: agreement of predictions with UK Biobank reference fields, as aggregates safe to export.

:func:`join_reference` pairs every prediction with its reference value (matched
by UK Biobank field and instance, by ``--map target=column``, or by a column
named after the target); :func:`evaluate` computes the metrics of
:mod:`mimir.analysis.metrics` per module and target (and per QC status and OOD
flag) and writes an output folder that holds aggregates only:

- ``metrics.csv``: one row per module and target (:data:`METRIC_COLUMNS`);
- ``metrics.json``: the same plus the curves, coverage at every level and the subgroups;
- ``figures/<module>__<target>.png``: agreement and Bland-Altman as binned
  densities (cells with fewer than ``min_count`` subjects left empty),
  calibration curve, sparsification curve;
- ``evaluation.html``: all of it in one self-contained page.

No file in the folder holds an eid, a subject name or a per-subject value: a
target or subgroup with fewer than ``min_count`` subjects gets its N and no
metrics, curves are summarised at points where at least ``min_count`` subjects
are left, density plots use round-number bins. The joined per-subject table is
written only on request, to a file outside the folder (``per_subject``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mimir import __version__
from mimir.analysis import metrics as M
from mimir.analysis.tables import PhenotypeTable, read_predictions
from mimir.errors import UsageError
from mimir.utils import atomic
from mimir.utils.install import extra_hint

#: Columns of metrics.csv, in order (docs/evaluate.md). Schema version below.
METRIC_COLUMNS = (
    "module", "module_version", "target", "unit", "field", "reference_column", "n", "suppressed", "bias", "sd_diff",
    "loa_low", "loa_high", "icc", "icc_ci_low", "icc_ci_high", "icc_original", "r2", "pearson_r", "mae",
    "mape_percent", "n_calibration", "level", "coverage", "coverage_50", "coverage_80", "coverage_90",
    "coverage_95", "auce",
    "published_n", "published_icc", "published_r2", "published_mae", "published_mape_percent",
)
SCHEMA = "mimir-evaluation"
#: 2: ``n_calibration`` added; agreement metrics on every subject with a prediction and a reference
#: (1 computed them on the subjects with an interval only).
SCHEMA_VERSION = 2
DEFAULT_MIN_COUNT = 10
#: Bins per axis of the density plots (about; round-number edges).
DENSITY_BINS = 24
SAFE_NOTE = ("Aggregates only: this folder holds no participant id and no per-subject value. Density plots "
             "leave empty every cell with fewer than {k} subjects; groups with fewer than {k} subjects show "
             "their count only. Safe to export under the UK Biobank rule that only aggregate results leave "
             "the platform.")
PER_SUBJECT_NOTE = ("Per-subject table: participant ids with predictions and reference values. For use inside "
                    "the platform only; do not export it.")
#: Columns of the joined per-subject table (``--per-subject``).
JOINED_COLUMNS = ("name", "eid", "instance", "module", "module_version", "target", "unit", "field",
                  "reference_column", "reference", "mean", "variance", "sd", "ci_low", "ci_high", "level",
                  "qc_status", "ood_flag")


def parse_maps(items: list[str] | None) -> dict[str, str]:
    """``["target=column", ...]`` -> {target: column}; a malformed item is a one-line error."""
    out: dict[str, str] = {}
    for item in items or []:
        target, sep, column = item.partition("=")
        if not sep or not target.strip() or not column.strip():
            raise UsageError(f"--map {item!r} is not TARGET=COLUMN", hint="Example: --map weight=p21002_i2")
        out[target.strip()] = column.strip()
    return out


def _catalogue_units() -> dict[int, str]:
    from mimir.models.catalogue import catalogue

    return {e.field: e.unit for e in catalogue() if e.field is not None}


#: Spellings of one unit (lower case, no spaces) -> the catalogue's spelling.
_UNIT_ALIASES = {"percent": "%", "pct": "%", "litre": "l", "liter": "l", "litres": "l", "liters": "l",
                 "year": "years", "kilogram": "kg", "kilograms": "kg", "centimetre": "cm", "centimeter": "cm"}


def _norm_unit(unit: Any) -> str:
    text = str(unit or "").strip().lower().replace(" ", "")
    return _UNIT_ALIASES.get(text, text)


def join_reference(predictions: pd.DataFrame, table: PhenotypeTable,
                   maps: dict[str, str] | None = None, *, predictions_path: Path | None = None) -> pd.DataFrame:
    """The long prediction frame with the reference value of each row (:data:`JOINED_COLUMNS`).

    A target is matched, in this order, to: the column given by ``maps`` (keyed by
    ``module.target``, the output key, or the target name); the column of its UK
    Biobank field at the subject's instance (any convention; a field recorded
    without instances matches every instance); a column named like the target.
    Rows of targets with no match are dropped (the caller reports them). The
    prediction's unit must be the unit UK Biobank records the field in (from the
    catalogue), else a :class:`UsageError` names both.
    """
    maps = dict(maps or {})
    by_name = table.key == "name"
    if not by_name and predictions["eid"].isna().all():
        raise UsageError("has no participant ids (its names are not <eid>_20201_<instance>_0)", predictions_path,
                         "Pass a phenotype table keyed by name instead, or name the inputs as UK Biobank does.")
    used = set()
    units = _catalogue_units()
    pieces = []
    columns = {str(c) for c in table.frame.columns}
    for (module, target, key), rows in predictions.groupby(["module", "target", "key"], sort=False, dropna=False):
        explicit = maps.get(f"{module}.{target}") or maps.get(key) or maps.get(target)
        field_ = rows["field"].iloc[0]
        unit = rows["unit"].iloc[0]
        chosen: pd.Series = pd.Series([None] * len(rows), index=rows.index, dtype=object)
        if explicit is not None:
            if explicit not in columns:
                raise UsageError(f"has no column {explicit!r} (given by --map for {target})", table.path,
                                 "Map the target to one of the table's columns.")
            used.update(k for k in (f"{module}.{target}", key, target) if k in maps)
            chosen[:] = explicit
        elif field_ is not None and not (isinstance(field_, float) and math.isnan(field_)):
            for inst, part in rows.groupby(rows["instance"].fillna(-1), dropna=False):
                col = table.find(int(field_), None if inst == -1 else int(inst))
                if col is None and inst == -1:
                    cands = {fc.column for fc in table.fields if fc.field == int(field_)}
                    col = cands.pop() if len(cands) == 1 else None
                chosen[part.index] = col
            known = units.get(int(field_))
            if chosen.notna().any() and known is not None and _norm_unit(known) != _norm_unit(unit):
                raise UsageError(
                    f"target {target} of module {module} is in {unit!r}, UK Biobank records field {int(field_)} in "
                    f"{known!r}", predictions_path,
                    f"Map the target to a column in {unit!r} with --map {target}=COLUMN, or convert the column.")
        if chosen.isna().all():
            plain = next((c for c in (key, target) if c in columns), None)
            if plain is not None:
                chosen[:] = plain
        if chosen.isna().all():
            continue
        values = {c: table.values(c) for c in set(chosen.dropna())}
        lookup = rows["name"] if by_name else rows["eid"]
        ref = [values[c].get(k, math.nan) if c is not None and k is not None and not pd.isna(k) else math.nan
               for c, k in zip(chosen, lookup)]
        part = rows.assign(reference_column=chosen, reference=pd.to_numeric(pd.Series(ref, index=rows.index)))
        pieces.append(part)
    unknown = set(maps) - used - {k for k in maps if k in set(predictions["target"]) | set(predictions["key"])}
    unknown -= {f"{m}.{t}" for m, t in zip(predictions["module"], predictions["target"])}
    if unknown:
        raise UsageError(f"--map names {sorted(unknown)[0]!r}, which no prediction in the file has", predictions_path,
                         "Use the target name as the predictions show it (mimir list-targets).")
    if not pieces:
        return pd.DataFrame(columns=list(JOINED_COLUMNS))
    joined = pd.concat(pieces, ignore_index=True)
    return joined[list(JOINED_COLUMNS)]


@dataclass
class EvaluationResult:
    """What :func:`evaluate` wrote and found."""

    out_dir: Path
    rows: list[dict[str, Any]]
    unmatched: list[str] = field(default_factory=list)
    per_subject: Path | None = None

    @property
    def evaluated(self) -> int:
        return sum(1 for r in self.rows if not r["suppressed"])


def _published(module: str, target: str) -> dict[str, Any]:
    """The module's published figures for ``target`` (module.json, else the catalogue), as published_* keys."""
    from mimir.errors import MimirError
    from mimir.models.catalogue import catalogue_by_name
    from mimir.models.registry import get_module

    found: dict[str, Any] | None = None
    try:
        spec = get_module(module)
        t = next((t for t in spec.targets if t.name == target), None)
        if t is not None and t.metrics:
            found = t.metrics.get("test") or t.metrics.get("cv")
    except MimirError:
        pass
    if found is None:
        entry = catalogue_by_name().get(target)
        if entry is not None and (entry.test or entry.cv) is not None:
            found = (entry.test or entry.cv).to_json()  # type: ignore[union-attr]
    found = found or {}
    return {f"published_{k}": found.get(k) for k in ("n", "icc", "r2", "mae", "mape_percent")}


#: Keys of :func:`group_metrics` computed from the intervals (None when too few subjects have one).
CALIBRATION_KEYS = ("coverage", *(f"coverage_{round(lv * 100)}" for lv in M.COVERAGE_LEVELS), "auce",
                    "calibration_curve", "sparsification")


def group_metrics(reference: np.ndarray, mean: np.ndarray, variance: np.ndarray, low: np.ndarray,
                  high: np.ndarray, level: float, min_count: int) -> dict[str, Any]:
    """Every metric of one group of subjects, or only the counts (and ``suppressed``) below ``min_count``.

    The agreement metrics (bias ... MAPE) use every subject with a prediction and
    a reference (``n``); the calibration metrics (:data:`CALIBRATION_KEYS`) those
    of them whose prediction also has a variance and an interval
    (``n_calibration``), and are None when those are fewer than ``min_count``.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (reference, mean, variance, low, high)]
    paired = np.isfinite(arrays[0]) & np.isfinite(arrays[1])
    with_interval = paired & np.isfinite(arrays[2]) & np.isfinite(arrays[3]) & np.isfinite(arrays[4])
    n, n_cal = int(paired.sum()), int(with_interval.sum())
    if n < min_count or n < 3:
        return {"n": n, "n_calibration": n_cal, "suppressed": True}
    out: dict[str, Any] = {"suppressed": False, **M.agreement(arrays[0][paired], arrays[1][paired])}
    out["n_calibration"] = n_cal
    out["level"] = level
    if n_cal < min_count or n_cal < 3:
        out.update(dict.fromkeys(CALIBRATION_KEYS))
        return out
    r, m, v, lo, hi = (a[with_interval] for a in arrays)
    out["coverage"] = float(np.mean((r >= lo) & (r <= hi)))
    for lv in M.COVERAGE_LEVELS:
        out[f"coverage_{round(lv * 100)}"] = M.coverage(r, m, v, lv)
    levels, fractions = M.calibration_curve(r, m, v)
    out["auce"] = M.auce_trapezoid(levels, fractions)
    out["calibration_curve"] = {"level": levels.tolist(), "fraction": fractions.tolist()}
    out["sparsification"] = M.sparsification_summary(r, m, v, min_count)
    return out


def _subgroups(part: pd.DataFrame, level: float, min_count: int) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for label, mask in [*((f"qc_status={s}", part["qc_status"] == s) for s in sorted(part["qc_status"].dropna().unique())),
                        ("ood_flag=false", ~part["ood_flag"].astype(bool)), ("ood_flag=true", part["ood_flag"].astype(bool))]:
        sub = part[mask]
        if len(sub) == 0:
            continue
        g = group_metrics(*_arrays(sub), level, min_count)
        if g["suppressed"]:
            continue  # a small group is left out altogether
        groups[label] = {k: v for k, v in g.items() if k not in ("calibration_curve", "sparsification")}
    return groups


def _arrays(part: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(part[c].to_numpy(dtype=np.float64) for c in ("reference", "mean", "variance", "ci_low", "ci_high"))


def _field_of(part: pd.DataFrame) -> int | None:
    fields = [f for f in part["field"] if f is not None and not (isinstance(f, float) and math.isnan(f))]
    return int(fields[0]) if fields else None


def evaluate_frame(joined: pd.DataFrame, min_count: int = DEFAULT_MIN_COUNT) -> list[dict[str, Any]]:
    """One record per module and target of a joined frame (:func:`join_reference`), subgroups included."""
    records = []
    for (module, target), part in joined.groupby(["module", "target"], sort=False):
        part = part[np.isfinite(part["reference"].to_numpy(dtype=float)) & np.isfinite(part["mean"].to_numpy(dtype=float))]
        levels = part["level"].dropna().unique()
        level = float(levels[0]) if len(levels) else math.nan
        g = group_metrics(*_arrays(part), level, min_count)
        rec: dict[str, Any] = {
            "module": module, "module_version": str(part["module_version"].iloc[0]) if len(part) else "",
            "target": target, "unit": joined.loc[part.index[0], "unit"] if len(part) else "",
            "field": _field_of(part),
            "reference_column": ";".join(sorted(set(part["reference_column"].dropna()))),
            **{k: v for k, v in g.items()}, **_published(str(module), str(target)),
        }
        rec["subgroups"] = _subgroups(part, level, min_count) if not g["suppressed"] else {}
        records.append(rec)
    return records


# --------------------------------------------------------------------------- output


def _csv(records: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame([{c: r.get(c) for c in METRIC_COLUMNS} for r in records], columns=list(METRIC_COLUMNS))
    return frame.to_csv(index=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _figure(joined_part: pd.DataFrame, rec: dict[str, Any], min_count: int) -> bytes:
    """One PNG: agreement and Bland-Altman densities, calibration curve, sparsification (aggregates only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    r, m = M.complete(*_arrays(joined_part)[:2])  # agreement: every subject with a prediction and a reference
    unit = rec["unit"]
    fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
    both = M.nice_edges(np.concatenate([r, m]), DENSITY_BINS)  # one scale for both axes of the agreement plot
    counts, xe, ye = M.binned_density(r, m, DENSITY_BINS, min_count, x_edges=both, y_edges=both)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad((1, 1, 1, 0))
    finite = counts[np.isfinite(counts)]
    norm = LogNorm(vmin=max(min_count, 1), vmax=max(finite.max(), min_count + 1)) if finite.size else None
    mesh = ax[0].pcolormesh(xe, ye, counts.T, cmap=cmap, norm=norm)
    ax[0].plot([both[0], both[-1]], [both[0], both[-1]], "--", color="0.6", lw=1)
    ax[0].set(xlabel=f"reference ({unit})", ylabel=f"predicted ({unit})",
              title=f"{rec['target']}: ICC {rec['icc']:.3f}, R2 {rec['r2']:.3f}")
    fig.colorbar(mesh, ax=ax[0], label="subjects per cell")
    avg, diff = (r + m) / 2.0, m - r
    counts2, xe2, ye2 = M.binned_density(avg, diff, DENSITY_BINS, min_count)
    finite2 = counts2[np.isfinite(counts2)]
    norm2 = LogNorm(vmin=max(min_count, 1), vmax=max(finite2.max(), min_count + 1)) if finite2.size else None
    mesh2 = ax[1].pcolormesh(xe2, ye2, counts2.T, cmap=cmap, norm=norm2)
    for y, style in ((rec["bias"], "-"), (rec["loa_low"], "--"), (rec["loa_high"], "--")):
        ax[1].axhline(y, color="C3", ls=style, lw=1)
    ax[1].set(xlabel=f"mean of the two ({unit})", ylabel=f"predicted - reference ({unit})",
              title=f"Bland-Altman: bias {rec['bias']:.3g}, LoA {rec['loa_low']:.3g} to {rec['loa_high']:.3g}")
    fig.colorbar(mesh2, ax=ax[1], label="subjects per cell")
    curve = rec["calibration_curve"]
    ax[2].plot([0, 1], [0, 1], "--", color="0.7")
    if curve is not None:
        ax[2].plot(curve["level"], curve["fraction"], marker=".")
    ax[2].set(xlabel="interval level", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1),
              title=f"calibration: AUCE {rec['auce']:.3f}" if curve is not None
              else f"calibration: {rec['n_calibration']} subjects with an interval")
    sp = rec["sparsification"]
    if sp is not None:
        ax[3].plot([p["removed"] for p in sp], [p["mae"] for p in sp], marker=".", label="by predicted variance")
        ax[3].plot([p["removed"] for p in sp], [p["oracle_mae"] for p in sp], ls="--", color="0.5",
                   label="oracle (by error)")
        ax[3].legend(fontsize=8)
    ax[3].set(xlabel="fraction removed (most uncertain first)", ylabel=f"MAE of the rest ({unit})",
              title="sparsification")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()



def _safe_file_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:120]


def evaluate(predictions: str | os.PathLike[str], reference: str | os.PathLike[str], out_dir: str | os.PathLike[str],
             *, maps: dict[str, str] | None = None, min_count: int = DEFAULT_MIN_COUNT,
             per_subject: str | os.PathLike[str] | None = None, figures: bool = True) -> EvaluationResult:
    """Evaluate a prediction file against a phenotype table; write the export-safe folder ``out_dir``.

    ``min_count`` (>= 1) is the smallest group whose metrics are written and the
    smallest density cell drawn. ``per_subject``, a file outside ``out_dir``,
    receives the joined per-subject table (CSV, platform-only). ``figures`` needs
    matplotlib and jinja2 (the ``report`` extra).
    """
    if min_count < 1:
        raise UsageError(f"--min-count is {min_count}; it must be at least 1")
    out = Path(out_dir)
    if per_subject is not None:
        ps = Path(per_subject).resolve()
        if out.resolve() in ps.parents:
            raise UsageError("is inside the output folder, which must hold aggregates only", per_subject,
                             "Write the per-subject table somewhere else (it must not leave the platform).")
        atomic.check_writable_dir(ps.parent, what="folder of the per-subject table")
    if figures:
        _need_report_extra()
    atomic.check_writable_dir(out)
    preds = read_predictions(predictions)
    table = PhenotypeTable.read(reference)
    joined = join_reference(preds, table, maps, predictions_path=Path(predictions))
    matched = set(zip(joined["module"], joined["target"]))
    unmatched = sorted({f"{m}.{t}" for m, t in zip(preds["module"], preds["target"])} - {f"{m}.{t}" for m, t in matched})
    if joined.empty:
        raise UsageError("matches no target of the predictions (no field column, no --map, no column named after a "
                         "target)", reference, "Export the targets' UK Biobank fields, or pass --map TARGET=COLUMN.")
    records = evaluate_frame(joined, min_count)
    if figures:
        for rec in records:
            if rec["suppressed"]:
                continue
            part = joined[(joined["module"] == rec["module"]) & (joined["target"] == rec["target"])]
            png = _figure(part, rec, min_count)
            rec["figure"] = f"figures/{_safe_file_part(rec['module'])}__{_safe_file_part(rec['target'])}.png"
            atomic.write_bytes(out / rec["figure"], png)
            rec["_png"] = png
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "mimir_version": __version__, "created": created,
        "note": SAFE_NOTE.format(k=min_count), "min_count": min_count,
        "predictions": Path(predictions).name, "reference": Path(reference).name,
        "icc_note": "icc is ICC(2,1) (absolute agreement); icc_original is the original MIMIR code's formula",
        "mape_note": "mape_percent is in percent", "unmatched_targets": unmatched,
        "targets": [{k: v for k, v in r.items() if not k.startswith("_")} for r in records],
    }
    atomic.write_text(out / "metrics.csv", _csv(records))
    atomic.write_text(out / "metrics.json", json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n")
    if figures:
        atomic.write_text(out / "evaluation.html", _html(doc, records))
    written = None
    if per_subject is not None:
        text = f"# {PER_SUBJECT_NOTE}\n" + joined.to_csv(index=False)
        atomic.write_text(per_subject, text)
        written = Path(per_subject)
    return EvaluationResult(out, records, unmatched, written)


def _need_report_extra() -> None:
    try:
        import jinja2  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("figures and evaluation.html need matplotlib and jinja2, which are not installed",
                         hint=f"{extra_hint('report').rstrip('.')}; or pass --no-figures.") from None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}g}"


def _html(doc: dict[str, Any], records: list[dict[str, Any]]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("mimir.analysis", "templates"), autoescape=True)
    env.filters["num"] = _fmt
    for rec in records:
        if "_png" in rec:
            rec["png_uri"] = "data:image/png;base64," + base64.b64encode(rec["_png"]).decode("ascii")
    return env.get_template("evaluation.html.j2").render(doc=doc, records=records, title="mimir evaluation")
