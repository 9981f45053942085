"""``mimir merge``: shard outputs combine into what one run writes; missing subjects are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from conftest_models import save_images
from test_batch import cli, make_module, outputs, read_csv

from mimir.batch.inputs import shard_of
from mimir.batch.records import RecordStore
from mimir.batch.runner import run_batch

runner = CliRunner()
NAMES = [f"subj{i:02d}" for i in range(9)]


def merge(args: list[str]):
    return runner.invoke(cli(), ["merge", *args])


def test_merge_of_shards_equals_one_run_and_reports_missing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, NAMES, seed=7)
    np.save(data / "broken.npy", np.zeros((2, 2), np.uint8))
    module = make_module(tmp_path / "mod")
    opts = {"modules": [module], "device": "cpu", "workers": 1, "batch_size": 4}

    whole = tmp_path / "whole"
    assert run_batch(data, whole, **opts).exit_code == 2
    shards = [tmp_path / f"shard{k}" for k in range(3)]
    for k, out in enumerate(shards):
        run_batch(data, out, num_shards=3, shard_index=k, **opts)

    # all shards: the same bytes as the unsharded run
    merged = tmp_path / "merged"
    r = merge([*map(str, shards), "-o", str(merged)])
    assert r.exit_code == 2, r.stderr  # broken.npy failed
    assert "9 predicted, 1 failed, 0 missing" in r.stdout
    assert outputs(merged) == outputs(whole)
    assert read_csv(merged / "missing.csv") == []

    # a shard never ran: without --input its subjects are unknown, with --input they are listed
    r = merge([str(shards[0]), str(shards[1]), "-o", str(tmp_path / "m2")])
    assert r.exit_code == (2 if shard_of("broken", 3) != 2 else 0)
    assert "no folder for shard(s) 2 of 3" in r.stderr
    r = merge([str(shards[0]), str(shards[1]), "-o", str(tmp_path / "m3"), "--input", str(data)])
    assert r.exit_code == 2
    lost = sorted(n for n in [*NAMES, "broken"] if shard_of(n, 3) == 2)
    assert lost and [row["name"] for row in read_csv(tmp_path / "m3" / "missing.csv")] == lost
    assert "neither predicted nor failed" in r.stderr and lost[0] in r.stderr

    # a subject without a record (e.g. its shard was killed before it) is missing
    gone = next(n for n in NAMES if shard_of(n, 3) == 0)
    RecordStore(shards[0]).path_for(gone).unlink()
    r = merge([*map(str, shards), "-o", str(tmp_path / "m4")])
    assert r.exit_code == 2
    assert [row["name"] for row in read_csv(tmp_path / "m4" / "missing.csv")] == [gone]
    assert gone not in [row["name"] for row in read_csv(tmp_path / "m4" / "predictions.csv")]
    assert json.loads((tmp_path / "m4" / "run.json").read_text())["counts"]["missing"] == 1


def test_merge_refuses_folders_of_different_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, NAMES[:2], seed=1)
    a = tmp_path / "a"
    run_batch(data, a, modules=[make_module(tmp_path / "mod")], device="cpu", workers=1)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    run = json.loads((b / "run.json").read_text())
    run["key"]["level"] = 0.9
    (b / "run.json").write_text(json.dumps(run))
    r = merge([str(a), str(b), "-o", str(tmp_path / "m")])
    assert r.exit_code == 1 and "other modules, pipeline version, interval level, precision or device type" in r.stderr
    r = merge([str(a), str(tmp_path / "nothing"), "-o", str(tmp_path / "m")])
    assert r.exit_code == 1 and "not a mimir batch output folder" in r.stderr
    r = merge([str(a), "-o", str(a)])
    assert r.exit_code == 1 and "must not be one of the folders" in r.stderr
    r = merge([str(a), "-o", str(tmp_path / "single")])
    assert r.exit_code == 0 and outputs(tmp_path / "single") == outputs(a)
