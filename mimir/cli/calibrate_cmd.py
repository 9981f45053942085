"""``mimir calibrate``: refit a module's interval widths on labelled subjects and install the derived module."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mimir.cli.app import EXIT_CODES_HELP, app, handle_errors, say


@app.command("calibrate", epilog=EXIT_CODES_HELP)
@handle_errors
def calibrate_cmd(
    predictions: Path = typer.Argument(..., metavar="PREDICTIONS", help="The module's predictions of labelled subjects."),
    reference: Path = typer.Argument(..., metavar="REFERENCE", help="Phenotype table with their reference values."),
    module: str = typer.Option(..., "-m", "--module", metavar="MODULE", help="The module whose intervals to refit."),
    name: str = typer.Option(..., "-o", "--output", metavar="NAME", help="Name of the derived module to install."),
    objective: str = typer.Option("auce", "--objective", metavar="OBJECTIVE",
                                  help="auce, ci95 or nll (mimir train's) or anneal (the original MIMIR code's)."),
    folds: int = typer.Option(5, "--folds", min=2, metavar="K", help="Cross-fitting groups for the held-out figures."),
    recalibrate_means: bool = typer.Option(
        False, "--recalibrate-means", help="Also fit a straight line to the means (marked in every output)."),
    maps: Optional[list[str]] = typer.Option(  # noqa: UP007 (typer needs Optional)
        None, "--map", metavar="TARGET=COLUMN", help="Reference column of a target (repeatable)."),
    seed: int = typer.Option(0, "--seed", min=0, metavar="N", help="Seed of the split into groups."),
    force: bool = typer.Option(False, "--force", help="Replace an installed module of that name."),
) -> None:
    """Refit the per-target variance scale factors of MODULE on your labelled subjects; install NAME.

    The derived module keeps the parent's member files (identical hashes) and means;
    only the intervals change (and the means too with --recalibrate-means, which its
    version, and so every output row, carries as '+calibrated-means'). Coverage and
    AUCE before and after are measured on subjects left out of each fit.

    Example: [bold]mimir calibrate -m phantom-demo preds.csv participant.csv -o phantom-demo-site[/]
    """
    from mimir.analysis.calibrate import calibrate_module
    from mimir.analysis.evaluate import parse_maps

    result = calibrate_module(module, predictions, reference, name, objective=objective, folds=folds,
                              recalibrate_means=recalibrate_means, maps=parse_maps(maps), seed=seed, force=force)
    say(f"{'target':<28} {'N':>6} {'scale':>9} {'cov95 before':>12} {'cov95 after':>11} {'AUCE before':>11} "
        f"{'AUCE after':>10}  (held out, {result.folds}-fold)")
    for rep in result.targets:
        if rep.fit is None:
            say(f"{rep.target:<28} {rep.n:>6}  {rep.note}")
            continue
        flag = "" if rep.fit.converged else f"  ({rep.fit.note or 'not converged'})"
        say(f"{rep.target:<28} {rep.n:>6} {rep.fit.scale:>9.4g} {rep.before['coverage_95']:>12.3f} "
            f"{rep.after['coverage_95']:>11.3f} {rep.before['auce']:>11.3f} {rep.after['auce']:>10.3f}{flag}")
    say(f"installed {result.module.name} {result.module.version} (derived from {result.parent.name} "
        f"{result.parent.version}; members unchanged)")
