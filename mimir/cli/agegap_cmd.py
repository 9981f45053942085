"""``mimir age-gap``: predicted minus chronological age, bias-corrected and cross-fitted, with standard errors."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mimir.cli.app import EXIT_CODES_HELP, app, console, handle_errors, say

#: Printed with every per-subject table written (UK Biobank's RAP lets only aggregates leave).
PLATFORM_NOTE = ("{path} holds one row per subject: keep it inside the platform (on UK Biobank's RAP only "
                 "aggregates may leave); the --summary JSON holds aggregates only.")


@app.command("age-gap", epilog=EXIT_CODES_HELP)
@handle_errors
def age_gap_cmd(
    predictions: Path = typer.Argument(..., metavar="PREDICTIONS",
                                       help="A mimir prediction file (CSV wide or long, JSON, Parquet)."),
    ages: Path = typer.Argument(..., metavar="AGES", help="Phenotype table with the age at the visit: field 21003 "
                                "(p21003_i2, 21003-2.0, ...) or an age column, keyed by eid (or by name)."),
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FILE", help="Per-subject table: .csv, or .parquet (needs pyarrow). Required.",
        show_default=False),
    target: Optional[str] = typer.Option(  # noqa: UP007
        None, "--target", metavar="TARGET", help="The age target (name or MODULE.TARGET); default: the only "
        "target in years.", show_default=False),
    method: str = typer.Option("gap", "--method", metavar="METHOD", help="Correction: gap (regress the gap on "
                               "age) or inverse (regress predicted on chronological age and invert)."),
    reference: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--reference", metavar="FILE", help="Eids of the reference group the correction is fitted on "
        "(one per line, or a table with an eid column); default: every subject.", show_default=False),
    folds: int = typer.Option(5, "--folds", min=2, metavar="K", help="Cross-fitting folds, dealt per subject "
                              "(eid): no subject's own values, from any visit, enter its correction."),
    seed: int = typer.Option(0, "--seed", min=0, metavar="N", help="Seed of the fold assignment."),
    level: float = typer.Option(0.95, "--level", metavar="P", help="Level of the corrected gap's interval."),
    age_column: Optional[str] = typer.Option(  # noqa: UP007
        None, "--age-column", metavar="COLUMN", help="The age column of AGES (default: field 21003 at each "
        "row's instance, else 'age').", show_default=False),
    summary: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--summary", metavar="FILE.json", help="Also write the aggregates (coefficients, MAE, correlations, "
        "N; no per-subject values) as JSON.", show_default=False),
) -> None:
    """Age gap per subject: raw, corrected for regression to the mean, and its standard error.

    Joins the age target of PREDICTIONS with the chronological age at the same
    visit (eid and instance), fits the correction on the reference group with
    K-fold cross-fitting, and writes one row per subject visit (columns and
    formulas: docs/derived.md). Duplicate subject visits, missing ages and an age
    target not in years are refused.

    Example: [bold]mimir age-gap predictions.csv participants.csv -o gaps.csv --summary gaps.json[/]
    """
    from mimir.analysis.agegap import age_gap_summary, age_gap_table, select_target
    from mimir.analysis.change import critical_z
    from mimir.analysis.joins import ages_for, check_outputs, read_eids, write_summary, write_table
    from mimir.analysis.tables import PhenotypeTable, read_predictions
    from mimir.errors import UsageError

    if method not in ("gap", "inverse"):
        raise UsageError(f"unknown --method {method!r}", hint="Choose gap or inverse.")
    critical_z(level)
    out = check_outputs(output, summary)
    rows = select_target(read_predictions(predictions), target, predictions)
    age = ages_for(rows, PhenotypeTable.read(ages), age_column)
    ref = read_eids(reference) if reference is not None else None
    table, result = age_gap_table(rows, age, str(rows["key"].iloc[0]), method, folds, seed, ref, level)
    write_table(table, out)
    agg = age_gap_summary(table, result)
    if summary is not None:
        write_summary(agg, summary)

    fit = result.fit_all
    view = Table(title=escape(f"age gap of {rows['module'].iloc[0]}.{rows['target'].iloc[0]} ({method}, "
                              f"{folds}-fold cross-fitted)"), title_justify="left")
    for col in ("group", "N", "MAE raw", "MAE corr.", "r(gap, age) raw", "r(gap, age) corr.", "mean corr. gap"):
        view.add_column(col, justify="left" if col == "group" else "right")
    for name in ("reference", "outside_reference", "all"):
        b = agg[name]
        assert isinstance(b, dict)
        if b["n"]:
            view.add_row(name.replace("_", " "), str(b["n"]), f"{b['mae_raw']:.2f}", f"{b['mae_corrected']:.2f}",
                         f"{b['corr_raw_gap_age']:+.3f}", f"{b['corr_corrected_gap_age']:+.3f}",
                         f"{b['mean_corrected_gap']:+.2f}")
    console.print(view)
    what = "gap" if method == "gap" else "predicted age"
    say(f"fit on the whole reference ({fit.n} subjects): {what} = {fit.intercept:.3f} (se "
        f"{fit.cov[0, 0] ** 0.5:.3f}) + {fit.slope:.4f} (se {fit.cov[1, 1] ** 0.5:.4f}) x age")
    missing = int((table["status"] != "ok").sum())
    if missing:
        say(f"{missing} subject visit(s) without a usable prediction kept with status (see the status column)",
            stderr=True)
    say(f"wrote {len(table)} subject visit(s) to {out}" + (f" and the summary to {summary}" if summary else ""))
    say(PLATFORM_NOTE.format(path=out), stderr=True)
