"""``mimir calibrate``: a module whose intervals are 2x too wide (or too narrow) repaired on labelled subjects.

Default run: predictions with Gaussian errors of known variance, stated with a
wrong variance (x4 or /4), as the wrong module would state them; the derived
module's factors, held-out coverage, members and provenance are checked, and
the derived module is run next to its parent on images (means equal, variances
scaled).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mimir.analysis import metrics as M
from mimir.analysis.calibrate import calibrate_module, cross_fit, fit_target
from mimir.cli import app
from mimir.errors import UsageError
from mimir.inference.predictions import SubjectResult, TargetPrediction, layout_for
from mimir.models.registry import get_module, install_module
from mimir.outputs.writers import long_csv_text


def wrong_module(tmp: Path, name: str, factor: float) -> object:
    """phantom-demo installed as ``name`` with every calibration factor multiplied by ``factor``."""
    parent = get_module("phantom-demo")
    folder = tmp / name
    folder.mkdir(parents=True)
    for m in parent.members:
        shutil.copy2(parent.member_path(m), folder / m.file)
    shutil.copy2(parent.path / parent.ood.file, folder / parent.ood.file)
    data = json.loads((parent.path / "module.json").read_text())
    data["name"] = name
    for t in data["targets"]:
        t["calibration_factor"] *= factor
    (folder / "module.json").write_text(json.dumps(data))
    return install_module(folder)


def gaussian_predictions(spec, n: int, stated: float, seed: int = 0) -> tuple[str, pd.DataFrame]:
    """Long CSV of ``spec``'s targets for ``n`` subjects: error sd known, variance stated x ``stated``; the truth."""
    rng = np.random.default_rng(seed)
    layout = layout_for([(spec.name, spec.version, [(t.name, t.unit, t.field) for t in spec.targets],
                          spec.intended_use)])
    results, truth = [], {"eid": []}
    for i in range(n):
        eid = 4_000_000 + i
        r = SubjectResult.for_input(f"/x/{eid}_20201_2_0.zip")
        preds = []
        for t in layout:
            y = rng.normal(50, 10)
            sd = rng.uniform(0.5, 2.0)
            preds.append(TargetPrediction(t, value=y + rng.normal(0, sd), variance=stated * sd * sd, level=0.95))
            truth.setdefault(t.name, []).append(y)
        r.predictions = preds
        r.qc_status = "ok"
        results.append(r)
        truth["eid"].append(eid)
    return long_csv_text(results), pd.DataFrame(truth)


def test_fit_target_finds_the_scale_by_each_objective() -> None:
    rng = np.random.default_rng(5)
    sd = rng.uniform(0.5, 2, 4000)
    y = rng.normal(0, 1, 4000) * sd
    for objective in ("auce", "ci95", "nll", "anneal"):
        fit = fit_target(y, np.zeros(4000), 4 * sd**2, objective)
        assert fit.scale == pytest.approx(0.25, rel=0.15), objective
        assert (fit.intercept, fit.slope) == (0.0, 1.0)
    shifted = fit_target(3 + 1.1 * y, y * 0 + 0.0 + y, sd**2, "nll", recalibrate_means=True)
    assert shifted.slope == pytest.approx(1.1, abs=1e-9) and shifted.intercept == pytest.approx(3.0, abs=1e-9)


def test_cross_fitted_figures_come_from_subjects_left_out() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    sd = rng.uniform(0.5, 2, n)
    y = rng.normal(0, 1, n) * sd
    groups = np.arange(n) % 5
    before, after = cross_fit(y, np.zeros(n), sd**2 / 4, groups, "auce")
    assert before["coverage_95"] == pytest.approx(M.coverage(y, np.zeros(n), sd**2 / 4, 0.95))
    assert before["coverage_95"] < 0.70 and after["coverage_95"] == pytest.approx(0.95, abs=0.02)
    assert after["auce"] < before["auce"] / 5


@pytest.mark.parametrize("factor", [4.0, 0.25])
def test_calibrate_repairs_a_wrong_factor_and_installs_a_derived_module(tmp_path: Path, factor: float) -> None:
    wrong = wrong_module(tmp_path / "src", "phantom-wrong", factor)
    text, truth = gaussian_predictions(wrong, 1500, stated=factor)
    (tmp_path / "p.csv").write_text(text)
    truth.to_csv(tmp_path / "r.csv", index=False)  # plain columns named after the targets
    res = calibrate_module("phantom-wrong", tmp_path / "p.csv", tmp_path / "r.csv", "phantom-fixed")
    assert len(res.targets) == 6
    for rep in res.targets:
        assert rep.n == 1500
        assert rep.fit.scale == pytest.approx(1 / factor, rel=0.15)
        assert abs(rep.before["coverage_95"] - 0.95) > 0.04  # the parent's intervals did not cover as they claim
        assert rep.after["coverage_95"] == pytest.approx(0.95, abs=0.02)  # held out
        assert rep.after["auce"] < rep.before["auce"]
    fixed = get_module("phantom-fixed")
    assert [m.sha256 for m in fixed.members] == [m.sha256 for m in wrong.members]
    for m in fixed.members:
        assert hashlib.sha256(fixed.member_path(m).read_bytes()).hexdigest() == m.sha256
    assert fixed.ood is not None and fixed.ood.sha256 == wrong.ood.sha256
    src = fixed.source
    assert src["derived_from"]["name"] == "phantom-wrong"
    assert src["derived_from"]["version"] == wrong.version
    assert src["derived_from"]["module_json_sha256"] == hashlib.sha256(
        (wrong.path / "module.json").read_bytes()).hexdigest()
    cal = src["calibration"]
    assert cal["objective"] == "auce" and cal["n"] == 1500 and cal["recalibrated_means"] is False
    assert len(cal["date"]) == 10
    assert fixed.version == f"{wrong.version}+calibrated" and not fixed.means_recalibrated
    for t, w in zip(fixed.targets, wrong.targets):
        assert t.calibration == w.calibration  # the parent's own factor stays; the refit comes after mixing
        assert t.recalibration["mean_intercept"] == 0.0 and t.recalibration["mean_slope"] == 1.0


def test_derived_module_keeps_the_means_and_scales_the_variances(tmp_path: Path) -> None:
    from mimir.inference.predictor import Predictor

    wrong = wrong_module(tmp_path / "src", "phantom-wrong", 4.0)
    text, truth = gaussian_predictions(wrong, 300, stated=4.0)
    (tmp_path / "p.csv").write_text(text)
    truth.to_csv(tmp_path / "r.csv", index=False)
    calibrate_module("phantom-wrong", tmp_path / "p.csv", tmp_path / "r.csv", "phantom-fixed", objective="ci95")
    fixed = get_module("phantom-fixed")
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 256, 256), dtype=np.uint8)
    (m0, v0), (m1, v1) = Predictor(["phantom-wrong", "phantom-fixed"], device="cpu").predict_arrays(images)
    np.testing.assert_array_equal(m0, m1)
    scale = np.array([t.recalibration["variance_scale"] for t in fixed.targets])
    np.testing.assert_allclose(v1, v0 * scale, rtol=1e-12)


def test_recalibrated_means_are_marked_in_the_version_every_output_carries(tmp_path: Path) -> None:
    wrong = wrong_module(tmp_path / "src", "phantom-wrong", 1.0)
    text, truth = gaussian_predictions(wrong, 200, stated=1.0)
    (tmp_path / "p.csv").write_text(text)
    for c in truth.columns[1:]:
        truth[c] = truth[c] * 1.05 + 2.0  # a site whose population shifts the means
    truth.to_csv(tmp_path / "r.csv", index=False)
    result = CliRunner().invoke(app, ["calibrate", "-m", "phantom-wrong", str(tmp_path / "p.csv"),
                                      str(tmp_path / "r.csv"), "-o", "phantom-site", "--recalibrate-means",
                                      "--objective", "nll"])
    assert result.exit_code == 0, result.output
    assert "installed phantom-site" in result.output and "+calibrated-means" in result.output
    site = get_module("phantom-site")
    assert site.means_recalibrated and site.version.endswith("+calibrated-means")
    assert "means" in site.intended_use_note
    long = pd.read_csv(tmp_path / "p.csv")
    for t in site.targets:  # least squares of the reference on the prediction, on all subjects
        pred = long[long["target"] == t.name]["mean"].to_numpy()
        slope, intercept = np.polyfit(pred, truth[t.name].to_numpy(), 1)
        assert t.recalibration["mean_slope"] == pytest.approx(slope, abs=1e-9)
        assert t.recalibration["mean_intercept"] == pytest.approx(intercept, abs=1e-7)
        assert 1.0 < slope < 1.06  # 1.05, attenuated by the prediction error
    again = CliRunner().invoke(app, ["calibrate", "-m", "phantom-wrong", str(tmp_path / "p.csv"),
                                     str(tmp_path / "r.csv"), "-o", "phantom-site"])
    assert again.exit_code == 1 and "already installed" in again.output


def test_refusals_are_one_line(tmp_path: Path) -> None:
    wrong = wrong_module(tmp_path / "src", "phantom-wrong", 4.0)
    text, truth = gaussian_predictions(wrong, 10, stated=4.0)
    (tmp_path / "p.csv").write_text(text)
    truth.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(UsageError, match="fewer than 20 labelled subjects for every target"):
        calibrate_module("phantom-wrong", tmp_path / "p.csv", tmp_path / "r.csv", "phantom-fixed")
    with pytest.raises(UsageError, match="holds no predictions of module phantom-demo"):
        calibrate_module("phantom-demo", tmp_path / "p.csv", tmp_path / "r.csv", "phantom-fixed")
    with pytest.raises(UsageError, match="name of its own"):
        calibrate_module("phantom-wrong", tmp_path / "p.csv", tmp_path / "r.csv", "phantom-wrong")
    with pytest.raises(UsageError, match="unknown objective"):
        calibrate_module("phantom-wrong", tmp_path / "p.csv", tmp_path / "r.csv", "x", objective="mse")


# --------------------------------------------------------------------------- scales beyond the search or module range


def _registry_listing() -> list[str]:
    from mimir.models.registry import modules_dir

    return sorted(p.name for p in modules_dir().iterdir()) if modules_dir().is_dir() else []


@pytest.mark.parametrize("objective", ["auce", "ci95", "nll"])
def test_a_fit_at_the_edge_of_the_search_range_is_not_converged(objective: str) -> None:
    from mimir.training.calibration import SCALE_MAX, SCALE_MIN, fit_scale

    rng = np.random.default_rng(11)
    sd = rng.uniform(0.5, 2, 2000)
    y = rng.normal(0, 1, 2000) * sd
    for stated, edge in ((1e-5, SCALE_MAX), (1e5, SCALE_MIN)):  # best scale 1e5 and 1e-5: beyond the grid
        fit = fit_target(y, np.zeros(2000), stated * sd**2, objective)
        assert fit.converged is False, (objective, stated)
        if objective != "ci95" or stated < 1:  # ci95 on intervals 300x too wide: every factor covers 100 %
            assert fit.scale == pytest.approx(edge, rel=0.05)
        assert fit_scale(y, np.zeros(2000), stated * sd**2, objective) == fit.scale  # mimir train's value unchanged
        assert fit.note == "not converged: the best scale lies at the edge of the search range 0.001 to 1000"
    inside = fit_target(y, np.zeros(2000), 4 * sd**2, objective)  # best scale 0.25: inside 1e-3 .. 1e3
    assert inside.converged is True and inside.scale == pytest.approx(0.25, rel=0.15) and inside.note == ""


def test_the_screen_and_module_json_say_when_a_fit_did_not_converge(tmp_path: Path) -> None:
    wrong = wrong_module(tmp_path / "src", "phantom-wrong", 1.0)
    text, truth = gaussian_predictions(wrong, 200, stated=1e5)  # intervals ~300x too wide: best scale 1e-5
    (tmp_path / "p.csv").write_text(text)
    truth.to_csv(tmp_path / "r.csv", index=False)
    res = CliRunner().invoke(app, ["calibrate", "-m", "phantom-wrong", str(tmp_path / "p.csv"),
                                   str(tmp_path / "r.csv"), "-o", "phantom-edge"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith(tuple(t.name for t in wrong.targets))]
    assert len(lines) == 6
    for ln in lines:
        assert ln.endswith("(not converged: the best scale lies at the edge of the search range 0.001 to 1000)"), ln
    cal = get_module("phantom-edge").source["calibration"]["targets"]
    for t in wrong.targets:
        assert cal[t.name]["converged"] is False
        assert cal[t.name]["variance_scale"] == pytest.approx(1e-3, rel=0.05)
        assert cal[t.name]["note"].startswith("not converged: the best scale lies at the edge")


@pytest.mark.parametrize("case", ["anneal beyond the range", "composed with the parent's own"])
def test_a_composed_scale_outside_the_module_range_is_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    if case == "anneal beyond the range":
        wrong = wrong_module(tmp_path / "src", "phantom-wrong", 1.0)
        stated, objective, parent_scale = 1e-5, "anneal", 1.0  # the annealing goes to ~1e5, unbounded
    else:  # a parent already recalibrated by 500, whose intervals are still half as wide: 500 x ~4 = 2000
        parent = get_module("phantom-demo")
        folder = tmp_path / "src" / "phantom-wrong"
        folder.mkdir(parents=True)
        for m in parent.members:
            shutil.copy2(parent.member_path(m), folder / m.file)
        shutil.copy2(parent.path / parent.ood.file, folder / parent.ood.file)
        data = json.loads((parent.path / "module.json").read_text())
        data["name"] = "phantom-wrong"
        for t in data["targets"]:
            t["recalibration"] = {"variance_scale": 500.0}
        (folder / "module.json").write_text(json.dumps(data))
        wrong = install_module(folder)
        stated, objective, parent_scale = 0.25, "auce", 500.0
    text, truth = gaussian_predictions(wrong, 300, stated=stated)
    (tmp_path / "p.csv").write_text(text)
    truth.to_csv(tmp_path / "r.csv", index=False)
    before = _registry_listing()
    with pytest.raises(UsageError) as err:
        calibrate_module("phantom-wrong", tmp_path / "p.csv", tmp_path / "r.csv", "phantom-fixed", objective=objective)
    msg = str(err.value)
    first = wrong.targets[0].name
    found = re.search(rf"^target {first} \(and 5 more target\(s\)\): the calibrated variance scale would be (\S+) "
                      rf"\(fitted (\S+) x the parent phantom-wrong's (\S+)\), outside the allowed 1e-06 to 1000; "
                      r"nothing was installed\. Check that the predictions were made by phantom-wrong and that the "
                      r"reference column of each target holds the same quantity in the same unit", msg)
    assert found, msg
    composed, fitted, own = (float(x) for x in found.groups())
    assert own == parent_scale and composed == pytest.approx(fitted * own, rel=1e-3) and composed > 1e3
    assert "\n" not in msg
    assert _registry_listing() == before  # no module, no staging folder left
    with pytest.raises(UsageError, match="outside the allowed 1e-06 to 1000"):  # also when only reporting
        calibrate_module("phantom-wrong", tmp_path / "p.csv", tmp_path / "r.csv", "phantom-fixed",
                         objective=objective, install=False)
    res = CliRunner().invoke(app, ["calibrate", "-m", "phantom-wrong", str(tmp_path / "p.csv"),
                                   str(tmp_path / "r.csv"), "-o", "phantom-fixed", "--objective", objective])
    assert res.exit_code == 1
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [f"error: {msg}"]
    assert "module.json" not in res.output and "Traceback" not in res.output
    assert _registry_listing() == before


def test_refitted_means_that_module_json_cannot_hold_are_one_line() -> None:
    """--recalibrate-means: a zero slope (a reference that does not follow the predictions) is refused by name."""
    from mimir.analysis.calibrate import Fit, TargetCalibration, _check_scales

    parent = get_module("phantom-demo")
    name = parent.targets[1].name
    ok = TargetCalibration(parent.targets[0].name, 300, Fit(scale=1.2, intercept=3.0, slope=0.9), {}, {})
    flat = TargetCalibration(name, 300, Fit(scale=1.0, intercept=50.0, slope=0.0), {}, {})
    _check_scales(parent, [ok])  # a sane refit passes
    with pytest.raises(UsageError) as err:
        _check_scales(parent, [ok, flat])
    assert str(err.value).startswith(f"target {name}: the refitted means cannot be stored (recalibration mean_slope "
                                      "must be non-zero")
    assert "nothing was installed" in str(err.value) and "\n" not in str(err.value)
