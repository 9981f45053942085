"""Honest batch progress: partial batches flush when idle, the Ctrl-C line counts, the final line once."""

from __future__ import annotations

import io
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from mimir.batch import local
from mimir.batch.progress import LogMonitor
from mimir.batch.stages import Outcome


class _FakeStage:
    """Stands in for the InferenceStage: no torch, records the batches it gets."""

    batches: list[int] = []

    def __init__(self, modules: Any, **kwargs: Any) -> None:
        pass

    def identity(self) -> list[dict[str, Any]]:
        return [{"name": "fake"}]

    def describe(self) -> str:
        return "cpu (fake)"

    def predict(self, items: list[tuple[str, str, Any]]) -> list[Outcome]:
        _FakeStage.batches.append(len(items))
        return [Outcome(name, source, row={"name": name}, obj={"name": name}) for name, source, _ in items]


class _Conn:
    def __init__(self) -> None:
        self.messages: list[tuple[float, Any]] = []

    def send(self, message: Any) -> None:
        self.messages.append((time.monotonic(), message))


def test_a_partial_batch_is_flushed_when_no_more_images_come(monkeypatch: pytest.MonkeyPatch) -> None:
    import mimir.batch.stages as stages

    monkeypatch.setattr(stages, "InferenceStage", _FakeStage)
    monkeypatch.setattr(local, "IDLE_FLUSH_S", 0.2)
    _FakeStage.batches = []
    config = local.LocalConfig(modules=None, devices=["cpu"], workers=1, batch_size=16, level=0.95)
    q: queue.Queue[Any] = queue.Queue()
    conn = _Conn()
    t = threading.Thread(target=local.inference_main, args=(0, "cpu", config, q, conn), daemon=True)
    with monkeypatch.context() as m:
        m.setattr(local.signal, "signal", lambda *a: None)  # not the main thread
        t.start()
        image = np.zeros((3, 256, 256), np.uint8)
        start = time.monotonic()
        for i in range(3):
            q.put((i, f"s{i}", f"s{i}.npy", image))
        deadline = time.monotonic() + 10
        while not any(msg[0] == "done" for _, msg in conn.messages) and time.monotonic() < deadline:
            time.sleep(0.02)
        q.put(None)
        t.join(10)
    done = [(ts, msg) for ts, msg in conn.messages if msg[0] == "done"]
    assert done, conn.messages
    ts, msg = done[0]
    assert [idx for idx, _, _ in msg[2]] == [0, 1, 2]  # 3 of 16: flushed without waiting for a full batch
    assert ts - start < 5
    assert _FakeStage.batches == [3]
    assert conn.messages[-1][1] == ("bye", 0)


def test_log_monitor_prints_the_final_count_once() -> None:
    buf = io.StringIO()
    monitor = LogMonitor(Console(file=buf, width=300), interval=30.0)
    monitor.begin(6)
    for _ in range(6):
        monitor.advance(True)
        monitor.tick()
    monitor.end()
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("batch:")]
    assert sum("6/6 done" in ln for ln in lines) == 1, lines
    assert lines[0].startswith("batch: 1/6 done")  # the first result is shown at once


def test_interrupted_message_counts_recorded_subjects() -> None:
    from mimir.cli.batch_cmd import interrupted_message

    out = Path("out")
    assert "before any subject was recorded" in interrupted_message(0, 0, out)
    msg = interrupted_message(0, 3, out)
    assert "3 subject(s) are recorded in out/records" in msg and "run the same command again" in msg
    assert "10 subject(s) are recorded" in interrupted_message(7, 3, out) and "(3 in this run)" in interrupted_message(7, 3, out)


@pytest.mark.slow
def test_batch_long_format_equals_predicts_and_merge_keeps_it(tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    from conftest_models import save_images
    from mimir.cli import app
    from test_batch import make_module

    runner = CliRunner()
    module = make_module(tmp_path / "tiny")
    save_images(tmp_path / "in", ["1000001_20201_2_0", "1000002_20201_2_0"], seed=4)
    out = tmp_path / "out"
    r = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(out), "-m", module, "--format", "long",
                            "--device", "cpu", "--workers", "1", "--threads", "1", "-b", "2"])
    assert r.exit_code == 0, r.stderr
    run = __import__("json").loads((out / "run.json").read_text())
    assert run["csv_layout"] == "long" and run["output_schema"] == "2"
    with open(out / "predictions.csv", newline="") as fh:
        batch_rows = list(csv.DictReader(fh))
    assert [(x["name"], x["target"]) for x in batch_rows] == [
        (n, t) for n in ("1000001_20201_2_0", "1000002_20201_2_0") for t in ("AtlasVatVolume", "age", "liverFat")
    ]
    r = runner.invoke(app, ["predict", str(tmp_path / "in"), "-m", module, "-o", str(tmp_path / "p.csv"),
                            "--format", "long", "--device", "cpu", "-b", "2"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "p.csv").read_text() == (out / "predictions.csv").read_text()
    r = runner.invoke(app, ["merge", str(out), "-o", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "merged" / "predictions.csv").read_text() == (out / "predictions.csv").read_text()
