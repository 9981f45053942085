"""OOD scores at inference, ``fit-reference`` on images (API and command), flags on shifted inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest_models import (  # noqa: F401
    make_original_module,
    no_builtin_modules,
    single_torch_thread,
)

from mimir.errors import UsageError
from mimir.inference.predictions import SubjectResult, set_ood_score
from mimir.inference.predictor import Predictor
from mimir.inference.reference import fit_module_reference
from mimir.models.modules import convert_original, read_module
from mimir.utils.hashing import file_sha256

pytestmark = pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")


def body_like(seed: int) -> np.ndarray:
    """A (3, 256, 256) uint8 image of one family: a bright ellipse of random size on a dark, noisy field."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    a, b = rng.uniform(40, 60), rng.uniform(90, 115)
    cx, cy = rng.uniform(120, 136), rng.uniform(120, 136)
    inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
    img = rng.normal(20, 4, (3, 256, 256))
    img[:, inside] += rng.uniform(140, 170, (3, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def shifted(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (3, 256, 256), dtype=np.uint8)
    if kind == "checker":
        yy, xx = np.mgrid[0:256, 0:256]
        return np.broadcast_to((((yy // 16) + (xx // 16)) % 2 * 255).astype(np.uint8), (3, 256, 256)).copy()
    raise ValueError(kind)


@pytest.fixture
def module_folder(tmp_path: Path) -> Path:
    make_original_module(tmp_path / "orig", width=8, seed=3)
    convert_original(tmp_path / "orig", tmp_path / "mod", name="testmod")
    return tmp_path / "mod"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(60):
        np.save(folder / f"{1000000 + i}_20201_2_0.npy", body_like(i))
    return folder


def test_fit_reference_on_images_then_flags_shifted_inputs(module_folder: Path, image_folder: Path, tmp_path: Path) -> None:
    members_before = {p.name: file_sha256(p) for p in module_folder.glob("member_*.safetensors")}
    result = fit_module_reference(module_folder, [image_folder], device="cpu", batch_size=20)
    assert result.fit_images == 60 and result.calibration_images == 60 and result.failed == []
    spec = read_module(module_folder)
    assert spec.ood is not None and spec.ood == result.spec.ood
    assert spec.ood.sha256 == file_sha256(module_folder / spec.ood.file)
    assert spec.ood.fitted["fit_images"] == 60 and spec.ood.fitted["by"] == "mimir fit-reference"
    assert {p.name: file_sha256(p) for p in module_folder.glob("member_*.safetensors")} == members_before
    # the fitted images themselves: at most about 1 % above the (cross-fitted) flag line
    assert int(np.sum(result.calibration_scores > 1)) <= 1

    predictor = Predictor([module_folder], device="cpu")
    fresh = np.stack([body_like(1000 + i) for i in range(20)])
    odd = np.stack([shifted("noise", 1), shifted("checker", 2)])
    records = predictor.predict_images(np.concatenate([fresh, odd]), [f"s{i}.npy" for i in range(22)])
    scores = np.array([r.ood_scores["testmod"] for r in records])
    assert np.all(np.isfinite(scores))
    assert np.mean(scores[:20] > 1) <= 0.15  # new images of the same family: mostly below the line
    assert np.all(scores[20:] > 5 * np.max(scores[:20]))  # noise and a checkerboard: far above it
    for r, s in zip(records, scores):
        flagged = "out_of_distribution:testmod" in r.qc_flags
        assert flagged == (s > 1)
        assert r.qc_status == ("warn" if flagged else None)
        assert r.predictions  # flags inform, predictions are still made
    # the same scores whether or not features are requested: they come from the forward pass
    feats = predictor.features(odd)[0]
    np.testing.assert_allclose(predictor.loaded[0].reference.scores(feats), scores[20:], rtol=1e-5)


def test_module_without_reference_gives_none(module_folder: Path) -> None:
    predictor = Predictor([module_folder], device="cpu")
    (rec,) = predictor.predict_images(body_like(0)[None], ["a.npy"])
    assert rec.ood_scores == {"testmod": None} and rec.qc_flags == [] and rec.qc_status is None


def test_set_ood_score_keeps_other_flags_and_a_failed_status() -> None:
    rec = SubjectResult(name="x", qc_status="fail", qc_flags=["fat_water_swap:station=3"])
    set_ood_score(rec, "m", 2.5)
    assert rec.qc_flags == ["fat_water_swap:station=3", "out_of_distribution:m"] and rec.qc_status == "fail"
    set_ood_score(rec, "m", 0.5)  # a second verdict replaces the first
    assert rec.qc_flags == ["fat_water_swap:station=3"] and rec.ood_scores == {"m": 0.5}
    ok = SubjectResult(name="y", qc_status="ok")
    set_ood_score(ok, "m", float("nan"))
    assert ok.qc_status == "warn" and ok.qc_flags == ["out_of_distribution:m"]


def test_fit_reference_refuses_too_few_images_and_builtin(module_folder: Path, tmp_path: Path) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for i in range(5):
        np.save(few / f"{i}.npy", body_like(i))
    with pytest.raises(UsageError, match="at least 40"):
        fit_module_reference(module_folder, [few], device="cpu")
    assert read_module(module_folder).ood is None


@pytest.mark.slow
def test_fit_reference_command(module_folder: Path, image_folder: Path, tmp_path: Path) -> None:
    env_cmd = [sys.executable, "-m", "mimir", "fit-reference", "-m", str(module_folder), str(image_folder),
               "--device", "cpu", "--threads", "1", "--seed", "3"]
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "fitted the OOD reference of testmod on 60 image(s)" in out.stdout
    data = json.loads((module_folder / "module.json").read_text())
    assert data["ood_reference"]["fitted"]["calibration_images"] == 60 and "seed 3" in data["ood_reference"]["fitted"]["split"]
    bad = subprocess.run(
        [sys.executable, "-m", "mimir", "fit-reference", "-m", str(module_folder), str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert bad.returncode == 1 and "no such file or folder" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
