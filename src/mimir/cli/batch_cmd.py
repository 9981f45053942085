"""``mimir batch`` (a whole release, resumable, parallel, sharded) and ``mimir merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mimir.cli.app import (
    app,
    console,
    err_console,
    handle_errors,
    report_error,
    report_warning,
)
from mimir.errors import UsageError


def _parse_gpus(text: str | None) -> list[int] | None:
    """``"0,1"`` -> [0, 1]; None stays None."""
    if text is None:
        return None
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--gpu takes GPU indices such as 0 or 0,1, got {text!r}") from None
    if not gpus:
        raise UsageError("--gpu needs at least one GPU index")
    return gpus


@app.command("batch")
@handle_errors
def batch_cmd(
    input: str = typer.Argument(  # noqa: A002
        ..., metavar="INPUT",
        help="A folder (searched recursively for *_20201_*_*.zip and .npy) or a text file with one path per line.",
    ),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Output folder (records, predictions, errors, run.json)."),
    module: Optional[list[str]] = typer.Option(  # noqa: UP007
        None, "-m", "--module", help="Module name or folder (repeatable). Default: every installed module."
    ),
    gpu: Optional[str] = typer.Option(  # noqa: UP007
        None, "--gpu",
        help="GPU index, or a list such as 0,1: one inference process per GPU listed (0,0: two on GPU 0).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA), fp32 or bf16."),
    workers: Optional[int] = typer.Option(  # noqa: UP007
        None, "--workers", "-w", min=1,
        help="Preprocessing processes. Default: the CPUs this job may use (Ray: as many as the cluster runs).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    ci: float = typer.Option(0.95, "--ci", help="Confidence level of the intervals, between 0 and 1."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try the subjects in errors.csv again."),
    num_shards: Optional[int] = typer.Option(  # noqa: UP007
        None, "--num-shards", min=1, help="Split the input into N shards (default: $SLURM_ARRAY_TASK_COUNT or 1)."
    ),
    shard_index: Optional[int] = typer.Option(  # noqa: UP007
        None, "--shard-index", min=0, help="Which shard to run, 0..N-1 (default: from $SLURM_ARRAY_TASK_ID)."
    ),
    engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or ray."),
    address: Optional[str] = typer.Option(  # noqa: UP007
        None, "--address", help="Ray cluster address (--engine ray; default: $RAY_ADDRESS or a local instance)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
    queue_size: Optional[int] = typer.Option(  # noqa: UP007
        None, "--queue-size", min=1,
        help="Images waiting for inference at most (default: max(2 x batch x GPUs, workers + batch)).",
    ),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, "--threads", min=1, help="torch CPU threads per inference process (default: torch's choice)."
    ),
    report: bool = typer.Option(
        False, "--report", help="Also write OUT_DIR/report.html (mimir report; needs pip install 'mimir[report]')."
    ),
) -> None:
    """Predict a whole release: parallel preprocessing, batched inference, resumable.

    Each finished subject is recorded in OUT_DIR/records at once; running the
    same command again (after a crash, Ctrl-C or kill -9) does only what is
    left. At the end OUT_DIR holds predictions.csv and predictions.json (as
    `mimir predict` writes them, sorted by subject), errors.csv and run.json.
    Exit code 0: all predicted; 2: some failed (see errors.csv); 1: the run
    could not proceed.
    """
    from mimir.batch.progress import LogMonitor, Monitor, RichMonitor
    from mimir.batch.runner import BatchOptions, execute

    if report:
        from mimir.outputs.figures import require_matplotlib

        require_matplotlib("batch --report")  # fail before the run, not after it
    opts = BatchOptions(
        input=input, out_dir=str(out_dir), modules=module or None, device=device, gpus=_parse_gpus(gpu),
        precision=precision, workers=workers, batch_size=batch_size, level=ci, retry_failed=retry_failed,
        num_shards=num_shards, shard_index=shard_index, engine=engine, address=address, cache=not no_cache,
        queue_size=queue_size, threads=threads,
    )
    monitor: Monitor = RichMonitor(err_console) if err_console.is_terminal else LogMonitor(err_console)
    try:
        result = execute(opts, monitor)
    except KeyboardInterrupt:
        report_error("interrupted; every finished subject is recorded: run the same command again to resume")
        raise typer.Exit(130) from None

    if result.processed == 0 and result.done_before:
        console.print(f"nothing to do: all {result.done_before} subject(s) already done", highlight=False)
    console.print(
        f"{result.predicted} predicted, {result.failed} failed, {result.unfinished} unfinished "
        f"of {result.subjects} subject(s); {result.processed} processed in {result.wall_s:.1f} s "
        f"({result.throughput:.2f} subjects/s); outputs in {out_dir}",
        highlight=False,
    )
    if result.unfinished:
        report_warning(f"{result.unfinished} subject(s) are unfinished; run the same command again to do them")
    if result.failed:
        err_console.print(f"{result.failed} subject(s) failed: see {out_dir / 'errors.csv'}", highlight=False)
    if report:
        from mimir.batch.report import build_report

        written = build_report(out_dir)
        console.print(f"report: {written.path} ({written.size_bytes / 1e6:.2f} MB)", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command("merge")
@handle_errors
def merge_cmd(
    out_dirs: list[Path] = typer.Argument(..., metavar="OUT_DIR...", help="Output folders of the shards."),
    output: Path = typer.Option(..., "-o", "--out", help="Folder for the merged outputs."),
    input: Optional[str] = typer.Option(  # noqa: A002, UP007
        None, "--input",
        help="Also check against this INPUT (folder or list): every subject in it must be accounted for.",
    ),
) -> None:
    """Combine the output folders of shards (or of several runs) into one.

    Writes predictions.csv, predictions.json, errors.csv and missing.csv to
    the output folder and reports every subject that is neither predicted
    nor failed. Exit code 0: all predicted; 2: some failed or missing.
    """
    from mimir.batch.merge import merge_outputs

    result = merge_outputs([str(d) for d in out_dirs], str(output), input=input)
    for problem in result.problems:
        report_warning(problem)
    if result.missing:
        shown = ", ".join(result.missing[:10]) + (" ..." if len(result.missing) > 10 else "")
        report_error(f"{len(result.missing)} subject(s) neither predicted nor failed: {shown} (see missing.csv)")
    console.print(
        f"merged {len(out_dirs)} folder(s): {result.predicted} predicted, {result.failed} failed, "
        f"{len(result.missing)} missing; outputs in {output}",
        highlight=False,
    )
    raise typer.Exit(result.exit_code)

