"""``mimir synth``: write synthetic UK Biobank field-20201 zips with known truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mimir.cli.app import EXIT_CODES_HELP, app, console, err_console, handle_errors, pick_output, say
from mimir.utils.atomic import check_writable_dir, check_writable_file


@app.command(epilog=EXIT_CODES_HELP)
@handle_errors
def synth(
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FOLDER",
        help="Folder for the zips and truth files (created if missing). Required: give it here or as the "
             "argument FOLDER (mimir synth data/ works too).", show_default=False,
    ),
    folder: Optional[Path] = typer.Argument(  # noqa: UP007 (the old positional spelling of -o)
        None, metavar="FOLDER", hidden=True, show_default=False,
    ),
    n: int = typer.Option(1, "--n", "-n", min=1, metavar="N", help="Number of subjects."),
    seed: int = typer.Option(0, "--seed", min=0, metavar="N", help="Seed of the first subject (subject i uses seed + i)."),
    variant: Optional[str] = typer.Option(  # noqa: UP007
        None, "--variant", metavar="VARIANT", help="Irregularity to build in (the variants are listed above); default: a regular zip.",
        show_default=False,
    ),
    small: bool = typer.Option(False, "--small", help="Reduced size (64 columns, 12-18 slices per station) "
                                                      "for fast tests."),
    swap_station: Optional[int] = typer.Option(  # noqa: UP007
        None, "--swap-station", metavar="N", help="fat_water_swap / fat_water_swap_partial: the station (1-6) "
        "to swap; default: drawn from the seed.", show_default=False),
    swap_region: Optional[str] = typer.Option(  # noqa: UP007
        None, "--swap-region", metavar="REGION", help="fat_water_swap_partial: left, right, arms or slices; "
        "default: drawn from the seed.", show_default=False),
    follow_up: Optional[str] = typer.Option(  # noqa: UP007
        None, "--follow-up", metavar="CHANGE", help="Also write each subject's follow-up visit (same eid, "
        "<eid>_20201_3_0.zip and its truth, a new acquisition 2-3 years later) with this change: none, weight, "
        "liver_fat, vat or thigh_muscle.", show_default=False),
    change_size: Optional[float] = typer.Option(  # noqa: UP007
        None, "--change-size", metavar="X", help="--follow-up: size of the change (weight, thigh_muscle: fraction; "
        "liver_fat: percentage points; vat: visceral load 0-1); default per change (see docs/derived.md).",
        show_default=False),
    truth_table: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--truth-table", metavar="FILE.csv", help="Also write the truth of the subjects written as one "
        "reference table (a row per visit, keyed by subject name, columns named after phantom-demo's targets, "
        "plus sex and age): the REFERENCE of mimir evaluate and mimir calibrate, no --map needed.",
        show_default=False),
) -> None:
    """Generate synthetic subjects: <eid>_20201_2_0.zip plus <eid>.truth.json.

    The same seed always gives the same bytes; eid = 1000000 + seed.
    Variants: rescan, missing_slice, wf_shape_mismatch, no_manifest, manifest_csv,
    fat_water_swap, fat_water_swap_partial, truncated, wf_position_mismatch, missing_station, no_overlap, no_dicom.

    Example: [bold]mimir synth -o data/ --n 10 --seed 0 --small[/]

    Follow-up visits: [bold]mimir synth -o pairs/ --n 10 --small --follow-up liver_fat --change-size 2[/]

    A reference table to try mimir evaluate on: [bold]mimir synth -o eval/ --n 40 --truth-table truth.csv[/]
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mimir.synth import default_eid, generate_subject

    out = pick_output(output, folder, required=True)
    default_eid(seed + n - 1)  # range check before writing anything
    if variant is not None:
        from mimir.synth import VARIANTS

        if variant not in VARIANTS:
            from mimir.errors import UsageError

            raise UsageError(f"unknown variant {variant!r}", hint=f"Choose one of: {', '.join(VARIANTS)}.")
    if swap_station is not None or swap_region is not None:  # option errors before writing anything
        from mimir.synth import build_study

        build_study(seed, variant=variant, small=True, swap_station=swap_station, swap_region=swap_region)
    if follow_up is not None or change_size is not None:
        from mimir.synth.body import draw_params
        from mimir.synth.followup import changed_params

        if follow_up is None:
            from mimir.errors import UsageError

            raise UsageError("--change-size needs --follow-up", hint="Add --follow-up CHANGE.")
        changed_params(draw_params(seed), follow_up, change_size)  # an unknown change or bad size: before writing
    if truth_table is not None:
        check_writable_file(truth_table, what="truth table")
    check_writable_dir(out)  # every option checked, the folder made: before any work
    table = Table(title=escape(f"synthetic subjects written to {out}"), title_justify="left")
    for col in ("eid", "sex", "kg", "cm", "VAT L", "ASAT L", "liver %", "thigh L", "zip MB"):
        table.add_column(col, justify="left" if col == "sex" else "right", no_wrap=True)
    started = time.perf_counter()
    subjects = []
    bar = Progress(
        TextColumn("drawing subjects"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    )
    with bar:
        task = bar.add_task("synth", total=n)
        for i in range(n):
            visits = [generate_subject(out, seed + i, variant=variant, small=small, swap_station=swap_station,
                                       swap_region=swap_region)]
            if follow_up is not None:
                visits.append(generate_subject(out, seed + i, variant=variant, small=small,
                                               swap_station=swap_station, swap_region=swap_region, instance=3,
                                               change=follow_up, change_size=change_size))
            subjects.extend(visits)
            bar.advance(task)
            for sub in visits:
                t = sub.truth
                table.add_row(
                    f"{t['eid']}{' i3' if 'follow_up' in t else ''}", str(t["sex"]), f"{t['weight_kg']:.1f}",
                    f"{t['height_cm']:.1f}", f"{t['vat_volume_l']:.2f}", f"{t['asat_volume_l']:.2f}",
                    f"{t['liver_fat_percent']:.1f}", f"{t['thigh_muscle_volume_l']:.2f}",
                    f"{sub.zip_path.stat().st_size / 1e6:.1f}",
                )
    console.print(table)
    for sub in subjects:
        say(f"  {sub.zip_path}  {sub.truth_path.name}")
    kind = f"variant {variant}" if variant else "regular"
    if truth_table is not None:
        from mimir.synth.truth_table import write_truth_table

        write_truth_table(truth_table, ((s.zip_path.name.removesuffix(".zip"), s.truth) for s in subjects))
        say(f"  truth table: {truth_table} ({len(subjects)} row(s))")
    size = " small" if small else ""
    what = f"{n} {escape(kind)}{size} subject(s)"
    if follow_up is not None:
        what += f", each with a follow-up visit ({escape(follow_up)})"
    console.print(f"[green]wrote[/] {what} [dim]({time.perf_counter() - started:.1f} s)[/]", highlight=False)
