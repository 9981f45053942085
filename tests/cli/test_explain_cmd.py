"""``mimir explain``: per-subject and aggregated saliency figures and maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib", reason="the report extra (pip install 'ukb-mimir[report]') is needed")

from mimir.cli import app  # noqa: E402
from mimir.utils.install import extra_hint  # noqa: E402

runner = CliRunner()


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    blob = np.exp(-(((yy - 128) / 80.0) ** 2 + ((xx - 64) / 30.0) ** 2))
    return np.clip(np.stack([blob * 200, blob * 90, blob * 40]) + rng.normal(0, 5, (3, 256, 256)), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_explain_writes_figures_maps_and_a_summary(tmp_path: Path) -> None:
    paths = []
    for k in range(2):
        p = tmp_path / f"100000{k}_20201_2_0.npy"
        np.save(p, _image(k))
        paths.append(str(p))
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    out = tmp_path / "ex"
    res = runner.invoke(app, ["explain", *paths, str(tmp_path / "broken.npy"), "-m", "phantom-demo",
                              "-t", "liver_fat_percent", "-t", "thigh_muscle_volume_l", "-o", str(out),
                              "--aggregate", "--device", "cpu"])
    assert res.exit_code == 2, res.output  # one input failed, the others were explained
    assert "Grad-CAM" in res.output and "broken.npy" in res.output
    summary = json.loads((out / "explain.json").read_text())
    assert summary["method"] == "gradcam" and "Grad-CAM" in summary["method_description"]
    assert summary["targets"] == ["liver_fat_percent", "thigh_muscle_volume_l"]
    assert len(summary["maps"]) == 4 and len(summary["failed"]) == 1 and len(summary["aggregate"]) == 2
    maps = []
    for item in summary["maps"]:
        m = np.load(out / item["npy"])
        assert m.shape == (256, 256) and m.dtype == np.float32 and (m >= 0).all()
        assert m.sum() == pytest.approx(1.0, rel=1e-4) or m.sum() == 0
        png = (out / item["png"]).read_bytes()
        assert png.startswith(b"\x89PNG") and 5_000 < len(png) < 400_000
        maps.append(m)
    by_target = {}
    for item, m in zip(summary["maps"], maps):
        by_target.setdefault(item["target"], []).append(m / m.sum() if m.sum() else m)
    for item in summary["aggregate"]:
        agg = np.load(out / item["npy"])
        np.testing.assert_allclose(agg, np.mean(by_target[item["target"]], axis=0), rtol=1e-5, atol=1e-9)
    assert np.load(out / "aggregate" / "mean_image.npy").shape == (3, 256, 256)


@pytest.mark.slow
def test_explain_smoothgrad_and_usage_errors(tmp_path: Path) -> None:
    p = tmp_path / "img.npy"
    np.save(p, _image(3))
    res = runner.invoke(app, ["explain", str(p), "-m", "phantom-demo", "-t", "weight_kg", "-o", str(tmp_path / "o"),
                              "--method", "smoothgrad", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "explain.json").read_text())["method"] == "smoothgrad"
    res = runner.invoke(app, ["explain", str(p), "-m", "phantom-demo", "-t", "nope", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "unknown target" in res.output and "liver_fat_percent" in res.output
    res = runner.invoke(app, ["explain", str(p), "-m", "phantom-demo", "--method", "lime", "-o", str(tmp_path / "o3")])
    assert res.exit_code == 1 and "gradcam" in res.output and "Traceback" not in res.output


def test_explain_without_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    p = tmp_path / "img.npy"
    np.save(p, _image(4))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = runner.invoke(app, ["explain", str(p), "-m", "phantom-demo", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1  and extra_hint("report") in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


def _synthetic_npy(folder: Path, seeds: tuple[int, ...]) -> list[str]:
    """Small synthetic subjects' images saved as .npy inputs."""
    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth import build_study, study_zip_bytes

    paths = []
    for seed in seeds:
        study = build_study(seed, small=True)
        z = folder / f"{study.eid}_20201_2_0.zip"
        z.write_bytes(study_zip_bytes(study))
        p = folder / f"{study.eid}_20201_2_0.npy"
        np.save(p, preprocess(z, cache=False))
        z.unlink()
        paths.append(str(p))
    return paths


@pytest.mark.slow
def test_explain_registered_aggregate(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    paths = _synthetic_npy(tmp_path, (1000, 1001, 1002))
    out = tmp_path / "ex"
    res = runner.invoke(app, ["explain", *paths, "-m", "phantom-demo", "-t", "liver_fat_percent", "-o", str(out),
                              "--method", "guided-gradcam", "--aggregate", "--register", "--template", paths[0],
                              "--workers", "2", "--save-transforms", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "registered 3 of 3" in res.output
    summary = json.loads((out / "explain.json").read_text())
    assert summary["method"] == "guided-gradcam"
    reg = summary["registered_aggregate"]
    assert reg["template"] == Path(paths[0]).name and len(reg["subjects"]) == 3 and not reg["failed_subjects"]
    first = reg["subjects"][0]  # the template itself: the identity
    assert first["ok"] and first["body_dice_after"] == pytest.approx(1.0) and first["residual_after"] < 0.05
    assert all(s["body_dice_after"] >= s["body_dice_before"] for s in reg["subjects"])
    csv = (out / reg["quality_csv"]).read_text().splitlines()
    assert csv[0].startswith("subject,ok,body_dice_before") and len(csv) == 4
    template = np.load(out / reg["template_npy"])
    np.testing.assert_array_equal(template, np.load(paths[0]))
    (item,) = reg["maps"]
    agg = np.load(out / item["npy"])
    assert agg.shape == (256, 256) and agg.sum() == pytest.approx(1.0, rel=1e-4)
    assert (out / item["png"]).read_bytes().startswith(b"\x89PNG")
    # the aggregate is the mean of the subjects' maps warped with their saved transforms
    from mimir.inference.registration import warp
    from mimir.inference.saliency import normalise

    want = []
    for s, m in zip(reg["subjects"], summary["maps"]):
        coords = np.load(out / s["transform"]).astype(np.float64)
        assert coords.shape == (2, 256, 256)
        want.append(normalise(warp(np.load(out / m["npy"]), coords)))
    np.testing.assert_allclose(agg, np.mean(want, axis=0), rtol=1e-3, atol=1e-8)


def test_register_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    p = tmp_path / "img.npy"
    np.save(p, _image(5))
    res = runner.invoke(app, ["explain", str(p), "-m", "phantom-demo", "-o", str(tmp_path / "o"), "--register"])
    assert res.exit_code == 1 and "--aggregate" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["explain", str(p), "-m", "phantom-demo", "-o", str(tmp_path / "o"), "--aggregate",
                              "--register", "--template", str(tmp_path / "missing.zip")])
    assert res.exit_code == 1 and "missing.zip" in res.output and "cohort" in res.output
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    res = runner.invoke(app, ["explain", str(p), "-m", "phantom-demo", "-o", str(tmp_path / "o"), "--aggregate",
                              "--register"])
    assert res.exit_code == 1 and "[register]" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()  # refused before any work
