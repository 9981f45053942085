"""`mimir predict` and `mimir preprocess` on hostile inputs and unwritable outputs: one line, the
exit code, bounded memory, nothing written where it should not be."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hostile import TORCH_CAP, mimir_capped
from typer.testing import CliRunner

runner = CliRunner()
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _cli():
    from mimir.cli import app

    return app


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "img.npy"
    np.save(p, np.full((3, 256, 256), 7, np.uint8))
    return p


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_predict_on_fifo_and_dev_zero_is_one_line_each(tmp_path, image):
    fifo = tmp_path / "1_20201_2_0.zip"
    os.mkfifo(fifo)
    out = tmp_path / "out.csv"
    r = mimir_capped("predict", str(fifo), "/dev/zero", str(image), "--device", "cpu", "-o", str(out), "-m", "phantom-demo",
                     cap=TORCH_CAP, timeout=300)
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.error_lines if x.startswith("error:")]
    assert len(errors) == 2, r.stderr
    assert "FIFO" in errors[0] and "character device" in errors[1]
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == ["img"]
    assert r.peak_rss < 3 * 1024**3


def test_predict_output_under_a_file_fails_before_any_work(tmp_path, image, monkeypatch):
    from mimir.inference import predictor

    def no_work(*a, **k):
        raise AssertionError("modules were loaded before the output path was checked")

    monkeypatch.setattr(predictor.Predictor, "__init__", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = runner.invoke(_cli(), ["predict", str(image), "-o", str(blocker / "sub" / "out.csv")])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be written" in lines[0] and "is a file" in lines[0], r.stderr
    assert blocker.read_text() == "x"


@pytest.mark.skipif(ROOT, reason="root ignores file permissions")
def test_predict_into_read_only_folder_fails_before_any_work(tmp_path, image):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = runner.invoke(_cli(), ["predict", str(image), "-o", str(ro / "out.csv")])
    finally:
        ro.chmod(0o755)
    assert r.exit_code == 1 and "cannot write in the folder" in r.stderr
    assert list(ro.iterdir()) == []


def test_predict_write_failure_after_work_is_one_line(tmp_path, image, monkeypatch):
    from mimir.outputs import writers

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "write_results", full)
    r = runner.invoke(_cli(), ["predict", str(image), "--device", "cpu", "-m", "phantom-demo", "-o",
                                str(tmp_path / "o.csv")])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "computed but could not be written (No space left on device)" in lines[0]


def test_preprocess_output_checks(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = runner.invoke(_cli(), ["preprocess", str(tmp_path / "missing.zip"), "-o", str(blocker)])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a file, not a folder" in lines[0]


def test_file_mimir_home_does_not_break_predict_or_fetch(tmp_path, image, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("x")
    monkeypatch.setenv("MIMIR_HOME", str(home))
    monkeypatch.setenv("MIMIR_CACHE", str(home))
    r = runner.invoke(_cli(), ["predict", str(image), "--device", "cpu", "-m", "phantom-demo", "-o",
                               str(tmp_path / "o.csv")])
    assert r.exit_code == 0, r.stderr  # the built-in module; the cache is skipped
    from mimir.models.registry import builtin_modules_dir

    r2 = runner.invoke(_cli(), ["fetch-weights", "--from", str(builtin_modules_dir() / "phantom-demo")])
    assert r2.exit_code == 1
    lines = r2.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the module registry" in lines[0] and "MIMIR_HOME" in lines[0]
    assert home.read_text() == "x"
