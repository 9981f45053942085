"""The built-in phantom-demo module's OOD reference on real zips: an in-distribution subject vs shifted ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest_models import single_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.slow
def test_demo_reference_passes_a_regular_subject_and_flags_shifted_ones(tmp_path: Path) -> None:
    from mimir.inference.predictor import Predictor
    from mimir.synth import generate_subject

    regular = generate_subject(tmp_path / "full", 900_123)  # a seed outside training and calibration
    small = generate_subject(tmp_path / "small", 900_124, small=True)
    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(0).integers(0, 256, (3, 256, 256), dtype=np.uint8))
    predictor = Predictor(["phantom-demo"], device="cpu", precision="fp32")
    assert predictor.loaded[0].reference is not None
    recs = predictor.predict_files([regular.zip_path, small.zip_path, noise], cache=False)
    scores = [r.ood_scores["phantom-demo"] for r in recs]
    assert all(r.ok and r.predictions for r in recs)  # flagged subjects are still predicted
    assert scores[0] < 1 and "out_of_distribution:phantom-demo" not in recs[0].qc_flags
    assert scores[1] > 1 and "out_of_distribution:phantom-demo" in recs[1].qc_flags and recs[1].qc_status == "warn"
    assert scores[2] > 50 and recs[2].qc_flags == ["out_of_distribution:phantom-demo"]
    # liver fat intervals respect [0, 100] whatever the mean
    for r in recs:
        fat = next(p for p in r.predictions if p.target.name == "liver_fat_percent")
        low, high = fat.ci
        assert 0.0 <= low <= high <= 100.0
