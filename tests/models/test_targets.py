"""The target catalogue and ``mimir list-targets``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_models import no_builtin_modules, random_resnet_state, single_torch_thread  # noqa: F401

from mimir.models import registry
from mimir.models.modules import TargetSpec, write_module
from mimir.models.catalogue import catalogue
from mimir.models.targets import list_targets

pytestmark = pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")
runner = CliRunner()
SHARED_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "mimir_targets.csv"


def _cli():
    from mimir.cli import app

    return app


def test_catalogue_content() -> None:
    cat = catalogue()
    assert len(cat) == 71 and len({e.name for e in cat}) == 71
    by = {e.name: e for e in cat}
    assert by["height"].field == 12144 and by["height"].unit == "cm" and by["height"].group == "anthropometry"
    assert by["height"].cv.n == 38874 and by["height"].cv.icc == 0.965 and by["height"].test is None
    assert by["age"].field is None
    assert sum(e.test is not None for e in cat) == 12
    assert by["AtlasVatVolume"].test.r2 == 0.991 and by["AtlasVatVolume"].cv.mape_percent == 5.2


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="shared data folder not present")
def test_packaged_catalogue_is_the_shared_one() -> None:
    """The published catalogue, cell for cell, plus mimir's own support columns (issue 11)."""
    import csv
    from importlib import resources

    packaged = list(csv.DictReader(resources.files("mimir").joinpath("data", "mimir_targets.csv").read_text().splitlines()))
    shared = list(csv.DictReader(SHARED_CSV.read_text().splitlines()))
    assert len(packaged) == len(shared) == 71
    assert [{k: row[k] for k in shared[0]} for row in packaged] == shared
    assert set(packaged[0]) - set(shared[0]) == {"support_low", "support_high"}


def test_installed_modules_are_joined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builtin = tmp_path / "builtin"
    targets = [
        TargetSpec(name="AtlasVatVolume", unit="L", field=22407, mean=3.0, sd=1.0),
        TargetSpec(name="demoThing", unit="mm", field=None, mean=0.0, sd=1.0),
    ]
    write_module(builtin / "demo", name="demo", version="0.1", targets=targets, state_dicts=[random_resnet_state(2, 8, 0)])
    monkeypatch.setattr(registry, "builtin_modules_dir", lambda: builtin)
    infos = {i.name: i for i in list_targets()}
    assert len(infos) == 72
    assert infos["AtlasVatVolume"].modules == ["demo@0.1"]
    assert infos["demoThing"].in_catalogue is False and infos["demoThing"].modules == ["demo@0.1"]
    assert infos["height"].modules == [] and infos["height"].available_in == ["module_experimental"]
    assert infos["age"].available_in == ["module_age"]

    r = runner.invoke(_cli(), ["list-targets", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc) == 72
    vat = next(d for d in doc if d["name"] == "AtlasVatVolume")
    assert vat["installed_modules"] == ["demo@0.1"] and vat["field"] == 22407
    assert vat["cv"] == {"n": 9628, "icc": 0.995, "r2": 0.991, "mae": 0.155, "mape_percent": 5.2}
    assert vat["test"]["n"] == 14772

    r = runner.invoke(_cli(), ["list-targets"])  # no terminal: every column, tab-separated, nothing cut
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split("\t") == ["group", "target", "field", "unit", "cv_n", "cv_icc", "cv_r2", "cv_mae",
                                     "cv_mape_percent", "test_n", "test_icc", "test_r2", "installed_modules",
                                     "published_in"]
    assert len(lines) == 73 and all(len(line.split("\t")) == 14 for line in lines)
    rows = {line.split("\t")[1]: line.split("\t") for line in lines[1:]}
    assert rows["AtlasVatVolume"][2:7] == ["22407", "L", "9628", "0.995", "0.991"]
    assert rows["AtlasVatVolume"][12] == "demo@0.1" and rows["height"][13] == "module_experimental"
    assert max(len(line) for line in lines) > 80  # not cut to a terminal's width
