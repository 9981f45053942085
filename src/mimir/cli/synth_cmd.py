"""``mimir synth``: write synthetic UK Biobank field-20201 zips with known truth."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from mimir.cli.app import app, console, handle_errors


@app.command()
@handle_errors
def synth(
    out: Path = typer.Argument(..., help="Folder for the zips and truth files (created if missing).",
                               show_default=False),
    n: int = typer.Option(1, "--n", "-n", min=1, help="Number of subjects."),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="Seed of the first subject (subject i uses seed + i)."),
    variant: str | None = typer.Option(
        None, "--variant", "-v", help="Irregularity to build in (see below); default: a regular zip.",
        show_default=False),
    small: bool = typer.Option(False, "--small", help="Reduced size (64 columns, 12-18 slices per station) "
                                                      "for fast tests."),
    swap_station: int | None = typer.Option(
        None, "--swap-station", metavar="N", help="fat_water_swap / fat_water_swap_partial: the station (1-6) "
        "to swap; default: drawn from the seed.", show_default=False),
    swap_region: str | None = typer.Option(
        None, "--swap-region", metavar="REGION", help="fat_water_swap_partial: left, right, arms or slices; "
        "default: drawn from the seed.", show_default=False),
) -> None:
    """Generate synthetic subjects: [bold]{eid}_20201_2_0.zip[/] plus [bold]{eid}.truth.json[/].

    The same seed always gives the same bytes; eid = 1000000 + seed.
    Variants: rescan, missing_slice, wf_shape_mismatch, no_manifest, manifest_csv,
    fat_water_swap, fat_water_swap_partial, truncated, wf_position_mismatch, missing_station, no_overlap, no_dicom.

    Example: [bold]mimir synth data/ --n 10 --seed 0 --small[/]
    """
    from mimir.synth import default_eid, generate_subject

    default_eid(seed + n - 1)  # range check before writing anything
    if swap_station is not None or swap_region is not None:  # option errors before writing anything
        from mimir.synth import build_study

        build_study(seed, variant=variant, small=True, swap_station=swap_station, swap_region=swap_region)
    table = Table(title=f"synthetic subjects written to {out}", title_justify="left")
    for col in ("eid", "sex", "kg", "cm", "VAT L", "ASAT L", "liver %", "thigh L", "zip MB"):
        table.add_column(col, justify="left" if col == "sex" else "right", no_wrap=True)
    started = time.perf_counter()
    subjects = []
    for i in range(n):
        sub = generate_subject(out, seed + i, variant=variant, small=small, swap_station=swap_station,
                               swap_region=swap_region)
        subjects.append(sub)
        t = sub.truth
        table.add_row(
            str(t["eid"]), str(t["sex"]), f"{t['weight_kg']:.1f}", f"{t['height_cm']:.1f}",
            f"{t['vat_volume_l']:.2f}", f"{t['asat_volume_l']:.2f}", f"{t['liver_fat_percent']:.1f}",
            f"{t['thigh_muscle_volume_l']:.2f}", f"{sub.zip_path.stat().st_size / 1e6:.1f}",
        )
    console.print(table)
    for sub in subjects:
        console.print(f"  {sub.zip_path}  {sub.truth_path.name}", highlight=False, soft_wrap=True)
    kind = f"variant {variant}" if variant else "regular"
    console.print(
        f"[green]wrote[/] {n} {kind}{' small' if small else ''} subject(s) "
        f"[dim]({time.perf_counter() - started:.1f} s)[/]",
        highlight=False,
    )
