"""``mimir batch`` (a whole release, resumable, parallel, sharded) and ``mimir merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    contrasts_option,
    err_console,
    handle_errors,
    module_option,
    parse_gpus,
    pick_output,
    report_error,
    report_warning,
    say,
    volume_contrasts,
    volumes_option,
)
from mimir.errors import UsageError
from mimir.utils.install import extra_help


@app.command("batch", epilog=EXIT_CODES_HELP)
@handle_errors
def batch_cmd(
    input: str = typer.Argument(  # noqa: A002
        ..., metavar="INPUT",
        help="A folder (searched recursively for *_20201_*_*.zip and .npy), a text file with one path per line, "
        "or a dx find data listing (--json or its text output; project paths are taken under --mount).",
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FOLDER",
        help="Output folder (records, predictions, errors, run.json). Required.", show_default=False,
    ),
    out_alias: Optional[Path] = typer.Option(None, "--out", hidden=True),  # noqa: UP007 (old spelling)
    module: Optional[list[str]] = module_option(columns=True),  # noqa: UP007 (typer needs Optional)
    csv_format: str = typer.Option(
        "wide", "--format", metavar="wide|long|parquet",
        help="predictions.csv layout: wide (one row per subject) or long (one row per subject and target); "
        f"parquet: wide, plus predictions.parquet with the same rows ({extra_help('parquet')}).",
    ),
    instance: Optional[int] = typer.Option(  # noqa: UP007
        None, "--instance", metavar="2|3",
        help="Keep only this imaging visit's zips (<eid>_20201_<instance>_0.zip).", show_default=False,
    ),
    mount: Optional[str] = typer.Option(  # noqa: UP007
        None, "--mount", metavar="FOLDER",
        help="Where a dx find data listing's project paths are mounted (default /mnt/project).", show_default=False,
    ),
    stage: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--stage", metavar="FOLDER",
        help="Copy inputs to this local folder ahead of the workers, verified (size, MD5, zip CRCs) and re-read "
        "when bad: for a slow or unreliable mount such as dxfuse.", show_default=False,
    ),
    stage_files: int = typer.Option(8, "--stage-files", min=1, metavar="N", help="Files staged ahead at most."),
    stage_gb: float = typer.Option(4.0, "--stage-gb", min=0.01, metavar="GB", help="Gigabytes staged ahead at most."),
    gpu: Optional[str] = typer.Option(  # noqa: UP007
        None, "--gpu", metavar="N[,N...]",
        help="GPU index, or a list such as 0,1: one inference process per GPU listed (0,0: two on GPU 0).",
        show_default=False,
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option(
        "auto", "--precision", metavar="auto|fp32|bf16",
        help="auto or fp32: exact fp32 on every device; bf16: opt-in, less exact (docs/precision.md).",
    ),
    workers: Optional[int] = typer.Option(  # noqa: UP007
        None, "--workers", "-w", min=1, metavar="N",
        help="Preprocessing processes. Default: the CPUs this job may use (Ray: as many as the cluster runs).",
        show_default=False,
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, metavar="N", help="Images per forward pass."),
    ci: float = typer.Option(0.95, "--ci", metavar="LEVEL", help="Confidence level of the intervals, between 0 and 1."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try the subjects in errors.csv again."),
    num_shards: Optional[int] = typer.Option(  # noqa: UP007
        None, "--num-shards", min=1, metavar="N",
        help="Split the input into N shards (default: $SLURM_ARRAY_TASK_COUNT or 1).", show_default=False,
    ),
    shard_index: Optional[int] = typer.Option(  # noqa: UP007
        None, "--shard-index", min=0, metavar="I",
        help="Which shard to run, 0..N-1 (default: from $SLURM_ARRAY_TASK_ID).", show_default=False,
    ),
    engine: str = typer.Option("local", "--engine", metavar="local|ray", help="local (processes on this machine) or ray."),
    address: Optional[str] = typer.Option(  # noqa: UP007
        None, "--address", metavar="ADDRESS",
        help="Ray cluster address (--engine ray; default: $RAY_ADDRESS or a local instance).", show_default=False,
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the preprocessed-image cache."),
    queue_size: Optional[int] = typer.Option(  # noqa: UP007
        None, "--queue-size", min=1, metavar="N",
        help="Images waiting for inference at most (default: max(2 x batch x GPUs, workers + batch)).",
        show_default=False,
    ),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, "--threads", min=1, metavar="N",
        help="torch CPU threads per inference process (default: torch's choice).", show_default=False,
    ),
    report: bool = typer.Option(
        False, "--report", help=f"Also write OUT_DIR/report.html (mimir report; needs the report extra: {extra_help('report')})."
    ),
    volumes: Optional[Path] = volumes_option(  # noqa: UP007
        "Written by the preprocessing processes; resumable; local engine."
    ),
    contrasts: Optional[str] = contrasts_option(),  # noqa: UP007
) -> None:
    """Predict a whole release: parallel preprocessing, batched inference, resumable.

    Each finished subject is recorded in FOLDER/records at once; running the
    same command again (after a crash, Ctrl-C or kill -9) does only what is
    left. At the end FOLDER holds predictions.csv and predictions.json (as
    mimir predict writes them, sorted by subject; columns: docs/outputs.md),
    errors.csv and run.json. Exit code 2 whenever a subject failed, even if
    all did: errors.csv is then the product.

    Example: [bold]mimir batch /data/ukb/20201 -o out/ -m module_bodycomp --gpu 0[/]
    """
    from mimir.batch.progress import LogMonitor, Monitor, RichMonitor
    from mimir.batch.runner import BatchOptions, execute

    out_dir: Path = pick_output(output, out_alias, required=True)
    if report:
        from mimir.outputs.figures import require_matplotlib

        require_matplotlib("batch --report")  # fail before the run, not after it
    wanted = volume_contrasts(volumes, contrasts)
    opts = BatchOptions(
        input=input, out_dir=str(out_dir), modules=module or None, device=device, gpus=parse_gpus(gpu),
        precision=precision, workers=workers, batch_size=batch_size, level=ci, retry_failed=retry_failed,
        num_shards=num_shards, shard_index=shard_index, engine=engine, address=address, cache=not no_cache,
        queue_size=queue_size, threads=threads, csv_layout="wide" if csv_format == "parquet" else csv_format,
        parquet=csv_format == "parquet", instance=instance, mount=mount,
        stage_dir=None if stage is None else str(stage), stage_files=stage_files, stage_bytes=int(stage_gb * 1e9),
        volumes=None if volumes is None else str(volumes), volume_contrasts=wanted,
    )
    from mimir.preprocessing import kernels

    if not kernels.available():
        report_warning(
            "preprocessing runs without its compiled loops (mimir was installed without a C compiler): "
            "the same images, about twice as slow; install gcc and reinstall mimir to get them"
        )
    monitor: Monitor = RichMonitor(err_console) if err_console.is_terminal else LogMonitor(err_console)
    try:
        result = execute(opts, monitor)
    except KeyboardInterrupt:
        report_error(interrupted_message(monitor.done_before, monitor.processed, out_dir))
        raise typer.Exit(130) from None

    if result.processed == 0 and result.done_before:
        say(f"nothing to do: all {result.done_before} subject(s) already done")
    say(
        f"{result.predicted} predicted, {result.failed} failed, {result.unfinished} unfinished "
        f"of {result.subjects} subject(s); {result.processed} processed in {result.wall_s:.1f} s "
        f"({result.throughput:.2f} subjects/s); outputs in {out_dir}"
    )
    if result.qc_flagged:
        say(f"{result.qc_flagged} predicted subject(s) QC-flagged ({result.qc_fail} fail): "
            f"see qc_status and qc_flags in {out_dir / 'predictions.csv'}")
    if result.synthetic_modules:
        report_warning(
            f"{', '.join(result.synthetic_modules)}: a synthetic demonstration module (intended_use synthetic-demo); "
            "its numbers mean nothing for real UK Biobank images"
        )
    if result.unfinished:
        report_warning(f"{result.unfinished} subject(s) are unfinished; run the same command again to do them")
    if result.failed:
        say(f"{result.failed} subject(s) failed: see {out_dir / 'errors.csv'}", stderr=True)
    if report:
        from mimir.batch.report import build_report

        written = build_report(out_dir)
        say(f"report: {written.path} ({written.size_bytes / 1e6:.2f} MB)")
    raise typer.Exit(result.exit_code)


def interrupted_message(done_before: int, processed: int, out_dir: Path) -> str:
    """The Ctrl-C line: how many subjects are recorded (before and in this run), and how to resume."""
    recorded = done_before + processed
    if recorded == 0:
        return f"interrupted before any subject was recorded in {out_dir}; run the same command again to start"
    this_run = f" ({processed} in this run)" if done_before else ""
    return (
        f"interrupted; {recorded} subject(s) are recorded in {out_dir / 'records'}{this_run}: "
        "run the same command again to do the rest"
    )


@app.command("merge", epilog=EXIT_CODES_HELP)
@handle_errors
def merge_cmd(
    out_dirs: list[Path] = typer.Argument(
        ..., metavar="SHARD...",
        help="Output folders of the shards (or runs), their archives (.tar.gz) or predictions.parquet files.",
        show_default=False,
    ),
    out_format: Optional[str] = typer.Option(  # noqa: UP007
        None, "--format", metavar="parquet",
        help="parquet: also write predictions.parquet (default: when a shard has one).", show_default=False,
    ),
    output: Optional[Path] = typer.Option(  # noqa: UP007
        None, "-o", "--output", metavar="FOLDER", help="Folder for the merged outputs. Required.", show_default=False
    ),
    out_alias: Optional[Path] = typer.Option(None, "--out", hidden=True),  # noqa: UP007 (old spelling)
    input: Optional[str] = typer.Option(  # noqa: A002, UP007
        None, "--input", metavar="INPUT",
        help="Also check against this INPUT (folder or list): every subject in it must be accounted for.",
        show_default=False,
    ),
) -> None:
    """Combine the output folders of shards (or of several runs) into one.

    Writes predictions.csv, predictions.json, errors.csv and missing.csv to
    the output folder and reports every subject that is neither predicted
    nor failed. Exit code 0: all predicted; 2: some failed or missing.
    """
    from mimir.batch.merge import merge_outputs

    output = pick_output(output, out_alias, required=True)
    if out_format not in (None, "parquet"):
        raise UsageError(f"unknown --format {out_format!r}", hint="merge keeps the shards' layout; --format parquet adds Parquet.")
    result = merge_outputs([str(d) for d in out_dirs], str(output), input=input,
                           parquet=True if out_format == "parquet" else None)
    for problem in result.problems:
        report_warning(problem)
    if result.missing:
        shown = ", ".join(result.missing[:10]) + (" ..." if len(result.missing) > 10 else "")
        report_error(f"{len(result.missing)} subject(s) neither predicted nor failed: {shown} (see missing.csv)")
    say(
        f"merged {len(out_dirs)} folder(s): {result.predicted} predicted, {result.failed} failed, "
        f"{len(result.missing)} missing; outputs in {output}"
    )
    raise typer.Exit(result.exit_code)

