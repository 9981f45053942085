"""``mimir batch --engine ray``: the same records, errors, resume rules and outputs as the local engine.

Runs on a tiny local Ray instance started by the test (2 CPUs, no dashboard).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest_models import save_images
from test_batch import batch, make_module, outputs, read_csv, record_files, synth_zips

from mimir.batch.records import RecordStore
from mimir.batch.runner import run_batch
from mimir.errors import UsageError
from mimir.utils.install import extra_hint


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install 'ukb-mimir[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed here (pip install 'ukb-mimir[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_engine_matches_the_local_engine_and_resumes(tmp_path: Path, ray_instance) -> None:
    data = tmp_path / "data"
    save_images(data, ["img_a", "img_b", "img_c"], seed=3)
    np.save(data / "img_bad.npy", np.zeros((3, 8, 8), np.uint8))
    synth_zips(data, [50, 51])
    synth_zips(data, [52], "truncated")
    module = make_module(tmp_path / "mod")
    # one torch thread in both engines: CPU results then agree to the last bit
    opts = {"modules": [module], "device": "cpu", "batch_size": 2, "threads": 1}

    local = tmp_path / "local"
    res = run_batch(data, local, workers=2, **opts)
    assert (res.predicted, res.failed) == (5, 2)

    out = tmp_path / "ray"
    res = run_batch(data, out, engine="ray", **opts)
    assert (res.predicted, res.failed, res.unfinished, res.exit_code) == (5, 2, 0, 2)
    assert outputs(out) == outputs(local)
    errors = read_csv(out / "errors.csv")
    assert [(e["name"], e["stage"]) for e in errors] == [("1000052_20201_2_0", "preprocess"), ("img_bad", "preprocess")]
    run = json.loads((out / "run.json").read_text())
    assert run["engine"] == "ray" and run["devices"] and run["counts"]["processed"] == 7
    rec = json.loads(RecordStore(out).path_for("img_a").read_text())
    assert rec["provenance"]["engine"] == "ray" and rec["status"] == "ok"

    # resume: nothing to do; then only the subjects whose records are gone
    res = run_batch(data, out, engine="ray", **opts)
    assert res.processed == 0 and outputs(out) == outputs(local)
    for name in ("img_b", "1000051_20201_2_0"):
        RecordStore(out).path_for(name).unlink()
    res = run_batch(data, out, engine="ray", **opts)
    assert res.processed == 2 and outputs(out) == outputs(local)
    assert len(record_files(out)) == 7


def test_ray_engine_from_the_cli(tmp_path: Path, ray_instance) -> None:
    data = tmp_path / "data"
    save_images(data, ["p", "q"], seed=4)
    out = tmp_path / "out"
    r = batch([str(data), "-o", str(out), "--engine", "ray", "-m", make_module(tmp_path / "mod"), "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    assert [row["name"] for row in read_csv(out / "predictions.csv")] == ["p", "q"]


def test_missing_ray_gives_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    save_images(data, ["s"], seed=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError, match=re.escape(extra_hint("ray"))):
        run_batch(data, tmp_path / "out", engine="ray", modules=[make_module(tmp_path / "mod")], device="cpu")
