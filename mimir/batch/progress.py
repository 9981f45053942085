"""Progress of a batch run: counts, speed, ETA, and what each stage waits on.

Engines report to a :class:`Monitor`: one :meth:`Monitor.advance` per finished
subject and, now and then, :meth:`Monitor.stage_times` with the seconds the
stages spent working and waiting since the last report. From those the
monitor shows, over the last :data:`WINDOW_S` seconds,

- the share of time the inference stage waited for images (the CPU stage is
  the bottleneck: add workers), and
- the share of time preprocessing workers waited for room in the queue (the
  GPU/inference stage is the bottleneck).

:class:`RichMonitor` draws a live display on a terminal; :class:`LogMonitor`
prints a plain line every ``interval`` seconds from the start, whether or not a
subject has finished (for SLURM logs and pipes). When no subject has finished
for ``stall_after`` seconds (default :data:`STALL_AFTER_S`), either prints one
warning with what the engine is waiting for (the engine sets
:attr:`Monitor.waiting_for`; the Ray engine names the cluster's free CPUs and
GPUs against what its actors and tasks need). Neither shows subject names:
failures are printed with the path the user gave.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

#: Seconds over which speeds and waiting shares are measured.
WINDOW_S = 30.0
#: Seconds without a finished subject before the one warning saying what the run waits for.
STALL_AFTER_S = 180.0
#: Seconds between two status lines of :class:`LogMonitor`.
STATUS_INTERVAL_S = 30.0


@dataclass
class StageTotals:
    """Cumulative seconds: inference waiting/computing, workers preprocessing/blocked on a full queue."""

    infer_wait: float = 0.0
    infer_busy: float = 0.0
    work_busy: float = 0.0
    work_blocked: float = 0.0

    def copy(self) -> StageTotals:
        return StageTotals(self.infer_wait, self.infer_busy, self.work_busy, self.work_blocked)

    def minus(self, other: StageTotals) -> StageTotals:
        return StageTotals(
            self.infer_wait - other.infer_wait,
            self.infer_busy - other.infer_busy,
            self.work_busy - other.work_busy,
            self.work_blocked - other.work_blocked,
        )

    @property
    def inference_wait_share(self) -> float | None:
        """Fraction of the inference stage's time spent waiting for images (None: no data)."""
        total = self.infer_wait + self.infer_busy
        return self.infer_wait / total if total > 0 else None

    @property
    def worker_blocked_share(self) -> float | None:
        """Fraction of the workers' time spent waiting for room in the queue (None: no data)."""
        total = self.work_busy + self.work_blocked
        return self.work_blocked / total if total > 0 else None


@dataclass
class Monitor:
    """Counts and timings of a run; the base class shows nothing."""

    total: int = 0
    done_before: int = 0
    ok: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    totals: StageTotals = field(default_factory=StageTotals)
    #: seconds without a finished subject before one warning (None: never warn)
    stall_after: float | None = STALL_AFTER_S
    #: what the engine is waiting for, in words; set by the engine for the stall warning
    waiting_for: Callable[[], str] | None = None
    _last_progress: float = field(default_factory=time.monotonic)
    _stall_warned: bool = False
    _history: deque[tuple[float, int, StageTotals]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ engine side

    def begin(self, total: int, done_before: int = 0) -> None:
        """``total`` subjects to process in this run; ``done_before`` already done."""
        self.total, self.done_before = total, done_before
        self.started = self._last_progress = time.monotonic()
        self._stall_warned = False
        self._history.clear()
        self._history.append((self.started, 0, self.totals.copy()))
        self.show()

    def advance(self, ok: bool, failure: str | None = None) -> None:
        """One subject finished; ``failure`` is the line to show when it failed."""
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
            self._last_progress = time.monotonic()
            self._stall_warned = False
        if failure:
            self.print_line(failure)

    def stage_times(
        self, infer_wait: float = 0.0, infer_busy: float = 0.0, work_busy: float = 0.0, work_blocked: float = 0.0
    ) -> None:
        """Add seconds spent by the stages since their last report."""
        with self._lock:
            t = self.totals
            t.infer_wait += infer_wait
            t.infer_busy += infer_busy
            t.work_busy += work_busy
            t.work_blocked += work_blocked

    def tick(self) -> None:
        """Called often by the engine's loop: refresh the display if it is time."""
        now = time.monotonic()
        with self._lock:
            self._history.append((now, self.processed, self.totals.copy()))
            while len(self._history) > 2 and now - self._history[1][0] > WINDOW_S:
                self._history.popleft()
        self.show()
        self._check_stall(now)

    def _check_stall(self, now: float) -> None:
        """Warn once per stall when no subject has finished for ``stall_after`` seconds."""
        if self.stall_after is None or self._stall_warned or not self.remaining:
            return
        quiet = now - self._last_progress
        if quiet < self.stall_after:
            return
        self._stall_warned = True
        try:
            detail = self.waiting_for() if self.waiting_for is not None else ""
        except Exception as exc:  # noqa: BLE001 - a warning must not stop the run
            detail = f"(could not ask the engine: {type(exc).__name__})"
        self.print_line(
            f"warning: no subject has finished for {format_duration(quiet)}"
            + (f"; waiting for: {detail}" if detail else "")
        )

    def end(self) -> None:
        """The run is over (finished or not): final refresh, release the display."""

    def print_line(self, text: str) -> None:
        """Show one line above the display (a failure)."""

    def show(self) -> None:
        """Redraw (if it is time)."""

    # ------------------------------------------------------------------ derived

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.processed)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def recent(self) -> tuple[float | None, StageTotals]:
        """(subjects per second, stage seconds) over the last window; speed None before any data."""
        with self._lock:
            if len(self._history) < 2:
                return None, StageTotals()
            t0, n0, s0 = self._history[0]
            t1, n1, s1 = self._history[-1]
        dt = t1 - t0
        return (n1 - n0) / dt if dt > 0 else None, s1.minus(s0)

    def rate(self) -> float:
        """Subjects per second over the whole run so far."""
        e = self.elapsed
        return self.processed / e if e > 0 else 0.0

    def waiting_text(self) -> str:
        """What the stages wait on, in words, over the last window."""
        _, window = self.recent()
        wait, blocked = window.inference_wait_share, window.worker_blocked_share
        if wait is None and blocked is None:
            return "starting"
        parts = []
        if wait is not None:
            parts.append(f"inference waits for preprocessing {wait:.0%} of the time")
        if blocked is not None:
            parts.append(f"preprocessing waits for inference {blocked:.0%}")
        return "; ".join(parts)

    def eta_s(self) -> float | None:
        speed, _ = self.recent()
        if not speed:
            speed = self.rate() or None
        if not speed:
            return None
        return self.remaining / speed

    def summary(self) -> str:
        """One line: done/failed/remaining, speed, ETA, waiting."""
        speed, _ = self.recent()
        speed_text = f"{speed:.2f}" if speed is not None else f"{self.rate():.2f}"
        eta = self.eta_s()
        return (
            f"{self.processed}/{self.total} done ({self.ok} predicted, {self.failed} failed), "
            f"{self.remaining} remaining, {speed_text} subjects/s, ETA {format_duration(eta)}; {self.waiting_text()}"
        )


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12s``, or ``--`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class LogMonitor(Monitor):
    """Plain progress lines on a console: one every ``interval`` seconds from the start, the first
    result at once, and the final count."""

    def __init__(self, console: Console, interval: float = STATUS_INTERVAL_S,
                 stall_after: float | None = STALL_AFTER_S) -> None:
        super().__init__(stall_after=stall_after)
        self.console = console
        self.interval = interval
        self._last = time.monotonic()
        self._shown = -1  # subjects processed at the last line printed

    def begin(self, total: int, done_before: int = 0) -> None:
        self._last = time.monotonic()  # the first status line comes ``interval`` seconds from now
        super().begin(total, done_before)

    def _line(self) -> None:
        self._shown = self.processed
        self.console.print(f"batch: {self.summary()}", highlight=False, soft_wrap=True, markup=False)

    def show(self) -> None:
        if not self.total:
            return
        now = time.monotonic()
        first = self.processed and self._shown <= 0
        final = self.processed == self.total and self.processed != self._shown
        if first or final or now - self._last >= self.interval:
            self._last = now
            self._line()

    def print_line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def end(self) -> None:
        """The last count, unless that very line was the last one printed (no status line twice)."""
        if self.total and self.processed and self.processed != self._shown:
            self._line()


class RichMonitor(Monitor):
    """A live Rich display: bar, counts, speed, ETA, and what the stages wait on."""

    def __init__(self, console: Console, refresh_per_second: float = 4.0,
                 stall_after: float | None = STALL_AFTER_S) -> None:
        super().__init__(stall_after=stall_after)
        from rich.live import Live

        self.console = console
        self._live = Live(console=console, refresh_per_second=refresh_per_second, transient=False,
                          get_renderable=self._render)
        self._running = False

    def begin(self, total: int, done_before: int = 0) -> None:
        super().begin(total, done_before)
        if not self._running:
            self._live.start()
            self._running = True

    def _render(self):  # noqa: ANN202 - a Rich renderable
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        speed, _ = self.recent()
        speed = speed if speed is not None else self.rate()
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            Text("batch", style="bold"),
            ProgressBar(total=max(self.total, 1), completed=self.processed, width=30),
            Text(f"{self.processed}/{self.total}"),
            Text(f"{self.ok} predicted", style="green"),
            Text(f"{self.failed} failed", style="red" if self.failed else "dim"),
            Text(f"{self.remaining} remaining"),
            Text(f"{speed:.2f} subj/s"),
            Text(f"ETA {format_duration(self.eta_s())}"),
        )
        table = Table.grid()
        table.add_row(grid)
        table.add_row(Text(f"  {self.waiting_text()}", style="dim"))
        return table

    def print_line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def end(self) -> None:
        if self._running:
            self._live.refresh()
            self._live.stop()
            self._running = False
