"""Targets keyed by eid, and the warning about a small calibration set."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mimir.errors import InputError, UsageError
from mimir.training.data import load_images, read_targets_csv
from mimir.training.trainer import TrainConfig, calibration_size, plan_jobs, warn_small_calibration


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        np.save(folder / f"{n}.npy", np.full((3, 256, 256), k, np.uint8))


def test_targets_keyed_by_eid(tmp_path: Path) -> None:
    _images(tmp_path / "img", ["1000001_20201_2_0", "1000002_20201_2_0", "scan_x"])
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("eid,weight_kg\n1000002,80.5\n1000001,61\n1000009,70\n")
    table = read_targets_csv(csv_path)
    assert table.key == "eid" and table.names == ["1000002", "1000001", "1000009"]
    ds = load_images(tmp_path / "img", table)
    assert ds.names == ["1000002", "1000001"] and ds.unmatched_rows == 1
    assert ds.values[:, 0].tolist() == [80.5, 61.0]
    assert ds.images[0, 0, 0, 0] == 1 and ds.images[1, 0, 0, 0] == 0  # each row got its own subject's image


def test_an_eid_with_two_visits_is_ambiguous(tmp_path: Path) -> None:
    _images(tmp_path / "img", ["1000001_20201_2_0", "1000001_20201_3_0"])
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("eid,weight_kg\n1000001,61\n")
    with pytest.raises(UsageError, match="eid 1000001 has two images, 1000001_20201_2_0.npy and 1000001_20201_3_0.npy"):
        load_images(tmp_path / "img", read_targets_csv(csv_path))
    csv_path.write_text("eid,weight_kg\nabc,61\n")
    with pytest.raises(InputError, match="not a whole number"):
        read_targets_csv(csv_path)
    csv_path.write_text("subject,weight_kg\nabc,61\n")
    with pytest.raises(InputError, match="'name' .* or 'eid'"):
        read_targets_csv(csv_path)


def test_targets_keyed_by_name_still_work(tmp_path: Path) -> None:
    _images(tmp_path / "img", ["1000001_20201_2_0", "scan_x"])
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("name,weight_kg\nscan_x,50\n1000001_20201_2_0,60\n")
    ds = load_images(tmp_path / "img", read_targets_csv(csv_path))
    assert ds.names == ["scan_x", "1000001_20201_2_0"]


def test_small_calibration_set_warns(caplog: pytest.LogCaptureFixture) -> None:
    small = plan_jobs(20, TrainConfig(name="m", members=2, val_fraction=0.2))
    big = plan_jobs(400, TrainConfig(name="m", members=2, val_fraction=0.2))
    folds = plan_jobs(30, TrainConfig(name="m", members=1, folds=3))
    assert calibration_size(small) == 4 and calibration_size(big) == 80 and calibration_size(folds) == 30
    with caplog.at_level(logging.WARNING, logger="mimir"):
        assert warn_small_calibration(big) == 80
        assert not caplog.records
        assert warn_small_calibration(small) == 4
    (rec,) = caplog.records
    assert "only 4 held-out subject(s) (fewer than 50)" in rec.getMessage() and "--folds" in rec.getMessage()
