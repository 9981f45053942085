"""Writing results: CSV (wide or long), JSON and the Rich table, all from :class:`SubjectResult` records.

The schema (columns, JSON keys, the rule for targets two modules share) is
written down in ``docs/outputs.md``; :data:`SCHEMA_VERSION` is its version.

Wide CSV: one row per subject; ``name, eid, instance, qc_status, qc_flags,
ci_level``, per module ``<module>_version, <module>_intended_use,
<module>_ood_score``, then per target ``<Key>_mean_in_<Unit>``,
``<Key>_variance_in_<Unit>`` (MIMIR's column names),
``<Key>_ci_low_in_<Unit>``, ``<Key>_ci_high_in_<Unit>``.

Long CSV: one row per subject x target (:data:`LONG_HEADER`).

JSON: a list of subjects (:meth:`SubjectResult.to_json`); non-finite numbers are ``null``.

Files are written atomically (:mod:`mimir.utils.atomic`). Failed subjects
(``error`` set) are left out; they are reported separately.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.errors import UsageError
from mimir.inference.predictions import LONG_HEADER, OutputTarget, SubjectResult, csv_header, long_rows
from mimir.utils import atomic

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

FORMATS = {".csv": "csv", ".json": "json"}
#: Version of the output schema described in docs/outputs.md.
SCHEMA_VERSION = "2"
#: Layouts of the CSV: one row per subject (``wide``) or per subject x target (``long``).
CSV_LAYOUTS = ("wide", "long")


def check_layout(layout: str, path: str | os.PathLike[str] | None = None) -> str:
    """``wide`` or ``long``; :class:`UsageError` for anything else, or for ``long`` with a .json file."""
    if layout not in CSV_LAYOUTS:
        raise UsageError(f"unknown --format {layout!r}", hint="Use wide (one row per subject) or long (one row per target).")
    if layout == "long" and path is not None and output_format(path) == "json":
        raise UsageError(
            "--format long is a CSV layout", path=os.fspath(path), hint="Write a .csv file, or drop --format for JSON."
        )
    return layout


def output_format(path: str | os.PathLike[str]) -> str:
    """``csv`` or ``json`` from the file extension; :class:`UsageError` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"unknown output format {suffix or '(no extension)'!r}", path=os.fspath(path), hint="Use a .csv or .json file name."
        )
    return FORMATS[suffix]


def layout_of(results: Sequence[SubjectResult]) -> list[OutputTarget]:
    """The targets in the order they first appear in ``results``."""
    seen: dict[str, OutputTarget] = {}
    for r in results:
        for p in r.predictions:
            seen.setdefault(p.target.key, p.target)
    return list(seen.values())


def csv_text(results: Sequence[SubjectResult], layout: Sequence[OutputTarget] | None = None) -> str:
    """The CSV document for the successful ``results``."""
    ok = [r for r in results if r.ok]
    layout = list(layout) if layout is not None else layout_of(ok)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_header(layout), lineterminator="\n")
    writer.writeheader()
    for r in ok:
        writer.writerow(r.to_row(layout))
    return buf.getvalue()


def long_csv_text(results: Sequence[SubjectResult]) -> str:
    """The long CSV document (one row per subject x target) for the successful ``results``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LONG_HEADER, lineterminator="\n")
    writer.writeheader()
    for r in results:
        if r.ok:
            writer.writerows(long_rows(r.to_json()))
    return buf.getvalue()


def json_text(results: Sequence[SubjectResult]) -> str:
    """The JSON document (a list of subjects) for the successful ``results``."""
    return json.dumps([r.to_json() for r in results if r.ok], indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_csv(path: str | os.PathLike[str], results: Sequence[SubjectResult], layout: Sequence[OutputTarget] | None = None) -> None:
    atomic.write_text(path, csv_text(results, layout))


def write_json(path: str | os.PathLike[str], results: Sequence[SubjectResult]) -> None:
    atomic.write_text(path, json_text(results))


def write_results(
    path: str | os.PathLike[str],
    results: Sequence[SubjectResult],
    layout: Sequence[OutputTarget] | None = None,
    *,
    csv_layout: str = "wide",
) -> None:
    """Write ``results`` as CSV (``csv_layout`` wide or long) or JSON, chosen by the extension of ``path``."""
    check_layout(csv_layout, path)
    if output_format(path) == "csv":
        if csv_layout == "long":
            atomic.write_text(path, long_csv_text(results))
        else:
            write_csv(path, results, layout)
    else:
        write_json(path, results)


def _fmt(x: float) -> str:
    """Four significant digits, without switching to exponents for large values."""
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    return f"{x:.0f}" if abs(x) >= 1e4 else f"{x:.4g}"


_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def reliability_line(result: SubjectResult) -> str:
    """The subject's QC status, QC flags and OOD scores as one line of Rich markup (user text escaped).

    ``QC fail: fat_water_swap:station=3  |  OOD score phantom-demo 0.42 (flag above 1)``; a score of
    a module without a reference reads ``no reference``; an image input without QC ``QC not computed``.
    """
    from rich.markup import escape

    if result.qc_status is None:
        qc = "QC not computed (an image input)"
    else:
        style = _STATUS_STYLE.get(result.qc_status, "bold")
        flags = ", ".join(result.qc_flags) if result.qc_flags else "no flags"
        qc = f"QC [{style}]{escape(result.qc_status)}[/]: {escape(flags)}"
    scores = []
    for module, score in result.ood_scores.items():
        if score is None:
            scores.append(f"{escape(module)} no reference")
        else:
            mark = " [yellow](out of distribution)[/]" if score > 1 else ""
            scores.append(f"{escape(module)} {score:.2f}{mark}")
    ood = f"OOD score (flag above 1): {', '.join(scores)}" if scores else ""
    return qc + (f"  |  {ood}" if ood else "")


def render_tables(results: Sequence[SubjectResult], console: Console) -> None:
    """One Rich table per successful subject: target, value, unit, confidence interval, module.

    Under each table a line gives the subject's QC status and flags and its
    OOD score per module (:func:`reliability_line`).

    Predictions of a synthetic-demo module are marked in the module column and
    by a warning line under the table.
    """
    from rich.markup import escape
    from rich.table import Table

    synthetic: set[str] = set()
    for r in results:
        if not r.ok:
            continue
        level = r.predictions[0].level if r.predictions else 0.95
        table = Table(title=escape(r.name), title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("target")
        table.add_column("value", justify="right")
        table.add_column("unit")
        table.add_column(f"{level * 100:g}% CI", justify="right")
        table.add_column("module", style="dim")
        for p in r.predictions:
            low, high = p.ci
            t = p.target
            module = escape(t.module)
            if t.intended_use == "synthetic-demo":
                synthetic.add(t.module)
                module += " [yellow](synthetic demo)[/]"
            table.add_row(escape(t.key), _fmt(p.value), escape(t.unit), f"{_fmt(low)} .. {_fmt(high)}", module)
        console.print(table)
        console.print(reliability_line(r), highlight=False, soft_wrap=True)
    if synthetic:
        console.print(
            f"[yellow]warning:[/] {escape(', '.join(sorted(synthetic)))}: a synthetic demonstration module; "
            "its numbers mean nothing for real UK Biobank images.",
            highlight=False,
            soft_wrap=True,
        )
