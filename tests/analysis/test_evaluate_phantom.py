"""End to end on real predictions: a copy of ``phantom-demo`` with wrong calibration factors, on unseen subjects.

240 small synthetic subjects (seeds 980000-980239, never used in training) are
generated and predicted once by a copy of ``phantom-demo`` whose calibration
factors are 4x the right ones (the small subjects lie outside the demo module's training
distribution, so even these intervals miss most truths: the bias dominates); their truth files become phenotype tables in the
RAP and the showcase conventions. Then:

- ``mimir evaluate`` writes metrics equal to the metric functions on the joined values;
- ``mimir calibrate`` on the first 120 subjects installs a derived module; on the
  other 120 (held out: not seen by the fit) the derived module's 95 % intervals
  cover within 2 points of nominal where the parent's did not, with the same means.

Slow (about 70 s on one core: generation, in two processes here, and three prediction runs).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mimir.analysis import metrics as M
from mimir.analysis.tables import read_predictions
from mimir.cli import app

pytestmark = pytest.mark.slow

SEED0, N, FIT = 980_000, 240, 120
TARGETS = ("weight_kg", "height_cm", "vat_volume_l", "asat_volume_l", "liver_fat_percent", "thigh_muscle_volume_l")
RAP = {"weight_kg": "participant.p21002_i2", "height_cm": "participant.p12144_i2"}


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_evaluate_and_calibrate_on_phantom_demo_predictions(tmp_path: Path) -> None:
    from test_calibrate import wrong_module

    from mimir.synth import generate_subject

    zips = tmp_path / "zips"
    zips.mkdir()
    # the generation is most of this test's time: two processes (spawned, not forked from a process with torch)
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        made = list(pool.map(partial(generate_subject, zips, small=True), range(SEED0, SEED0 + N), chunksize=20))
    assert [m.zip_path.name for m in made] == [f"{1_000_000 + SEED0 + i}_20201_2_0.zip" for i in range(N)]
    wrong = wrong_module(tmp_path / "src", "phantom-wide", 4.0)
    paths = sorted(zips.glob("*.zip"))
    _run("predict", *map(str, paths[:FIT]), "-m", "phantom-wide", "-o", str(tmp_path / "fit.csv"))
    _run("predict", *map(str, paths[FIT:]), "-m", "phantom-wide", "-o", str(tmp_path / "held.csv"))
    rows = []
    for p in sorted(zips.glob("*.truth.json")):
        t = json.loads(p.read_text())
        rows.append({"eid": t["eid"], **{k: t[k] for k in TARGETS}})
    truth = pd.DataFrame(rows).set_index("eid")
    rap = truth.rename(columns=RAP).reset_index().rename(columns={"eid": "participant.eid"})
    rap.to_csv(tmp_path / "rap.csv", index=False)
    show = truth.rename(columns={"weight_kg": "21002-2.0", "height_cm": "12144-2.0"}).reset_index()
    show.to_csv(tmp_path / "showcase.csv", index=False)

    # evaluate: RAP table, the demo module's targets mapped to their fields' columns
    maps = [a for k, c in RAP.items() for a in ("--map", f"{k}={c}")]
    _run("evaluate", str(tmp_path / "held.csv"), str(tmp_path / "rap.csv"), "-o", str(tmp_path / "ev"),
         "--no-figures", *maps)
    frame = pd.read_csv(tmp_path / "ev" / "metrics.csv").set_index("target")
    held = read_predictions(tmp_path / "held.csv")
    assert set(frame.index) == set(TARGETS) and (frame["n"] == N - FIT).all()
    for target in TARGETS:
        h = held[held["target"] == target]
        ref = truth.loc[h["eid"].to_numpy(), target].to_numpy()
        a = M.agreement(ref, h["mean"].to_numpy())
        for key in ("icc", "icc_ci_low", "icc_ci_high", "icc_original", "r2", "mae", "mape_percent", "bias"):
            assert frame.loc[target, key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), (target, key)
        assert frame.loc[target, "auce"] == pytest.approx(M.auce(ref, h["mean"], h["variance"]), abs=1e-9)
    parent_cov = frame["coverage_95"].mean()

    # calibrate on the first half (showcase table), then predict the held-out half with the derived module
    out = _run("calibrate", "-m", "phantom-wide", str(tmp_path / "fit.csv"), str(tmp_path / "showcase.csv"),
               "-o", "phantom-fixed", "--objective", "ci95",
               "--map", "weight_kg=21002-2.0", "--map", "height_cm=12144-2.0")
    assert "installed phantom-fixed" in out
    _run("predict", *map(str, paths[FIT:]), "-m", "phantom-fixed", "-o", str(tmp_path / "fixed.csv"))
    _run("evaluate", str(tmp_path / "fixed.csv"), str(tmp_path / "showcase.csv"), "-o", str(tmp_path / "ev2"),
         "--no-figures", "--map", "weight_kg=21002-2.0", "--map", "height_cm=12144-2.0")
    fixed = pd.read_csv(tmp_path / "ev2" / "metrics.csv").set_index("target")
    print(f"held-out 95 % coverage: parent {parent_cov:.3f}, derived {fixed['coverage_95'].mean():.3f}; per target "
          + ", ".join(f"{t} {frame.loc[t, 'coverage_95']:.3f}->{fixed.loc[t, 'coverage_95']:.3f}" for t in TARGETS))
    assert abs(parent_cov - 0.95) > 0.03
    assert fixed["coverage_95"].mean() == pytest.approx(0.95, abs=0.02)
    assert (abs(fixed["coverage_95"] - 0.95) <= 0.06).all()
    new = read_predictions(tmp_path / "fixed.csv")
    np.testing.assert_array_equal(new["mean"].to_numpy(), held["mean"].to_numpy())  # means unchanged
    assert (new["module_version"] == f"{wrong.version}+calibrated").all()
