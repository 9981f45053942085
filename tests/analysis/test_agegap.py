"""The age gap: its corrections against statsmodels, cross-fitting, the joins it refuses, and the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from typer.testing import CliRunner

from mimir.analysis.agegap import (
    AGE_GAP_COLUMNS,
    AGE_GAP_SCHEMA_VERSION,
    age_gap_table,
    correct_age_gap,
    fit_line,
    fold_of,
    select_target,
)
from mimir.analysis.joins import ages_for
from mimir.analysis.tables import PhenotypeTable, read_predictions
from mimir.cli import app
from mimir.errors import UsageError
from mimir.inference.predictions import SubjectResult, TargetPrediction, layout_for
from mimir.outputs.writers import csv_text, long_csv_text

ROOT = Path(__file__).resolve().parents[2]


def _population(n: int = 600, slope: float = 0.6, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                          np.ndarray]:
    """Ages, true gaps, predictions regressing to the mean with ``slope``, and prediction variances."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(45, 82, n)
    true_gap = rng.normal(0, 3, n)
    var = rng.uniform(1.0, 4.0, n)
    mean_age = 63.0
    pred = mean_age + slope * (age + true_gap - mean_age) + rng.normal(0, np.sqrt(var))
    return age, true_gap, pred, var


def test_fit_line_matches_statsmodels() -> None:
    age, _, pred, _ = _population(200)
    fit = fit_line(age, pred)
    ols = sm.OLS(pred, sm.add_constant(age)).fit()
    assert [fit.intercept, fit.slope] == pytest.approx(list(ols.params), rel=1e-10)
    assert fit.cov == pytest.approx(np.asarray(ols.cov_params()), rel=1e-9)
    assert fit.n == 200


def test_gap_method_outside_reference_matches_statsmodels_prediction() -> None:
    age, _, pred, var = _population(300)
    ref = np.arange(300) < 200
    res = correct_age_gap(pred, age, var, ref, "gap", folds=5)
    gap = pred - age
    ols = sm.OLS(gap[ref], sm.add_constant(age[ref])).fit()
    new = sm.add_constant(age[~ref], has_constant="add")
    pr = ols.get_prediction(new)
    assert res.corrected_gap[~ref] == pytest.approx(gap[~ref] - pr.predicted_mean, abs=1e-9)
    assert res.se[~ref] == pytest.approx(np.sqrt(var[~ref] + pr.se_mean**2), rel=1e-9)
    assert res.corrected_predicted[~ref] == pytest.approx(age[~ref] + res.corrected_gap[~ref])


def test_inverse_method_against_an_independent_delta_method() -> None:
    age, _, pred, var = _population(300)
    ref = np.arange(300) < 200
    res = correct_age_gap(pred, age, var, ref, "inverse", folds=4)
    ols = sm.OLS(pred[ref], sm.add_constant(age[ref])).fit()
    a, b = ols.params
    cov = np.asarray(ols.cov_params())
    out = ~ref

    def g(params: np.ndarray, p: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (p - params[0]) / params[1] - x

    assert res.corrected_gap[out] == pytest.approx(g(np.array([a, b]), pred[out], age[out]), abs=1e-9)
    # numerical gradient of the correction in (a, b), and the prediction's own term (1/b)^2 var
    eps = 1e-6
    grads = np.stack([(g(np.array([a + eps, b]), pred[out], age[out]) - g(np.array([a - eps, b]), pred[out],
                                                                          age[out])) / (2 * eps),
                      (g(np.array([a, b + eps]), pred[out], age[out]) - g(np.array([a, b - eps]), pred[out],
                                                                          age[out])) / (2 * eps)], axis=1)
    want = np.sqrt(var[out] / b**2 + np.einsum("ni,ij,nj->n", grads, cov, grads))
    assert res.se[out] == pytest.approx(want, rel=1e-6)


def test_known_regression_to_the_mean_slope_is_recovered_and_removed() -> None:
    slope = 0.6
    age, true_gap, pred, var = _population(4000, slope=slope, seed=4)
    raw = pred - age
    assert np.corrcoef(raw, age)[0, 1] < -0.5  # the bias the correction is for
    inv = correct_age_gap(pred, age, var, method="inverse", folds=5)
    gap = correct_age_gap(pred, age, var, method="gap", folds=5)
    # slope of predicted on age: E[pred | age] = 63 + 0.6 (age - 63) (true gaps independent of age)
    assert inv.fit_all.slope == pytest.approx(slope, abs=3 * math.sqrt(inv.fit_all.cov[1, 1]))
    assert gap.fit_all.slope == pytest.approx(slope - 1, abs=3 * math.sqrt(gap.fit_all.cov[1, 1]))
    for res in (inv, gap):
        assert abs(np.corrcoef(res.corrected_gap, age)[0, 1]) < 0.05
    # the inverse correction recovers the true gap on its scale (error sd / slope); the gap method shrinks it
    err = inv.corrected_gap - true_gap
    assert abs(err.mean()) < 0.15
    assert err.std() == pytest.approx(np.sqrt(np.mean(var)) / slope, rel=0.1)
    assert np.polyfit(true_gap, gap.corrected_gap, 1)[0] == pytest.approx(slope, abs=0.05)
    # and the standard errors are calibrated against the truth: |error| <= 1.96 se in ~95 % of subjects
    assert np.mean(np.abs(err) <= 1.959964 * inv.se) == pytest.approx(0.95, abs=0.015)


def test_cross_fitting_a_subjects_own_values_never_enter_its_correction() -> None:
    age, _, pred, var = _population(120)
    ref = np.arange(120) % 3 != 0  # subjects 0, 3, 6, ... outside the reference
    base = correct_age_gap(pred, age, var, ref, "gap", folds=5, seed=7)
    for i in (0, 1, 2, 50, 119):
        p2, a2 = pred.copy(), age.copy()
        p2[i] += 25.0
        a2[i] -= 11.0
        for method in ("gap", "inverse"):
            b = correct_age_gap(pred, age, var, ref, method, folds=5, seed=7)
            moved = correct_age_gap(p2, a2, var, ref, method, folds=5, seed=7)
            assert moved.intercept[i] == b.intercept[i] and moved.slope[i] == b.slope[i]
            if ref[i]:  # ... while the subjects of the other folds, whose fits include it, do move
                others = ref & (b.fold != b.fold[i])
                assert not np.allclose(moved.slope[others], b.slope[others])
    assert (base.fold == fold_of(120, 5, 7)).all()
    assert np.bincount(base.fold).tolist() == [24] * 5


def test_no_prediction_keeps_its_row_and_takes_no_part() -> None:
    age, _, pred, var = _population(50)
    pred[3] = np.nan
    res = correct_age_gap(pred, age, var, folds=5)
    assert math.isnan(res.corrected_gap[3]) and math.isnan(res.se[3])
    assert np.isfinite(np.delete(res.corrected_gap, 3)).all()
    assert res.fit_all.n == 49


# -- joins -----------------------------------------------------------------------------------------------

def _results(ages: list[tuple[int, int, float]], unit: str = "years") -> list[SubjectResult]:
    layout = layout_for([("agemod", "1.0", [("age", unit, None), ("weight", "kg", 21002)], "research")])
    out = []
    for eid, inst, value in ages:
        r = SubjectResult.for_input(f"/x/{eid}_20201_{inst}_0.zip")
        r.predictions = [TargetPrediction(layout[0], value=value, variance=4.0, level=0.95),
                         TargetPrediction(layout[1], value=80.0, variance=1.0, level=0.95)]
        r.qc_status = "ok"
        r.ood_scores = {"agemod": 0.2}
        out.append(r)
    return out


def _files(tmp_path: Path, n: int = 40) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    age, _, pred, _ = _population(n, seed=9)
    eids = 1_000_000 + np.arange(n)
    results = _results([(int(e), 2, float(p)) for e, p in zip(eids, pred)])
    preds = tmp_path / "predictions.csv"
    preds.write_text(csv_text(results))
    ages = tmp_path / "participants.csv"
    pd.DataFrame({"participant.eid": eids, "participant.p21003_i2": np.round(age, 3),
                  "participant.p31": 1}).to_csv(ages, index=False)
    return preds, ages, np.round(age, 3), pred


def test_ages_join_by_eid_and_instance_in_either_convention(tmp_path: Path) -> None:
    preds, ages, age, _ = _files(tmp_path, 10)
    rows = select_target(read_predictions(preds), None)
    assert rows["key"].iloc[0] == "age" and rows["eid"].is_monotonic_increasing
    assert ages_for(rows, PhenotypeTable.read(ages)).to_numpy() == pytest.approx(age)
    showcase = tmp_path / "showcase.csv"
    pd.DataFrame({"eid": 1_000_000 + np.arange(10)[::-1], "21003-2.0": age[::-1]}).to_csv(showcase, index=False)
    assert ages_for(rows, PhenotypeTable.read(showcase)).to_numpy() == pytest.approx(age)
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"eid": 1_000_000 + np.arange(10), "age": age}).to_csv(plain, index=False)
    assert ages_for(rows, PhenotypeTable.read(plain)).to_numpy() == pytest.approx(age)


def test_bad_joins_are_refused_in_one_line(tmp_path: Path) -> None:
    preds, _, age, _ = _files(tmp_path, 10)
    frame = read_predictions(preds)
    with pytest.raises(UsageError, match="not in years"):
        select_target(frame, "weight")
    dup = tmp_path / "dup.csv"
    dup.write_text(csv_text(_results([(1_000_001, 2, 60.0), (1_000_001, 2, 61.0), (1_000_002, 2, 62.0)])))
    with pytest.raises(UsageError, match="2 rows share an eid and instance"):
        select_target(read_predictions(dup), None)
    months = tmp_path / "months.csv"
    months.write_text(csv_text(_results([(1_000_001, 2, 720.0)], unit="months")))
    with pytest.raises(UsageError, match="holds no age target"):
        select_target(read_predictions(months), None)
    with pytest.raises(UsageError, match="not in years"):
        select_target(read_predictions(months), "age")
    mixed = pd.concat([read_predictions(preds), read_predictions(months)], ignore_index=True)
    with pytest.raises(UsageError, match="several units"):
        select_target(mixed, "age")
    short = tmp_path / "short.csv"
    pd.DataFrame({"eid": 1_000_000 + np.arange(8), "p21003_i2": age[:8]}).to_csv(short, index=False)
    rows = select_target(frame, None)
    with pytest.raises(UsageError, match=r"has no age \(p21003_i2\) for 2 of 10 subject visits") as err:
        ages_for(rows, PhenotypeTable.read(short))
    assert "\n" not in str(err.value)
    other = tmp_path / "other.csv"
    pd.DataFrame({"eid": 1_000_000 + np.arange(10), "p21003_i3": age}).to_csv(other, index=False)
    with pytest.raises(UsageError, match="has no age for instance 2"):
        ages_for(rows, PhenotypeTable.read(other))


# -- the command ----------------------------------------------------------------------------------------

def test_age_gap_command_writes_the_pinned_schema_and_an_aggregate_summary(tmp_path: Path) -> None:
    preds, ages, age, pred = _files(tmp_path, 40)
    ref = tmp_path / "reference.txt"
    ref.write_text("eid\n" + "\n".join(str(1_000_000 + i) for i in range(30)) + "\n")
    out, summary = tmp_path / "gaps.csv", tmp_path / "gaps.json"
    res = CliRunner().invoke(app, ["age-gap", str(preds), str(ages), "-o", str(out), "--summary", str(summary),
                                   "--reference", str(ref), "--method", "inverse", "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert "keep it inside the platform" in res.output
    table = pd.read_csv(out)
    assert tuple(table.columns) == AGE_GAP_COLUMNS
    assert (table["schema_version"] == int(AGE_GAP_SCHEMA_VERSION)).all()
    assert table["raw_gap"].to_numpy() == pytest.approx(pred - age, abs=1e-6)
    assert table["in_reference"].tolist() == [True] * 30 + [False] * 10
    assert sorted(set(table["fold"])) == [-1, 0, 1, 2]
    # subjects outside the reference: the whole reference's fit, as statsmodels has it
    ols = sm.OLS(pred[:30], sm.add_constant(age[:30])).fit()
    outside = table[~table["in_reference"]]
    assert outside["corrected_gap"].to_numpy() == pytest.approx(
        (pred[30:] - ols.params[0]) / ols.params[1] - age[30:], abs=1e-6)
    agg = json.loads(summary.read_text())
    assert agg["fit_on_reference"]["n"] == 30 and len(agg["fits_per_fold"]) == 3
    assert agg["reference"]["n"] == 30 and agg["outside_reference"]["n"] == 10
    assert agg["all"]["mae_raw"] == pytest.approx(np.mean(np.abs(pred - age)), abs=1e-5)
    assert agg["all"]["corr_raw_gap_age"] == pytest.approx(np.corrcoef(pred - age, age)[0, 1], abs=1e-5)
    text = summary.read_text()
    assert "1000001" not in text and "eid" not in text  # aggregates only
    parquet = tmp_path / "gaps.parquet"
    res = CliRunner().invoke(app, ["age-gap", str(preds), str(ages), "-o", str(parquet)])
    assert res.exit_code == 0, res.output
    assert tuple(pd.read_parquet(parquet).columns) == AGE_GAP_COLUMNS


def test_age_gap_command_refuses_in_one_line(tmp_path: Path) -> None:
    preds, ages, _, _ = _files(tmp_path, 10)
    res = CliRunner().invoke(app, ["age-gap", str(preds), str(ages), "-o", str(tmp_path / "g.csv"),
                                   "--target", "weight"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not in years" in lines[0]
    assert not (tmp_path / "g.csv").exists()
    long = tmp_path / "long.csv"
    long.write_text(long_csv_text(_results([(1_000_001, 2, 60.0), (1_000_002, 2, 61.0), (1_000_003, 2, 70.0),
                                           (1_000_004, 2, 50.0)])))
    res = CliRunner().invoke(app, ["age-gap", str(long), str(ages), "-o", str(tmp_path / "g.csv"), "--folds", "2"])
    assert res.exit_code == 1 and "at least 3 reference subjects" in res.output


def test_derived_docs_list_the_age_gap_columns() -> None:
    text = (ROOT / "docs" / "derived.md").read_text()
    assert f"age-gap table, schema version {AGE_GAP_SCHEMA_VERSION}" in text
    for col in AGE_GAP_COLUMNS:
        assert f"| `{col}` |" in text, col


def test_table_rows_follow_eid_order(tmp_path: Path) -> None:
    preds, ages, _, _ = _files(tmp_path, 12)
    rows = select_target(read_predictions(preds), "agemod.age")
    table, _ = age_gap_table(rows, ages_for(rows, PhenotypeTable.read(ages)), "age", folds=3)
    assert table["eid"].tolist() == sorted(table["eid"].tolist())
    assert table["ci_high"].to_numpy() - table["corrected_gap"].to_numpy() == pytest.approx(
        1.959964 * table["corrected_gap_se"].to_numpy(), rel=1e-5)


# -- folds per subject (eid): a subject's other visit never enters its correction ---------------------------

def _two_visit_rows(tmp_path: Path, n: int = 60, twice: int = 25) -> tuple[pd.DataFrame, pd.Series]:
    """A prediction table (one age target) where the first ``twice`` of ``n`` eids have visits 2 and 3, the rest
    visit 2 only, and the ages at each visit; rows sorted by eid and instance as ``mimir age-gap`` has them."""
    age, _, pred, _ = _population(n + twice, seed=11)
    eids = 1_000_000 + np.arange(n)
    visits = [(int(e), 2, float(pred[i])) for i, e in enumerate(eids)]
    visits += [(int(eids[i]), 3, float(pred[n + i])) for i in range(twice)]
    preds = tmp_path / "two_visits.csv"
    preds.write_text(csv_text(_results(visits)))
    ages = tmp_path / "two_visit_ages.csv"
    i3 = np.full(n, np.nan)
    i3[:twice] = age[n:] + 2.5  # the second imaging visit, some years later
    pd.DataFrame({"eid": eids, "p21003_i2": age[:n], "p21003_i3": i3}).to_csv(ages, index=False)
    rows = select_target(read_predictions(preds), "age")
    return rows, ages_for(rows, PhenotypeTable.read(ages))


@pytest.mark.parametrize("method", ["gap", "inverse"])
def test_folds_are_dealt_per_eid_so_a_subjects_other_visit_never_enters_its_correction(
        tmp_path: Path, method: str) -> None:
    rows, ages = _two_visit_rows(tmp_path)
    assert len(rows) == 85 and int((rows["instance"] == 3).sum()) == 25
    base, _ = age_gap_table(rows, ages, "age", method, folds=5, seed=3)
    # every eid's rows (both visits) in one fold; the 60 subjects dealt evenly, 12 per fold
    per_eid = base.groupby("eid")["fold"]
    assert (per_eid.nunique() == 1).all()
    assert np.bincount(per_eid.first().to_numpy()).tolist() == [12] * 5
    twice = sorted(set(base.loc[base["instance"] == 3, "eid"]))
    assert len({int(base.loc[base["eid"] == e, "fold"].iloc[0]) for e in twice}) == 5  # two-visit subjects everywhere
    # deterministic: the same input gives the same table
    again, _ = age_gap_table(rows, ages, "age", method, folds=5, seed=3)
    pd.testing.assert_frame_equal(base, again)
    cols = ["corrected_gap", "corrected_gap_se", "intercept", "slope", "fold"]
    for eid in twice:
        v2 = ((base["eid"] == eid) & (base["instance"] == 2)).to_numpy()
        v3 = ((base["eid"] == eid) & (base["instance"] == 3)).to_numpy()
        moved_rows, moved_ages = rows.copy(), ages.copy()
        moved_rows.loc[v3, "mean"] += 25.0  # only visit 3 of this subject changes: prediction and age
        moved_ages[v3] -= 11.0
        moved, _ = age_gap_table(moved_rows, moved_ages, "age", method, folds=5, seed=3)
        np.testing.assert_allclose(moved.loc[v2, cols].to_numpy(float), base.loc[v2, cols].to_numpy(float),
                                   rtol=0, atol=1e-12)
        # ... while the rows of the other folds, whose fits hold visit 3, do move (the change is not a no-op)
        others = (base["fold"] != base.loc[v2, "fold"].iloc[0]).to_numpy()
        assert np.abs(moved.loc[others, "slope"].to_numpy() - base.loc[others, "slope"].to_numpy()).min() > 1e-6


def test_fold_of_deals_subjects_counts_unknown_eids_alone_and_matches_rows_for_one_visit_each() -> None:
    # one row per eid: dealing the subjects is dealing the rows (same folds as without eid)
    eids = 1_000_000 + np.arange(37)
    for folds, seed in ((2, 0), (5, 7), (10, 123)):
        assert fold_of(37, folds, seed, eids).tolist() == fold_of(37, folds, seed).tolist()
    # repeated eids share a fold; the subjects, in order of first row, are dealt as rows would be
    eid = np.array([5, 5, 8, 9, 9, 12, 13, 13, 20, 21], dtype=object)
    got = fold_of(10, 3, 4, eid)
    assert got[0] == got[1] and got[3] == got[4] and got[6] == got[7]
    first = [0, 2, 3, 5, 6, 8, 9]
    assert got[first].tolist() == fold_of(7, 3, 4).tolist()
    # an unknown eid (None, NaN) is a subject of its own, in its row's place
    unknown = np.array([5, 5, None, 8, np.nan, 8, 9], dtype=object)
    assert fold_of(7, 2, 1, unknown).tolist() == fold_of(5, 2, 1)[[0, 0, 1, 2, 3, 2, 4]].tolist()
    assert fold_of(7, 2, 1, unknown).tolist() == fold_of(7, 2, 1, unknown).tolist()
    # and correct_age_gap takes the eids: both rows of an eid share the fold of its first
    age, _, pred, var = _population(40)
    pair = np.repeat(np.arange(20), 2)
    res = correct_age_gap(pred, age, var, folds=4, seed=2, eid=pair)
    assert (res.fold[0::2] == res.fold[1::2]).all()
    assert res.fold[0::2].tolist() == fold_of(20, 4, 2).tolist()
