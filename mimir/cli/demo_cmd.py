"""``mimir demo``: one synthetic subject through the whole pipeline, predictions next to the truth."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from typing import Optional

from rich.markup import escape

from mimir.cli.app import EXIT_CODES_HELP, app, console, handle_errors, pick_output, say


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}"


@app.command("demo", epilog=EXIT_CODES_HELP)
@handle_errors
def demo_cmd(
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FOLDER",
        help="Folder for the zip, image, preview and CSVs [default: mimir-demo].", show_default=False,
    ),
    out_alias: Optional[Path] = typer.Option(None, "--out", hidden=True),  # noqa: UP007 (old spelling)
    seed: int = typer.Option(
        900_000, "--seed", metavar="N", help="Seed of the synthetic subject (the demo module never saw 900000+)."
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    ci: float = typer.Option(0.95, "--ci", metavar="LEVEL", help="Confidence level of the intervals, between 0 and 1."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    """Show the whole pipeline working: a synthetic subject, preprocessing, prediction, truth.

    Draws one full-size synthetic subject (a UK Biobank-style zip), turns it
    into the mimir-v1 image, predicts with the built-in [bold]phantom-demo[/]
    module and prints each prediction with its interval next to the true value.

    Example: [bold]mimir demo[/]
    """
    from rich import box
    from rich.table import Table

    from mimir.demo import result_json, run_demo
    from mimir.inference.predictions import z_value

    try:
        z_value(ci)
    except ValueError as exc:
        from mimir.errors import UsageError

        raise UsageError(str(exc)) from None
    out = pick_output(output, out_alias) or Path("mimir-demo")
    result = run_demo(out, seed=seed, device=device, level=ci)
    if as_json:
        console.print_json(json.dumps(result_json(result)))
        return
    level = f"{100 * ci:g} %"
    table = Table(
        title=escape(
            f"synthetic subject {result.files['zip'].name} (seed {seed}), module {result.module} "
            f"{result.module_version} (synthetic demo)"
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col, just in (
        ("target", "left"),
        ("unit", "left"),
        ("true", "right"),
        ("predicted", "right"),
        (f"{level} interval", "right"),
        ("inside", "center"),
    ):
        # Headers and numbers never wrap or shrink to an ellipsis; the unit column gives way instead.
        table.add_column(col, justify=just, no_wrap=col != "unit", min_width=len(col) if col != "unit" else None)  # type: ignore[arg-type]
    for r in result.rows:
        inside = "-" if r.inside is None else ("[green]yes[/]" if r.inside else "[red]no[/]")
        table.add_row(escape(r.name), escape(r.unit), _num(r.truth), _num(r.value), f"{_num(r.low)} .. {_num(r.high)}", inside)
    console.print(table)
    console.print(
        f"{result.covered} of {len(result.rows)} true values inside their {level} interval. "
        f"[dim](generate {result.seconds.get('generate', 0):.1f} s, preprocess {result.seconds.get('preprocess', 0):.1f} s, "
        f"predict {result.seconds.get('predict', 0):.2f} s on {escape(result.device)})[/]",
        highlight=False,
        soft_wrap=True,
    )
    f = result.files
    say(f"subject zip   {f['zip']}  (truth: {f['truth']})")
    say(f"image         {f['image']}  preview: {f['preview']}")
    say(f"predictions   {f['predictions']}  comparison: {f['comparison']}")
    console.print(
        "[yellow]The demo module is for synthetic demonstration only; its numbers mean nothing for real UK Biobank "
        "images.[/] Predict with your own module: mimir predict -m MODULE ZIP...",
        highlight=False,
        soft_wrap=True,
    )
