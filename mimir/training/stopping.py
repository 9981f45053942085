"""Stopping a training run cleanly: SIGINT/SIGTERM set a flag checked between iterations.

Shared by the sequential trainer (:mod:`mimir.training.trainer`) and its
worker processes (:mod:`mimir.training.workers`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class StopFlag:
    """Set by SIGINT/SIGTERM while training; checked between iterations."""

    def __init__(self, escalate: bool = True) -> None:
        self.requested = False
        #: a second signal stops at once (off in workers, which get the terminal's and the parent's)
        self.escalate = escalate

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
            if self.requested and self.escalate:  # second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self.requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
