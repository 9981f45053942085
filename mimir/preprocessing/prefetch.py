"""Preprocess the first input in a second process while the caller loads its modules.

A one-off ``mimir predict subject.zip`` needs about a second to import torch
and load the module before it can use the subject's image, and about half a
second to make the image; the two do not depend on each other. Threads do not
help (both hold the GIL most of the time: measured slower on two cores), so
:func:`first_input_prefetched` makes the first zip's image in a fresh
``spawn`` process, and the loader it yields returns that image when the
caller asks for it, by then usually ready.

The result is the one the caller would have made itself: the same image and
QC record (the child runs :func:`~mimir.preprocessing.pipeline.load_input_with_qc`),
the same error (a :class:`~mimir.errors.MimirError` crosses the process
boundary with its one-line text), and the same log lines, re-emitted through
the caller's ``mimir`` logger when the image is taken. If the second process
cannot be started or dies, the input is simply read in the caller's process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from mimir.errors import UsageError
from mimir.preprocessing.pipeline import load_input_with_qc
from mimir.utils.processes import require_main_guard

if TYPE_CHECKING:
    import numpy as np

    from mimir.preprocessing.qc import QCRecord

#: ``load(path)`` -> (image, QC record or None), as :func:`~mimir.preprocessing.pipeline.load_input_with_qc`.
Loader = Callable[[str], "tuple[np.ndarray, QCRecord | None]"]

log = logging.getLogger("mimir")


class _Lines(logging.Handler):
    """Keeps (level, message) of every record, for the parent to re-emit."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def _load_in_child(path: str, cache: bool) -> tuple[object, BaseException | None, list[tuple[int, str]]]:
    """((image, qc) or None, the error or None, the log lines) of one input, in the second process."""
    logger = logging.getLogger("mimir")
    keep = _Lines()
    logger.handlers[:] = [keep]
    logger.setLevel(logging.WARNING)  # what the CLI can show; the parent's level filters again
    logger.propagate = False
    try:
        return load_input_with_qc(path, cache=cache), None, keep.lines
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which reports it as it would its own
        return None, exc, keep.lines


def _child_main(path: str, cache: bool, conn: Connection) -> None:
    """The second process: one input's result through ``conn`` (None if it cannot be sent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this process
    result = _load_in_child(path, cache)
    try:
        conn.send(result)
    except Exception:  # noqa: BLE001 - an error that does not pickle: the parent reads the input itself
        conn.send(None)
    conn.close()


def _spawn_is_safe() -> bool:
    """False when a ``spawn`` child would re-run the caller's main script (called at its top level, unguarded)."""
    try:
        require_main_guard("mimir predict")
    except UsageError:
        return False
    return True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def first_input_prefetched(paths: Sequence[str | os.PathLike[str]], *, cache: bool = True) -> Iterator[Loader]:
    """A loader for ``paths`` whose first subject zip is already being preprocessed in a second process.

    Use it around the slow set-up (importing torch, loading modules) and the
    predictions::

        with first_input_prefetched(files) as load:
            predictor = Predictor(...)
            predictor.predict_files(files, load=load)

    Only the first zip is prefetched (the rest, and ``.npy`` images, are
    loaded by the caller as usual), and only where the process may use more
    than one core and the child would not re-run the caller's script (a
    call at a script's top level without ``if __name__ == "__main__":``). Leaving the block stops the second process if it is
    still running (an error before its image was wanted).
    """

    def here(path: str) -> tuple[np.ndarray, QCRecord | None]:
        return load_input_with_qc(path, cache=cache)

    first = next((str(p) for p in paths if not str(p).lower().endswith(".npy")), None)
    if first is None or _cores() < 2 or not _spawn_is_safe():
        yield here
        return
    ctx = multiprocessing.get_context("spawn")
    try:
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_main, args=(first, cache, send), daemon=True, name="mimir-prefetch")
        child.start()
    except (OSError, RuntimeError, ValueError, AssertionError):  # no processes here (a sandbox, a limit, a daemon)
        yield here
        return
    send.close()  # the child holds the only sending end: if it dies, recv() ends with EOFError
    waiting = [first]

    def load(path: str) -> tuple[np.ndarray, QCRecord | None]:
        if not waiting or str(path) != waiting[0]:
            return here(path)
        waiting.clear()
        try:
            message = receive.recv()
        except Exception:  # noqa: BLE001 - the second process died or sent nothing usable: read it here
            message = None
        if message is None:
            return here(path)
        value, error, lines = message
        for level, text in lines:
            log.log(level, "%s", text)
        if error is not None:
            raise error
        return value

    try:
        yield load
    finally:
        if child.is_alive():
            child.terminate()
        child.join(timeout=5)
        receive.close()
