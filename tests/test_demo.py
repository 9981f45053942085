"""The built-in phantom-demo module and ``mimir demo``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimir.models.modules import read_module, verify_module
from mimir.models.registry import builtin_modules_dir, get_module, installed_modules

from conftest_models import single_torch_thread  # noqa: F401  (fixture)

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_torch_thread")
DEMO = "phantom-demo"
TARGETS = ["weight_kg", "height_cm", "vat_volume_l", "asat_volume_l", "liver_fat_percent", "thigh_muscle_volume_l"]


def test_demo_module_is_built_in_small_and_marked_synthetic() -> None:
    folder = builtin_modules_dir() / DEMO
    spec = read_module(folder)
    verify_module(spec)
    assert spec.name == DEMO and spec.architecture == "resnet50" and spec.width < 64
    assert [t.name for t in spec.targets] == TARGETS
    assert spec.intended_use == "synthetic-demo" and spec.synthetic
    assert "synthetic demonstration only" in spec.intended_use_note.lower()
    size = sum((folder / m.file).stat().st_size for m in spec.members)
    assert size <= 10 * 1024 * 1024
    assert len(spec.members) >= 2
    # trained by mimir train, with its held-out metrics and calibration recorded
    assert spec.source["kind"] == "trained with mimir train"
    for t in spec.targets:
        v = t.metrics["validation"]
        assert v["n"] > 0 and t.calibration == v["calibration_factor"]
        assert {"mae", "r2", "icc", "mape_percent", "coverage95_uncalibrated", "coverage95_calibrated"} <= set(v)


def test_demo_module_is_always_available_without_download() -> None:
    spec = get_module(DEMO)  # empty MIMIR_HOME (conftest): only built-in modules exist
    assert spec.builtin
    assert DEMO in [s.name for s in installed_modules()]


def test_manifest_lists_the_demo_module_as_built_in() -> None:
    root = Path(__file__).resolve().parent.parent
    entries = json.loads((root / "weights_manifest.json").read_text())
    entry = next(e for e in entries if e["name"] == DEMO)
    assert entry["builtin"] is True and entry["targets"] == TARGETS


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    from mimir.demo import run_demo

    result = run_demo(tmp_path / "out", seed=900_123, device="cpu")
    assert [r.name for r in result.rows] == TARGETS
    for r in result.rows:
        assert r.truth is not None and r.low < r.value < r.high
    for key in ("zip", "truth", "image", "preview", "predictions", "comparison"):
        assert result.files[key].is_file(), key
    rows = list(csv.DictReader(result.files["comparison"].open()))
    assert [r["target"] for r in rows] == TARGETS
    pred = list(csv.DictReader(result.files["predictions"].open()))
    assert pred[0]["name"] == "1900123_20201_2_0" and "weight_kg_mean_in_kg" in pred[0]


@pytest.mark.slow
def test_demo_cli_prints_truth_next_to_predictions(tmp_path: Path) -> None:
    from mimir.cli import app

    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--seed", "900124", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for word in ("true", "predicted", "interval", "weight_kg", "preview", "synthetic demonstration only"):
        assert word in r.output
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--seed", "900124", "--ci", "2"])
    assert r.exit_code == 1 and "confidence level" in r.output


@pytest.mark.slow
def test_training_images_equal_the_zip_pipeline(tmp_path: Path) -> None:
    """The demo's training images (scripts/synth_images.py, no DICOM files) are the zip pipeline's images."""
    import sys

    scripts = Path(__file__).resolve().parent.parent / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        from synth_images import check_identical
    finally:
        sys.path.remove(str(scripts))
    check_identical([10_003], str(tmp_path))
