"""``mimir rap``: run a release on the UK Biobank Research Analysis Platform (DNAnexus): plan, run a shard, collect."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Optional

import typer

from mimir.cli.app import (
    EXIT_CODES_HELP,
    app,
    handle_errors,
    module_option,
    report_error,
    report_warning,
    say,
)
from mimir.errors import EXIT_ERROR, MimirError

rap_app = typer.Typer(
    help="Run mimir on the UK Biobank Research Analysis Platform (DNAnexus): plan and submit shards, run one "
    "shard in a job (the applet in deploy/ukb-rap/), collect and merge the shards. Guide: docs/ukb-rap.md.",
    no_args_is_help=True,
    epilog=EXIT_CODES_HELP,
)
app.add_typer(rap_app, name="rap")


@rap_app.command("plan", epilog=EXIT_CODES_HELP)
@handle_errors
def plan_cmd(
    listing: str = typer.Argument(..., metavar="LISTING", help="dx find data --json output (or a list of paths)."),
    instance_type: str = typer.Option(..., "--instance-type", metavar="TYPE", help="e.g. mem1_ssd1_v2_x16, mem3_ssd1_gpu_x8."),
    target_hours: float = typer.Option(4.0, "--target-hours", metavar="H", help="Wall time aimed at per job."),
    num_shards: Optional[int] = typer.Option(None, "--num-shards", min=1, metavar="N", help="Fix the number of shards.", show_default=False),  # noqa: UP007
    instance: Optional[int] = typer.Option(None, "--instance", metavar="2|3", help="Only this imaging visit.", show_default=False),  # noqa: UP007
    members: int = typer.Option(1, "--members", min=1, metavar="K", help="Networks per module (CPU estimate)."),
    rate: Optional[float] = typer.Option(None, "--subjects-per-hour", metavar="R", help="Your measured rate per instance (replaces the estimate).", show_default=False),  # noqa: UP007
    price: Optional[float] = typer.Option(None, "--price-per-hour", metavar="PRICE", help="Your price per instance hour (no price is built in).", show_default=False),  # noqa: UP007
    applet: str = typer.Option("mimir-shard", "--applet", metavar="APPLET", help="The applet built from deploy/ukb-rap/."),
    listing_file: str = typer.Option(..., "--listing-file", metavar="FILE", help="The listing as a project file (file-... or project path)."),
    modules_file: str = typer.Option(..., "--modules-file", metavar="FILE", help="The modules archive in the project (see docs/ukb-rap.md)."),
    folder: str = typer.Option(..., "--folder", metavar="PROJECT:/FOLDER", help="Project folder for checkpoints and shard archives."),
    priority: str = typer.Option("low", "--priority", metavar="low|normal|high", help="low: spot instances (cheaper, may be restarted)."),
    cost_limit: Optional[float] = typer.Option(None, "--cost-limit", metavar="C", help="Per job (default: twice the longest shard at your price).", show_default=False),  # noqa: UP007
    restarts: int = typer.Option(3, "--restarts", min=0, metavar="N", help="Restarts per job on a lost instance or error."),
    module: Optional[list[str]] = module_option(columns=True),  # noqa: UP007
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the plan and the dx run commands."),
) -> None:
    """Split a listing into shards, estimate instance hours, and submit (or print) the dx run commands.

    Example: [bold]mimir rap plan dixon.json --instance-type mem3_ssd1_gpu_x8 --price-per-hour 1.2 --listing-file dixon.json --modules-file modules.tar.gz --folder :/mimir/run1 --dry-run[/]
    """
    from mimir.batch import dx
    from mimir.batch.launcher import dx_run_commands, plan

    p = plan(listing, instance_type=instance_type, target_hours=target_hours, num_shards=num_shards,
             instance=instance, members=members, rate=rate, price_per_hour=price)
    commands = dx_run_commands(p, applet=applet, listing_file=listing_file, modules_file=modules_file, folder=folder,
                               priority=priority, cost_limit=cost_limit, restarts=restarts, instance=instance,
                               module_names=module or None)
    if price is None:
        report_warning("no --price-per-hour: instance hours only, and no cost limit unless --cost-limit is given")
    for line in p.lines():
        typer.echo(line)
    if dry_run:
        say(f"dry run: {len(commands)} job(s) not submitted")
        return
    for cmd in commands:
        job = dx.run_dx(*cmd[1:]).strip()
        say(f"submitted {job}")


@rap_app.command("run-shard", epilog=EXIT_CODES_HELP)
@handle_errors
def run_shard_cmd(
    listing: str = typer.Argument(..., metavar="LISTING", help="The listing (or folder) every shard reads."),
    folder: str = typer.Option(..., "--folder", metavar="PROJECT:/FOLDER", help="Project folder for the checkpoint and the archive."),
    shard_index: int = typer.Option(..., "--shard-index", min=0, metavar="I"),
    num_shards: int = typer.Option(..., "--num-shards", min=1, metavar="N"),
    work: Path = typer.Option(Path("mimir-work"), "--work", metavar="FOLDER", help="Local working folder."),
    every_min: float = typer.Option(10.0, "--checkpoint-minutes", metavar="M", help="Save the checkpoint this often..."),
    every_n: int = typer.Option(500, "--checkpoint-subjects", min=1, metavar="N", help="...or after this many new subjects."),
    report: bool = typer.Option(False, "--report", help="Put report.html (aggregates and previews: see docs) in the archive."),
    batch_args: str = typer.Option("", "--batch-args", metavar="ARGS", help="More mimir batch options, as one string."),
) -> None:
    """Run one shard in a DNAnexus job: restore its checkpoint, run mimir batch, upload one archive.

    Called by the applet's entry script; it resumes where an interrupted
    instance of the same job left off (the checkpoint in --folder).
    """
    from mimir.batch.rap_job import run_shard
    from mimir.errors import UsageError
    from mimir.utils.atomic import check_writable_dir

    if shard_index >= num_shards:
        raise UsageError(f"--shard-index {shard_index} is outside 0..{num_shards - 1}")
    try:
        extra = shlex.split(batch_args)
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"--batch-args cannot be split into options ({exc})",
                         hint="Quote it as one string, e.g. --batch-args \"--workers 4 --instance 2\".") from None
    check_writable_dir(work, what="work folder (--work)")  # before any work
    try:
        result = run_shard(listing, folder, shard_index=shard_index, num_shards=num_shards, work_dir=str(work),
                           batch_args=extra, every_s=every_min * 60, every_n=every_n, report=report)
    except MimirError as exc:
        report_error(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    say(f"restored {result.restored}, {result.checkpoints} checkpoint(s) saved, archive {result.archive_id}")


@rap_app.command("collect", epilog=EXIT_CODES_HELP)
@handle_errors
def collect_cmd(
    folder: str = typer.Option(..., "--folder", metavar="PROJECT:/FOLDER", help="Where the shards uploaded their archives."),
    output: Path = typer.Option(..., "-o", "--output", metavar="FOLDER", help="Folder for the merged outputs."),
    input: Optional[str] = typer.Option(None, "--input", metavar="LISTING", help="List every subject of this listing that is neither predicted nor failed.", show_default=False),  # noqa: A002, UP007
    parquet: bool = typer.Option(False, "--parquet", help="Also write predictions.parquet."),
) -> None:
    """Download every shard archive of --folder and merge them into one table (as mimir merge)."""
    from mimir.batch import dx
    from mimir.batch.merge import merge_outputs

    found = dx.find(folder, "shard-*-of-*.tar.gz")
    archives = sorted({f.name: f for f in reversed(found) if not f.name.endswith(".checkpoint.tar.gz")}.values(),
                      key=lambda f: f.name)
    if not archives:
        report_error(f"{folder}: no shard archives (shard-*-of-*.tar.gz) found")
        raise typer.Exit(EXIT_ERROR)
    with tempfile.TemporaryDirectory(prefix="mimir-collect-") as tmp:
        local = []
        for f in archives:
            dest = Path(tmp) / f.name
            dx.download(f.id, str(dest))
            local.append(str(dest))
        result = merge_outputs(local, str(output), input=input, parquet=parquet or None)
    for problem in result.problems:
        report_warning(problem)
    if result.missing:
        report_error(f"{len(result.missing)} subject(s) neither predicted nor failed (see missing.csv)")
    say(f"collected {len(archives)} shard(s): {result.predicted} predicted, {result.failed} failed, "
        f"{len(result.missing)} missing; outputs in {output}")
    raise typer.Exit(result.exit_code)
