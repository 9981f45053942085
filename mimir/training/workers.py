"""Train several networks of one run at once, in worker processes (``mimir train --workers N``).

A ResNet50 of narrow width keeps one CPU core busy but scales poorly over
threads, so on a machine with several cores it is faster to train several
ensemble members side by side, one process each. Every worker runs whole
jobs with the same code as a sequential run (:meth:`Trainer._run_job`): it
writes the same per-job checkpoints and results into the work folder, so a
job's network is the same whichever worker trained it, and an interrupted
parallel run resumes sequentially or in parallel alike.

The images are put in shared memory once and handed to the workers without
copies. Workers report progress, results and errors to the parent over a
queue; the parent drives the progress display. On Ctrl-C (or SIGTERM to the
parent) every worker checkpoints its job and stops; so does a worker whose
parent was killed outright.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.errors import MimirError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mimir.training.trainer import Job, Trainer


@dataclass
class _WorkerSetup:
    """What a worker needs to rebuild the trainer (everything but the images)."""

    #: the trainer's class (pickled by reference), so this module need not import it
    trainer_class: type[Trainer]
    trainer_state: dict[str, Any]
    device: str
    threads: int


class _QueueProgress:
    """Forwards a worker's progress events to the parent; stops the worker when the parent is gone."""

    def __init__(self, events: Any, stop: Any) -> None:
        self.events = events
        self.stop = stop
        self.parent = os.getppid()

    def job_started(self, job: Job, label: str, start_iteration: int, iterations: int) -> None:
        self.events.put(("started", job.index, label, start_iteration, iterations))

    def step(self, job: Job, iteration: int, loss: float) -> None:
        if os.getppid() != self.parent:  # the parent was killed (kill -9): checkpoint and stop, no orphans
            self.stop.requested = True
        self.events.put(("step", job.index, iteration, loss))

    def message(self, text: str) -> None:
        self.events.put(("message", -1, text))


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _worker_main(setup: _WorkerSetup, images: torch.Tensor, jobs: Any, events: Any) -> None:
    """Entry point of a worker process: run jobs from ``jobs`` until a ``None`` arrives."""
    import torch

    from mimir.training.stopping import StopFlag
    from mimir.utils.devices import resolve_device

    torch.set_num_threads(setup.threads)
    trainer = setup.trainer_class.__new__(setup.trainer_class)
    trainer.__dict__.update(setup.trainer_state)
    trainer._torch = torch
    trainer.device = resolve_device(setup.device)
    trainer.stop = StopFlag(escalate=False)
    trainer.progress = _QueueProgress(events, trainer.stop)  # type: ignore[assignment]
    if trainer.device.type != "cpu":
        images = images.to(trainer.device)
    with trainer.stop.installed():
        while not trainer.stop.requested:
            index = jobs.get()
            if index is None:
                break
            job = trainer.jobs[index]
            t0 = time.perf_counter()
            try:
                trainer._run_job(job, images)
            except KeyboardInterrupt:
                events.put(("stopped", index))
                break
            except BaseException as exc:  # reported to the parent, which raises it
                events.put(("error", index, _picklable(exc)))
                break
            events.put(("done", index, time.perf_counter() - t0))
    events.put(("exit", os.getpid()))


def run_parallel(trainer: Trainer, pending: Sequence[Job], workers: int, threads: int | None = None) -> None:
    """Run ``pending`` jobs of ``trainer`` in ``workers`` processes; their results land in the work folder.

    ``threads``: torch CPU threads per worker (default: the parent's thread
    count divided among the workers, at least 1). Raises the first error a
    worker met, or :class:`KeyboardInterrupt` when the run was stopped
    (checkpoints are kept).
    """
    import torch
    import torch.multiprocessing as mp

    workers = max(1, min(workers, len(pending)))
    if threads is None:
        threads = max(1, torch.get_num_threads() // workers)
    state = {k: v for k, v in trainer.__dict__.items() if k not in ("_torch", "device", "progress", "stop")}
    state["dataset"] = replace(trainer.dataset, images=np.empty((0,), dtype=np.uint8))
    setup = _WorkerSetup(trainer_class=type(trainer), trainer_state=state, device=str(trainer.device), threads=threads)
    images = torch.from_numpy(trainer.dataset.images).share_memory_()

    ctx = mp.get_context("spawn")
    jobs_q, events = ctx.Queue(), ctx.Queue()
    for job in pending:
        jobs_q.put(job.index)
    for _ in range(workers):
        jobs_q.put(None)
    procs = [ctx.Process(target=_worker_main, args=(setup, images, jobs_q, events), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()

    by_index = {j.index: j for j in trainer.jobs}
    started_at: dict[int, float] = {}
    done: set[int] = set()
    exited = 0
    error: BaseException | None = None
    stopped = forwarded = False
    progress = trainer.progress
    try:
        while exited < workers:
            if trainer.stop.requested and not forwarded:
                forwarded = True
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        os.kill(p.pid, signal.SIGINT)
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break  # a worker died without saying so (killed); checked below
                continue
            kind, index = event[0], event[1]
            if kind == "started":
                started_at[index] = time.perf_counter()
                progress.job_started(by_index[index], *event[2:])
            elif kind == "step":
                progress.step(by_index[index], *event[2:])
            elif kind == "done":
                done.add(index)
                progress.job_finished(by_index[index], event[2])
            elif kind == "message":
                progress.message(event[2])
            elif kind == "stopped":
                stopped = True
            elif kind == "error":
                error = error or event[2]
                trainer.stop.requested = True  # the other workers checkpoint and stop
            elif kind == "exit":
                exited += 1
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
    if error is not None:
        raise error
    if stopped or trainer.stop.requested:
        raise KeyboardInterrupt
    missing = [j for j in pending if j.index not in done]
    if missing:
        codes = ", ".join(str(p.exitcode) for p in procs)
        raise MimirError(
            f"a training worker stopped unexpectedly (exit codes {codes}); "
            f"{len(missing)} network(s) are not trained",
            hint="Run the same command again to resume from the checkpoints; use --workers 1 if it recurs.",
        )
