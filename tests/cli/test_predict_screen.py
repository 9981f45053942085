"""What `mimir predict` shows on screen: each subject's QC status and flags and its OOD scores, from the cache or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mimir.cli import app
from mimir.synth import generate_subject

runner = CliRunner()


@pytest.fixture(scope="module")
def swapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("swap")
    return generate_subject(root, 5, variant="fat_water_swap", small=True, swap_station=3).zip_path


def _screen(args: list[str]) -> str:
    r = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    return " ".join(r.stdout.split())


def test_qc_and_ood_flags_on_screen_from_a_warm_cache(swapped: Path) -> None:
    r = runner.invoke(app, ["qc", str(swapped)])  # fills the image cache, as the README recommends
    assert r.exit_code == 0 and "fat_water_swap:station=3" in r.stdout
    for extra in ([], ["--no-cache"]):
        shown = _screen(["predict", str(swapped), "-m", "phantom-demo", *extra])
        assert "QC fail: fat_water_swap:station=3, out_of_distribution:phantom-demo" in shown, (extra, shown)
        assert "OOD score (flag above 1): phantom-demo " in shown and "(out of distribution)" in shown
        assert "(synthetic demo)" in shown


def test_an_image_input_shows_its_ood_flag(tmp_path: Path) -> None:
    np.save(tmp_path / "1000001_20201_2_0.npy", np.zeros((3, 256, 256), np.uint8))  # no zip: no image QC
    shown = _screen(["predict", str(tmp_path / "1000001_20201_2_0.npy"), "-m", "phantom-demo"])
    assert "QC warn: out_of_distribution:phantom-demo | OOD score (flag above 1): phantom-demo " in shown


def test_reliability_line() -> None:
    from mimir.inference.predictions import SubjectResult
    from mimir.outputs.writers import reliability_line

    r = SubjectResult(name="x", qc_status="ok", ood_scores={"a": 0.25, "b": None})
    assert reliability_line(r) == "QC [green]ok[/]: no flags  |  OOD score (flag above 1): a 0.25, b no reference"
    assert reliability_line(SubjectResult(name="x")) == "QC not computed (an image input)"
