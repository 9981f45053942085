"""``mimir predict``: calibrated predictions for subject zips or images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    console,
    err_console,
    handle_errors,
    module_option,
    parse_gpus,
    pick_output,
    report_error,
    report_warning,
    say,
)
from mimir.errors import EXIT_ERROR, EXIT_PARTIAL, UsageError

if TYPE_CHECKING:
    from mimir.inference.predictions import SubjectResult
    from mimir.inference.predictor import Predictor
    from mimir.preprocessing.prefetch import Loader


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(files to predict, [(path, reason), ...] refused) for the INPUT arguments.

    Files are taken as given; a folder stands for the subject files found in
    it and its subfolders, exactly as ``mimir batch`` searches
    (``*_20201_*_*.zip`` and ``.npy``, see :mod:`mimir.utils.discovery`). Two
    inputs with the same subject name are both refused, naming each other,
    as ``mimir batch`` does.
    """
    from mimir.batch.inputs import collect
    from mimir.utils.discovery import expand

    unique = expand(inputs)  # the same path given twice is one input
    named = collect(unique)
    refused = [(q.path, q.message) for q in named.problems]
    bad = {q.path for q in named.problems}
    return [p for p in unique if p not in bad], refused


@app.command("predict", epilog=EXIT_CODES_HELP)
@handle_errors
def predict_cmd(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT...",
        help="Subject zips (field 20201) or .npy images; a folder means the *_20201_*_*.zip and .npy files "
        "in it and its subfolders (as mimir batch searches).",
        show_default=False,
    ),
    module: Optional[list[str]] = module_option(columns=True),  # noqa: UP007 (typer needs Optional)
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FILE",
        help="Write results to this .csv or .json file (default: a table on screen).", show_default=False,
    ),
    out_alias: Optional[Path] = typer.Option(None, "--out", hidden=True),  # noqa: UP007 (old spelling)
    csv_format: str = typer.Option(
        "wide", "--format", metavar="wide|long|parquet",
        help="CSV layout: wide (one row per subject) or long (one row per subject and target); parquet: the wide "
        "columns as a typed .parquet file (also chosen by -o FILE.parquet).",
    ),
    ci: float = typer.Option(0.95, "--ci", metavar="LEVEL", help="Confidence level of the intervals, between 0 and 1."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    gpu: Optional[str] = typer.Option(  # noqa: UP007
        None, "--gpu", metavar="N", help="GPU index: short for --device cuda:N.", show_default=False
    ),
    precision: str = typer.Option(
        "auto", "--precision", metavar="auto|fp32|bf16",
        help="auto or fp32: exact fp32 on every device; bf16: opt-in, less exact (docs/precision.md).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, metavar="N", help="Images per forward pass."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, "--threads", min=1, metavar="N",
        help="CPU threads for torch (default: torch's choice, usually one per core).", show_default=False,
    ),
) -> None:
    """Predict every target of the chosen modules, with confidence intervals.

    Prints a table per subject, or writes one CSV row (or JSON object) per
    subject with -o (columns: docs/outputs.md). Unreadable inputs are reported
    one line each; the others are still predicted and written (exit code 2
    when some failed, 1 when all did).

    Example: [bold]mimir predict zips/ -m module_bodycomp -o predictions.csv[/]
    """
    from mimir.inference.predictions import z_value
    from mimir.inference.predictor import Predictor
    from mimir.outputs.writers import (
        check_layout,
        output_format,
        render_tables,
        write_results,
    )

    output = pick_output(output, out_alias)
    try:
        z_value(ci)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    parquet = csv_format == "parquet" or (output is not None and output.suffix.lower() == ".parquet")
    if parquet:
        from mimir.outputs.parquet import require_pyarrow

        require_pyarrow()
        if output is None or output.suffix.lower() != ".parquet" or csv_format not in ("wide", "parquet"):
            raise UsageError("--format parquet writes a .parquet file (wide columns)", hint="Add -o FILE.parquet.")
        csv_format = "wide"
    check_layout(csv_format)
    if output is not None and parquet:
        from mimir.utils.atomic import check_writable_file

        check_writable_file(output)
    elif output is not None:
        output_format(output)  # fail on a bad extension before any work
        check_layout(csv_format, output)
        if output.is_dir():
            raise UsageError("is a folder", path=str(output), hint="Give a .csv or .json file name.")
        from mimir.utils.atomic import check_writable_file

        check_writable_file(output)  # parent creatable and writable, before any work
    elif csv_format != "wide":
        raise UsageError("--format applies to a CSV file", hint="Add -o FILE.csv.")
    gpus = parse_gpus(gpu, single=True)
    files, refused = expand_inputs(inputs)
    for path, reason in refused:
        report_error(f"{path}: {reason}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    total = len(files) + len(refused)
    if not files:
        report_error(f"none of the {total} input(s) could be predicted; nothing written")
        raise typer.Exit(EXIT_ERROR)
    from mimir.preprocessing.prefetch import first_input_prefetched

    with first_input_prefetched(files, cache=not no_cache) as load:  # the first zip is read while torch loads
        predictor = Predictor(
            module or None, device=device, gpu=gpus[0] if gpus else None, precision=precision,
            batch_size=batch_size, level=ci,
        )
        results = _predict(predictor, files, cache=not no_cache, load=load)
    ok = [r for r in results if r.ok]
    failed = len(refused) + len(results) - len(ok)

    if not ok:
        report_error(f"none of the {total} input(s) could be predicted; nothing written")
        raise typer.Exit(EXIT_ERROR)
    if output is None:
        render_tables(ok, console)
    else:
        try:
            if parquet:
                import io

                from mimir.outputs.parquet import write_parquet_from_csv
                from mimir.outputs.writers import csv_text

                write_parquet_from_csv(io.StringIO(csv_text(ok, predictor.layout)), output, layout="wide",
                                       n_modules=len(predictor.modules))
            else:
                write_results(output, ok, predictor.layout, csv_layout=csv_format)
        except OSError as exc:
            raise UsageError(
                f"the predictions were computed but could not be written ({exc.strerror or exc})",
                path=str(output),
                hint="Free space or fix permissions and run again (preprocessed images are cached).",
            ) from None
        say(f"wrote {len(ok)} subject(s) x {len(predictor.layout)} target(s) to {output}")
        demos = [s.name for s in predictor.modules if s.synthetic]
        if demos:
            report_warning(
                f"{', '.join(demos)} is a synthetic demonstration module: its rows are marked "
                "intended_use=synthetic-demo and mean nothing for real UK Biobank images"
            )
    if failed:
        say(f"{failed} of {total} input(s) failed (see above)", stderr=True)
        raise typer.Exit(EXIT_PARTIAL)


def _predict(predictor: Predictor, files: list[str], *, cache: bool, load: Loader) -> list[SubjectResult]:
    """Every file's result, each failure reported in one line as it happens; a progress bar for several."""

    def on_error(rec) -> None:  # noqa: ANN001
        report_error(rec.error or f"{rec.source}: failed")

    if len(files) > 1 and err_console.is_terminal:
        from rich.progress import Progress

        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("predicting", total=len(files))
            return predictor.predict_files(
                files, cache=cache, on_error=on_error, on_progress=lambda n: bar.advance(task, n), load=load
            )
    return predictor.predict_files(files, cache=cache, on_error=on_error, load=load)
