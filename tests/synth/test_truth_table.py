"""``mimir synth --truth-table``: the subjects' truth as one reference table that ``mimir evaluate`` reads as it is."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mimir.cli import app
from mimir.synth.study import TRUTH_VALUES
from mimir.synth.truth_table import TRUTH_TABLE_COLUMNS, truth_table_text

runner = CliRunner()


def _synth(*args: str) -> None:
    r = runner.invoke(app, ["synth", *args])
    assert r.exit_code == 0, r.output


def _truth_files(folder: Path) -> dict[str, dict]:
    """Subject name -> its truth record, from the truth files beside the zips."""
    out = {}
    for p in folder.glob("*.truth.json"):
        t = json.loads(p.read_text())
        out[f"{t['eid']}_20201_{t.get('instance', 2)}_0"] = t
    return out


def test_the_table_holds_every_visit_with_every_digit_of_its_truth_file(tmp_path: Path) -> None:
    _synth(str(tmp_path / "z"), "--n", "2", "--seed", "40", "--small", "--follow-up", "weight",
           "--truth-table", str(tmp_path / "truth.csv"))
    with open(tmp_path / "truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truths = _truth_files(tmp_path / "z")
    zips = sorted(p.name.removesuffix(".zip") for p in (tmp_path / "z").glob("*.zip"))
    assert [r["name"] for r in rows] == zips == sorted(truths)  # one row per visit, both visits of each eid
    assert list(rows[0]) == list(TRUTH_TABLE_COLUMNS)
    for r in rows:
        t = truths[r["name"]]
        assert r["sex"] == t["sex"] and int(r["age"]) == t["age"]
        for k in TRUTH_VALUES:
            assert float(r[k]) == t[k], (r["name"], k)  # exact: no digit lost
    # the two visits of an eid differ as the follow-up says (weight changed)
    a, b = rows[0], rows[1]
    assert a["name"].endswith("_2_0") and b["name"].endswith("_3_0")
    assert float(b["weight_kg"]) - float(a["weight_kg"]) == truths[b["name"]]["follow_up"]["delta"]["weight_kg"]


def test_the_text_is_a_pure_function_of_the_records() -> None:
    truth = {"sex": "F", "age": 61, **{k: 0.1 * (i + 1) for i, k in enumerate(TRUTH_VALUES)}}
    text = truth_table_text([("1000001_20201_2_0", truth)])
    assert text.splitlines() == [
        ",".join(TRUTH_TABLE_COLUMNS),
        "1000001_20201_2_0,F,61," + ",".join(repr(0.1 * (i + 1)) for i in range(len(TRUTH_VALUES))),
    ]


def test_evaluate_joins_each_visit_to_its_own_row_without_a_map(tmp_path: Path) -> None:
    _synth(str(tmp_path / "z"), "--n", "5", "--seed", "41", "--small", "--follow-up", "weight",
           "--truth-table", str(tmp_path / "truth.csv"))
    zips = sorted((tmp_path / "z").glob("*.zip"))
    preds = tmp_path / "preds.csv"
    r = runner.invoke(app, ["predict", *map(str, zips), "-m", "phantom-demo", "-o", str(preds), "--format", "long"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(preds), str(tmp_path / "truth.csv"), "-o", str(tmp_path / "ev"),
                            "--no-figures", "--min-count", "5"])
    assert r.exit_code == 0, r.output
    metrics = pd.read_csv(tmp_path / "ev" / "metrics.csv").set_index("target")
    assert sorted(metrics.index) == sorted(TRUTH_VALUES) and (metrics["n"] == 10).all()
    # independent: predicted minus each visit's own truth file
    truths = _truth_files(tmp_path / "z")
    long = pd.read_csv(preds)
    for target in TRUTH_VALUES:
        rows = long[long["target"] == target]
        diff = rows["mean"].to_numpy() - np.array([truths[n][target] for n in rows["name"]])
        assert metrics.loc[target, "bias"] == pytest.approx(diff.mean(), rel=1e-9, abs=1e-12), target
        assert metrics.loc[target, "mae"] == pytest.approx(np.abs(diff).mean(), rel=1e-9, abs=1e-12), target


def test_a_truth_table_that_cannot_be_written_is_one_line_before_any_subject(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a regular file\n")
    r = runner.invoke(app, ["synth", str(tmp_path / "z"), "--small", "--truth-table", str(tmp_path / "afile" / "t.csv")])
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "afile" in lines[0], r.stderr
    assert not (tmp_path / "z").exists()
