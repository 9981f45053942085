"""Follow-up visits: same subject, new acquisition, the chosen change in the truth; first visits unchanged."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from mimir.errors import UsageError
from mimir.synth import build_study, generate_subject, study_zip_bytes
from mimir.synth.body import draw_params
from mimir.synth.followup import CHANGES, DEFAULT_SIZES, changed_params

VALUES = ("weight_kg", "height_cm", "vat_volume_l", "asat_volume_l", "liver_fat_percent", "thigh_muscle_volume_l")


def test_first_visits_are_byte_identical_to_those_before_follow_ups() -> None:
    # sha256 of zip bytes + truth JSON of small seed 3 and of the rescan variant of seed 7, taken before the
    # follow-up code existed
    for seed, variant, digest in [
        (3, None, "3e153696b9bdf71c5056d2c5a5886fc4b4894d6dbb26d7f286b0295593c0ad0c"),
        (7, "rescan", "e75f026ebf71d159c5dc4946a29d8fc74b20f66c1f5c48a43646a349f1bfebbb"),
    ]:
        s = build_study(seed, variant=variant, small=True)
        got = hashlib.sha256(study_zip_bytes(s) + json.dumps(s.truth, indent=2).encode()).hexdigest()
        assert got == digest


def _first_slice(path: Path) -> pydicom.Dataset:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dcm"))
        return pydicom.dcmread(io.BytesIO(zf.read(name)), stop_before_pixels=True)


def test_follow_up_is_the_same_subject_in_a_new_acquisition(tmp_path: Path) -> None:
    first = generate_subject(tmp_path, 21, small=True)
    second = generate_subject(tmp_path, 21, small=True, instance=3)
    assert second.zip_path.name == "1000021_20201_3_0.zip"
    assert second.truth_path.name == "1000021_20201_3_0.truth.json"
    assert first.truth_path.name == "1000021.truth.json"
    t1, t2 = first.truth, second.truth
    assert t2["eid"] == t1["eid"] and t2["instance"] == 3 and "instance" not in t1
    fu = t2["follow_up"]
    assert fu["change"] == "none" and all(fu["delta"][k] == 0.0 for k in VALUES)
    assert all(t2[k] == t1[k] for k in VALUES) and fu["baseline"] == {k: t1[k] for k in VALUES}
    d1, d2 = _first_slice(first.zip_path), _first_slice(second.zip_path)
    assert str(d1.StudyDate) == fu["first_visit_date"].replace("-", "")
    assert str(d2.StudyDate) == fu["study_date"].replace("-", "")
    years = (dt.date.fromisoformat(fu["study_date"]) - dt.date.fromisoformat(fu["first_visit_date"])).days / 365.25
    assert 2.0 <= years <= 3.0 and fu["years"] == pytest.approx(years, abs=1e-4)
    assert d1.StudyInstanceUID != d2.StudyInstanceUID
    # a new acquisition: other positioning and noise
    s1, s2 = build_study(21, small=True), build_study(21, small=True, instance=3)
    assert s1.series[0].z[0] != s2.series[0].z[0] or s1.truth["landmarks_z_mm"] != s2.truth["landmarks_z_mm"]
    assert not np.array_equal(s1.series[0].pixels, s2.series[0].pixels)
    # and reproducible
    assert study_zip_bytes(build_study(21, small=True, instance=3)) == study_zip_bytes(s2)


@pytest.mark.parametrize("change", ["weight", "liver_fat", "vat", "thigh_muscle"])
def test_each_change_moves_its_target_and_records_the_truth_of_both_visits(change: str) -> None:
    base = build_study(5, small=True).truth
    truth = build_study(5, small=True, instance=3, change=change).truth
    fu = truth["follow_up"]
    assert fu["change"] == change and fu["size"] == DEFAULT_SIZES[change]
    for k in VALUES:
        assert fu["delta"][k] == pytest.approx(truth[k] - base[k], abs=1e-12)
    assert fu["delta"]["height_cm"] == 0.0
    delta = fu["delta"]
    if change == "weight":
        assert delta["weight_kg"] > 1.0 and delta["asat_volume_l"] > 0 and delta["vat_volume_l"] > 0
    elif change == "liver_fat":
        assert delta["liver_fat_percent"] == pytest.approx(3.0) and delta["vat_volume_l"] == 0.0
    elif change == "vat":
        assert delta["vat_volume_l"] > 0.2 and delta["liver_fat_percent"] == 0.0
    else:
        assert delta["thigh_muscle_volume_l"] / base["thigh_muscle_volume_l"] == pytest.approx(-0.06, abs=0.01)


def test_changes_are_transformations_of_the_parameters() -> None:
    p = draw_params(8)
    new, record = changed_params(p, "liver_fat", 2.0)
    assert new.liver_ff == pytest.approx(p.liver_ff + 0.02) and p.liver_ff == record["parameters"]["liver_ff"][0]
    assert new.seed == p.seed and new.vat_waves == p.vat_waves
    assert changed_params(p, "none")[0] == p
    assert set(CHANGES) == {"none", "weight", "liver_fat", "vat", "thigh_muscle"}
    with pytest.raises(UsageError, match="unknown follow-up change"):
        changed_params(p, "height")
    with pytest.raises(UsageError, match="out of range"):
        changed_params(p, "weight", 3.0)
    with pytest.raises(UsageError, match="follow-up visit only"):
        build_study(1, small=True, change="vat")
    with pytest.raises(UsageError, match="not an imaging visit"):
        build_study(1, small=True, instance=4)


def test_synth_command_writes_both_visits(tmp_path: Path) -> None:
    from mimir.cli import app

    res = CliRunner().invoke(app, ["synth", "-o", str(tmp_path), "--n", "2", "--seed", "30", "--small",
                                   "--follow-up", "liver_fat", "--change-size", "1.5"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["1000030.truth.json", "1000030_20201_2_0.zip", "1000030_20201_3_0.truth.json",
                     "1000030_20201_3_0.zip", "1000031.truth.json", "1000031_20201_2_0.zip",
                     "1000031_20201_3_0.truth.json", "1000031_20201_3_0.zip"]
    fu = json.loads((tmp_path / "1000031_20201_3_0.truth.json").read_text())["follow_up"]
    assert fu["delta"]["liver_fat_percent"] == pytest.approx(1.5)
    res = CliRunner().invoke(app, ["synth", "-o", str(tmp_path / "x"), "--small", "--follow-up", "muscle"])
    assert res.exit_code == 1 and "unknown follow-up change" in res.output and not (tmp_path / "x").exists()
