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
