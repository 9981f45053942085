"""``mimir list-targets``: what can be predicted, how well, and by which installed module."""

from __future__ import annotations

import json

import typer

from mimir.cli.app import EXIT_CODES_HELP, app, console, handle_errors


def _f(x: float | int | None, fmt: str = "{:g}") -> str:
    return "" if x is None else fmt.format(x)


#: Columns of the tab-separated listing (without a terminal).
TSV_COLUMNS = ("group", "target", "field", "unit", "cv_n", "cv_icc", "cv_r2", "cv_mae", "cv_mape_percent",
               "test_n", "test_icc", "test_r2", "installed_modules", "published_in")


def targets_tsv(infos) -> str:  # noqa: ANN001
    """Every target as one tab-separated line under a header of :data:`TSV_COLUMNS`; modules joined by ","."""
    lines = ["\t".join(TSV_COLUMNS)]
    for i in infos:
        cv, test = i.cv, i.test
        cells = [
            i.group or "", i.name, _f(i.field, "{}"), i.unit,
            _f(cv.n if cv else None, "{}"), _f(cv.icc if cv else None), _f(cv.r2 if cv else None),
            _f(cv.mae if cv else None), _f(cv.mape_percent if cv else None),
            _f(test.n if test else None, "{}"), _f(test.icc if test else None), _f(test.r2 if test else None),
            ",".join(i.modules), ",".join(i.available_in),
        ]
        lines.append("\t".join(" ".join(str(c).split()) for c in cells))
    return "\n".join(lines) + "\n"


@app.command("list-targets", epilog=EXIT_CODES_HELP)
@handle_errors
def list_targets_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of targets) instead of a table."),
) -> None:
    """List the 71 targets of the published MIMIR modules and those of installed modules.

    Shows UK Biobank field, unit, group, the published 10-fold cross-validation
    figures (N, ICC, R2, MAE, MAPE %), test-set ICC/R2 where published, and
    which installed module predicts each target. Without a terminal (a pipe,
    a file) it prints every column as tab-separated lines with a header.
    """
    from mimir.models.targets import list_targets

    infos = list_targets()
    if as_json:
        typer.echo(json.dumps([i.to_json() for i in infos], indent=2, ensure_ascii=False))
        return
    if not console.is_terminal:
        typer.echo(targets_tsv(infos), nl=False)
        return

    from rich import box
    from rich.markup import escape
    from rich.table import Table

    # narrow terminals get fewer figure columns (--json has them all)
    figures = ["N", "ICC", "R2", "MAE", "MAPE%", "test R2"]
    if console.width < 125:
        figures = ["ICC", "R2", "MAPE%", "test R2"]
    if console.width < 100:
        figures = ["R2", "MAPE%"]
    groups: dict[str, list] = {}
    for i in infos:
        groups.setdefault(i.group or "other (installed modules)", []).append(i)
    for group, members in groups.items():
        table = Table(
            title=group.replace("_", " "),
            title_justify="left",
            title_style="bold",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        rows = []
        for i in members:
            cv, test = i.cv, i.test
            values = {
                "N": _f(cv.n if cv else None, "{}"),
                "ICC": _f(cv.icc if cv else None),
                "R2": _f(cv.r2 if cv else None),
                "MAE": _f(cv.mae if cv else None),
                "MAPE%": _f(cv.mape_percent if cv else None, "{:.1f}"),
                "test R2": _f(test.r2 if test else None),
            }
            if i.modules:
                where = f"[green]{escape(', '.join(i.modules))}[/]"
            elif i.available_in:
                where = f"[dim]({escape(', '.join(i.available_in))})[/]"
            else:
                where = ""
            rows.append([escape(i.name), _f(i.field, "{}"), escape(i.unit), *(values[c] for c in figures), where])
        headers = ["target", "field", "unit", *figures, "module"]
        for k, h in enumerate(headers):
            if h in ("target", "module"):  # these give way (ellipsis) on narrow terminals
                table.add_column(h, overflow="ellipsis", no_wrap=True)
            else:
                width = max([len(h)] + [len(r[k]) for r in rows])
                table.add_column(h, justify="left" if h == "unit" else "right", no_wrap=True, min_width=width)
        for r in rows:
            table.add_row(*r)
        console.print(table)
    n_inst = sum(1 for i in infos if i.modules)
    console.print(
        f"{len(infos)} targets, {n_inst} predicted by installed modules; (module): not installed. "
        "Figures: 10-fold cross-validation (MIMIR validation report), test R2: later test set; "
        "--json shows them all.",
        highlight=False,
    )
