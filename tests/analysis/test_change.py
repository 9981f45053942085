"""Visit-to-visit change: formulas against independent computations, calibration, pairing, dates, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mimir.analysis.change import (
    CHANGE_COLUMNS,
    CHANGE_SCHEMA_VERSION,
    change_statistics,
    change_summary,
    critical_z,
    visit_change,
)
from mimir.analysis.joins import dates_from_table, dates_from_zips
from mimir.analysis.tables import PhenotypeTable, read_predictions
from mimir.cli import app
from mimir.errors import UsageError
from mimir.inference.predictions import SubjectResult, TargetPrediction, layout_for
from mimir.outputs.writers import csv_text, json_text

ROOT = Path(__file__).resolve().parents[2]


def test_statistics_match_an_independent_computation() -> None:
    a = np.array([70.0, 80.0, 1.5, np.nan])
    b = np.array([72.5, 79.0, 1.9, 3.0])
    va = np.array([1.0, 0.25, 0.01, 1.0])
    vb = np.array([0.44, 0.5, 0.03, 1.0])
    s = change_statistics(a, va, b, vb, level=0.95)
    se = [math.sqrt(x + y) for x, y in zip(va, vb)]
    for i in range(3):
        z = (b[i] - a[i]) / se[i]
        assert s.change[i] == pytest.approx(b[i] - a[i])
        assert s.se[i] == pytest.approx(se[i])
        assert s.z[i] == pytest.approx(z)
        assert s.p[i] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
        assert s.flagged[i] == (abs(z) > 1.959963984540054)
        assert s.ci_low[i] == pytest.approx(b[i] - a[i] - 1.959963984540054 * se[i])
    assert s.flagged.tolist() == [True, False, True, False]
    assert math.isnan(s.z[3]) and math.isnan(s.p[3])
    rho = change_statistics(a, va, b, vb, rho=0.5)
    assert rho.se[0] == pytest.approx(math.sqrt(1.0 + 0.44 - 2 * 0.5 * math.sqrt(0.44)))
    assert critical_z(0.9) == pytest.approx(1.6448536269514722)
    with pytest.raises(UsageError):
        change_statistics(a, va, b, vb, rho=1.0)


def test_no_true_change_flags_about_five_percent_and_correlated_errors_make_it_conservative() -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    sd_a, sd_b = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    truth = rng.normal(70, 10, n)
    e1, e2 = rng.standard_normal(n), rng.standard_normal(n)
    s = change_statistics(truth + sd_a * e1, sd_a**2, truth + sd_b * e2, sd_b**2)
    assert s.flagged.mean() == pytest.approx(0.05, abs=0.004)
    assert np.std(s.z) == pytest.approx(1.0, abs=0.015)
    # errors correlated 0.6 between the visits (a bias that persists): sd z < 1, fewer flags ...
    e2c = 0.6 * e1 + 0.8 * e2
    naive = change_statistics(truth + sd_a * e1, sd_a**2, truth + sd_b * e2c, sd_b**2)
    assert naive.flagged.mean() < 0.03 and np.std(naive.z) < 0.9
    # ... and stating the correlation restores the calibration
    told = change_statistics(truth + sd_a * e1, sd_a**2, truth + sd_b * e2c, sd_b**2, rho=0.6)
    assert told.flagged.mean() == pytest.approx(0.05, abs=0.004)


def _results(visits: list[tuple[int, int, float]], unit: str = "kg") -> list[SubjectResult]:
    layout = layout_for([("mod", "1.0", [("weight", unit, 21002), ("liver_fat", "%", None)], "research")])
    out = []
    for eid, inst, w in visits:
        r = SubjectResult.for_input(f"/x/{eid}_20201_{inst}_0.zip")
        r.predictions = [TargetPrediction(layout[0], value=w, variance=1.0, level=0.95),
                         TargetPrediction(layout[1], value=5.0 + inst, variance=0.5, level=0.95)]
        r.qc_status = "ok"
        r.ood_scores = {"mod": 0.1}
        out.append(r)
    return out


VISITS = [(1_000_001, 2, 70.0), (1_000_001, 3, 74.0), (1_000_002, 3, 80.0), (1_000_002, 2, 80.5),
          (1_000_003, 2, 60.0)]


def test_pairing_by_eid_and_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json_text(_results(VISITS)))
    table, unpaired = visit_change(read_predictions(path))
    assert unpaired == 1
    assert tuple(table.columns) == CHANGE_COLUMNS
    w = table[table["target"] == "weight"].set_index("eid")
    assert w.loc[1_000_001, "change"] == pytest.approx(4.0)
    assert w.loc[1_000_001, "change_se"] == pytest.approx(math.sqrt(2.0))
    assert bool(w.loc[1_000_001, "flagged"]) and not bool(w.loc[1_000_002, "flagged"])
    assert w.loc[1_000_002, "name_a"] == "1000002_20201_2_0"
    lf = table[table["target"] == "liver_fat"]
    assert lf["change"].tolist() == [1.0, 1.0] and lf["change_se"].tolist() == [1.0, 1.0]
    reverse, _ = visit_change(read_predictions(path), 3, 2, targets=["weight"])
    assert reverse["change"].tolist() == pytest.approx([-4.0, 0.5]) and set(reverse["target"]) == {"weight"}
    agg = change_summary(table, unpaired)
    assert agg["subjects_with_one_visit"] == 1
    wsum = next(t for t in agg["targets"] if t["target"] == "weight")
    assert wsum["pairs"] == 2 and wsum["flagged"] == 1 and wsum["mean_change"] == pytest.approx(1.75)


def test_failed_visit_is_kept_with_its_status(tmp_path: Path) -> None:
    results = _results(VISITS)
    results[1].predictions = []
    results[1].error = "1000001_20201_3_0.zip: truncated"
    path = tmp_path / "p.json"
    path.write_text(json_text(results))
    frame = read_predictions(path)
    if (frame["eid"] == 1_000_001).sum() != 4:  # a failed subject may be written without target rows
        extra = frame[(frame["eid"] == 1_000_001)].copy()
        extra["instance"] = 3
        extra["mean"] = np.nan
        extra["name"] = "1000001_20201_3_0"
        frame = pd.concat([frame, extra], ignore_index=True)
    table, _ = visit_change(frame)
    row = table[(table["eid"] == 1_000_001) & (table["target"] == "weight")].iloc[0]
    assert row["status"] == "no prediction at instance 3" and not row["flagged"] and math.isnan(row["z"])


def test_bad_joins_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(csv_text(_results(VISITS + [(1_000_001, 3, 71.0)])))
    with pytest.raises(UsageError, match=r"1 subject visit\(s\) appear more than once"):
        visit_change(read_predictions(path))
    a = tmp_path / "a.csv"
    a.write_text(csv_text(_results(VISITS[:2])))
    b = tmp_path / "b.csv"
    b.write_text(csv_text(_results([(1_000_009, 2, 3.0)], unit="lb")))
    mixed = pd.concat([read_predictions(a), read_predictions(b)], ignore_index=True)
    with pytest.raises(UsageError, match=r"several units \(kg, lb\)"):
        visit_change(mixed)
    with pytest.raises(UsageError, match="same instance"):
        visit_change(read_predictions(a), 2, 2)
    with pytest.raises(UsageError, match="no predictions for target 'height'"):
        visit_change(read_predictions(a), targets=["height"])


def test_dates_from_field_53_give_years_and_change_per_year(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(csv_text(_results(VISITS)))
    pheno = tmp_path / "pheno.csv"
    pd.DataFrame({"eid": [1_000_001, 1_000_002, 1_000_003], "53-2.0": ["2015-01-01", "2016-06-30", "2017-01-01"],
                  "53-3.0": ["2017-01-01", "", ""]}).to_csv(pheno, index=False)
    dates = dates_from_table(PhenotypeTable.read(pheno), [2, 3])
    table, _ = visit_change(read_predictions(path), dates=dates)
    w = table[table["target"] == "weight"].set_index("eid")
    assert w.loc[1_000_001, "years"] == pytest.approx(731 / 365.25)
    assert w.loc[1_000_001, "change_per_year"] == pytest.approx(4.0 / (731 / 365.25))
    assert w.loc[1_000_001, "change_per_year_se"] == pytest.approx(math.sqrt(2) / (731 / 365.25))
    assert w.loc[1_000_001, "date_source"] == "53-2.0 (pheno.csv); 53-3.0 (pheno.csv)"
    assert w.loc[1_000_001, "date_a"] == "2015-01-01" and w.loc[1_000_001, "date_b"] == "2017-01-01"
    assert math.isnan(w.loc[1_000_002, "years"]) and w.loc[1_000_002, "date_source"] == ""


def test_dicom_dates_of_a_synthetic_follow_up_pair(tmp_path: Path) -> None:
    from mimir.synth import generate_subject

    first = generate_subject(tmp_path, 12, small=True)
    second = generate_subject(tmp_path, 12, small=True, instance=3, change="liver_fat")
    rows = pd.DataFrame({"eid": [1_000_012, 1_000_012], "instance": [2, 3],
                         "name": [first.zip_path.name[:-4], second.zip_path.name[:-4]]})
    dates = dates_from_zips(tmp_path, rows).set_index("instance")
    fu = second.truth["follow_up"]
    assert dates.loc[2, "date"] == pd.Timestamp(fu["first_visit_date"])
    assert dates.loc[3, "date"] == pd.Timestamp(fu["study_date"])
    assert set(dates["source"]) == {"DICOM StudyDate"}


def test_change_command_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(csv_text(_results(VISITS)))
    pheno = tmp_path / "pheno.csv"
    pd.DataFrame({"participant.eid": [1_000_001, 1_000_002], "participant.p53_i2": ["2015-01-01", "2016-01-01"],
                  "participant.p53_i3": ["2017-07-02", "2018-01-01"]}).to_csv(pheno, index=False)
    out, summary = tmp_path / "change.csv", tmp_path / "change.json"
    res = CliRunner().invoke(app, ["change", str(path), "-o", str(out), "--dates", str(pheno), "--summary",
                                   str(summary)])
    assert res.exit_code == 0, res.output
    assert "keep it inside the platform" in res.output
    assert "1 subject(s) seen at only one of the two instances" in res.output
    table = pd.read_csv(out)
    assert tuple(table.columns) == CHANGE_COLUMNS and len(table) == 4
    assert (table["schema_version"] == int(CHANGE_SCHEMA_VERSION)).all()
    assert table["years"].notna().all()
    agg = json.loads(summary.read_text())
    assert "1000001" not in summary.read_text()
    assert {t["target"] for t in agg["targets"]} == {"weight", "liver_fat"}
    res = CliRunner().invoke(app, ["change", str(path), "-o", str(tmp_path / "x.txt")])
    assert res.exit_code == 1 and len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
    res = CliRunner().invoke(app, ["change", str(path), "-o", str(tmp_path / "y.csv"), "--visits", "2,4"])
    assert res.exit_code == 1 and "no subject seen at both instance 2 and instance 4" in res.output
    assert not (tmp_path / "y.csv").exists()


def test_derived_docs_list_the_change_columns() -> None:
    text = (ROOT / "docs" / "derived.md").read_text()
    assert f"change table, schema version {CHANGE_SCHEMA_VERSION}" in text
    for col in CHANGE_COLUMNS:
        assert f"| `{col}` |" in text, col


def test_named_date_columns(tmp_path: Path) -> None:
    pheno = tmp_path / "dates.csv"
    pd.DataFrame({"eid": [1_000_001], "first_scan": ["2015-01-01"], "second_scan": ["2016-01-01"]}).to_csv(
        pheno, index=False)
    table = PhenotypeTable.read(pheno)
    dates = dates_from_table(table, [2, 3], ["first_scan", "second_scan"])
    assert dates["date"].tolist() == [pd.Timestamp("2015-01-01"), pd.Timestamp("2016-01-01")]
    with pytest.raises(UsageError, match="has no visit date for instance 2"):
        dates_from_table(table, [2, 3])
    with pytest.raises(UsageError, match="1 date column"):
        dates_from_table(table, [2, 3], ["first_scan"])


def test_a_row_without_years_says_why_in_its_status(tmp_path: Path) -> None:
    visits = VISITS + [(1_000_004, 2, 90.0), (1_000_004, 3, 91.0), (1_000_005, 2, 50.0), (1_000_005, 3, 52.0)]
    results = _results(visits)
    results[1].predictions = []  # 1000001 at instance 3 failed
    results[1].error = "1000001_20201_3_0.zip: truncated"
    path = tmp_path / "p.json"
    path.write_text(json_text(results))
    frame = read_predictions(path)
    if (frame["eid"] == 1_000_001).sum() != 4:  # a failed subject may be written without target rows
        extra = frame[(frame["eid"] == 1_000_001)].copy()
        extra["instance"], extra["mean"], extra["name"] = 3, np.nan, "1000001_20201_3_0"
        frame = pd.concat([frame, extra], ignore_index=True)
    pheno = tmp_path / "pheno.csv"
    pd.DataFrame({"eid": [1_000_001, 1_000_002, 1_000_004, 1_000_005],
                  "53-2.0": ["2015-01-01", "2016-06-30", "", "2019-05-01"],
                  "53-3.0": ["", "2018-06-30", "", "2017-05-01"]}).to_csv(pheno, index=False)
    dates = dates_from_table(PhenotypeTable.read(pheno), [2, 3])
    table, unpaired = visit_change(frame, dates=dates)
    assert unpaired == 1 and len(table) == 8  # every pair kept
    w = table[table["target"] == "weight"].set_index("eid")
    assert w["status"].to_dict() == {
        1_000_001: "no prediction at instance 3; no visit date for instance 3",
        1_000_002: "ok",
        1_000_004: "no visit date for either instance",
        1_000_005: "visit date of instance 3 is not after instance 2's",
    }
    assert w.loc[1_000_002, "years"] == pytest.approx(730 / 365.25)
    for eid in (1_000_001, 1_000_004, 1_000_005):
        assert math.isnan(w.loc[eid, "years"]) and math.isnan(w.loc[eid, "change_per_year"])
    assert w.loc[1_000_005, "change"] == pytest.approx(2.0) and w.loc[1_000_005, "date_b"] == "2017-05-01"
    assert w.loc[1_000_004, "change"] == pytest.approx(1.0) and w.loc[1_000_004, "flagged"] in (True, False)
    # without dates, no date is expected: the status says nothing about them
    plain, _ = visit_change(frame)
    assert (plain[plain["eid"] != 1_000_001]["status"] == "ok").all()
    # an empty date list (no zip had a readable date) is reported on every row
    none, _ = visit_change(frame, dates=dates.iloc[0:0])
    assert (none[none["eid"] == 1_000_002]["status"] == "no visit date for either instance").all()


def test_change_command_says_how_many_rows_lack_years(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(csv_text(_results(VISITS)))
    pheno = tmp_path / "pheno.csv"
    pd.DataFrame({"eid": [1_000_001, 1_000_002], "53-2.0": ["2015-01-01", "2016-01-01"],
                  "53-3.0": ["2017-07-02", ""]}).to_csv(pheno, index=False)
    out = tmp_path / "change.csv"
    res = CliRunner().invoke(app, ["change", str(path), "-o", str(out), "--dates", str(pheno)])
    assert res.exit_code == 0, res.output
    assert "2 row(s) without years between the visits: a visit date missing or not after the first" in res.output
    assert "without a usable change" not in res.output  # both changes are usable
    table = pd.read_csv(out)
    assert len(table) == 4 and tuple(table.columns) == CHANGE_COLUMNS
    assert set(table[table["eid"] == 1_000_002]["status"]) == {"no visit date for instance 3"}
    assert set(table[table["eid"] == 1_000_001]["status"]) == {"ok"}
