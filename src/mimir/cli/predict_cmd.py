"""``mimir predict``: calibrated predictions for subject zips or images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mimir.cli.app import app, console, err_console, handle_errors, report_error
from mimir.errors import EXIT_ERROR, EXIT_PARTIAL, UsageError

_INPUT_SUFFIXES = (".zip", ".npy")


def _expand(inputs: list[str]) -> list[str]:
    """Files as given; a folder stands for its ``*.zip`` and ``*.npy`` files (sorted)."""
    out: list[str] = []
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found = sorted(str(c) for c in p.iterdir() if c.is_file() and c.suffix.lower() in _INPUT_SUFFIXES)
            if not found:
                raise UsageError("holds no .zip or .npy files", path=text)
            out.extend(found)
        else:
            out.append(text)
    return out


def _predictor_while_preprocessing(first_files: list[str], make):  # noqa: ANN001, ANN202
    """``make()`` (imports torch, loads the modules) while a thread fills the image cache with ``first_files``.

    Cuts the time to the first prediction: zip decoding and fusion mostly run
    outside the GIL, so they overlap with torch's start-up.
    """
    if not first_files:
        return make()
    import threading

    from mimir.preprocessing.pipeline import fill_cache

    worker = threading.Thread(target=fill_cache, args=(first_files,), name="mimir-prefetch", daemon=True)
    worker.start()
    predictor = make()  # on an error the daemon thread is left behind: the command ends anyway
    worker.join()
    return predictor


@app.command("predict")
@handle_errors
def predict_cmd(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Subject zips (field 20201) or .npy images; a folder means its .zip/.npy files."
    ),
    module: Optional[list[str]] = typer.Option(  # noqa: UP007 (typer needs Optional)
        None, "-m", "--module", help="Module name or folder (repeatable). Default: every installed module."
    ),
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", help="Write results to this .csv or .json file (default: a table on screen)."
    ),
    ci: float = typer.Option(0.95, "--ci", help="Confidence level of the intervals, between 0 and 1."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="Short for --device cuda:N."),  # noqa: UP007
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 + channels_last on CUDA, fp32 elsewhere), fp32 or bf16."
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, "--threads", min=1, help="CPU threads for torch (default: torch's choice, usually one per core)."
    ),
) -> None:
    """Predict every target of the chosen modules, with confidence intervals.

    Prints a table per subject, or writes one CSV row (or JSON object) per
    subject with -o. Unreadable inputs are reported one line each; the others
    are still predicted and written (exit code 2 when some failed, 1 when all did).
    """
    from mimir.inference.predictions import z_value
    from mimir.inference.predictor import Predictor
    from mimir.outputs.writers import output_format, render_tables, write_results

    try:
        z_value(ci)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if output is not None:
        output_format(output)  # fail on a bad extension before any work
        if output.is_dir():
            raise UsageError("is a folder", path=str(output), hint="Give a .csv or .json file name.")
    files = _expand(inputs)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    predictor = _predictor_while_preprocessing(
        files[:batch_size] if not no_cache else [],
        lambda: Predictor(module or None, device=device, gpu=gpu, precision=precision, batch_size=batch_size, level=ci),
    )
    failed = 0

    def on_error(rec) -> None:  # noqa: ANN001
        nonlocal failed
        failed += 1
        report_error(rec.error or f"{rec.source}: failed")

    if len(files) > batch_size and err_console.is_terminal:
        from rich.progress import Progress

        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("predicting", total=len(files))
            results = predictor.predict_files(
                files, cache=not no_cache, on_error=on_error, on_progress=lambda n: bar.advance(task, n)
            )
    else:
        results = predictor.predict_files(files, cache=not no_cache, on_error=on_error)

    ok = [r for r in results if r.ok]
    if not ok:
        report_error(f"none of the {len(results)} input(s) could be predicted; nothing written")
        raise typer.Exit(EXIT_ERROR)
    if output is None:
        render_tables(ok, console)
    else:
        write_results(output, ok, predictor.layout)
        console.print(
            f"wrote {len(ok)} subject(s) x {len(predictor.layout)} target(s) to {output}", highlight=False
        )
    if failed:
        err_console.print(f"{failed} of {len(results)} input(s) failed (see above)", highlight=False)
        raise typer.Exit(EXIT_PARTIAL)
