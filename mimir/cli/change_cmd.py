"""``mimir change``: visit-to-visit change per subject and target, with its standard error and a flag."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mimir.cli.agegap_cmd import PLATFORM_NOTE
from mimir.cli.app import EXIT_CODES_HELP, app, console, handle_errors, say


@app.command("change", epilog=EXIT_CODES_HELP)
@handle_errors
def change_cmd(
    predictions: Path = typer.Argument(..., metavar="PREDICTIONS", help="A mimir prediction file holding both "
                                       "visits (CSV wide or long, JSON, Parquet)."),
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FILE", help="Per-subject table: .csv, or .parquet (needs pyarrow). Required.",
        show_default=False),
    visits: str = typer.Option("2,3", "--visits", metavar="A,B", help="The two instances compared (change = B - A)."),
    target: Optional[list[str]] = typer.Option(  # noqa: UP007
        None, "--target", metavar="TARGET", help="Only this target (repeatable); default all.", show_default=False),
    level: float = typer.Option(0.95, "--level", metavar="P", help="Flag changes whose |z| exceeds the two-sided "
                                "normal quantile of P (1.96 at 0.95)."),
    error_correlation: float = typer.Option(0.0, "--error-correlation", metavar="RHO", help="Assumed correlation "
                                            "of the two visits' prediction errors (0: independent)."),
    dates: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--dates", metavar="TABLE", help="Phenotype table with the visit dates (field 53: p53_i2, 53-2.0, "
        "...), keyed by eid: adds years and change per year.", show_default=False),
    date_columns: Optional[str] = typer.Option(  # noqa: UP007
        None, "--date-columns", metavar="A,B", help="--dates: the date columns of the two visits (default: "
        "field 53 at each instance).", show_default=False),
    zips: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--zips", metavar="FOLDER", help="Read each visit's acquisition date (DICOM StudyDate) from "
        "FOLDER/<name>.zip instead.", show_default=False),
    summary: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--summary", metavar="FILE.json", help="Also write per-target aggregates (no per-subject values) as "
        "JSON.", show_default=False),
) -> None:
    """Change between two visits of the same subjects, per target, with its uncertainty.

    Pairs the rows of the same eid at instances A and B (default 2 and 3: UK
    Biobank's first and repeat imaging visits) and writes per subject and target
    both values, change = B - A, its se = sqrt(var_A + var_B), z, two-sided p,
    the interval and a flag where |z| exceeds the level, plus years and change
    per year where both dates are known (--dates or --zips). Assumes the two
    visits' errors are independent unless --error-correlation says otherwise
    (docs/derived.md). Duplicate subject visits and a target in several units are
    refused.

    Example: [bold]mimir change predictions.csv -o change.csv --dates participants.csv --summary change.json[/]
    """
    import numpy as np

    from mimir.analysis.change import change_summary, critical_z, visit_change
    from mimir.analysis.joins import check_outputs, dates_from_table, dates_from_zips, write_summary, write_table
    from mimir.analysis.tables import PhenotypeTable, read_predictions
    from mimir.errors import UsageError

    try:
        first, second = (int(v) for v in visits.split(","))
    except ValueError:
        raise UsageError(f"--visits takes two instances such as 2,3, got {visits!r}") from None
    if dates is not None and zips is not None:
        raise UsageError("give the visit dates once: --dates or --zips")
    if date_columns is not None and dates is None:
        raise UsageError("--date-columns needs --dates")
    critical_z(level)
    out = check_outputs(output, summary)
    preds = read_predictions(predictions)
    visit_dates = None
    if dates is not None:
        cols = None if date_columns is None else [c.strip() for c in date_columns.split(",")]
        visit_dates = dates_from_table(PhenotypeTable.read(dates), [first, second], cols)
    elif zips is not None:
        visit_dates = dates_from_zips(zips, preds[preds["instance"].isin([first, second])].dropna(subset=["eid"]))
    table, unpaired = visit_change(preds, first, second, level, error_correlation, visit_dates, target)
    if table.empty:
        raise UsageError(f"holds no subject seen at both instance {first} and instance {second}", predictions,
                         "Pass predictions of both visits in one file (mimir merge joins runs).")
    write_table(table, out)
    agg = change_summary(table, unpaired)
    if summary is not None:
        write_summary(agg, summary)

    view = Table(title=escape(f"change from instance {first} to {second} (level {level:g})"), title_justify="left")
    for col in ("target", "unit", "pairs", "flagged", "mean change", "sd change", "rms se", "sd z", "with dates"):
        view.add_column(col, justify="left" if col in ("target", "unit") else "right")
    rows = agg["targets"]
    assert isinstance(rows, list)
    for r in rows:
        view.add_row(escape(str(r["target"])), escape(str(r["unit"])), str(r["pairs"]),
                     f"{r['flagged']} ({100 * r['flagged_share']:.1f} %)", f"{r['mean_change']:+.3g}",
                     f"{r['sd_change']:.3g}", f"{r['rms_se']:.3g}", f"{r['sd_z']:.2f}", str(r["pairs_with_dates"]))
    console.print(view)
    if unpaired:
        say(f"{unpaired} subject(s) seen at only one of the two instances (not in the table)", stderr=True)
    usable = np.isfinite(table["change"].to_numpy(float)) & np.isfinite(table["change_se"].to_numpy(float))
    bad = int((~usable).sum())
    if bad:
        say(f"{bad} row(s) without a usable change kept with status (see the status column)", stderr=True)
    no_years = int(table["years"].isna().sum()) if visit_dates is not None else 0
    if no_years:
        say(f"{no_years} row(s) without years between the visits: a visit date missing or not after the first "
            "(kept; see the status column)", stderr=True)
    say(f"wrote {len(table)} row(s) ({table['eid'].nunique()} subjects) to {out}"
        + (f" and the summary to {summary}" if summary else ""))
    say(PLATFORM_NOTE.format(path=out), stderr=True)
