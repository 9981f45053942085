"""A batch run from start to end: plan, process, write the outputs.

1. **Plan**: find the subjects (:mod:`mimir.batch.inputs`), keep this shard's,
   work out the validity key from the modules, pipeline version, level and the
   resolved precision and device type, and sort the subjects into done (a valid record exists) and to do.
2. **Process** the subjects to do with an engine (local processes or Ray);
   every finished subject is recorded at once (:mod:`mimir.batch.records`).
3. **Write** ``predictions.csv``, ``predictions.json`` and ``errors.csv``
   from the records (sorted by name), ``subjects.csv`` (this shard's inputs,
   for ``mimir merge``) and ``run.json`` (what ran, where, how fast).

Only one run at a time may write to an OUT_DIR (an advisory lock on
``OUT_DIR/.lock``). Running the same command again resumes: only subjects
without a valid record are processed.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mimir import __version__
from mimir.batch.inputs import InputFile, Inputs, resolve_shard, select_shard
from mimir.batch.progress import Monitor
from mimir.batch.records import (
    ERRORS_CSV,
    PREDICTIONS_CSV,
    PREDICTIONS_JSON,
    RECORDS_DIR,
    STAGE_INPUT,
    ErrorRow,
    RecordStore,
    error_record,
    key_digest,
    ok_record,
    run_key,
    scan,
    write_outputs,
)
from mimir.batch.stages import Outcome, columns_for, usable_cpus
from mimir.errors import EXIT_OK, EXIT_PARTIAL, MimirError, UsageError
from mimir.outputs.parquet import PREDICTIONS_PARQUET
from mimir.utils import atomic

RUN_JSON = "run.json"
SUBJECTS_CSV = "subjects.csv"
#: Copying threads of ``--stage`` at most (one per worker up to this).
STAGE_THREADS = 4
RUN_FORMAT = "mimir-batch-run/1"
ENGINES = ("local", "ray")


class RunError(MimirError):
    """The batch run cannot proceed."""


@dataclass
class BatchOptions:
    """Everything a batch run needs; see ``mimir batch --help`` for the meaning of each."""

    input: str
    out_dir: str
    modules: list[str] | None = None
    device: str = "auto"
    gpus: list[int] | None = None
    precision: str = "auto"
    workers: int | None = None
    batch_size: int = 16
    level: float = 0.95
    retry_failed: bool = False
    num_shards: int | None = None
    shard_index: int | None = None
    engine: str = "local"
    address: str | None = None
    cache: bool = True
    queue_size: int | None = None
    threads: int | None = None
    #: predictions.csv layout: ``wide`` (one row per subject) or ``long`` (one row per subject x target)
    csv_layout: str = "wide"
    #: Also write predictions.parquet (wide or long, as ``csv_layout``; needs pyarrow).
    parquet: bool = False
    #: UK Biobank visit to keep (2 or 3; None: all), and the RAP inputs (see :mod:`mimir.batch.rap`).
    instance: int | None = None
    #: Where ``dx find data`` listings' project paths are mounted (dxfuse; default /mnt/project).
    mount: str | None = None
    #: Copy inputs to this local folder ahead of the workers, verified (see :mod:`mimir.batch.staging`).
    stage_dir: str | None = None
    #: Staging look-ahead: files and bytes staged but not yet preprocessed, at most.
    stage_files: int = 8
    stage_bytes: int = 4 << 30
    #: Replaces the preprocessing function (a picklable top-level function; for tests and custom readers).
    preprocess: Any = None
    #: Also write each subject's NIfTI volumes and sidecar into this folder (``--volumes``; docs/volumes.md).
    volumes: str | None = None
    #: The volumes to write (:data:`mimir.preprocessing.volumes.CONTRASTS` names); None: the default set.
    volume_contrasts: tuple[str, ...] | None = None

    def devices(self) -> list[str]:
        """One device per inference process."""
        if self.gpus:
            return [f"cuda:{g}" for g in self.gpus]
        return [self.device]


@dataclass
class BatchResult:
    """The outcome of a run, as counted from the records at its end."""

    out_dir: str
    subjects: int
    predicted: int
    failed: int
    unfinished: int
    processed: int
    done_before: int
    wall_s: float
    throughput: float
    status: str
    devices: list[str] = field(default_factory=list)
    #: predicted subjects whose qc_status is warn or fail (QC or OOD flags), of them fail
    qc_flagged: int = 0
    qc_fail: int = 0
    #: the modules applied that are marked synthetic-demo (their numbers mean nothing for real images)
    synthetic_modules: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: every subject predicted; 2: some failed or are unfinished; 1 never (raised instead)."""
        return EXIT_OK if self.failed == 0 and self.unfinished == 0 else EXIT_PARTIAL


# --------------------------------------------------------------------------- helpers


def _check(options: BatchOptions) -> None:
    from mimir.inference.predictions import z_value

    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.workers is not None and options.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {options.workers}")
    if options.engine not in ENGINES:
        raise UsageError(f"unknown engine {options.engine!r}", hint="Use local or ray.")
    if options.address and options.engine != "ray":
        raise UsageError("--address needs --engine ray")
    if options.gpus is not None:
        if any(g < 0 for g in options.gpus):
            raise UsageError("--gpu takes GPU indices >= 0")
        if options.device not in ("auto", "cuda"):
            raise UsageError(f"--gpu contradicts --device {options.device}; give one of them")
    try:
        z_value(options.level)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from mimir.outputs.writers import check_layout

    check_layout(options.csv_layout)
    if options.volumes is not None:
        from mimir.batch.volumes import check_volume_options

        check_volume_options(options.volumes, options.engine, options.preprocess)
    if options.parquet:
        from mimir.outputs.parquet import require_pyarrow

        require_pyarrow()
    if options.instance is not None and options.instance not in (2, 3):
        raise UsageError(f"--instance must be 2 or 3 (the imaging visits), got {options.instance}")
    if options.stage_dir is not None and options.engine != "local":
        raise UsageError("--stage works with --engine local only")


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on OUT_DIR/.lock (where the platform has one)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    try:
        fh = open(out_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise UsageError(
            f"cannot write in the output folder ({exc.strerror or exc}; it holds the run's .lock)",
            path=str(out_dir),
            hint="Give an output folder you can write to (-o).",
        ) from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                "another mimir batch is writing to this folder", path=str(out_dir),
                hint="Wait for it, or give each run (each shard) its own output folder.",
            ) from None
        except OSError:
            pass  # a file system without locks: go on unlocked
        yield
    finally:
        fh.close()


def write_subjects(path: Path, inputs: Inputs) -> None:
    """subjects.csv: ``name, path`` of every input of this shard (processable or refused), sorted; paths absolute."""
    # absolute paths, so that `mimir report` run from another folder still finds each input's preview
    rows = sorted({(f.name, os.path.abspath(f.path)) for f in inputs.files}
                  | {(q.name, os.path.abspath(q.path)) for q in inputs.problems})
    with atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("name", "path"))
        writer.writerows(rows)


def read_subjects(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The (name, path) rows of a subjects.csv."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [(r["name"], r["path"]) for r in csv.DictReader(fh)]


def _versions() -> dict[str, str]:
    out = {"mimir": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "numpy", "pydicom"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    from mimir.preprocessing import kernels

    # how the images were made: same bits either way, about twice the time without the C loops
    out["preprocessing"] = "compiled" if kernels.enabled() else "numpy"
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM (a SLURM time limit or pre-emption) stops the run like Ctrl-C.

    The engine then stops its processes, run.json says "interrupted", and
    temporary files are removed; what was recorded stays for the rerun.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------- the run


def run_batch(
    input: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    monitor: Monitor | None = None,
    **options: Any,
) -> BatchResult:
    """Run (or resume) a batch: every subject of ``input`` through ``modules`` into ``out_dir``.

    Keyword options are the fields of :class:`BatchOptions` (``modules``,
    ``device``, ``gpus``, ``workers``, ``batch_size``, ``level``,
    ``retry_failed``, ``num_shards``, ``shard_index``, ``engine``, ...).
    Returns the counts; raises :class:`~mimir.errors.MimirError` when the run
    cannot proceed (nothing is lost: a rerun resumes).

    The local engine starts ``spawn`` processes, which import the calling
    script again: in a script, call this under ``if __name__ == "__main__":``
    (a call outside it raises :class:`~mimir.errors.UsageError` saying so).
    """
    opts = BatchOptions(input=os.fspath(input), out_dir=os.fspath(out_dir), **options)
    if opts.engine == "local":
        from mimir.utils.processes import require_main_guard

        require_main_guard("mimir.run_batch")
    return execute(opts, monitor or Monitor())


def execute(opts: BatchOptions, monitor: Monitor) -> BatchResult:
    """Run the batch described by ``opts``, reporting progress to ``monitor``."""
    from mimir.inference.predictor import resolve_modules
    from mimir.preprocessing.pipeline import PIPELINE_VERSION

    from mimir.utils.devices import precision_name

    started_wall = time.monotonic()
    started_at = _now()
    _check(opts)
    precision = precision_name(opts.precision)  # auto is exact fp32 on every device
    num_shards, shard_index = resolve_shard(opts.num_shards, opts.shard_index)
    specs = resolve_modules(opts.modules or None)
    identities = [s.identity() for s in specs]
    header = columns_for(specs)
    out = Path(opts.out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the output folder ({exc.strerror or exc})", path=opts.out_dir,
            hint="Give a folder whose parent exists and is writable (-o).",
        ) from None
    if not out.is_dir():
        raise UsageError("is a file, not a folder", path=opts.out_dir, hint="Give an output folder (-o).")
    atomic.check_writable_dir(out, create=False)  # a real write: permissions, read-only mounts, root
    if opts.stage_dir is not None:
        atomic.check_writable_dir(opts.stage_dir, what="staging folder (--stage)")
    workers = opts.workers or usable_cpus()  # the Ray engine leaves it to Ray unless given
    devices = opts.devices()
    if opts.volumes is not None:  # the workers write the volumes: the engine hands them this preprocessing
        from mimir.batch.volumes import volume_options

        opts = volume_options(opts)
    engine = _make_engine(opts, workers, devices, identities, precision)
    try:
        key = run_key(PIPELINE_VERSION, identities, opts.level, precision=precision,
                      device_type=engine.device_type())
        return _execute(opts, monitor, engine, key, header, out, workers, devices, (num_shards, shard_index),
                        (started_wall, started_at), [s.name for s in specs if s.synthetic])
    finally:
        engine.close()


def _execute(
    opts: BatchOptions, monitor: Monitor, engine: Any, key: dict[str, Any], header: list[str], out: Path,
    workers: int, devices: list[str], shard: tuple[int, int], started: tuple[float, str],
    synthetic_modules: list[str],
) -> BatchResult:
    """:func:`execute` once the engine and the validity key are known."""
    from mimir.preprocessing.pipeline import PIPELINE_VERSION

    num_shards, shard_index = shard
    started_wall, started_at = started

    with _locked(out), _sigterm_as_interrupt():
        from mimir.batch.rap import discover_inputs

        everything, expected_files = discover_inputs(opts.input, skip=out, instance=opts.instance, mount=opts.mount)
        inputs = select_shard(everything, num_shards, shard_index)
        store = RecordStore(out)
        store.remove_stale_temporaries()
        names = [f.name for f in inputs.files]
        status = scan(store, names, key, retry_failed=opts.retry_failed)
        if opts.volumes is not None:
            from mimir.batch.volumes import redo_missing_volumes

            redo_missing_volumes(opts, status, {f.name: f.path for f in inputs.files})
        todo_names = set(status.todo)
        todo: list[InputFile] = [f for f in inputs.files if f.name in todo_names]
        input_errors = [ErrorRow(q.name, q.path, STAGE_INPUT, q.message) for q in inputs.problems]

        run: dict[str, Any] = {
            "format": RUN_FORMAT,
            "status": "running",
            "versions": _versions(),
            "pipeline_version": PIPELINE_VERSION,
            "input": os.path.abspath(opts.input),
            "out_dir": os.path.abspath(out),
            "shard": {
                "num_shards": num_shards,
                "shard_index": shard_index,
                "assignment": "sha256(name)[:8] mod num_shards",
            },
            "engine": opts.engine,
            "address": opts.address,
            "devices_requested": devices,
            "devices": [],
            "precision": key["precision"],
            "precision_requested": opts.precision,
            "device_type": key["device_type"],
            "workers": workers if opts.engine == "local" else opts.workers,
            "batch_size": opts.batch_size,
            "queue_size": None,
            "cache": opts.cache,
            "level": opts.level,
            "modules": key["modules"],
            "key_digest": key_digest(key),
            "key": key,
            "columns": header,
            "csv_layout": opts.csv_layout,
            "parquet": opts.parquet,
            "instance": opts.instance,
            "staged": opts.stage_dir is not None,
            "output_schema": key["output_schema"],
            "retry_failed": opts.retry_failed,
            "volumes": None if opts.volumes is None else
            {"dir": os.path.abspath(opts.volumes), "contrasts": list(opts.volume_contrasts or ())},
            "counts": {
                "inputs": len(everything.files) + len(everything.problems),
                "subjects": len(inputs.files) + len(inputs.problems),
                "refused": len(inputs.problems),
                "done_before": len(status.ok) + len(status.failed),
                "to_do": len(todo),
            },
            "started_at": started_at,
        }
        try:
            write_subjects(out / SUBJECTS_CSV, inputs)
            atomic.write_text(out / RUN_JSON, _dump(run))
        except OSError as exc:
            raise RunError(
                f"cannot write {SUBJECTS_CSV} or {RUN_JSON} ({exc.strerror or exc}); nothing was computed",
                path=str(out), hint="Free space or fix the folder's permissions, then run again.",
            ) from None

        provenance_base = {"mimir_version": __version__, "engine": opts.engine, "precision": key["precision"],
                           "batch_size": opts.batch_size}
        ready_devices: list[str] = []

        def ready(_cid: int, identity: list[dict[str, Any]], description: str) -> None:
            if identity != key["modules"]:
                raise RunError("the modules loaded for inference differ from the ones the run was planned with; "
                               "were they reinstalled just now? Run again")
            ready_devices.append(description)

        def outcome(o: Outcome) -> None:
            prov = {**provenance_base, "device": o.device}
            if o.ok:
                record = ok_record(o.name, o.source, key, o.row or {}, o.obj or {}, prov)
            else:
                record = error_record(o.name, o.source, key, o.stage or "", o.message or "", prov)
            try:
                store.write(record)
            except OSError as exc:
                raise RunError(f"cannot write a record ({exc.strerror})", path=str(store.root)) from None

        engine_started = time.monotonic()
        unfinished_by_engine = 0
        final_status = "complete"
        try:
            if todo:
                for name in (PREDICTIONS_CSV, PREDICTIONS_JSON, ERRORS_CSV, PREDICTIONS_PARQUET):
                    with contextlib.suppress(FileNotFoundError):
                        (out / name).unlink()
                monitor.begin(len(todo), len(status.ok) + len(status.failed))
                run["queue_size"] = getattr(getattr(engine, "config", None), "image_queue_size", None)
                from mimir.batch.local import Hooks

                stager: Any = contextlib.nullcontext()
                if opts.stage_dir is not None:
                    from mimir.batch.staging import staging

                    # copying threads: verifying a copy costs about what preprocessing it does (benchmarks/staging.py)
                    stager = staging(todo, opts.stage_dir, expected_files, max_files=opts.stage_files,
                                     max_bytes=opts.stage_bytes, threads=min(STAGE_THREADS, max(1, workers)))
                with stager as staged:
                    report = engine.run(todo, Hooks(ready=ready, outcome=outcome), monitor)
                if staged is not None:
                    run["staging"] = {"retried": staged.retried, "unreadable": staged.failed}
                unfinished_by_engine = report.unfinished
        except KeyboardInterrupt:
            final_status = "interrupted"
            raise
        except BaseException as exc:
            final_status = "failed"
            run["error"] = str(exc) if isinstance(exc, MimirError) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            monitor.end()
            engine_wall = time.monotonic() - engine_started
            processed = monitor.processed
            run["devices"] = ready_devices
            run["finished_at"] = _now()
            run["wall_s"] = round(time.monotonic() - started_wall, 3)
            run["engine_wall_s"] = round(engine_wall, 3)
            run["counts"]["processed"] = processed
            rate = processed / engine_wall if processed and engine_wall > 0 else 0.0
            run["throughput_subjects_per_s"] = round(rate, 4)
            totals = monitor.totals
            run["stage_seconds"] = {
                "inference_waiting": round(totals.infer_wait, 3),
                "inference_computing": round(totals.infer_busy, 3),
                "preprocessing": round(totals.work_busy, 3),
                "preprocessing_blocked": round(totals.work_blocked, 3),
            }
            share = totals.inference_wait_share
            run["inference_wait_share"] = None if share is None else round(share, 4)
            if final_status != "complete":
                run["status"] = final_status
                with contextlib.suppress(OSError):
                    atomic.write_text(out / RUN_JSON, _dump(run))

        try:
            written = write_outputs(
                out, names, lambda n: store.valid(n, key), header, input_errors, csv_layout=opts.csv_layout
            )
            if opts.parquet:
                from mimir.batch.shards import write_batch_parquet

                write_batch_parquet(out, run, input_errors)
            unfinished = len(written.missing)
            run["status"] = "complete" if unfinished == 0 else "incomplete"
            run["counts"].update(
                {"predicted": written.predicted, "failed": written.failed, "unfinished": unfinished,
                 "qc_flagged": written.qc.get("warn", 0) + written.qc.get("fail", 0),
                 "qc_warn": written.qc.get("warn", 0), "qc_fail": written.qc.get("fail", 0)}
            )
            if unfinished_by_engine:
                run["note"] = f"{unfinished_by_engine} subject(s) were lost with a dying process; run again to do them"
            atomic.write_text(out / RUN_JSON, _dump(run))
        except OSError as exc:
            raise RunError(
                f"the finished subjects' records are kept in {RECORDS_DIR}/, but writing the final outputs "
                f"failed ({exc.strerror or exc})",
                path=str(out),
                hint="Free space or fix permissions, then write them again without recomputing anything: "
                "run the same mimir batch command again (or mimir merge OUT_DIR -o NEW_DIR).",
            ) from None

    return BatchResult(
        out_dir=str(out), subjects=len(inputs.files) + len(inputs.problems), predicted=written.predicted,
        failed=written.failed, unfinished=unfinished, processed=run["counts"]["processed"],
        done_before=run["counts"]["done_before"], wall_s=run["wall_s"],
        throughput=run["throughput_subjects_per_s"], status=run["status"], devices=ready_devices,
        qc_flagged=run["counts"]["qc_flagged"], qc_fail=run["counts"]["qc_fail"],
        synthetic_modules=synthetic_modules,
    )


def _make_engine(
    opts: BatchOptions, workers: int, devices: Sequence[str], expected: list[dict[str, Any]], precision: str
) -> Any:
    """The engine of ``opts.engine``; ``precision`` is the resolved one (``fp32``/``bf16``), given to every child."""
    from mimir.batch.local import LocalConfig

    preprocess = opts.preprocess
    if opts.stage_dir is not None:
        from mimir.batch.staging import staged_preprocess

        preprocess = staged_preprocess(opts.stage_dir, preprocess)
    config = LocalConfig(
        modules=opts.modules or None, devices=list(devices),
        workers=(opts.workers or 0) if opts.engine == "ray" else workers, batch_size=opts.batch_size,
        level=opts.level, precision=precision, cache=opts.cache, queue_size=opts.queue_size, threads=opts.threads,
        preprocess=preprocess,
    )
    if opts.engine == "ray":
        from mimir.batch.ray_engine import RayEngine

        return RayEngine(config, expected, address=opts.address)
    from mimir.batch.local import LocalEngine

    return LocalEngine(config)


def _dump(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


