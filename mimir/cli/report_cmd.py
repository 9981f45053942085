"""``mimir report``: a self-contained HTML report of a batch output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mimir.cli.app import EXIT_CODES_HELP, app, handle_errors, say
from mimir.utils.install import extra_help


REPORT_HELP = """Write one HTML page about a batch run: summary, distributions, QC-flagged and failed subjects.

Everything is embedded (images, styles; no scripts, no external URL), so
the file opens anywhere after copying it off the cluster. Needs the
report extra: {hint}.

Example: [bold]mimir report results/ -o results/report.html[/]
""".format(hint=extra_help("report"))


@app.command("report", help=REPORT_HELP, epilog=EXIT_CODES_HELP)
@handle_errors
def report_cmd(
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="Output folder of mimir batch (or mimir merge)."),
    output: Optional[Path] = typer.Option(  # noqa: UP007 (typer needs Optional)
        None, "-o", "--output", metavar="FILE", help="HTML file to write (default: OUT_DIR/report.html).",
        show_default=False,
    ),
    thumbnails: int = typer.Option(
        60, "--thumbnails", min=0, metavar="N", help="Preview thumbnails at most (flagged first, then a sample)."
    ),
    sample: int = typer.Option(
        24, "--sample", min=0, metavar="N", help="Other subjects sampled at random for detail panels."
    ),
) -> None:
    from mimir.batch.report import build_report

    result = build_report(out_dir, output, thumbnails=thumbnails, sample=sample)
    flagged = "not recorded" if result.flagged is None else str(result.flagged)
    say(
        f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, {result.seconds:.1f} s): "
        f"{result.predicted} predicted, {result.failed} failed, QC-flagged {flagged}, "
        f"{result.thumbnails} thumbnail(s)"
    )
