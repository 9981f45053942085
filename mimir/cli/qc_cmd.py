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
    if output is None:
        table = Table(title="QC", title_justify="left")
        for col in ("name", "qc_status", "qc_flags"):
            table.add_column(col)
        for r in rows:
            if not r["error"]:
                table.add_row(escape(r["name"]), r["qc_status"], escape(r["qc_flags"].replace(";", " ")) or "-")
        console.print(table)
    else:
        write_qc_csv(output, rows)
        say(f"wrote the QC of {len(rows)} input(s) to {output}")
    say(f"{len(rows) - failed} checked: {len(rows) - failed - flagged} ok, {flagged} flagged (warn or fail)")
    if failed:
        say(f"{failed} of {len(rows)} input(s) could not be read (see above)", stderr=True)
        raise typer.Exit(EXIT_ERROR if failed == len(rows) else EXIT_PARTIAL)
