"""``mimir fit-reference``: fit a module's out-of-distribution reference on your own images.

:func:`fit_reference_cmd` is a plain function registered here as the
top-level command ``fit-reference``; a Typer sub-app (e.g. ``mimir qc``) can
register the same function again with ``qc_app.command("fit-reference", epilog=EXIT_CODES_HELP)(fit_reference_cmd)``.
"""

from __future__ import annotations

import typer
from rich.markup import escape

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    console,
    err_console,
    handle_errors,
    report_warning,
)
from mimir.errors import EXIT_PARTIAL


@handle_errors
def fit_reference_cmd(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Subject zips or .npy images; a folder means its .zip/.npy files."
    ),
    module: str = typer.Option(..., "-m", "--module", metavar="MODULE", help="Installed module name or module folder."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the cross-fitting folds."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    gpu: int | None = typer.Option(None, "--gpu", metavar="N", help="Short for --device cuda:N."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, metavar="N", help="Images per forward pass."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, metavar="N", help="CPU threads for torch (default: torch's choice)."
    ),
) -> None:
    """Fit the out-of-distribution reference of an imported module on your own (unlabelled) images.

    The module's networks describe each image by their pooled features; all
    images fit the reference and set its flag line by 5-fold cross-fitting
    (about 1-2 % of new images like these are flagged out_of_distribution:<module>). The reference
    is stored in the module folder, hashed in its module.json. It describes
    YOUR data, not the module's training data: see docs/ood.md. Use a few
    thousand subjects without known problems.
    """
    from mimir.inference.reference import expand_inputs, fit_module_reference

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    dev = f"cuda:{gpu}" if gpu is not None else device
    files = expand_inputs(inputs)
    if len(files) > batch_size and err_console.is_terminal:
        from rich.progress import Progress

        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("reading features", total=len(files))
            result = fit_module_reference(
                module, files, seed=seed, device=dev,
                batch_size=batch_size, cache=not no_cache, on_progress=lambda n: bar.advance(task, n),
            )
    else:
        result = fit_module_reference(
            module, files, seed=seed, device=dev,
            batch_size=batch_size, cache=not no_cache,
        )
    for message in result.failed:
        report_warning(f"skipped: {escape(message)}")
    ood = result.spec.ood
    console.print(
        f"fitted the OOD reference of {escape(result.spec.name)} on {result.fit_images} image(s), "
        f"flag line cross-fitted "
        f"({escape(ood.file) if ood else ''}, sha256 {ood.sha256[:16] if ood else ''})",
        highlight=False,
    )
    if result.failed:
        err_console.print(f"{len(result.failed)} of {len(files)} input(s) could not be read (see above)", highlight=False)
        raise typer.Exit(EXIT_PARTIAL)


app.command("fit-reference", epilog=EXIT_CODES_HELP)(fit_reference_cmd)
