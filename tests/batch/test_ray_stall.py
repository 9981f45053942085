"""A Ray cluster that cannot run the pipeline: the run says so instead of hanging in silence.

One CPU in the whole cluster: the CPU inference actor holds it for the run, so
no preprocessing task can ever be scheduled. The status line must still come
every ``interval`` seconds from the start, and after ``stall_after`` seconds one
warning must name the free resources against what the pipeline needs. The
intervals are seconds here (minutes by default).
"""

from __future__ import annotations

import _thread
import io
import logging
import signal
from pathlib import Path

import pytest
from rich.console import Console

from conftest_models import save_images
from test_batch import make_module

from mimir.batch.progress import LogMonitor
from mimir.batch.runner import run_batch


class _StopOnWarning(LogMonitor):
    """Prints as usual; on the stall warning, stops the run like Ctrl-C (the test has seen what it needs)."""

    def print_line(self, text: str) -> None:
        super().print_line(text)
        if text.startswith("warning: no subject has finished"):
            _thread.interrupt_main()


@pytest.mark.slow  # about 25 s: Ray's start-up and the seconds of waiting
def test_a_cluster_too_small_for_the_pipeline_warns_what_it_waits_for(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed here (the ray extra)")
    pytest.importorskip("ray.data")
    data = tmp_path / "data"
    save_images(data, ["a", "b"], seed=1)
    module = make_module(tmp_path / "mod")
    buf = io.StringIO()
    monitor = _StopOnWarning(Console(file=buf, width=400), interval=1.0, stall_after=4.0)
    # interrupt_main() does nothing where SIGINT is ignored (pytest started as a background job): the run would
    # then wait for ever. Handle SIGINT as Python does by default for the length of the test.
    old_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_batch(data, tmp_path / "out", modules=[module], engine="ray", device="cpu", batch_size=2,
                      monitor=monitor)
    finally:
        ray.shutdown()
        signal.signal(signal.SIGINT, old_sigint)
    lines = buf.getvalue().splitlines()
    status = [ln for ln in lines if ln.startswith("batch: 0/2 done")]
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert len(status) >= 2, lines  # every second from the start, before any result
    assert len(warnings) == 1, lines
    text = warnings[0]
    assert "waiting for: the Ray cluster has 0 of 1 CPU(s)" in text
    assert "1 inference actor(s) x 1 CPU" in text and "each preprocessing task needs 1 CPU" in text
    assert "no CPU is free for preprocessing" in text
