"""``mimir qc``: screen subject zips before inference (no module needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    console,
    err_console,
    handle_errors,
    report_error,
    say,
)
from mimir.errors import EXIT_ERROR, EXIT_PARTIAL, UsageError
from mimir.utils.atomic import check_writable_file


@app.command("qc", epilog=EXIT_CODES_HELP)
@handle_errors
def qc_cmd(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Subject zips (field 20201); a folder means the *_20201_*_*.zip files in it and its subfolders."
    ),
    output: Optional[Path] = typer.Option(  # noqa: UP007 (typer needs Optional)
        None, "-o", "--output", metavar="FILE", help="Write the QC table to this .csv file (default: a table on screen)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
) -> None:
    """Quality control of subject zips: verdict, flags and the numbers behind the fat-water swap check.

    Needs no module. One row per input: name, qc_status (ok, warn, fail),
    qc_flags (codes joined with ";", see docs/qc.md), per station sN_edge_ff,
    sN_edge_low, sN_seam_corr, and error for unreadable inputs (exit code 2
    when some were unreadable, 1 when all were). The zips are decoded through
    the image cache, so a later predict or batch run finds them ready.

    Example: [bold]mimir qc release/ -o qc.csv[/]
    """
    from mimir.preprocessing.qc_table import qc_files, write_qc_csv
    from mimir.utils.discovery import expand

    if output is not None:
        if output.suffix.lower() != ".csv":
            raise UsageError(f"unknown output format {output.suffix or '(no extension)'!r}", path=str(output),
                             hint="Give a .csv file name.")
        check_writable_file(output)  # before any work
    files = expand(inputs, suffixes=(".zip",))
    failed = 0

    def on_error(message: str) -> None:
        nonlocal failed
        failed += 1
        report_error(message)

    if len(files) > 1 and err_console.is_terminal:
        from rich.progress import Progress

        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("checking", total=len(files))
            rows = qc_files(files, cache=not no_cache, on_error=on_error, on_progress=lambda n: bar.advance(task, n))
    else:
        rows = qc_files(files, cache=not no_cache, on_error=on_error)

    flagged = sum(r["qc_status"] in ("warn", "fail") for r in rows)
    checked = [r for r in rows if not r["error"]]
    if output is None:
        if checked:  # nothing read: the errors above say it all, no empty table
            console.print(_screen_table(checked, console.width))
    else:
        write_qc_csv(output, rows)
        say(f"wrote the QC of {len(rows)} input(s) to {output}")
    if checked or output is not None:
        say(f"{len(rows) - failed} checked: {len(rows) - failed - flagged} ok, {flagged} flagged (warn or fail)")
    if failed:
        say(f"{failed} of {len(rows)} input(s) could not be read (see above)", stderr=True)
        raise typer.Exit(EXIT_ERROR if failed == len(rows) else EXIT_PARTIAL)


def _screen_table(rows: list[dict[str, str]], width: int) -> Table:
    """The on-screen QC table: verdict, flags, and the numbers the swap check decided on.

    ``edge_low`` per station (share of the body edge that looks swapped: above
    0.15 flags a partial swap, above 0.80 a whole one) and the lowest
    ``seam_corr`` (fat-fraction correlation across a station seam: negative
    means one side is swapped). The CSV (``-o``) has every number. Where
    ``width`` columns cannot hold the numbers beside whole flags, the
    numbers give way (the caption says so): flags are never squeezed out.
    """
    from rich.console import Console

    from mimir.preprocessing.qc_table import STATIONS

    def build(numbers: bool) -> Table:
        caption = ("edge_low: share of each station's body edge that looks swapped (s1..s6; > 0.15 partial, "
                   "> 0.80 whole swap); seam_corr: lowest fat-fraction correlation across a station seam "
                   "(< 0: a swap). -o FILE.csv has every number." if numbers else
                   "A wider terminal shows the numbers behind each verdict; -o FILE.csv has them all.")
        table = Table(title="QC", title_justify="left", caption=caption, caption_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("qc_status", no_wrap=True)
        table.add_column("qc_flags", overflow="fold")
        if numbers:
            table.add_column("edge_low s1..s6", no_wrap=True)
            table.add_column("seam_corr", justify="right", no_wrap=True)
        for r in rows:
            cells = [escape(r["name"]), r["qc_status"], escape(r["qc_flags"].replace(";", " ")) or "-"]
            if numbers:
                seams = [float(v) for n in range(1, STATIONS) if (v := r.get(f"s{n}_seam_corr", ""))]
                cells += [" ".join(_short(r.get(f"s{n}_edge_low", "")) for n in range(1, STATIONS + 1)),
                          f"{min(seams):.2f}" if seams else "-"]
            table.add_row(*cells)
        return table

    table = build(numbers=True)
    measure = Console(width=10_000).measure(table)
    return table if measure.maximum <= width else build(numbers=False)


def _short(value: str) -> str:
    """A QC number to two decimals for the screen ('-' where the station had none)."""
    return f"{float(value):.2f}" if value else "  - "
