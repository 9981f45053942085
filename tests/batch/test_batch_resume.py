"""A batch killed part way (SIGKILL, or Ctrl-C) and resumed writes what an uninterrupted run writes."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_batch import batch, make_module, outputs, read_csv, record_files, synth_zips

REPO = Path(__file__).resolve().parents[2]
N_GOOD = 8
COMMON = ["--device", "cpu", "-b", "1", "--no-cache"]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small synthetic subjects and a broken one, in one folder."""
    data = tmp_path_factory.mktemp("release")
    synth_zips(data, list(range(30, 30 + N_GOOD)))
    synth_zips(data, [40], "truncated")
    return data


@pytest.fixture(scope="module")
def reference(release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, bytes]]:
    """(module folder, outputs of one uninterrupted run over the release)."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIMIR_HOME", str(root / "home"))
        mp.setenv("MIMIR_CACHE", str(root / "cache"))
        module = make_module(root / "mod")
        r = batch([str(release), "-o", str(root / "out"), "-m", module, *COMMON, "-w", "2"])
        assert r.exit_code == 2, r.stderr
        assert len(read_csv(root / "out" / "predictions.csv")) == N_GOOD
        return module, outputs(root / "out")


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    """``mimir batch ...`` as its own process group (so the test can kill it with its workers)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Ctrl-C must raise KeyboardInterrupt even when this test runs where SIGINT is ignored (a background job)
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from mimir.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "batch", *args], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _wait_for_records(proc: subprocess.Popen[bytes], out: Path, at_least: int, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(record_files(out)) if (out / "records").exists() else 0
        if n >= at_least:
            return n
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode()  # type: ignore[union-attr]
            raise AssertionError(f"batch ended before it was interrupted: {stderr}")
        time.sleep(0.02)
    raise AssertionError("no records appeared in time")


def _group_gone(pgid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGKILL, id="sigkill"),
        pytest.param(signal.SIGINT, id="ctrl-c", marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, id="sigterm-as-from-slurm", marks=pytest.mark.slow),
    ],
)
def test_interrupted_then_resumed_is_identical(
    tmp_path: Path, release: Path, reference: tuple[str, dict[str, bytes]], sig: signal.Signals
) -> None:
    module, expected = reference
    common = ["-m", module, *COMMON]

    # the same run, interrupted once some subjects are recorded
    out = tmp_path / "out"
    proc = _start([str(release), "-o", str(out), *common, "-w", "1"])
    try:
        _wait_for_records(proc, out, at_least=2)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _group_gone(proc.pid), "worker processes outlived the batch"
    if sig != signal.SIGKILL:  # stopped cleanly: every child stopped, the run marked as interrupted
        stderr = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert proc.returncode == 130, stderr
        # issue 10's Ctrl-C line: how many subjects are recorded, and how to go on
        assert re.search(r"interrupted(; \d+ subject\(s\) are recorded in .*| before any subject was recorded in .*): "
                         r"run the same command again to (do the rest|start)|interrupted before any subject was recorded in .*; "
                         r"run the same command again to start", stderr), stderr
        assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
    done_at_kill = len(record_files(out))
    assert 2 <= done_at_kill < N_GOOD + 1, done_at_kill
    assert not (out / "predictions.csv").exists()  # final outputs are written only by a finished run

    # resumed: only the rest is done, and the outputs are byte-identical
    r = batch([str(release), "-o", str(out), *common, "-w", "2"])
    assert r.exit_code == 2, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["done_before"] == done_at_kill
    assert run["counts"]["processed"] == N_GOOD + 1 - done_at_kill
    assert outputs(out) == expected
    names = [row["name"] for row in read_csv(out / "predictions.csv")]
    assert len(names) == len(set(names)) == N_GOOD
    assert len(record_files(out)) == N_GOOD + 1
