"""Hostile batch inputs and outputs: FIFOs and devices in the input folder, absurdly long names,
unwritable output folders, failures while writing the final outputs, non-finite predictions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest_models import save_images
from hostile import TORCH_CAP, mimir_capped
from test_batch import batch, make_module, read_csv

from mimir.batch import runner as batch_runner
from mimir.batch.inputs import collect
from mimir.batch.records import KEY_NAME_CHARS, RecordStore, record_key

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.fixture(scope="module")
def module(tmp_path_factory) -> str:
    return make_module(tmp_path_factory.mktemp("mod") / "tiny")


def _args(data: Path, out: Path, module: str) -> list[str]:
    return [str(data), "-o", str(out), "-m", module, "--device", "cpu", "-b", "2", "-w", "1", "--threads", "1"]


# --------------------------------------------------------------------------- inputs


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_and_device_in_the_input_folder_do_not_block_the_batch(tmp_path, module):
    data = tmp_path / "data"
    data.mkdir()
    save_images(data, ["img_a", "img_b"], seed=3)
    os.mkfifo(data / "1000001_20201_2_0.zip")
    (data / "1000002_20201_2_0.zip").symlink_to("/dev/zero")
    os.mkfifo(data / "img_c.npy")
    out = tmp_path / "out"
    r = mimir_capped("batch", *_args(data, out, module), cap=TORCH_CAP, timeout=300)
    assert r.returncode == 2, r.stderr
    errors = {e["name"]: e for e in read_csv(out / "errors.csv")}
    assert set(errors) == {"1000001_20201_2_0", "1000002_20201_2_0", "img_c"}
    assert {e["stage"] for e in errors.values()} == {"input"}
    assert "FIFO (named pipe), not a regular file; it was not read" in errors["1000001_20201_2_0"]["message"]
    assert "character device" in errors["1000002_20201_2_0"]["message"]
    assert [row["name"] for row in read_csv(out / "predictions.csv")] == ["img_a", "img_b"]
    assert r.peak_rss < 3 * 1024**3


def test_collect_refuses_non_regular_files_without_opening(tmp_path):
    os.mkfifo(tmp_path / "x_20201_2_0.zip")
    (tmp_path / "d_20201_2_0.zip").mkdir()
    inputs = collect([str(tmp_path / "x_20201_2_0.zip"), str(tmp_path / "d_20201_2_0.zip"), str(tmp_path / "gone.npy")])
    assert [p.name for p in inputs.problems] == ["d_20201_2_0", "x_20201_2_0"]
    assert "a folder" in inputs.problems[0].message and "FIFO" in inputs.problems[1].message
    assert [f.name for f in inputs.files] == ["gone"]  # a missing file is reported by preprocessing


def test_a_230_character_subject_name_is_predicted(tmp_path, module):
    data = tmp_path / "data"
    data.mkdir()
    long_name = "s" * 230
    save_images(data, [long_name, "short"], seed=5)
    out = tmp_path / "out"
    r = batch(_args(data, out, module))
    assert r.exit_code == 0, (r.stdout, r.stderr)
    names = [row["name"] for row in read_csv(out / "predictions.csv")]
    assert names == sorted([long_name, "short"])
    files = list((out / "records").glob("*/*.json"))
    assert len(files) == 2 and all(len(f.name) <= KEY_NAME_CHARS + 26 for f in files)
    # a rerun finds the records (nothing to do) and writes the same outputs
    before = (out / "predictions.csv").read_bytes()
    r2 = batch(_args(data, out, module))
    assert r2.exit_code == 0 and (out / "predictions.csv").read_bytes() == before
    assert json.loads((out / "run.json").read_text())["counts"]["to_do"] == 0


def test_record_keys_are_bounded_and_distinct():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert record_key(a) != record_key(b)
    assert record_key("Subject") != record_key("subject")
    for name in (a, "../../etc/passwd", ".hidden", "ünïcödé/名前", "a" * 10_000, ""):
        key = record_key(name)
        assert len(key) <= KEY_NAME_CHARS + 21 and "/" not in key and not key.startswith(".")
        assert key.isascii()
    store = RecordStore("/out")
    assert store.path_for("1000001_20201_2_0").name.startswith("1000001_20201_2_0.")


# --------------------------------------------------------------------------- outputs


def test_output_folder_under_a_file_is_one_line(tmp_path, module):
    data = tmp_path / "data"
    data.mkdir()
    save_images(data, ["img_a"], seed=1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "out", blocker):
        r = batch(_args(data, out, module))
        assert r.exit_code == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert "Traceback" not in r.stdout
    assert blocker.read_text() == "x"


@pytest.mark.skipif(ROOT, reason="root ignores file permissions")
def test_read_only_output_folder_is_one_line(tmp_path, module):
    data = tmp_path / "data"
    data.mkdir()
    save_images(data, ["img_a"], seed=1)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = batch(_args(data, out, module))
    finally:
        out.chmod(0o755)
    assert r.exit_code == 1 and "cannot write in the output folder" in r.stderr
    assert list(out.iterdir()) == []


def test_failure_writing_final_outputs_keeps_records_and_says_how_to_rewrite(tmp_path, module, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    save_images(data, ["img_a", "img_b"], seed=2)
    out = tmp_path / "out"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch_runner, "write_outputs", full_disk)
    r = batch(_args(data, out, module))
    assert r.exit_code == 1
    lines = [x for x in r.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stderr
    assert "records are kept in records/" in lines[0] and "No space left on device" in lines[0]
    assert "run the same mimir batch command again" in lines[0] and "mimir merge" in lines[0]
    assert len(list((out / "records").glob("*/*.json"))) == 2
    monkeypatch.undo()
    r2 = batch(_args(data, out, module))
    assert r2.exit_code == 0, r2.stderr
    assert json.loads((out / "run.json").read_text())["counts"]["to_do"] == 0  # nothing recomputed
    assert len(read_csv(out / "predictions.csv")) == 2


# --------------------------------------------------------------------------- non-finite predictions


@pytest.mark.slow
def test_non_finite_prediction_is_an_error_with_module_and_target(tmp_path):
    """A module whose log-variance outputs overflow exp(): the subject fails (errors.csv names module and
    target), never a row with inf or a JSON null."""
    from conftest_models import DEFAULT_TARGETS, random_resnet_state

    from mimir.models.modules import TargetSpec, write_module

    targets = [
        TargetSpec(name=n, field=f, unit=u, divisor=d, mean=m, sd=s, calibration=c)
        for n, f, u, d, m, s, c in DEFAULT_TARGETS
    ]
    module = tmp_path / "hot"
    write_module(module, name="hot", version="1", targets=targets,
                 state_dicts=[random_resnet_state(3, 8, 7, out_scale=3000.0)])
    data = tmp_path / "data"
    data.mkdir()
    save_images(data, ["img_a", "img_b", "img_c"], seed=2)
    out = tmp_path / "out"
    r = batch(_args(data, out, str(module)))
    assert r.exit_code == 2, r.stderr
    errors = read_csv(out / "errors.csv")
    assert errors, "the overflowing module should fail at least one subject"
    for e in errors:
        assert e["stage"] == "inference"
        assert "prediction is not finite for hot/" in e["message"] and "\n" not in e["message"]
    predicted = read_csv(out / "predictions.csv")
    assert len(predicted) + len(errors) == 3
    for row in predicted:
        for key, value in row.items():
            if key.endswith(("_mean_in_L", "_variance_in_L")):
                assert np.isfinite(float(value))
    assert "Infinity" not in (out / "predictions.json").read_text()
    # predict reports the same subjects, one line each, exit 2 (or 1 when all failed)
    from typer.testing import CliRunner

    from mimir.cli import app

    rp = CliRunner().invoke(app, ["predict", str(data), "-m", str(module), "--device", "cpu", "-o",
                                  str(tmp_path / "p.csv")])
    assert rp.exit_code == (1 if len(errors) == 3 else 2), rp.stderr
    assert sum("prediction is not finite for hot/" in x for x in rp.stderr.splitlines()) == len(errors)


def test_unwritable_output_folder_is_one_line_before_any_work(tmp_path, module, monkeypatch):
    """A folder where no file can be created (read-only mount, permissions; simulated so it holds as root)."""
    import tempfile

    from mimir.utils import atomic

    data = tmp_path / "data"
    data.mkdir()
    save_images(data, ["img_a"], seed=1)
    out = tmp_path / "out"
    out.mkdir()
    real = tempfile.mkstemp

    def read_only(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == out:
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    r = batch(_args(data, out, module))
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write in the output folder (Permission denied)" in lines[0], r.stderr
    assert list(out.iterdir()) == []
