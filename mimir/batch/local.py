"""The local engine: a pool of preprocessing processes feeding inference processes.

::

              pipe per worker                 image queue (bounded)          pipe per GPU
    main ◀──────────────────▶ W workers      main ─────────────────▶ G inference ──────────▶ main
         tasks out, images in   (CPU)             images                processes    results   (records)

- The **main process** is the scheduler. It hands each worker one subject at
  a time over the worker's own pipe and reads back the (3, 256, 256) uint8
  image (192 KiB) or the one-line reason it failed. Images go on to the
  inference processes through the **image queue**, bounded to ``queue_size``
  images (default ``max(2 B G, W + B)`` for batch size B, G inference
  processes, W workers). While that queue is full the main process stops
  reading images, so workers wait with their finished image: memory stays
  bounded (about ``(queue_size + W + G B) x 192 KiB`` of images) whatever the
  number of subjects.
- **Workers** are ``spawn`` processes that never import torch; each uses one
  BLAS/OpenMP thread. A worker shares no lock with any other process, so one
  that dies (e.g. killed for memory) cannot block the others: the main
  process sees its pipe close, records its subject as failed (stage
  ``worker``) and starts a replacement.
- Each **inference process** is pinned to its GPU: the one for ``cuda:N`` is
  started with ``CUDA_VISIBLE_DEVICES`` naming only GPU N (N counted among the
  GPUs the main process sees) and uses ``cuda:0`` inside, so it opens no
  context on any other GPU (:func:`consumer_device`). It loads every module once, collects batches of
  up to B images and sends rows and JSON objects back. A batch runs when it
  is full, or when no further image has come for ``IDLE_FLUSH_S`` (the
  workers are slower, or the input is used up), so the first results come
  within seconds; a short batch is padded to B (see
  :mod:`mimir.batch.stages`), so the numbers do not depend on how batches
  were cut. One dying
  stops the run (exit code 1); what was recorded stays, and a rerun resumes.
- The main process writes each subject's record as its result arrives (see
  :mod:`mimir.batch.records`) and keeps the progress display.

Children ignore Ctrl-C and SIGTERM (SLURM sends SIGTERM to every process of
a job that times out or is pre-empted; the main process then stops them, and
no subject is wrongly recorded as failed), and exit on their own when the
main process disappears (``kill -9``), checking once a second.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from mimir.batch.inputs import InputFile
from mimir.batch.progress import Monitor
from mimir.batch.records import STAGE_PREPROCESS, STAGE_WORKER
from mimir.batch.stages import Outcome
from mimir.errors import MimirError

#: Seconds between checks that the main process is still there.
_POLL_S = 1.0
#: Seconds an inference process waits for more images before it runs a partial batch.
IDLE_FLUSH_S = 1.0
#: Environment given to preprocessing workers: one BLAS/OpenMP thread each.
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class EngineError(MimirError):
    """The run cannot go on (an inference process failed or died)."""


@dataclass
class LocalConfig:
    """How to run the engine (the Ray engine reads it too).

    ``devices``: one torch device string per inference process (e.g.
    ``["cuda:0", "cuda:1"]``, or ``["auto"]``).
    """

    modules: list[str] | None
    devices: list[str]
    workers: int
    batch_size: int
    level: float
    precision: str = "auto"
    cache: bool = True
    queue_size: int | None = None
    threads: int | None = None
    #: ``f(name, path, cache=...) -> (image or Prepared | None, message | None)``, a top-level
    #: (picklable) function; None means :func:`mimir.batch.stages.preprocess_or_error`.
    preprocess: Callable[..., tuple[Any, str | None]] | None = None

    @property
    def image_queue_size(self) -> int:
        """Images that may wait for inference at most."""
        if self.queue_size is not None:
            return max(1, self.queue_size)
        return max(2 * self.batch_size * len(self.devices), self.workers + self.batch_size)


@dataclass
class Hooks:
    """What an engine tells the run: an inference process is ready; a subject is finished."""

    ready: Callable[[int, list[dict[str, Any]], str], None]
    outcome: Callable[[Outcome], None]


@dataclass
class EngineReport:
    """What happened in the engine: the devices used, subjects left unfinished, workers lost."""

    devices: list[str] = field(default_factory=list)
    unfinished: int = 0
    worker_deaths: int = 0


# --------------------------------------------------------------------------- child processes


def _ignore_stop_signals() -> None:
    """Leave Ctrl-C and SIGTERM to the main process, which stops the children itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _parent_alive() -> bool:
    parent = mp.parent_process()
    return parent is None or parent.is_alive()


def _recv(conn: Connection) -> Any:
    """``conn.recv()``, but exit quietly when the main process has gone."""
    try:
        while not conn.poll(_POLL_S):
            if not _parent_alive():
                os._exit(0)
        return conn.recv()
    except (EOFError, OSError):
        os._exit(0)


def _send(conn: Connection, message: Any) -> float:
    """``conn.send(message)``; return the seconds it took (the main process reads only when there is room)."""
    t0 = time.perf_counter()
    try:
        conn.send(message)
    except (BrokenPipeError, OSError):
        os._exit(0)
    return time.perf_counter() - t0


def worker_main(conn: Connection, cache: bool, preprocess: Callable[..., tuple[Any, str | None]] | None = None) -> None:
    """A preprocessing process: a task in, its image (or failure) out, until a ``None`` task.

    Messages sent: ``("image", idx, image, busy_s, blocked_s)``,
    ``("failed", idx, message, busy_s, blocked_s)``, and ``("stop", blocked_s)``
    last; ``blocked_s`` is the time the previous message waited to be read.
    """
    _ignore_stop_signals()
    from mimir.utils.memory import reuse_freed_memory

    reuse_freed_memory()  # big arrays are reused from subject to subject instead of re-faulted
    if preprocess is None:
        from mimir.batch.stages import preprocess_or_error as preprocess
    blocked = 0.0
    while True:
        task = _recv(conn)
        if task is None:
            _send(conn, ("stop", blocked))
            return
        idx, name, path = task
        t0 = time.perf_counter()
        image, message = preprocess(name, path, cache=cache)
        busy = time.perf_counter() - t0
        if image is None:
            blocked = _send(conn, ("failed", idx, message, busy, blocked))
        else:
            blocked = _send(conn, ("image", idx, image, busy, blocked))


def _get(q: Any) -> Any:
    """``q.get()``, but exit quietly when the main process has gone."""
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if not _parent_alive():
                os._exit(0)


def consumer_device(device: str, visible: str | None) -> tuple[str, dict[str, str]]:
    """(device inside the child, environment to start it with) for an inference process on ``device``.

    ``cuda:N`` becomes ``cuda:0`` in a child started with
    ``CUDA_VISIBLE_DEVICES`` set to the N-th GPU this process sees
    (``visible`` is this process's ``CUDA_VISIBLE_DEVICES``, None when unset:
    all GPUs, numbered from 0). Any other device, or an index beyond the
    visible list (the child then says so), is left as it is.
    """
    import re

    m = re.fullmatch(r"cuda:(\d+)", device.strip().lower())
    if m is None:
        return device, {}
    index = int(m.group(1))
    if visible is None:
        return "cuda:0", {"CUDA_VISIBLE_DEVICES": str(index)}
    listed = [v.strip() for v in visible.split(",") if v.strip()]
    if index >= len(listed):
        return device, {}
    return "cuda:0", {"CUDA_VISIBLE_DEVICES": listed[index]}


def inference_main(cid: int, device: str, config: LocalConfig, image_q: Any, conn: Connection,
                   label: str | None = None) -> None:
    """An inference process: images in, full batches through the modules, results out.

    ``label``: the device as the user named it (``cuda:1``), shown in place of
    ``device`` (``cuda:0`` in a child pinned by ``CUDA_VISIBLE_DEVICES``).
    Messages sent: ``("hello", cid, identity, device)`` or ``("fatal", cid, message)``
    first; then ``("done", cid, [(idx, row, obj), ...], wait_s, busy_s, device)`` per
    batch; ``("bye", cid)`` after the ``None`` image.
    """
    _ignore_stop_signals()
    try:
        from mimir.batch.stages import InferenceStage

        stage = InferenceStage(
            config.modules, device=device, precision=config.precision, batch_size=config.batch_size,
            level=config.level, threads=config.threads,
        )
    except MimirError as exc:
        _send(conn, ("fatal", cid, str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - reported as one line, the run stops
        _send(conn, ("fatal", cid, f"the inference process could not start ({type(exc).__name__}: {exc})"))
        return
    def describe() -> str:
        text = stage.describe()
        return label + text[len(device):] if label and label != device and text.startswith(device) else text

    _send(conn, ("hello", cid, stage.identity(), describe()))
    pending: list[tuple[int, str, str, Any]] = []
    wait_s = 0.0

    def flush() -> bool:
        nonlocal wait_s
        if not pending:
            return True
        t0 = time.perf_counter()
        try:
            outcomes = stage.predict([(name, path, image) for _, name, path, image in pending])
        except Exception as exc:  # noqa: BLE001
            _send(conn, ("fatal", cid, f"inference failed ({type(exc).__name__}: {' '.join(str(exc).split())})"))
            return False
        busy = time.perf_counter() - t0
        results = [(p[0], o.row, o.obj if o.ok else {"stage": o.stage, "message": o.message})
                   for p, o in zip(pending, outcomes)]  # row None: the prediction failed (stage, message)
        _send(conn, ("done", cid, results, wait_s, busy, describe()))
        pending.clear()
        wait_s = 0.0
        return True

    while True:
        t0 = time.perf_counter()
        if pending:
            # a partial batch waits at most IDLE_FLUSH_S for more images: when preprocessing is the
            # slower stage (or the input is used up) results come out now instead of when B are ready
            try:
                item = image_q.get(timeout=IDLE_FLUSH_S)
            except queue.Empty:
                wait_s += time.perf_counter() - t0
                if not flush():
                    return
                continue
        else:
            item = _get(image_q)
        wait_s += time.perf_counter() - t0
        if item is None:
            if flush():
                _send(conn, ("bye", cid))
            return
        pending.append(item)
        if len(pending) >= config.batch_size and not flush():
            return


# --------------------------------------------------------------------------- main process


@contextlib.contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the child processes started inside the block."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: int | None = None  # index of the subject it holds
    stopping: bool = False


class LocalEngine:
    """Runs subjects through workers and inference processes on this machine."""

    def __init__(self, config: LocalConfig) -> None:
        if config.workers < 1:
            raise ValueError("workers must be at least 1")
        self.config = config
        self.ctx = mp.get_context("spawn")

    def device_type(self) -> str:
        """``cpu``, ``cuda`` or ``mps``: where the inference processes will run (for the validity key)."""
        from mimir.utils.devices import device_type

        types = {device_type(d) for d in self.config.devices}
        return types.pop() if len(types) == 1 else "+".join(sorted(types))

    def close(self) -> None:
        """Nothing to release: each run's processes are stopped at its end."""

    def run(self, todo: Sequence[InputFile], hooks: Hooks, monitor: Monitor) -> EngineReport:
        """Process ``todo``; call ``hooks.outcome`` once per subject as it finishes."""
        if not todo:
            return EngineReport()
        run = _Run(self, todo, hooks, monitor)
        try:
            return run.loop()
        finally:
            run.shutdown()


class _Run:
    """The state of one engine run in the main process."""

    def __init__(self, engine: LocalEngine, todo: Sequence[InputFile], hooks: Hooks, monitor: Monitor) -> None:
        self.cfg, self.ctx = engine.config, engine.ctx
        self.todo, self.hooks, self.monitor = todo, hooks, monitor
        self.report = EngineReport()
        self.n_workers = min(self.cfg.workers, len(todo))
        self.image_q = self.ctx.Queue(maxsize=self.cfg.image_queue_size)
        self.next_task = 0
        self.resolved: set[int] = set()
        self.buffer: deque[tuple[int, str, str, Any]] = deque()  # images read, not yet queued
        self.workers: list[_Worker] = []
        self.consumers: list[tuple[Any, Connection]] = []
        self.described: dict[int, str] = {}
        self.byes: set[int] = set()
        self.flushed = False
        self.deaths_in_a_row = 0

    # ------------------------------------------------------------------ processes

    def start_worker(self) -> _Worker:
        ours, theirs = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=worker_main, args=(theirs, self.cfg.cache, self.cfg.preprocess),
                             name="mimir-worker", daemon=True)
        with _environment(_WORKER_ENV):
            p.start()
        theirs.close()
        w = _Worker(p, ours)
        self.assign(w)
        return w

    def start_consumers(self) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        for cid, device in enumerate(self.cfg.devices):
            ours, theirs = self.ctx.Pipe(duplex=False)
            inner, env = consumer_device(device, visible)
            p = self.ctx.Process(target=inference_main, args=(cid, inner, self.cfg, self.image_q, theirs, device),
                                 name=f"mimir-inference-{cid}", daemon=True)
            with _environment(env):
                p.start()
            theirs.close()
            self.consumers.append((p, ours))

    def assign(self, w: _Worker) -> None:
        """Give ``w`` the next subject, or tell it to stop."""
        if self.next_task < len(self.todo):
            f = self.todo[self.next_task]
            w.task = self.next_task
            self.next_task += 1
            message: Any = (w.task, f.name, f.path)
        else:
            w.task, w.stopping, message = None, True, None
        try:
            w.conn.send(message)
        except OSError:
            pass  # it died: its pipe reports EOF to the loop, which handles it

    # ------------------------------------------------------------------ outcomes

    def finish(self, idx: int, outcome: Outcome, line: str | None = None) -> None:
        if idx in self.resolved:
            return
        self.resolved.add(idx)
        self.hooks.outcome(outcome)
        self.monitor.advance(outcome.ok, line)

    def from_worker(self, w: _Worker) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            self.worker_died(w)
            return
        kind = msg[0]
        if kind == "stop":
            self.monitor.stage_times(work_blocked=msg[1])
            w.conn.close()
            w.task = None
            return
        _, idx, payload, busy, blocked = msg
        self.deaths_in_a_row = 0
        self.monitor.stage_times(work_busy=busy, work_blocked=blocked)
        f = self.todo[idx]
        w.task = None
        if kind == "failed":
            outcome = Outcome(f.name, f.path, stage=STAGE_PREPROCESS, message=payload)
            self.finish(idx, outcome, f"failed: {f.path}: {payload}")
        else:
            self.buffer.append((idx, f.name, f.path, payload))
        self.assign(w)

    def worker_died(self, w: _Worker) -> None:
        w.process.join(timeout=5)
        code = w.process.exitcode
        w.conn.close()
        self.report.worker_deaths += 1
        self.deaths_in_a_row += 1
        if w.task is not None:
            f = self.todo[w.task]
            message = f"the preprocessing process died ({_exit_text(code)}); out of memory?"
            outcome = Outcome(f.name, f.path, stage=STAGE_WORKER, message=message)
            self.finish(w.task, outcome, f"failed: {f.path}: {message}")
            w.task = None
        if w.stopping:
            return  # it had nothing left to do
        if self.deaths_in_a_row > 3 * self.n_workers + 5:
            raise EngineError(f"preprocessing processes keep dying ({_exit_text(code)})")
        self.workers[self.workers.index(w)] = self.start_worker()

    def from_consumer(self, cid: int, conn: Connection) -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            p = self.consumers[cid][0]
            p.join(timeout=5)
            device = self.cfg.devices[cid]
            raise EngineError(f"the inference process on {device} died ({_exit_text(p.exitcode)})") from None
        kind = msg[0]
        if kind == "hello":
            _, _, identity, description = msg
            self.hooks.ready(cid, identity, description)
            self.described[cid] = description
            self.report.devices.append(description)
        elif kind == "fatal":
            raise EngineError(msg[2])
        elif kind == "done":
            _, _, results, wait_s, busy, device = msg
            self.described[cid] = device  # it changes when the process ran out of memory and split its batches
            for idx, row, obj in results:
                f = self.todo[idx]
                if row is None:
                    outcome = Outcome(f.name, f.path, stage=obj["stage"], message=obj["message"], device=device)
                    self.finish(idx, outcome, f"failed: {f.path}: {obj['message']}")
                else:
                    self.finish(idx, Outcome(f.name, f.path, row=row, obj=obj, device=device))
            self.monitor.stage_times(infer_wait=wait_s, infer_busy=busy)
        elif kind == "bye":
            self.byes.add(cid)

    # ------------------------------------------------------------------ the loop

    def forward(self) -> None:
        """Move read images into the bounded queue while it has room."""
        while self.buffer:
            try:
                self.image_q.put_nowait(self.buffer[0])
            except queue.Full:
                return
            self.buffer.popleft()

    def waiting_for(self) -> str:
        """What the run is waiting for, in words (for the monitor's stall warning)."""
        busy = sum(1 for w in self.workers if w.task is not None)
        ready = len(self.described)
        return (
            f"{busy} of {len(self.workers)} preprocessing process(es) hold a subject, {len(self.buffer)} image(s) "
            f"wait for room in the queue, {ready} of {len(self.consumers)} inference process(es) have loaded "
            "their modules"
        )

    def loop(self) -> EngineReport:
        self.monitor.waiting_for = self.waiting_for
        self.start_consumers()
        self.workers = [self.start_worker() for _ in range(self.n_workers)]
        while len(self.byes) < len(self.consumers):
            self.forward()
            live = {w.conn: w for w in self.workers if not w.conn.closed}
            # read images only while nothing is waiting for room in the queue: that is the back-pressure
            readable = list(live) if not self.buffer else []
            consumer_conns = {conn: cid for cid, (_, conn) in enumerate(self.consumers) if cid not in self.byes}
            for conn in wait(readable + list(consumer_conns), timeout=0.25):
                if conn in consumer_conns:
                    self.from_consumer(consumer_conns[conn], conn)  # type: ignore[arg-type]
                else:
                    self.from_worker(live[conn])  # type: ignore[index]
            if not self.flushed and not self.buffer and all(w.conn.closed for w in self.workers):
                for _ in self.consumers:
                    self.image_q.put(None)
                self.flushed = True
            self.monitor.tick()
        self.report.unfinished = len(self.todo) - len(self.resolved)
        return self.report

    def shutdown(self) -> None:
        """Stop every child process (they may be mid-work after an error or Ctrl-C).

        They hold nothing worth saving (records are written here), and they
        ignore SIGTERM, so they are killed outright.
        """
        self.image_q.cancel_join_thread()
        procs = [w.process for w in self.workers] + [p for p, _ in self.consumers]
        for p in procs:
            if p.is_alive():
                with contextlib.suppress(Exception):
                    p.kill()
        for p in procs:
            with contextlib.suppress(Exception):
                p.join(timeout=10)
        for w in self.workers:
            w.conn.close()
        for _, conn in self.consumers:
            conn.close()
        self.image_q.close()
