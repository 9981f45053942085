"""``mimir train``: train and calibrate a module on your own images and targets."""

from __future__ import annotations

import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from mimir.cli.app import EXIT_CODES_HELP, app, console, err_console, handle_errors, say
from mimir.utils.atomic import check_writable_parent


class _RichProgress:
    """Progress bars (total and current member) with loss and ETA; plain lines when not a terminal."""

    def __init__(self, every: int = 50) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.live = err_console.is_terminal
        self.every = every
        self.bar = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:>8}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            disable=not self.live,
        )
        self.total_task: Any = None
        self.load_task: Any = None
        #: per running job: bar task, label, start time, iterations since start, loss EMA
        self.jobs: dict[int, dict[str, Any]] = {}
        self._run_t = time.perf_counter()
        self._run_its = 0

    # TrainProgress protocol
    def run_started(self, jobs: Any, iterations: int, done_iterations: int) -> None:
        total = len(jobs) * iterations
        if self.live:
            self.bar.start()  # no-op when loading started it
            self.total_task = self.bar.add_task("all members", total=total, completed=done_iterations, loss="", speed="")
        self._total = total
        self._done = done_iterations
        self._run_t = time.perf_counter()
        self._run_its = 0

    def job_started(self, job: Any, label: str, start_iteration: int, iterations: int) -> None:
        state = {"label": label, "t": time.perf_counter(), "its": 0, "ema": math.nan, "task": None}
        self.jobs[job.index] = state
        if self.live:
            state["task"] = self.bar.add_task(label, total=iterations, completed=start_iteration, loss="", speed="")
        else:
            resumed = f" (resumed at iteration {start_iteration})" if start_iteration else ""
            err_console.print(f"training {label}{resumed}", highlight=False, soft_wrap=True, markup=False)

    def step(self, job: Any, iteration: int, loss: float) -> None:
        state = self.jobs[job.index]
        state["ema"] = loss if math.isnan(state["ema"]) else 0.95 * state["ema"] + 0.05 * loss
        state["its"] += 1
        self._done += 1
        self._run_its += 1
        now = time.perf_counter()
        rate = state["its"] / max(now - state["t"], 1e-9)
        total_rate = self._run_its / max(now - self._run_t, 1e-9)  # all workers together
        if self.live:
            self.bar.update(state["task"], completed=iteration, loss=f"{state['ema']:.4f}", speed=f"{rate:.2f} it/s")
            self.bar.update(
                self.total_task, completed=self._done, loss=f"{state['ema']:.4f}", speed=f"{total_rate:.2f} it/s"
            )
        elif iteration % self.every == 0:
            left = (self._total - self._done) / total_rate if total_rate > 0 else math.nan
            err_console.print(
                f"{state['label']}: iteration {iteration}, loss {state['ema']:.4f}, {rate:.2f} it/s, "
                f"{self._done}/{self._total} total, ETA {left / 60:.1f} min",
                highlight=False,
                soft_wrap=True,
            )

    def job_finished(self, job: Any, seconds: float) -> None:
        state = self.jobs.pop(job.index, None)
        if state is None:
            return
        if self.live:
            self.bar.remove_task(state["task"])
        else:
            err_console.print(f"finished {state['label']} in {seconds / 60:.1f} min", highlight=False, soft_wrap=True, markup=False)

    def message(self, text: str) -> None:
        err_console.print(text, highlight=False, soft_wrap=True, markup=False)

    def loading(self, done: int, total: int) -> None:
        if self.live:
            if self.load_task is None:
                self.bar.start()
                self.load_task = self.bar.add_task("loading images", total=total, loss="", speed="")
            self.bar.update(self.load_task, completed=done)
            if done == total:
                self.bar.remove_task(self.load_task)
        elif done == total or done % 500 == 0:
            err_console.print(f"loaded {done}/{total} images", highlight=False, markup=False)

    def close(self) -> None:
        if self.live:
            self.bar.stop()


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}"


@app.command("train", epilog=EXIT_CODES_HELP)
@handle_errors
def train_cmd(
    images: Path = typer.Argument(
        ..., metavar="IMAGES",
        help="Folder of .npy images (mimir preprocess) or subject zips (preprocessed on the fly).", show_default=False,
    ),
    targets_csv: Path = typer.Argument(
        ..., metavar="TARGETS.csv",
        help="A 'name' column (image file stems) or an 'eid' column (UK Biobank participant id), then one "
        "column per target; empty = missing.",
        show_default=False,
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", metavar="FOLDER", help="Module folder to write. Required.", show_default=False
    ),
    name: Optional[str] = typer.Option(  # noqa: UP007
        None, "--name", metavar="NAME", help="Module name (default: the output folder's name).", show_default=False
    ),
    version: str = typer.Option("1.0", "--version", metavar="VERSION", help="Module version recorded in module.json."),
    members: int = typer.Option(5, "--members", "-k", min=1, metavar="N", help="Ensemble members (they differ by seed)."),
    arch: str = typer.Option("resnet50", "--arch", metavar="resnet50", help="Network architecture (resnet50)."),
    width: int = typer.Option(
        64, "--width", min=1, metavar="N", help="Stem channels; 64 is torchvision's ResNet50, 8 a slim one."
    ),
    iterations: int = typer.Option(6000, "--iterations", "-i", min=1, metavar="N", help="Iterations per member."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, metavar="N", help="Images per iteration."),
    lr: float = typer.Option(1e-3, "--lr", metavar="RATE", help="Adam learning rate (divided by 10 for the last fifth)."),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", metavar="FRACTION", help="Fraction held out for validation and calibration."
    ),
    folds: Optional[int] = typer.Option(  # noqa: UP007
        None, "--folds", metavar="K",
        help="Calibrate on out-of-fold predictions of K folds instead (then train on everything).", show_default=False,
    ),
    max_shift: int = typer.Option(16, "--max-shift", min=0, metavar="PIXELS", help="Largest random translation in pixels."),
    calibration: str = typer.Option(
        "auce", "--calibration", metavar="auce|ci95|nll",
        help="Fit the variance factor to: auce (all interval levels), ci95 (the 95 % interval) or nll (likelihood).",
    ),
    units: Optional[list[str]] = typer.Option(  # noqa: UP007
        None, "--units", metavar="TARGET=UNIT,...",
        help="Units, e.g. 'weight_kg=kg,vat=L' (default: from the name's suffix).", show_default=False,
    ),
    supports: Optional[list[str]] = typer.Option(  # noqa: UP007
        None, "--support", metavar="TARGET=LOW:HIGH,...",
        help="Bounds the intervals are cut to, e.g. 'liver_fat=0:100,vat=0:' (a side may be empty; 'none': no "
        "bounds). Default: from the unit (percent 0:100; volumes, masses and lengths 0:).", show_default=False,
    ),
    fields: Optional[list[str]] = typer.Option(  # noqa: UP007
        None, "--fields", metavar="TARGET=FIELD,...", help="UK Biobank field ids, e.g. 'weight=21002'.",
        show_default=False,
    ),
    target_info: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--target-info", metavar="FILE", help="CSV with columns name,unit,field describing the targets.",
        show_default=False,
    ),
    description: str = typer.Option("", "--description", metavar="TEXT", help="Description recorded in module.json."),
    intended_use: str = typer.Option(
        "research", "--intended-use", metavar="research|synthetic-demo",
        help="Recorded in module.json; a synthetic-demo module is applied only when named with -m.",
    ),
    intended_use_note: str = typer.Option(
        "", "--intended-use-note", metavar="TEXT", help="What the module is for, in words (module.json)."
    ),
    init: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--init", metavar="FILE",
        help="Start from a torchvision-format ResNet50 state dict (its width, 64 for ImageNet weights; fc is not loaded).",
        show_default=False,
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, "--threads", min=1, metavar="N", help="CPU threads for torch (per worker with --workers).",
        show_default=False,
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, metavar="N", help="Networks trained at once, one process each (CPU: up to one per core)."
    ),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of splits, initialisation, batches and augmentation."),
    checkpoint_every: int = typer.Option(
        100, "--checkpoint-every", min=1, metavar="N", help="Iterations between checkpoints."
    ),
    work_dir: Optional[Path] = typer.Option(  # noqa: UP007
        None, "--work-dir", metavar="FOLDER", help="Checkpoint folder (default: .<output>.train beside the output).",
        show_default=False,
    ),
    restart: bool = typer.Option(False, "--restart", help="Discard checkpoints of an earlier run and start afresh."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep the checkpoint folder afterwards."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not use the image cache for zips."),
) -> None:
    """Train and calibrate a mean-variance ResNet50 ensemble; write it as a module.

    Interrupted runs resume: run the same command again. The module works
    with [bold]mimir predict -m OUTPUT[/] and [bold]mimir fetch-weights --from OUTPUT[/].

    Example: [bold]mimir train images/ targets.csv -o my-module --members 5 --iterations 6000[/]
    """
    import torch

    from mimir.errors import UsageError
    from mimir.models.modules import INTENDED_USES
    from mimir.training import train_module

    if intended_use not in INTENDED_USES:
        raise UsageError(f"--intended-use must be one of {', '.join(INTENDED_USES)}, got {intended_use!r}")
    if output.exists() and not output.is_dir():
        raise UsageError("is a file, not a folder", path=str(output), hint="Give a module folder for -o.")
    check_writable_parent(output, what="module folder")  # before any work

    if threads is not None:
        torch.set_num_threads(threads)
    progress = _RichProgress()
    started = time.perf_counter()
    try:
        result = train_module(
            images,
            targets_csv,
            output,
            units=units,
            supports=supports,
            fields=fields,
            target_info_file=target_info,
            device=device,
            progress=progress,  # type: ignore[arg-type]
            restart=restart,
            keep_checkpoints=keep_checkpoints,
            overwrite=force,
            cache=not no_cache,
            work_dir=work_dir,
            source={"command": "mimir " + shlex.join(sys.argv[1:])} if sys.argv[1:2] == ["train"] else None,
            name=name or output.name,
            version=version,
            description=description,
            intended_use=intended_use,
            intended_use_note=intended_use_note,
            arch=arch,
            width=width,
            members=members,
            iterations=iterations,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            folds=folds,
            max_shift=max_shift,
            calibration=calibration,
            seed=seed,
            init=None if init is None else str(init),
            checkpoint_every=checkpoint_every,
            workers=workers,
            threads=threads,
        )
    finally:
        progress.close()
    _print_summary(result, time.perf_counter() - started)


def _print_summary(result: Any, seconds: float) -> None:
    from rich.markup import escape
    from rich.table import Table

    spec = result.spec
    if result.metrics:
        table = Table(title=escape(f"{spec.name}: held-out validation"), title_justify="left")
        for col in ("target", "unit", "N", "MAE", "R2", "ICC", "MAPE %", "cov95 raw", "cov95 cal", "factor"):
            table.add_column(col, justify="left" if col in ("target", "unit") else "right")
        for t in spec.targets:
            m = result.metrics.get(t.name, {})
            table.add_row(
                escape(t.name),
                escape(t.unit),
                _fmt(m.get("n")),
                _fmt(m.get("mae")),
                _fmt(m.get("r2")),
                _fmt(m.get("icc")),
                _fmt(m.get("mape_percent"), 2),
                _fmt(m.get("coverage95_uncalibrated")),
                _fmt(m.get("coverage95_calibrated")),
                _fmt(m.get("calibration_factor")),
            )
        console.print(table)
    else:
        console.print("no subjects held out: calibration factors are 1 and no validation metrics were recorded")
    say(
        f"wrote module {spec.name} ({len(spec.members)} member(s), width {spec.width}) to {spec.path} "
        f"in {seconds / 60:.1f} min ({_fmt(result.iterations_per_second, 2)} it/s, "
        f"{_fmt(result.images_per_second, 1)} img/s"
        f"{f' per network, {result.workers} at once' if result.workers > 1 else ''})"
    )
    say(f"use it: mimir predict -m {spec.path} IMAGES...   install it: mimir fetch-weights --from {spec.path}")
