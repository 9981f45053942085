"""``mimir preprocess``: subject zips to ``mimir-v1`` images (.npy, optional PNG)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from typing import Optional

from rich.markup import escape

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    console,
    contrasts_option,
    handle_errors,
    pick_output,
    report_error,
    report_warning,
    volume_contrasts,
    volumes_option,
)
from mimir.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, InputError
from mimir.utils import atomic


@app.command(epilog=EXIT_CODES_HELP)
@handle_errors
def preprocess(
    zips: list[Path] = typer.Argument(
        ..., metavar="ZIP...", help="Subject zips (UK Biobank field 20201).", show_default=False
    ),
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FOLDER",
        help="Folder for <zip stem>.npy (and .png) [default: the current folder].", show_default=False,
    ),
    out_alias: Optional[Path] = typer.Option(None, "--out", hidden=True),  # noqa: UP007 (old spelling)
    png: bool = typer.Option(False, "--png", help="Also write a preview PNG of the three channels."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
    cache_alias: bool = typer.Option(True, "--cache", hidden=True),  # old spelling, the default
    volumes: Optional[Path] = volumes_option("Without -o, only the volumes are written."),  # noqa: UP007
    contrasts: Optional[str] = contrasts_option(),  # noqa: UP007
) -> None:
    """Turn subject zips into 3 x 256 x 256 uint8 images (water, fat, fat fraction), and optionally 3-D volumes.

    Example: [bold]mimir preprocess 1000001_20201_2_0.zip -o images/ --png[/]
    Volumes: [bold]mimir preprocess 1000001_20201_2_0.zip --volumes nifti/[/]
    """
    from mimir.outputs.preview import write_preview
    from mimir.preprocessing.pipeline import preprocess as run_pipeline
    from mimir.utils.atomic import check_writable_dir

    chosen = pick_output(output, out_alias)
    wanted = volume_contrasts(volumes, contrasts) or ()
    if volumes is not None:
        from mimir.outputs.nifti import require_nibabel

        require_nibabel("preprocess --volumes")
        check_writable_dir(volumes, what="volumes folder")
    out = chosen if chosen is not None or volumes is None else None
    cache = not no_cache
    if out is None and png:
        out = Path(".")
    if out is not None:
        check_writable_dir(out)  # before any work: creatable and writable
    failed = 0
    for zip_path in zips:
        started = time.perf_counter()
        written: list[str] = []
        try:
            if volumes is not None:
                from mimir.batch.volumes import convert_subject

                done = convert_subject(zip_path, volumes, wanted, cache=cache)
                image = done.image
                written.append(f"{len(done.written) - 1} volumes + sidecar in {volumes}")
            else:
                image = run_pipeline(zip_path, cache=cache)
        except OSError as exc:
            report_error(f"{zip_path}: volumes cannot be written to {volumes} ({exc.strerror or exc}). "
                         "Free space or fix permissions.")
            failed += 1
            continue
        except InputError as exc:
            report_error(str(exc))
            failed += 1
            continue
        except MemoryError:
            report_error(f"{zip_path}: out of memory while preprocessing")
            failed += 1
            continue
        except Exception as exc:  # noqa: BLE001 - a bug: one line, and go on with the others
            report_error(
                f"{zip_path}: unexpected error ({type(exc).__name__}: {str(exc)[:200]}); "
                "this is a bug in mimir, please report it"
            )
            failed += 1
            continue
        stem = zip_path.name[:-4] if zip_path.name.lower().endswith(".zip") else zip_path.name
        if out is None:
            _print_ok(zip_path, written, started)
            continue
        npy = out / f"{stem}.npy"
        try:
            with atomic.atomic_path(npy, suffix=".npy") as tmp:
                np.save(tmp, image, allow_pickle=False)
            written.insert(0, str(npy))
            if png:
                write_preview(out / f"{stem}.png", image)
                written.append(str(out / f"{stem}.png"))
        except OSError as exc:
            report_error(f"{npy}: cannot be written ({exc.strerror or exc}). Free space or fix permissions.")
            failed += 1
            continue
        _print_ok(zip_path, written, started)
    if failed:
        if failed == len(zips):
            raise typer.Exit(EXIT_ERROR)
        report_warning(f"{failed} of {len(zips)} subjects failed")
        raise typer.Exit(EXIT_PARTIAL)
    raise typer.Exit(EXIT_OK)


def _print_ok(zip_path: Path, written: list[str], started: float) -> None:
    console.print(
        f"[green]ok[/] {escape(zip_path.name)} -> {escape(', '.join(written))} "
        f"[dim]({time.perf_counter() - started:.2f} s)[/]",
        highlight=False,
        soft_wrap=True,
    )
