"""``mimir report``: one self-contained HTML page describing a batch output folder.

Reads what ``mimir batch`` (or ``mimir merge``) wrote into OUT_DIR:
``run.json`` (required), ``predictions.csv``, ``errors.csv`` and
``subjects.csv``; the QC columns ``qc_status``/``qc_flags`` and the
``<module>_ood_score`` columns are used when present and reported as "not
recorded" when empty; ``predictions.csv`` may be in the wide or the long
layout (docs/outputs.md). A ``mimir merge`` folder works too (its run.json
holds the modules in the validity key, and the shards' ``subjects.csv``
locate the inputs). The page holds:

- the run summary: inputs, predicted, failed, QC-flagged, unfinished, wall
  time, versions, devices, and every module with its version, digest, member
  hashes, intended use and description (the last two when the module is
  installed here);
- per target, histograms of the predicted means and of the interval widths
  over *all* predicted subjects, the module's published/validation accuracy
  beside them, and a table of summary statistics;
- the QC-flagged subjects (with their flags) and the failed subjects (with
  their errors), each linked to a detail panel with its preview (flagged
  ones) or error (failed ones) and predictions; and a random sample of the
  other subjects, likewise.

Everything is embedded (PNG images as ``data:`` URIs, CSS inline, no
JavaScript, no external URL); a subject's panel opens by following its link
(CSS ``:target``). Size stays bounded for a whole release: thumbnails only for
at most ``thumbnails`` subjects (flagged first, then the sample; a failed
subject has no image), made within ``thumbnail_budget_s`` seconds, and at
most ``max_listed`` rows per table. Previews are decoded from the inputs
(``subjects.csv``) through the image cache, so the subjects the batch just
decoded cost a hash and a read each.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimir import __version__
from mimir.errors import MimirError, UsageError
from mimir.utils import atomic

REPORT_HTML = "report.html"
#: Default number of subjects with a thumbnail.
DEFAULT_THUMBNAILS = 60
#: Default number of not-flagged, predicted subjects sampled for detail panels.
DEFAULT_SAMPLE = 24
#: Default maximum rows of the flagged and failed tables (the rest: a note).
DEFAULT_MAX_LISTED = 2000
#: Seconds spent at most on making thumbnails (decoding subjects).
THUMBNAIL_BUDGET_S = 30.0

_MEAN_COL = re.compile(r"^(?P<key>.+)_mean_in_(?P<unit>.*)$")
_QC_WARN = ("warn", "fail")


class ReportError(MimirError):
    """The folder cannot be reported on."""


@dataclass
class TargetColumns:
    """The four CSV columns of one target, and what is known of it."""

    key: str
    unit: str
    mean: str
    variance: str
    low: str
    high: str
    module: str | None = None
    name: str = ""


@dataclass
class Subject:
    """A subject shown in a detail panel."""

    anchor: str
    name: str
    kind: str  # "flagged", "failed" or "sample"
    qc_status: str = ""
    flags: list[str] = field(default_factory=list)
    error: str = ""
    stage: str = ""
    predictions: list[dict[str, str]] = field(default_factory=list)
    thumbnail: str | None = None  # data URI, small (the lists)
    preview: str | None = None  # data URI, full size (the detail panel)
    note: str = ""


@dataclass
class ReportResult:
    """What was written."""

    path: Path
    size_bytes: int
    seconds: float
    subjects: int
    predicted: int
    failed: int
    flagged: int | None
    thumbnails: int


# --------------------------------------------------------------------------- reading


def _read_run(folder: Path) -> dict[str, Any]:
    path = folder / "run.json"
    try:
        with open(path, encoding="utf-8") as fh:
            run = json.load(fh)
    except FileNotFoundError:
        raise ReportError("is not a mimir batch output folder (no run.json)", path=str(folder),
                          hint="Give the OUT_DIR of a mimir batch run.") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"has an unreadable run.json ({type(exc).__name__})", path=str(folder)) from None
    if not isinstance(run, dict):
        raise ReportError("has a run.json that is not a JSON object", path=str(folder))
    return run


def _read_predictions(folder: Path) -> Any:
    import pandas as pd

    path = folder / "predictions.csv"
    if not path.is_file():
        return pd.DataFrame({"name": pd.Series([], dtype=str)})
    try:
        df = pd.read_csv(path, dtype={"name": str, "qc_status": str, "qc_flags": str}, keep_default_na=False,
                         na_values=[""], low_memory=False)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read predictions.csv ({type(exc).__name__}: {exc})", path=str(folder)) from None
    if "name" not in df.columns:
        raise ReportError("predictions.csv has no name column", path=str(folder))
    for col in ("name", "qc_status", "qc_flags", "module", "target", "unit"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    if {"module", "target", "unit", "mean", "ci_low", "ci_high"} <= set(df.columns):
        df = long_to_wide(df)
    return df


def long_to_wide(df: Any) -> Any:
    """A long predictions table (``--format long``: a row per subject and target) in the wide layout.

    Keys follow the wide CSV's rule (docs/outputs.md): a target keeps its
    name in the first module that predicts it, later modules' copies are
    ``<module>.<target>``. Subjects keep their order of first appearance.
    """
    import pandas as pd

    keys: dict[tuple[str, str], tuple[str, str]] = {}
    used: set[str] = set()
    for m, t, u in df[["module", "target", "unit"]].drop_duplicates().itertuples(index=False):
        if (m, t) in keys:
            continue
        keys[(m, t)] = (t if t not in used else f"{m}.{t}", u)
        used.add(t)
    lead = [c for c in ("name", "eid", "instance", "qc_status", "qc_flags") if c in df.columns]
    wide = df.drop_duplicates("name")[lead].set_index("name", drop=False)
    columns: dict[str, Any] = {}
    for (m, t), (k, u) in keys.items():
        part = df[(df["module"] == m) & (df["target"] == t)].drop_duplicates("name").set_index("name")
        for col in ("mean", "variance", "ci_low", "ci_high"):
            if col in part.columns:
                columns[f"{k}_{col}_in_{u}"] = pd.to_numeric(part[col], errors="coerce").reindex(wide.index)
    if "ood_score" in df.columns:
        for m in dict.fromkeys(df["module"]):
            part = df[df["module"] == m].drop_duplicates("name").set_index("name")
            columns[f"{m}_ood_score"] = pd.to_numeric(part["ood_score"], errors="coerce").reindex(wide.index)
    return pd.concat([wide, pd.DataFrame(columns, index=wide.index)], axis=1).reset_index(drop=True)


def _read_errors(folder: Path) -> list[dict[str, str]]:
    path = folder / "errors.csv"
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return [dict(r) for r in csv.DictReader(fh)]
    except FileNotFoundError:
        return []
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read errors.csv ({type(exc).__name__})", path=str(folder)) from None


def _read_subject_paths(folder: Path) -> dict[str, str]:
    try:
        with open(folder / "subjects.csv", encoding="utf-8", newline="") as fh:
            return {r["name"]: r["path"] for r in csv.DictReader(fh)}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return {}


def target_columns(columns: list[str]) -> list[TargetColumns]:
    """The targets of a predictions.csv header (every ``<key>_mean_in_<unit>`` with its three siblings)."""
    out = []
    for c in columns:
        m = _MEAN_COL.match(c)
        if not m:
            continue
        k, u = m["key"], m["unit"]
        names = (f"{k}_variance_in_{u}", f"{k}_ci_low_in_{u}", f"{k}_ci_high_in_{u}")
        if all(n in columns for n in names):
            out.append(TargetColumns(k, u, c, *names, name=k.split(".")[-1]))
    return out


def _installed_specs(module_names: list[str]) -> dict[str, Any]:
    """Specs of the run's modules that are installed here (for intended use, metrics), by name."""
    try:
        from mimir.models.registry import scan_modules

        return {s.name: s for s in scan_modules().modules if s.name in module_names}
    except Exception:  # an unreadable registry only costs the extra details
        return {}


# --------------------------------------------------------------------------- numbers


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def _stats(v: np.ndarray) -> dict[str, str]:
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return {k: "-" for k in ("n", "mean", "sd", "min", "p5", "median", "p95", "max")} | {"n": "0"}
    p = np.percentile(finite, [5, 50, 95])
    return {"n": str(finite.size), "mean": _fmt(float(finite.mean())),
            "sd": _fmt(float(finite.std(ddof=1)) if finite.size > 1 else None),
            "min": _fmt(float(finite.min())), "p5": _fmt(float(p[0])), "median": _fmt(float(p[1])),
            "p95": _fmt(float(p[2])), "max": _fmt(float(finite.max()))}


def _accuracy(spec: Any, target: str) -> list[str]:
    """Lines describing the published/validation accuracy of a target, from module.json metrics."""
    if spec is None:
        return ["module not installed here: accuracy unknown"]
    t = next((t for t in spec.targets if t.name == target), None)
    if t is None or not t.metrics:
        return ["no published accuracy in module.json"]
    lines = []
    for kind, m in t.metrics.items():
        if not isinstance(m, dict):
            continue
        parts = [f"{k}={_fmt(float(m[k]))}" for k in ("n", "mae", "r2", "icc", "mape_percent")
                 if isinstance(m.get(k), (int, float))]
        label = m.get("method") or kind
        lines.append(f"{kind} ({label}): " + ", ".join(parts) if parts else f"{kind}: {label}")
    return lines or ["no published accuracy in module.json"]


def _data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _flag_list(text: Any) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return []
    return [f for f in text.split(";") if f]


# --------------------------------------------------------------------------- building


def build_report(
    out_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    thumbnails: int = DEFAULT_THUMBNAILS,
    sample: int = DEFAULT_SAMPLE,
    max_listed: int = DEFAULT_MAX_LISTED,
    image_loader: Callable[[str], np.ndarray] | None = None,
    thumbnail_budget_s: float = THUMBNAIL_BUDGET_S,
) -> ReportResult:
    """Write the HTML report of batch folder ``out_dir`` to ``output`` (default ``out_dir/report.html``).

    ``image_loader(path)`` returns the (3, 256, 256) image of an input for
    its thumbnail (default: the preprocessing pipeline with the image cache,
    which is fast for subjects the batch already decoded). Raises
    :class:`UsageError` when matplotlib or jinja2 is missing.
    """
    from mimir.outputs.figures import histogram_png, require_matplotlib

    require_matplotlib("report")
    try:
        import jinja2
    except ImportError:
        from mimir.outputs.figures import INSTALL_HINT

        raise UsageError("mimir report needs jinja2, which is not installed", hint=INSTALL_HINT) from None

    started = time.perf_counter()
    folder = Path(out_dir).expanduser()
    if not folder.is_dir():
        raise ReportError("is not a folder", path=str(out_dir), hint="Give the OUT_DIR of a mimir batch run.")
    dest = Path(output) if output is not None else folder / REPORT_HTML
    if dest.is_dir():
        raise UsageError("is a folder", path=str(dest), hint="Give an .html file name for -o.")
    atomic.check_writable_file(dest)  # before any work
    run = _read_run(folder)
    df = _read_predictions(folder)
    errors = _read_errors(folder)
    paths = _read_subject_paths(folder)
    for source in run.get("sources") or []:  # a mimir merge folder: the shards know the inputs
        if isinstance(source, str):
            paths = {**_read_subject_paths(Path(source)), **paths}
    columns = list(df.columns)
    targets = target_columns(columns)
    key = run.get("key") if isinstance(run.get("key"), dict) else {}
    module_ids = [m for m in (run.get("modules") or key.get("modules") or []) if isinstance(m, dict)]
    specs = _installed_specs([str(m.get("name")) for m in module_ids])
    for t in targets:  # which module predicts each target
        if "." in t.key and t.key.rsplit(".", 1)[0] in specs:
            t.module = t.key.rsplit(".", 1)[0]
        else:
            t.module = next((n for n, s in specs.items() if any(x.name == t.name for x in s.targets)), None)

    n_pred = int(len(df))
    failed_names = sorted({e.get("name", "") for e in errors})
    # QC is "recorded" when a subject has a verdict or a flag (the columns exist, empty, when it was not computed)
    has_qc = any(c in columns and bool((df[c].astype(str).str.strip() != "").any()) for c in ("qc_status", "qc_flags"))
    flagged_mask = np.zeros(n_pred, dtype=bool)
    if has_qc:
        status = df["qc_status"].astype(str).str.strip().str.lower() if "qc_status" in columns else None
        flags = df["qc_flags"].astype(str).str.strip() if "qc_flags" in columns else None
        if status is not None:
            flagged_mask |= status.isin(_QC_WARN).to_numpy()
        if flags is not None:
            flagged_mask |= ((flags != "") & (flags.str.lower() != "nan")).to_numpy()
    ood_cols = [c for c in columns if c.endswith("_ood_score")]
    counts = run.get("counts", {}) if isinstance(run.get("counts"), dict) else {}

    # --- per target: histograms and statistics over all predicted subjects
    target_views = []
    for t in targets:
        mean = _floats(df[t.mean])
        width = _floats(df[t.high]) - _floats(df[t.low])
        spec = specs.get(t.module) if t.module else None
        target_views.append({
            "key": t.key, "unit": t.unit, "module": t.module or "?",
            "hist_mean": _data_uri(histogram_png(mean, xlabel=f"{t.key} ({t.unit})", title="predicted mean")),
            "hist_width": _data_uri(histogram_png(width, xlabel=f"interval width ({t.unit})",
                                                  title="interval width", color="#a8643b")),
            "accuracy": _accuracy(spec, t.name),
            "stats": _stats(mean), "width_stats": _stats(width),
            "missing": int(np.sum(~np.isfinite(mean))),
        })

    # --- subjects with detail panels
    subjects: list[Subject] = []
    name_col = df["name"].astype(str).to_numpy()

    def predictions_of(i: int) -> list[dict[str, str]]:
        row = df.iloc[i]
        out = []
        for t in targets:
            out.append({"target": t.key, "unit": t.unit, "mean": _fmt(_num(row[t.mean])),
                        "low": _fmt(_num(row[t.low])), "high": _fmt(_num(row[t.high]))})
        for c in ood_cols:
            out.append({"target": c, "unit": "", "mean": _fmt(_num(row[c])), "low": "", "high": ""})
        return out

    flagged_idx = np.flatnonzero(flagged_mask)
    if has_qc and "qc_status" in columns:  # "fail" first, then "warn", then by name
        order = {"fail": 0, "warn": 1}
        st_arr = df["qc_status"].astype(str).str.lower().to_numpy()
        flagged_idx = np.array(sorted(flagged_idx, key=lambda i: (order.get(st_arr[i], 2), name_col[i])), dtype=int)
    for k, i in enumerate(flagged_idx[:max_listed]):
        row = df.iloc[int(i)]
        subjects.append(Subject(
            anchor=f"f{k}", name=name_col[i], kind="flagged",
            qc_status=str(row["qc_status"]) if "qc_status" in columns else "",
            flags=_flag_list(row["qc_flags"]) if "qc_flags" in columns else [],
            predictions=predictions_of(int(i))))
    by_name: dict[str, list[dict[str, str]]] = {}
    for e in errors:
        by_name.setdefault(e.get("name", ""), []).append(e)
    for k, name in enumerate(failed_names[:max_listed]):
        errs = by_name[name]
        subjects.append(Subject(anchor=f"e{k}", name=name, kind="failed",
                                stage="; ".join(sorted({e.get("stage", "") for e in errs})),
                                error=" | ".join(e.get("message", "") for e in errs)))
    rest = np.flatnonzero(~flagged_mask)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(rest, size=min(sample, rest.size), replace=False)) if rest.size else rest
    for k, i in enumerate(chosen):
        subjects.append(Subject(anchor=f"s{k}", name=name_col[i], kind="sample", predictions=predictions_of(int(i))))

    # --- thumbnails, within a count and a time budget
    loader = image_loader or _default_loader
    made = 0
    deadline = time.perf_counter() + thumbnail_budget_s
    from mimir.outputs.figures import labelled_jpeg

    for s in subjects:
        if made >= thumbnails or time.perf_counter() > deadline:
            break
        if s.kind == "failed":  # its input could not be made into an image: nothing to show, nothing to retry
            s.note = "no preview: the input could not be turned into an image"
            continue
        path = paths.get(s.name)
        if not path:
            s.note = "no input path recorded (subjects.csv)"
            continue
        try:
            image = loader(path)
        except MimirError as exc:
            s.note = f"no preview: {exc}"
            continue
        except Exception as exc:  # a thumbnail is never worth failing the report
            s.note = f"no preview: {type(exc).__name__}"
            continue
        s.thumbnail = _data_uri(labelled_jpeg(image, s.name, s.flags, width=260, quality=70), "jpeg")
        s.preview = _data_uri(labelled_jpeg(image, s.name, s.flags), "jpeg")
        made += 1
    for s in subjects:
        if s.thumbnail is None and not s.note:
            s.note = "no preview (thumbnail limit reached)"

    modules_view = []
    for m in module_ids:
        name = str(m.get("name"))
        spec = specs.get(name)
        use = getattr(spec, "intended_use", "") if spec is not None else ""
        if not use and f"{name}_intended_use" in columns and n_pred:
            use = str(df[f"{name}_intended_use"].iloc[0])
        note = getattr(spec, "intended_use_note", "") if spec is not None else ""
        modules_view.append({
            "name": name, "version": m.get("version"), "digest": m.get("digest", ""),
            "members": [str(h) for h in m.get("members", [])],
            "intended_use": use or "not stated", "intended_use_note": note,
            "synthetic": use == "synthetic-demo",
            "description": getattr(spec, "description", "") if spec is not None else "(module not installed here)",
        })
    summary = {
        "inputs": counts.get("subjects", counts.get("inputs", n_pred + len(failed_names))),
        "predicted": n_pred,
        "failed": len(failed_names),
        "flagged": int(flagged_mask.sum()) if has_qc else None,
        "unfinished": counts.get("unfinished", counts.get("missing")),
        "status": run.get("status") or ("merged" if "sources" in run else "?"),
        "wall_s": run.get("wall_s"),
        "wall": _duration(run.get("wall_s")),
        "throughput": run.get("throughput_subjects_per_s"),
        "started_at": run.get("started_at", ""), "finished_at": run.get("finished_at", ""),
        "engine": run.get("engine", ""), "devices": ", ".join(map(str, run.get("devices") or [])) or "-",
        "precision": run.get("precision", ""), "level": run.get("level", key.get("level")),
        "pipeline_version": run.get("pipeline_version") or key.get("pipeline_version", ""),
        "versions": run.get("versions") if isinstance(run.get("versions"), dict) else (
            {"mimir": run["mimir_version"]} if "mimir_version" in run else {}),
        "input": run.get("input", ""), "key_digest": run.get("key_digest", ""),
    }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mimir.batch", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    page = env.get_template("report.html.j2").render(
        title=f"mimir report: {folder.name}", folder=str(folder), summary=summary, modules=modules_view,
        synthetic=[m["name"] for m in modules_view if m["synthetic"]],
        targets=target_views, has_qc=has_qc, ood_cols=ood_cols,
        flagged=[s for s in subjects if s.kind == "flagged"], n_flagged=int(flagged_mask.sum()),
        failed=[s for s in subjects if s.kind == "failed"], n_failed=len(failed_names),
        sample=[s for s in subjects if s.kind == "sample"], subjects=subjects, max_listed=max_listed,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        mimir_version=__version__, thumbnails=made,
    )
    atomic.write_text(dest, page)
    return ReportResult(path=dest, size_bytes=len(page.encode("utf-8")), seconds=time.perf_counter() - started,
                        subjects=int(summary["inputs"] or 0), predicted=n_pred, failed=len(failed_names),
                        flagged=summary["flagged"], thumbnails=made)


def _floats(column: Any) -> np.ndarray:
    """A column as float64; cells that are not numbers (a damaged file) become NaN, i.e. missing."""
    import pandas as pd

    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _duration(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h} h {rem // 60} min" if h else f"{rem // 60} min {rem % 60} s"


def _default_loader(path: str) -> np.ndarray:
    from mimir.preprocessing.pipeline import load_input

    return load_input(path, cache=True)
