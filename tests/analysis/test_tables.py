"""Reading prediction files of every layout into one long frame, and phenotype tables in every convention."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from mimir.analysis.tables import PREDICTION_COLUMNS, PhenotypeTable, parse_field_column, read_predictions
from mimir.errors import UsageError
from mimir.inference.predictions import SubjectResult, TargetPrediction, layout_for
from mimir.outputs.writers import csv_text, json_text, long_csv_text


def _results() -> tuple[list, list[SubjectResult]]:
    layout = layout_for([
        ("mod_a", "1.0", [("weight", "kg", 21002), ("age", "years", None)], "research"),
        ("mod_b", "2.1", [("weight", "kg", 21002), ("liver_fat", "%", 22402)], "synthetic-demo"),
    ])
    out = []
    for k, (eid, inst) in enumerate([(1000001, 2), (1000002, 3), (1000003, 2)]):
        r = SubjectResult.for_input(f"/x/{eid}_20201_{inst}_0.zip")
        r.predictions = [TargetPrediction(t, value=70.25 + 10 * k + i, variance=0.5 + i / 8, level=0.9)
                         for i, t in enumerate(layout)]
        r.qc_status = "warn" if k == 1 else "ok"
        r.qc_flags = ["out_of_distribution:mod_b"] if k == 1 else []
        r.ood_scores = {"mod_a": 0.5 + k, "mod_b": None}
        out.append(r)
    return layout, out


def _expected() -> pd.DataFrame:
    rows = []
    for k, (eid, inst) in enumerate([(1000001, 2), (1000002, 3), (1000003, 2)]):
        for i, (module, target, key, field, unit) in enumerate([
            ("mod_a", "weight", "weight", 21002, "kg"), ("mod_a", "age", "age", None, "years"),
            ("mod_b", "weight", "mod_b.weight", 21002, "kg"), ("mod_b", "liver_fat", "liver_fat", 22402, "%"),
        ]):
            score = (0.5 + k) if module == "mod_a" else math.nan
            rows.append(dict(eid=eid, instance=inst, module=module, target=target, key=key, field=field, unit=unit,
                             mean=70.25 + 10 * k + i, variance=0.5 + i / 8, level=0.9, ood_score=score,
                             ood_flag=(module == "mod_b" and k == 1) or (module == "mod_a" and 0.5 + k > 1)))
    return pd.DataFrame(rows)


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(PREDICTION_COLUMNS)
    assert len(got) == len(want)
    got = got.sort_values(["eid", "module", "target"]).reset_index(drop=True)
    want = want.sort_values(["eid", "module", "target"]).reset_index(drop=True)
    for c in ("eid", "instance", "module", "target", "key", "unit", "ood_flag"):
        assert got[c].tolist() == want[c].tolist(), c
    assert [None if f is None or (isinstance(f, float) and math.isnan(f)) else int(f) for f in got["field"]] == \
        [None if f is None or (isinstance(f, float) and math.isnan(f)) else int(f) for f in want["field"]]
    for c in ("mean", "variance", "level", "ood_score"):
        assert got[c].to_numpy() == pytest.approx(want[c].to_numpy(), nan_ok=True), c
    assert got["sd"].to_numpy() == pytest.approx(want["variance"].to_numpy() ** 0.5)


@pytest.mark.parametrize("layout_name", ["wide", "long", "json"])
def test_every_layout_reads_to_the_same_long_frame(tmp_path: Path, layout_name: str, monkeypatch) -> None:
    layout, results = _results()
    if layout_name == "wide":
        # two modules share 'weight': the plain key's module comes from the installed module's target list
        from mimir.analysis import tables

        monkeypatch.setattr(tables, "_module_targets",
                            lambda modules: {"mod_a": ["weight", "age"], "mod_b": ["weight", "liver_fat"]})
        monkeypatch.setattr(tables, "_target_fields", lambda modules: {
            ("mod_a", "weight"): (21002, "kg"), ("mod_b", "weight"): (21002, "kg"),
            ("mod_b", "liver_fat"): (22402, "%")})
        path, text = tmp_path / "p.csv", csv_text(results, layout)
    elif layout_name == "long":
        path, text = tmp_path / "p.csv", long_csv_text(results)
    else:
        path, text = tmp_path / "p.json", json_text(results)
    path.write_text(text)
    _compare(read_predictions(path), _expected())


def test_parquet_of_the_long_layout(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    _, results = _results()
    (tmp_path / "p.csv").write_text(long_csv_text(results))
    pd.read_csv(tmp_path / "p.csv", dtype=str).to_parquet(tmp_path / "p.parquet")
    _compare(read_predictions(tmp_path / "p.parquet"), _expected())


def test_a_wide_file_whose_shared_target_cannot_be_attributed_is_refused(tmp_path: Path) -> None:
    layout, results = _results()
    (tmp_path / "p.csv").write_text(csv_text(results, layout))
    with pytest.raises(UsageError, match="cannot be told.*predictions.json or a --format long CSV"):
        read_predictions(tmp_path / "p.csv")


def test_a_single_module_wide_file_needs_no_installed_module(tmp_path: Path) -> None:
    layout = layout_for([("solo", "1.0", [("weight", "kg", 21002)], "research")])
    r = SubjectResult.for_input("/x/1000009_20201_2_0.zip")
    r.predictions = [TargetPrediction(layout[0], value=80.5, variance=4.0, level=0.95)]
    (tmp_path / "p.csv").write_text(csv_text([r], layout))
    got = read_predictions(tmp_path / "p.csv")
    assert got[["eid", "instance", "module", "target", "field", "mean", "sd"]].iloc[0].tolist() == \
        [1000009, 2, "solo", "weight", 21002, 80.5, 2.0]  # field from the published catalogue


@pytest.mark.parametrize("text", ["a,b\n1,2\n", "[1, 2]"])
def test_files_that_are_not_predictions_are_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / ("x.json" if text.startswith("[") else "x.csv")
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        read_predictions(path)
    assert "\n" not in str(err.value) and path.name in str(err.value)


@pytest.mark.parametrize(("column", "field", "instance", "array"), [
    ("p21002_i2", 21002, 2, None), ("participant.p21002_i2", 21002, 2, None), ("p21002_i2_a0", 21002, 2, 0),
    ("p31", 31, None, None), ("21002-2.0", 21002, 2, 0), ("f.21002.3.1", 21002, 3, 1),
])
def test_field_columns_of_every_convention(column: str, field: int, instance, array) -> None:
    fc = parse_field_column(column)
    assert fc is not None and (fc.field, fc.instance, fc.array) == (field, instance, array)


@pytest.mark.parametrize("column", ["weight", "Weight | Instance 2", "p21002x", "21002-2"])
def test_other_columns_are_not_fields(column: str) -> None:
    assert parse_field_column(column) is None


@pytest.mark.parametrize(("eid_col", "weight_col"), [
    ("eid", "p21002_i2"), ("participant.eid", "participant.p21002_i2"), ("eid", "21002-2.0"),
    ("f.eid", "f.21002.2.0"), ("eid", "p21002_i2_a0"),
])
def test_phenotype_values_by_field_and_instance(tmp_path: Path, eid_col: str, weight_col: str) -> None:
    path = tmp_path / "ph.csv"
    path.write_text(f"{eid_col},{weight_col},p31\n1000001,70.5,0\n1000002,,1\n1000003,88,1\n")
    table = PhenotypeTable.read(path)
    col = table.find(21002, 2)
    assert col == weight_col
    values = table.values(col)
    assert values.index.tolist() == [1000001, 1000002, 1000003]
    assert values.tolist()[0] == 70.5 and math.isnan(values.tolist()[1]) and values.tolist()[2] == 88.0
    assert table.find(31, 2) == "p31"  # a field without instances matches any instance
    assert table.find(21002, 3) is None  # no instance-3 column: never another instance's values


def test_phenotype_tables_are_checked(tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("eid,p21002_i2\n1,70\n1,71\n")
    with pytest.raises(UsageError, match="participant 1 appears in 2 rows"):
        PhenotypeTable.read(tmp_path / "dup.csv")
    (tmp_path / "noeid.csv").write_text("id,p21002_i2\n1,70\n")
    with pytest.raises(UsageError, match="no participant column"):
        PhenotypeTable.read(tmp_path / "noeid.csv")
    (tmp_path / "text.csv").write_text("eid,p21002_i2\n1,seventy\n")
    with pytest.raises(UsageError, match=r"not a number \(row 2\)"):
        PhenotypeTable.read(tmp_path / "text.csv").values("p21002_i2")
    (tmp_path / "dates.csv").write_text("eid,p53_i2\n1,2015-06-30\n2,\n")
    dates = PhenotypeTable.read(tmp_path / "dates.csv").dates("p53_i2")
    assert str(dates.iloc[0].date()) == "2015-06-30" and pd.isna(dates.iloc[1])


def test_tab_separated_tables(tmp_path: Path) -> None:
    (tmp_path / "ph.tsv").write_text("eid\tp21003_i2\n1000001\t61\n")
    table = PhenotypeTable.read(tmp_path / "ph.tsv")
    assert table.values(table.find(21003, 2)).tolist() == [61.0]
