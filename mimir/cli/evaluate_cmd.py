"""``mimir evaluate``: agreement of predictions with UK Biobank reference fields, written as aggregates only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mimir.cli.app import EXIT_CODES_HELP, app, handle_errors, say


@app.command("evaluate", epilog=EXIT_CODES_HELP)
@handle_errors
def evaluate_cmd(
    predictions: Path = typer.Argument(..., metavar="PREDICTIONS",
                                       help="What predict, batch or merge wrote (CSV wide or long, JSON, Parquet)."),
    reference: Path = typer.Argument(..., metavar="REFERENCE",
                                     help="Phenotype table keyed by eid (p21002_i2, 21002-2.0, ...) or by name."),
    output: Path = typer.Option(..., "-o", "--output", metavar="DIR", help="Folder for the export-safe results."),
    maps: Optional[list[str]] = typer.Option(  # noqa: UP007 (typer needs Optional)
        None, "--map", metavar="TARGET=COLUMN", help="Reference column of a target (repeatable)."),
    min_count: int = typer.Option(10, "--min-count", min=1, metavar="N",
                                  help="Smallest group shown and smallest density cell drawn."),
    per_subject: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--per-subject", metavar="FILE",
        help="Also write the joined per-subject table here (outside DIR; for use inside the platform only)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Figures and evaluation.html (report extra)."),
) -> None:
    """Compare predictions with UK Biobank's reference fields: ICC, R2, MAE, MAPE, Bland-Altman, coverage, AUCE.

    Writes DIR/metrics.csv, DIR/metrics.json, DIR/figures/ and DIR/evaluation.html.
    DIR holds aggregates only (no eid, no per-subject value): safe to export.

    Example: [bold]mimir evaluate out/predictions.csv participant.csv -o evaluation/[/]
    """
    from mimir.analysis.evaluate import evaluate, parse_maps

    result = evaluate(predictions, reference, output, maps=parse_maps(maps), min_count=min_count,
                      per_subject=per_subject, figures=figures)
    for rec in result.rows:
        if rec["suppressed"]:
            say(f"{rec['module']} {rec['target']}: N={rec['n']} (fewer than {min_count}: no metrics)")
        else:
            n_cal = rec["n_calibration"]
            if rec["coverage"] is None:
                cal = f"no coverage or AUCE ({n_cal} with an interval, fewer than {min_count})"
            else:
                cal = f"coverage {rec['coverage']:.3f} at {rec['level']:g}, AUCE {rec['auce']:.3f}"
                if n_cal < rec["n"]:
                    cal += f" (N={n_cal} with an interval)"
            say(f"{rec['module']} {rec['target']}: N={rec['n']}, ICC {rec['icc']:.3f} "
                f"[{rec['icc_ci_low']:.3f}, {rec['icc_ci_high']:.3f}], MAE {rec['mae']:.4g} {rec['unit']}, "
                f"bias {rec['bias']:.4g}, {cal}")
    if result.unmatched:
        say(f"no reference column for: {', '.join(result.unmatched)} (pass --map TARGET=COLUMN)", stderr=True)
    say(f"wrote {result.out_dir} (aggregates only: safe to export)")
    if result.per_subject is not None:
        say(f"wrote {result.per_subject} (per-subject: for use inside the platform only; do not export)")
