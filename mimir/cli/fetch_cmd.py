"""``mimir fetch-weights``: install inference modules (the only command that uses the network)."""

from __future__ import annotations

from typing import Optional

import typer

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    console,
    err_console,
    handle_errors,
    report_error,
    report_warning,
)
from mimir.errors import EXIT_ERROR, EXIT_PARTIAL


@app.command("fetch-weights", epilog=EXIT_CODES_HELP)
@handle_errors
def fetch_weights_cmd(
    names: Optional[list[str]] = typer.Argument(  # noqa: UP007 (typer needs Optional)
        None, metavar="NAME...", help="Modules of the weights manifest (default: all of them).", show_default=False
    ),
    manifest: Optional[str] = typer.Option(  # noqa: UP007
        None, "--manifest", metavar="FILE|URL",
        help="Use this manifest (file or http(s) URL) instead of the packaged one.", show_default=False,
    ),
    source: Optional[list[str]] = typer.Option(  # noqa: UP007
        None,
        "--from",
        metavar="PATH",
        show_default=False,
        help="Import from a local zip or folder (our format, or the original MIMIR format, converted). "
        "A single NAME sets the installed name.",
    ),
    offline: bool = typer.Option(False, "--offline", help="Never use the network."),
    force: bool = typer.Option(False, "--force", help="Reinstall modules that are already installed."),
    list_: bool = typer.Option(False, "--list", help="Show the manifest and what is installed, then exit."),
) -> None:
    """Download, verify and install inference modules, or import them from local files.

    Downloads resume after a dropped connection, are checked against the
    manifest's sha256 and installed atomically: a failed download leaves the
    installed modules as they were. MIMIR_WEIGHTS_MIRROR replaces the base of
    every URL. The four published MIMIR modules need a browser to download;
    their instructions are printed, then use --from.
    """
    from rich.markup import escape

    from mimir.models.fetch import fetch_weights, load_manifest

    names = list(names or [])
    if list_:
        _print_list(load_manifest(manifest, offline=offline))
        return

    def on_outcome(o) -> None:  # noqa: ANN001
        if o.status == "installed":
            console.print(f"[green]{escape(o.message)}[/]", highlight=False)
        elif o.status == "present":
            console.print(escape(o.message), highlight=False)
        elif o.status == "manual-info":
            report_warning(o.message)
        else:
            report_error(o.message)

    report = fetch_weights(
        names, manifest=manifest, source=source or None, offline=offline, force=force, console=err_console,
        on_outcome=on_outcome,
    )
    if not report.outcomes:
        console.print("the weights manifest lists no modules", highlight=False)
        return
    code = exit_code(report)
    browser = [o.name for o in report.outcomes if o.status == "manual-info"]
    if browser:
        report_error(
            f"{len(browser)} module(s) not installed ({', '.join(browser)}): each needs a download in a browser "
            "first (where: see above), then: mimir fetch-weights NAME --from FILE.zip"
        )
    if code:
        raise typer.Exit(code)


def exit_code(report) -> int:  # noqa: ANN001
    """0: every module asked for (all of the manifest when none was named) is installed;
    2: some were installed by this run and others were not; 1: nothing was installed and some are missing.

    A module that needs a browser download counts as not installed, asked for by name or not.
    """
    missing = [o for o in report.outcomes if not o.ok or o.status == "manual-info"]
    if not missing:
        return 0
    return EXIT_PARTIAL if any(o.status == "installed" for o in report.outcomes) else EXIT_ERROR


def _source_text(entry) -> str:  # noqa: ANN001
    """Where a manifest entry comes from: built in, a download, or a page that needs a browser."""
    if entry.extra.get("builtin"):
        return "built-in"
    return "download" if entry.downloadable else "manual (browser)"


def _print_list(entries) -> None:  # noqa: ANN001
    from rich.markup import escape
    from rich.table import Table

    from mimir.models.registry import scan_modules

    installed = {s.name: s for s in scan_modules().modules}
    table = Table(show_edge=False, pad_edge=False)
    for col in ("module", "version", "targets", "installed", "source"):
        table.add_column(col)
    names = set()
    for e in entries:
        names.add(e.name)
        have = installed.get(e.name)
        table.add_row(
            escape(e.name),
            escape(e.version),
            str(len(e.targets)),
            have.version if have else "-",
            _source_text(e),
        )
    for name, spec in installed.items():
        if name not in names:
            table.add_row(
                escape(name), escape(spec.version), str(spec.num_targets), escape(spec.version),
                "built-in" if spec.builtin else "local",
            )
    console.print(table)
