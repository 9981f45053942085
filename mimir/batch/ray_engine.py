"""The Ray engine: the same two stages as a Ray Data pipeline, on one machine or a cluster.

::

    from_items([(idx, name, path), ...])          paths only, never file bytes
      .map(_preprocess_row, num_cpus=1)            CPU tasks: path -> image bytes or message
      .map_batches(_InferenceActor, batch_size=B,  actor pool: modules loaded once per actor,
                   concurrency=A, num_gpus=1|0)    one GPU each where the cluster has GPUs
      .iter_rows()                                 driver: one record per subject, as it arrives

The driver writes the records (:mod:`mimir.batch.records`), so the output
folder needs to exist only where the driver runs, and the resume and error
rules are those of the local engine. The inputs must be readable at the same
paths on every node, and the modules installed on every node (or
``MIMIR_HOME`` on a shared file system); ``MIMIR_HOME`` and ``MIMIR_CACHE``
of the driver are passed to the tasks.

Sizing a cluster: the actor pool holds one GPU per actor (or, without GPUs,
one CPU for its single actor) for the whole run, and each preprocessing task
needs one more CPU and :data:`PREPROCESS_MEMORY` of memory. A cluster whose
only CPU is held by the actor can never preprocess: the run then waits, the
status line keeps coming every 30 s, and after a few minutes one warning names
the free CPUs and GPUs against these needs (docs/batch.md, "Sizing a Ray cluster").

Ray is imported only here, lazily; without it ``--engine ray`` fails with a
one-line hint saying how to install the ``ray`` extra (:func:`mimir.utils.install.extra_hint`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mimir.batch.inputs import InputFile
from mimir.batch.local import EngineError, EngineReport, Hooks, LocalConfig
from mimir.batch.progress import Monitor
from mimir.batch.records import STAGE_PREPROCESS
from mimir.batch.stages import IMAGE_SHAPE, Outcome, Prepared
from mimir.errors import MimirError, UsageError
from mimir.utils.install import extra_hint

#: Rows per block of the input dataset at most (a preprocessing task handles one block).
MAX_ROWS_PER_BLOCK = 8
#: Memory reserved per preprocessing task (bytes): reading and fusing a full-size zip peaks near 0.6 GB.
#: Reserving it also keeps Ray Data from fusing preprocessing into the inference actors (their
#: resources differ), so preprocessing stays a pool of CPU tasks.
PREPROCESS_MEMORY = 1 << 30
#: Seconds between two monitor ticks while the driver waits for Ray (status lines, stall warning).
HEARTBEAT_S = 1.0
#: Environment variables handed from the driver to every task and actor.
_FORWARDED_ENV = ("MIMIR_HOME", "MIMIR_CACHE")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line :class:`UsageError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(
            "--engine ray needs Ray, which is not installed", hint=extra_hint("ray")
        ) from None
    return ray


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b.*: .+")


def _root_cause(exc: BaseException) -> str:
    """The innermost error of a Ray exception as one line (Ray puts the task's traceback in its text)."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    causes = [line for line in lines if _ERROR_LINE.match(line)]
    text = causes[-1] if causes else (next((line for line in lines if line), "") or type(exc).__name__)
    return " ".join(text.split())[:300]


def _preprocess_row(row: dict[str, Any], *, cache: bool) -> dict[str, Any]:
    """A Ray task: one input path -> its image as bytes (or b"" and the failure message)."""
    from mimir.batch.stages import preprocess_or_error

    t0 = time.perf_counter()
    prepared, message = preprocess_or_error(row["name"], row["path"], cache=cache)
    return {
        "idx": row["idx"],
        "name": row["name"],
        "path": row["path"],
        "image": b"" if prepared is None else np.ascontiguousarray(prepared.image, dtype=np.uint8).tobytes(),
        "qc": "" if prepared is None or prepared.qc is None else json.dumps(prepared.qc),
        "message": message or "",
        "busy": time.perf_counter() - t0,
    }


class _InferenceActor:
    """A Ray actor: the modules loaded once; batches of rows in, results out (JSON text per row)."""

    def __init__(self, config: LocalConfig, device: str, expected: list[dict[str, Any]]) -> None:
        from mimir.batch.stages import InferenceStage

        self.stage = InferenceStage(
            config.modules, device=device, precision=config.precision, batch_size=config.batch_size,
            level=config.level, threads=config.threads,
        )
        if self.stage.identity() != expected:
            raise RuntimeError("the modules on this Ray node differ from the driver's (install the same versions)")
        self.device = self.stage.describe()
        self.last = time.perf_counter()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        wait = start - self.last
        idx = [int(i) for i in batch["idx"]]
        messages = [str(m) for m in batch["message"]]
        good = [k for k, m in enumerate(messages) if not m]
        items = [
            (str(batch["name"][k]), str(batch["path"][k]),
             Prepared(np.frombuffer(batch["image"][k], dtype=np.uint8).reshape(IMAGE_SHAPE),
                      json.loads(str(batch["qc"][k])) if str(batch["qc"][k]) else None))
            for k in good
        ]
        rows = [""] * len(idx)
        objs = [""] * len(idx)
        for k, o in zip(good, self.stage.predict(items)):
            rows[k] = json.dumps(o.row)  # null for a failed prediction (obj then holds stage and message)
            objs[k] = json.dumps(o.obj if o.ok else {"stage": o.stage, "message": o.message})
        self.last = time.perf_counter()
        n = max(len(idx), 1)
        return {
            "idx": np.array(idx, dtype=np.int64),
            "row": np.array(rows, dtype=object),
            "obj": np.array(objs, dtype=object),
            "message": np.array(messages, dtype=object),
            "device": np.array([self.device] * len(idx), dtype=object),
            "busy": np.asarray(batch["busy"], dtype=np.float64),
            "infer_busy": np.full(len(idx), (self.last - start) / n),
            "infer_wait": np.full(len(idx), wait / n),
        }


class RayEngine:
    """Runs subjects through a Ray Data pipeline (a local instance, or the cluster at ``address``)."""

    def __init__(self, config: LocalConfig, expected: list[dict[str, Any]], address: str | None = None) -> None:
        self.config = config
        self.expected = list(expected)
        self.address = address
        self.ray = import_ray()
        self._started_here = False

    def _connect(self) -> None:
        """Start or join Ray (once); a Ray started here is shut down by :meth:`close`."""
        ray = self.ray
        if ray.is_initialized():
            return
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        ray.init(
            address=self.address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
            runtime_env={"env_vars": env} if env else None,
        )
        self._started_here = True

    def close(self) -> None:
        """Shut Ray down if this engine started it."""
        if self._started_here:
            self._started_here = False
            with contextlib.suppress(Exception):
                self.ray.shutdown()

    def device_type(self) -> str:
        """``cpu``, ``cuda`` or ``mps``: where the inference actors will run (for the validity key).

        With ``--device auto`` this joins the cluster to see whether it has GPUs.
        """
        device = self.config.devices[0] if self.config.devices else "auto"
        if device.strip().lower() in ("cpu", "mps"):
            return device.strip().lower()
        if device.strip().lower() != "auto":
            return "cuda"
        self._connect()
        return "cuda" if self._actors(self.ray)[2] == "cuda" else "cpu"

    def waiting_for(self, n_actors: int, gpus_per_actor: float) -> str:
        """The cluster's free resources against what the pipeline needs, in words."""
        ray = self.ray
        free, total = ray.available_resources(), ray.cluster_resources()
        cpus, gpus = free.get("CPU", 0.0), free.get("GPU", 0.0)
        actor = f"{n_actors} inference actor(s) x {'1 GPU' if gpus_per_actor else '1 CPU'}"
        text = (
            f"the Ray cluster has {cpus:g} of {total.get('CPU', 0.0):g} CPU(s) and {gpus:g} of "
            f"{total.get('GPU', 0.0):g} GPU(s) free; the pipeline holds {actor} for the whole run and each "
            f"preprocessing task needs 1 CPU and {PREPROCESS_MEMORY / 2**30:.0f} GiB of memory"
        )
        if cpus < 1:
            text += "; no CPU is free for preprocessing: add CPUs to the cluster (docs/batch.md, 'Sizing a Ray cluster')"
        return text

    def _actors(self, ray: Any) -> tuple[int, float, str]:
        """(actor count, GPUs per actor, device) from the cluster's resources and the options."""
        device = self.config.devices[0] if self.config.devices else "auto"
        if len(self.config.devices) > 1 or device.startswith("cuda:"):
            raise UsageError("--gpu N does not apply to --engine ray: each inference actor gets one whole GPU",
                             hint="Use --device cuda, or leave --device auto.")
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if device in ("auto", "cuda") and gpus > 0:
            return gpus, 1.0, "cuda"
        if device == "cuda":
            raise UsageError("--device cuda: the Ray cluster has no GPUs")
        return 1, 0.0, "cpu" if device == "auto" else device

    def run(self, todo: Sequence[InputFile], hooks: Hooks, monitor: Monitor) -> EngineReport:
        """Process ``todo``; call ``hooks.outcome`` once per subject as it arrives at the driver."""
        ray = self.ray
        report = EngineReport()
        if not todo:
            return report
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        self._connect()
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # Ray Data's own progress and plan logs: we show ours
        try:
            return self._run(ray, todo, hooks, monitor, env, report)
        except MimirError:
            raise
        except Exception as exc:  # Ray wraps task and actor failures in its own exceptions
            raise EngineError(f"the Ray pipeline failed: {_root_cause(exc)}") from None
        finally:
            quiet.setLevel(level)
            self.close()

    def _run(
        self, ray: Any, todo: Sequence[InputFile], hooks: Hooks, monitor: Monitor, env: dict[str, str],
        report: EngineReport,
    ) -> EngineReport:
        cfg = self.config
        n_actors, gpus_per_actor, device = self._actors(ray)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        with contextlib.suppress(AttributeError):
            ctx.print_on_execution_start = False
        with contextlib.suppress(AttributeError):
            ctx.enable_auto_log_stats = False
        runtime_env = {"env_vars": env} if env else None
        items = [{"idx": i, "name": f.name, "path": f.path} for i, f in enumerate(todo)]
        n = len(items)
        blocks = n if n <= 10_000 else -(-n // MAX_ROWS_PER_BLOCK)
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        map_kwargs: dict[str, Any] = {"num_cpus": 1, "memory": PREPROCESS_MEMORY, "fn_kwargs": {"cache": cfg.cache}}
        if cfg.workers:
            task_pool = getattr(ray.data, "TaskPoolStrategy", None)  # older Ray: concurrency=
            if task_pool is not None:
                map_kwargs["compute"] = task_pool(size=cfg.workers)
            else:  # pragma: no cover - Ray < 2.45
                map_kwargs["concurrency"] = cfg.workers
        if runtime_env:
            map_kwargs["runtime_env"] = runtime_env
        ds = ds.map(_preprocess_row, **map_kwargs)
        actor_kwargs: dict[str, Any] = {
            "batch_size": cfg.batch_size,
            "batch_format": "numpy",
            "compute": ray.data.ActorPoolStrategy(size=n_actors),
            "num_gpus": gpus_per_actor,
            "num_cpus": 0 if gpus_per_actor else 1,
            "fn_constructor_kwargs": {"config": cfg, "device": device, "expected": self.expected},
        }
        if runtime_env:
            actor_kwargs["runtime_env"] = runtime_env
        ds = ds.map_batches(_InferenceActor, **actor_kwargs)

        seen_devices: set[str] = set()
        done: set[int] = set()
        monitor.waiting_for = lambda: self.waiting_for(n_actors, gpus_per_actor)
        stop = threading.Event()

        def heartbeat() -> None:  # the driver blocks in iter_rows: tick from here (status lines, stall warning)
            while not stop.wait(HEARTBEAT_S):
                monitor.tick()

        beat = threading.Thread(target=heartbeat, name="mimir-ray-heartbeat", daemon=True)
        beat.start()
        try:
            return self._collect(ds, todo, hooks, monitor, report, seen_devices, done)
        finally:
            stop.set()
            beat.join(timeout=5)

    def _collect(
        self, ds: Any, todo: Sequence[InputFile], hooks: Hooks, monitor: Monitor, report: EngineReport,
        seen_devices: set[str], done: set[int],
    ) -> EngineReport:
        """Read the pipeline's rows as they arrive: one outcome per subject."""
        for row in ds.iter_rows():
            idx = int(row["idx"])
            f = todo[idx]
            dev = str(row["device"])
            if dev not in seen_devices:
                seen_devices.add(dev)
                hooks.ready(len(seen_devices) - 1, self.expected, dev)
                report.devices.append(dev)
            message = str(row["message"])
            if message:
                outcome = Outcome(f.name, f.path, stage=STAGE_PREPROCESS, message=message, device=dev)
                line: str | None = f"failed: {f.path}: {message}"
            else:
                outcome = _outcome(f.name, f.path, json.loads(row["row"]), json.loads(row["obj"]), dev)
                line = None if outcome.ok else f"failed: {f.path}: {outcome.message}"
            if idx in done:
                continue
            done.add(idx)
            hooks.outcome(outcome)
            monitor.advance(outcome.ok, line)
            monitor.stage_times(
                infer_wait=float(row["infer_wait"]), infer_busy=float(row["infer_busy"]), work_busy=float(row["busy"])
            )
            monitor.tick()
        report.unfinished = len(todo) - len(done)
        return report


def _outcome(name: str, path: str, row: Any, obj: Any, device: str) -> Outcome:
    """The outcome of an inference result: a prediction, or (row None) a failed one with its stage."""
    if row is None:
        return Outcome(name, path, stage=str(obj.get("stage")), message=str(obj.get("message")), device=device)
    return Outcome(name, path, row=row, obj=obj, device=device)
