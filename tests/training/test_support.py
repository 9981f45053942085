"""Default support of trained targets: derived from the unit at training time, recorded in module.json,
``--support`` overrides it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mimir.errors import UsageError
from mimir.models.units import parse_support_text, support_of_unit
from mimir.training.data import TargetInfo, target_info
from mimir.training.trainer import target_support

from conftest_models import single_torch_thread  # noqa: F401  (fixture)


def test_support_of_unit() -> None:
    assert support_of_unit("percent") == support_of_unit("%") == (0.0, 100.0)
    for unit in ("L", "mL", "cm3", "kg", "g", "cm", "mm", "m"):
        assert support_of_unit(unit) == (0.0, None), unit
    for unit in ("years", "bpm", "1", "L/L", "kg/L", "SD"):
        assert support_of_unit(unit) is None, unit


def test_parse_support_text() -> None:
    assert parse_support_text("0:100", "x") == (0.0, 100.0)
    assert parse_support_text("0:", "x") == (0.0, None)
    assert parse_support_text(":-1.5", "x") == (None, -1.5)
    assert parse_support_text("none", "x") is None
    for bad in ("0", "a:1", "5:1", ":", "nan:1", "0:inf"):
        with pytest.raises(ValueError, match="x: "):
            parse_support_text(bad, "x")


def test_target_info_reads_support_and_refuses_typos() -> None:
    infos = target_info(["liver_fat_percent", "vat_l"], supports=["vat_l=0.5:", "liver_fat_percent=none"])
    assert [(i.support, i.support_given) for i in infos] == [(None, True), ((0.5, None), True)]
    assert target_info(["vat_l"])[0].support_given is False
    with pytest.raises(UsageError, match="--support: vat is not a column"):
        target_info(["vat_l"], supports=["vat=0:"])
    with pytest.raises(UsageError, match="--support of vat_l: '3:1'|low 3 must be below high 1"):
        target_info(["vat_l"], supports=["vat_l=3:1"])


def test_precedence_option_catalogue_unit_and_values_outside(caplog: pytest.LogCaptureFixture) -> None:
    values = np.array([1.0, 7.5, np.nan])
    unit_only = TargetInfo("liver_fat_percent", "percent")
    assert target_support(unit_only, None, values) == (0.0, 100.0)
    assert target_support(unit_only, (0.0, 50.0), values) == (0.0, 50.0)  # the published catalogue's
    given = TargetInfo("liver_fat_percent", "percent", support=(None, 40.0), support_given=True)
    assert target_support(given, (0.0, 50.0), values) == (None, 40.0)
    removed = TargetInfo("liver_fat_percent", "percent", support=None, support_given=True)
    assert target_support(removed, (0.0, 50.0), values) is None
    with caplog.at_level(logging.WARNING, logger="mimir"):
        change = TargetInfo("weight_change_kg", "kg")
        assert target_support(change, None, np.array([-2.0, 3.0])) is None
    assert "weight_change_kg: training values from -2 to 3 lie outside the default support" in caplog.text


@pytest.mark.usefixtures("single_torch_thread")
def test_train_records_the_support_and_predict_cuts_intervals_to_it(tmp_path: Path) -> None:
    from mimir.cli import app
    from mimir.inference.predictor import Predictor

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = ["name,liver_fat_percent,weight_change_kg,vat_l"]
    for i in range(8):
        level = float(rng.uniform(20, 200))
        np.save(tmp_path / "images" / f"s{i}.npy",
                np.clip(rng.normal(level, 10, (3, 256, 256)), 0, 255).astype(np.uint8))
        rows.append(f"s{i},{level / 40:.3f},{rng.normal(0, 2):.3f},{rng.uniform(1, 4):.3f}")
    (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
    r = CliRunner().invoke(app, [
        "train", str(tmp_path / "images"), str(tmp_path / "targets.csv"), "-o", str(tmp_path / "m"),
        "--width", "2", "--members", "1", "--iterations", "2", "--batch-size", "2", "--val-fraction", "0.25",
        "--support", "vat_l=0.5:", "--device", "cpu",
    ])
    assert r.exit_code == 0, r.output
    targets = {t["name"]: t for t in json.loads((tmp_path / "m" / "module.json").read_text())["targets"]}
    assert targets["liver_fat_percent"]["support"] == [0.0, 100.0]  # from the unit
    assert "support" not in targets["weight_change_kg"]  # negative training values: no default
    assert targets["vat_l"]["support"] == [0.5, None]  # --support
    result = Predictor([str(tmp_path / "m")], device="cpu").predict_files([str(tmp_path / "images" / "s0.npy")])[0]
    by_name = {p.target.name: p for p in result.predictions}
    assert by_name["liver_fat_percent"].ci[0] >= 0.0 and by_name["vat_l"].ci[0] >= 0.5
