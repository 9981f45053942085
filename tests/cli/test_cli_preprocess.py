"""`mimir preprocess` and `mimir --version` at the command line: outputs, errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from mimir import __version__
from mimir.cli import app
from mimir.preprocessing.pipeline import preprocess
from mimir.synth import generate_subject

runner = CliRunner()


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory):
    return generate_subject(tmp_path_factory.mktemp("cli"), seed=21, small=True).zip_path


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mimir {__version__}"


def test_preprocess_writes_npy_and_png(good_zip, tmp_path):
    result = runner.invoke(app, ["preprocess", str(good_zip), "-o", str(tmp_path), "--png"])
    assert result.exit_code == 0, result.output
    stem = good_zip.name[: -len(".zip")]
    image = np.load(tmp_path / f"{stem}.npy")
    assert np.array_equal(image, preprocess(good_zip, cache=False))
    png = (tmp_path / f"{stem}.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_one_bad_input_among_good_ones_exits_2(good_zip, tmp_path):
    bad = tmp_path / "1000009_20201_2_0.zip"
    bad.write_bytes(b"no zip here")
    result = runner.invoke(app, ["preprocess", str(good_zip), str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{bad}: is not a zip file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the error line and the summary warning
    assert (tmp_path / "out" / f"{good_zip.name[:-4]}.npy").exists()


def test_only_bad_input_exits_1(tmp_path):
    result = runner.invoke(app, ["preprocess", str(tmp_path / "missing.zip"), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "missing.zip: file not found" in result.stderr
    assert "Traceback" not in result.output


def test_console_script_has_no_traceback(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    proc = subprocess.run(
        [sys.executable, "-m", "mimir", "preprocess", str(bad), "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "truncated or damaged zip" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_batch_says_when_the_compiled_loops_are_missing(monkeypatch, tmp_path):
    from mimir.preprocessing import kernels

    monkeypatch.setattr(kernels, "_c", None)  # as after an install without a C compiler
    assert not kernels.available() and not kernels.enabled()
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "phantom-demo"])
    assert "preprocessing runs without its compiled loops" in result.output
    assert "install gcc and reinstall mimir" in result.output


def test_the_cli_skips_the_exit_time_garbage_collection():
    """mimir.cli.main freezes the heap when the command is done, so the interpreter's last collections
    do not walk torch's objects (0.4-0.7 s per command); the command's output is unaffected."""
    code = (
        "import gc, sys\n"
        "sys.argv = ['mimir', '--version']\n"
        "from mimir.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["0", "True"]
    assert out.stdout.startswith(f"mimir {__version__}")
