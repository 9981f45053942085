"""What `mimir qc` shows on screen: the verdict, whole flags, and the numbers the swap check decided on."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimir.cli import app
from mimir.synth import generate_subject

runner = CliRunner()


@pytest.fixture(scope="module")
def swapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qcscreen")
    return generate_subject(root, 5, variant="fat_water_swap", small=True, swap_station=3).zip_path


def _row(screen: str, name: str) -> list[str]:
    line = next(line for line in screen.splitlines() if name in line)
    return [cell.strip() for cell in line.strip("│ ").split("│")]


def test_the_screen_shows_the_numbers_of_the_csv(swapped: Path, tmp_path: Path) -> None:
    out = tmp_path / "qc.csv"
    assert runner.invoke(app, ["qc", str(swapped), "-o", str(out)]).exit_code == 0
    with open(out, encoding="utf-8", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    r = runner.invoke(app, ["qc", str(swapped)], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    name, status, flags, lows, seam = _row(r.stdout, "1000005_20201_2_0")
    assert (status, flags) == ("fail", "fat_water_swap:station=3")
    assert lows.split() == [f"{float(row[f's{n}_edge_low']):.2f}" for n in range(1, 7)]
    assert float(lows.split()[2]) > 0.80  # the swapped station is the one over the threshold
    assert seam == f"{min(float(row[f's{n}_seam_corr']) for n in range(1, 6)):.2f}"
    assert float(seam) < 0  # a swapped station's seam correlates negatively


def test_a_narrow_terminal_keeps_whole_flags(swapped: Path) -> None:
    r = runner.invoke(app, ["qc", str(swapped)], env={"COLUMNS": "70"})
    assert r.exit_code == 0, r.output
    assert "fat_water_swap:station=3" in r.stdout  # not cut, not wrapped
    assert "edge_low" not in r.stdout and "A wider terminal shows the numbers" in " ".join(r.stdout.split())


def test_no_table_when_nothing_could_be_read(tmp_path: Path) -> None:
    r = runner.invoke(app, ["qc", str(tmp_path / "nope_20201_2_0.zip")], env={"COLUMNS": "160"})
    assert r.exit_code == 1
    assert r.stdout == ""  # no empty table, no "0 checked" line
    assert "file not found" in r.stderr
