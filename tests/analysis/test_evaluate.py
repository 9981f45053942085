"""``mimir evaluate``: predictions joined with phenotype tables, metrics, and an output folder safe to export.

The predictions are written by mimir's own writers from a known structure:
reference values drawn per subject, predictions = reference + bias + Gaussian
error whose standard deviation the interval states (so coverage is nominal).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mimir.analysis import metrics as M
from mimir.analysis.evaluate import METRIC_COLUMNS, SCHEMA_VERSION, evaluate, join_reference, parse_maps
from mimir.analysis.tables import PhenotypeTable, read_predictions
from mimir.cli import app
from mimir.errors import UsageError
from mimir.inference.predictions import SubjectResult, TargetPrediction, layout_for
from mimir.outputs.writers import csv_text, long_csv_text

ROOT = Path(__file__).resolve().parents[2]
N = 240
TARGETS = [("weight", "kg", 21002), ("height", "cm", 12144), ("liver_fat", "percent", None)]
TRUE = {"weight": (78.0, 14.0, 1.5, 0.8), "height": (170.0, 9.0, 2.0, -0.6), "liver_fat": (5.0, 3.0, 0.9, 0.0)}


def make_study(n: int = N, seed: int = 0, ood: int = 6) -> tuple[list[SubjectResult], pd.DataFrame, list]:
    """``n`` subjects: results of one module (3 targets) and the reference frame (eid, target columns)."""
    rng = np.random.default_rng(seed)
    layout = layout_for([("mod_a", "1.0", TARGETS, "research")])
    results, ref = [], {"eid": []}
    for i in range(n):
        eid = 2_000_000 + 37 * i + seed
        r = SubjectResult.for_input(f"/data/{eid}_20201_2_0.zip")
        preds = []
        for t in layout:
            mu, spread, sd, bias = TRUE[t.name]
            truth = rng.normal(mu, spread) + rng.uniform(0.0001, 0.001)
            s = sd * rng.uniform(0.6, 1.4)
            preds.append(TargetPrediction(t, value=truth + bias + rng.normal(0, s), variance=s * s, level=0.95))
            ref.setdefault(t.name, []).append(truth)
        r.predictions = preds
        r.qc_status = "warn" if i % 4 == 0 else "ok"
        r.qc_flags = ["out_of_distribution:mod_a"] if i < ood else []
        r.ood_scores = {"mod_a": 1.5 if i < ood else 0.3}
        results.append(r)
        ref["eid"].append(eid)
    return results, pd.DataFrame(ref), layout


def rap_table(ref: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"participant.eid": ref["eid"], "participant.p21002_i2": ref["weight"],
                         "participant.p12144_i2": ref["height"], "participant.p31": 0, "liver_fat": ref["liver_fat"]})


def showcase_table(ref: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"eid": ref["eid"], "21002-2.0": ref["weight"], "21002-3.0": ref["weight"] + 1,
                         "12144-2.0": ref["height"], "liver_fat": ref["liver_fat"]})


@pytest.fixture
def study(tmp_path: Path) -> dict:
    results, ref, _ = make_study()
    (tmp_path / "preds.csv").write_text(csv_text(results))
    (tmp_path / "preds_long.csv").write_text(long_csv_text(results))
    rap_table(ref).to_csv(tmp_path / "rap.csv", index=False)
    showcase_table(ref).to_csv(tmp_path / "showcase.tsv", sep="\t", index=False)
    return {"dir": tmp_path, "results": results, "ref": ref}


def _row(frame: pd.DataFrame, target: str) -> pd.Series:
    return frame.set_index("target").loc[target]


@pytest.mark.parametrize("preds,table", [("preds.csv", "rap.csv"), ("preds_long.csv", "showcase.tsv")])
def test_metrics_csv_equals_the_metric_functions_on_the_joined_values(study, preds, table) -> None:
    d = study["dir"]
    res = evaluate(d / preds, d / table, d / "ev", figures=False)
    frame = pd.read_csv(d / "ev" / "metrics.csv")
    assert list(frame.columns) == list(METRIC_COLUMNS)
    assert set(frame["target"]) == {"weight", "height", "liver_fat"}  # liver_fat by its plain column
    ref = study["ref"]
    for target, idx in (("weight", 0), ("height", 1)):
        pred = np.array([r.predictions[idx].value for r in study["results"]])
        var = np.array([r.predictions[idx].variance for r in study["results"]])
        row = _row(frame, target)
        assert row["n"] == N and not row["suppressed"]
        a = M.agreement(ref[target], pred)
        for key in ("bias", "sd_diff", "loa_low", "loa_high", "icc", "icc_ci_low", "icc_ci_high", "icc_original",
                    "r2", "pearson_r", "mae", "mape_percent"):
            assert row[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
        assert row["auce"] == pytest.approx(M.auce(ref[target], pred, var), abs=1e-9)
        assert row["coverage_95"] == pytest.approx(M.coverage(ref[target], pred, var, 0.95), abs=1e-12)
        assert row["bias"] == pytest.approx(TRUE[target][3], abs=0.35)
        assert row["coverage"] == pytest.approx(0.95, abs=0.04)  # the intervals state the true error sd
        assert row["published_icc"] == pytest.approx(0.997 if target == "weight" else 0.965)
    assert _row(frame, "weight")["reference_column"] in ("participant.p21002_i2", "21002-2.0")  # instance 2, not 3
    assert res.unmatched == []


def test_metrics_json_holds_curves_and_subgroups_and_omits_small_ones(study) -> None:
    d = study["dir"]
    evaluate(d / "preds.csv", d / "rap.csv", d / "ev", figures=False)
    doc = json.loads((d / "ev" / "metrics.json").read_text())
    assert doc["schema"] == "mimir-evaluation" and doc["schema_version"] == 2 and doc["min_count"] == 10
    w = next(t for t in doc["targets"] if t["target"] == "weight")
    assert len(w["calibration_curve"]["level"]) == 11 and w["calibration_curve"]["fraction"][-1] == 1.0
    assert w["sparsification"][0]["removed"] == 0.0 and w["sparsification"][0]["mae"] == pytest.approx(w["mae"])
    assert set(w["subgroups"]) == {"qc_status=ok", "qc_status=warn", "ood_flag=false"}  # 6 OOD subjects: omitted
    assert w["subgroups"]["qc_status=warn"]["n"] == N // 4
    for g in w["subgroups"].values():
        assert "calibration_curve" not in g and g["n"] >= 10


def test_a_target_with_fewer_subjects_than_min_count_gets_its_n_only(tmp_path: Path) -> None:
    results, ref, _ = make_study(n=8)
    (tmp_path / "p.csv").write_text(csv_text(results))
    rap_table(ref).to_csv(tmp_path / "r.csv", index=False)
    res = evaluate(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "ev", figures=False)
    frame = pd.read_csv(tmp_path / "ev" / "metrics.csv")
    assert frame["suppressed"].all() and (frame["n"] == 8).all()
    assert frame[["bias", "icc", "mae", "coverage", "auce"]].isna().all().all()
    assert res.evaluated == 0


def _per_subject_strings(results: list[SubjectResult], ref: pd.DataFrame) -> set[str]:
    values: list[float] = []
    for r in results:
        for p in r.predictions:
            values += [p.value, p.variance, p.sd, p.value - 1.96 * p.sd, p.value + 1.96 * p.sd]
    for c in ("weight", "height", "liver_fat"):
        values += list(ref[c])
    out = set()
    for v in values:  # the spellings a writer would use; 6 digits only where that is not a short, common string
        out |= {repr(float(v)), f"{v:.10g}"} | ({f"{v:.6g}"} if len(f"{v:.6g}") >= 7 else set())
    for r in results:
        out |= {str(r.eid), r.name}
    return out


def test_the_output_folder_holds_no_eid_and_no_per_subject_value(study) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("jinja2")
    from PIL import Image

    d = study["dir"]
    res = evaluate(d / "preds.csv", d / "rap.csv", d / "ev", per_subject=d / "inside_only.csv")
    forbidden = _per_subject_strings(study["results"], study["ref"])
    files = [p for p in (d / "ev").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"metrics.csv", "metrics.json", "evaluation.html", "mod_a__weight.png"}
    texts = []
    for p in files:
        raw = p.read_bytes()
        texts.append(raw.decode("latin-1"))
        if p.suffix == ".png":
            texts.append(json.dumps({k: str(v) for k, v in Image.open(p).info.items()}))
    html = (d / "ev" / "evaluation.html").read_text()
    for uri in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html):
        png = base64.b64decode(uri)
        texts.append(png.decode("latin-1"))
        texts.append(json.dumps({k: str(v) for k, v in Image.open(io.BytesIO(png)).info.items()}))
    blob = "\n".join(texts)
    hits = sorted(s for s in forbidden if s in blob)
    assert hits == []
    # the per-subject file, outside the folder, has them all, and says it must not leave the platform
    inside = res.per_subject.read_text()
    assert "inside the platform only" in inside.splitlines()[0]
    assert str(study["results"][0].eid) in inside


def test_figures_show_binned_densities_without_small_cells(study) -> None:
    pytest.importorskip("matplotlib")
    d = study["dir"]
    ref = study["ref"]["weight"].to_numpy()
    pred = np.array([r.predictions[0].value for r in study["results"]])
    both = M.nice_edges(np.concatenate([ref, pred]), 24)
    counts, _, _ = M.binned_density(ref, pred, 24, 10, x_edges=both, y_edges=both)
    raw, _, _ = np.histogram2d(ref, pred, bins=[both, both])
    assert ((raw > 0) & (raw < 10)).any()  # the data has small cells ...
    assert np.array_equal(np.isnan(counts), raw < 10)  # ... and exactly those are left empty
    evaluate(d / "preds.csv", d / "rap.csv", d / "ev")
    html = (d / "ev" / "evaluation.html").read_text()
    top = html[: html.index("<section")]
    assert "Safe to export" in top and "no participant id and no per-subject value" in top
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_unit_mismatch_is_one_line_naming_both(tmp_path: Path) -> None:
    layout = layout_for([("mod_g", "1.0", [("weight", "g", 21002)], "research")])
    r = SubjectResult.for_input(f"/x/{3000001}_20201_2_0.zip")
    r.predictions = [TargetPrediction(layout[0], value=70000.0, variance=4.0)]
    (tmp_path / "p.csv").write_text(csv_text([r]))
    pd.DataFrame({"eid": [3000001], "p21002_i2": [70.0]}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(UsageError, match=r"in 'g', UK Biobank records field 21002 in 'kg'"):
        evaluate(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "ev", figures=False)
    # another spelling of the same unit is no mismatch
    layout = layout_for([("mod_p", "1.0", [("liver_fat", "percent", 22402)], "research")])
    rows = []
    for i in range(12):
        r = SubjectResult.for_input(f"/x/{3000100 + i}_20201_2_0.zip")
        r.predictions = [TargetPrediction(layout[0], value=4.0 + i, variance=1.0)]
        rows.append(r)
    (tmp_path / "p2.csv").write_text(long_csv_text(rows))  # the long layout names each target's field
    pd.DataFrame({"eid": [3000100 + i for i in range(12)], "p22402_i2": [4.5 + i for i in range(12)]}).to_csv(
        tmp_path / "r2.csv", index=False)
    res = evaluate(tmp_path / "p2.csv", tmp_path / "r2.csv", tmp_path / "ev2", figures=False)
    assert res.rows[0]["n"] == 12 and res.rows[0]["bias"] == pytest.approx(-0.5)


def test_map_overrides_and_errors(study) -> None:
    d = study["dir"]
    table = PhenotypeTable.read(d / "showcase.tsv")
    preds = read_predictions(d / "preds.csv")
    joined = join_reference(preds, table, {"weight": "21002-3.0"})
    w = joined[joined["target"] == "weight"]
    assert set(w["reference_column"]) == {"21002-3.0"}
    np.testing.assert_allclose(w["reference"].to_numpy(), study["ref"]["weight"].to_numpy() + 1)
    with pytest.raises(UsageError, match="has no column 'nope'"):
        join_reference(preds, table, {"weight": "nope"})
    with pytest.raises(UsageError, match="no prediction in the file has"):
        join_reference(preds, table, {"waist": "21002-2.0"})
    with pytest.raises(UsageError, match="is not TARGET=COLUMN"):
        parse_maps(["weight"])


def test_per_subject_file_inside_the_folder_is_refused(study) -> None:
    d = study["dir"]
    with pytest.raises(UsageError, match="inside the output folder"):
        evaluate(d / "preds.csv", d / "rap.csv", d / "ev", per_subject=d / "ev" / "subjects.csv", figures=False)
    assert not (d / "ev" / "metrics.csv").exists()


def test_cli_prints_a_line_per_target_and_says_the_folder_is_safe(study) -> None:
    d = study["dir"]
    result = CliRunner().invoke(app, ["evaluate", str(d / "preds.csv"), str(d / "rap.csv"), "-o", str(d / "ev"),
                                      "--no-figures", "--min-count", "5"])
    assert result.exit_code == 0, result.output
    assert re.search(r"mod_a weight: N=240, ICC 0\.9\d\d \[", result.output)
    assert "safe to export" in result.output
    bad = CliRunner().invoke(app, ["evaluate", str(d / "preds.csv"), str(d / "nope.csv"), "-o", str(d / "ev2")])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert not math.isnan(pd.read_csv(d / "ev" / "metrics.csv")["icc"].iloc[0])


def test_metric_columns_are_pinned_and_documented() -> None:
    assert SCHEMA_VERSION == 2
    assert METRIC_COLUMNS == (
        "module", "module_version", "target", "unit", "field", "reference_column", "n", "suppressed", "bias",
        "sd_diff", "loa_low", "loa_high", "icc", "icc_ci_low", "icc_ci_high", "icc_original", "r2", "pearson_r",
        "mae", "mape_percent", "n_calibration", "level", "coverage", "coverage_50", "coverage_80", "coverage_90",
        "coverage_95", "auce", "published_n", "published_icc", "published_r2", "published_mae",
        "published_mape_percent")
    text = (ROOT / "docs" / "evaluate.md").read_text()
    assert f"(schema `mimir-evaluation` version {SCHEMA_VERSION})" in text
    listed = text.split("has the columns", 1)[1].split("`")[1]
    assert tuple(c.strip() for c in listed.split(",")) == METRIC_COLUMNS
    for col in ("n", "n_calibration", "suppressed"):
        assert f"| `{col}` |" in text


def _without_intervals(results: list[SubjectResult], blank: dict[str, int]) -> str:
    """Long CSV of ``results`` whose first ``blank[target]`` subjects have no variance and no interval."""
    frame = pd.read_csv(io.StringIO(long_csv_text(results)))
    for target, k in blank.items():
        rows = frame.index[frame["target"] == target][:k]
        frame.loc[rows, ["variance", "sd", "ci_low", "ci_high"]] = np.nan
    return frame.to_csv(index=False)


def test_agreement_uses_every_pair_and_calibration_only_the_subjects_with_an_interval(tmp_path: Path) -> None:
    results, ref, _ = make_study()
    (tmp_path / "p.csv").write_text(_without_intervals(results, {"weight": 100, "height": N - 5}))
    rap_table(ref).to_csv(tmp_path / "r.csv", index=False)
    evaluate(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "ev", figures=False)
    frame = pd.read_csv(tmp_path / "ev" / "metrics.csv")
    for target, idx, n_cal in (("weight", 0, N - 100), ("height", 1, 5)):
        pred = np.array([r.predictions[idx].value for r in results])
        var = np.array([r.predictions[idx].variance for r in results])
        row = _row(frame, target)
        assert row["n"] == N and row["n_calibration"] == n_cal and not row["suppressed"]
        a = M.agreement(ref[target], pred)  # all N subjects, with or without an interval
        for key in ("bias", "sd_diff", "loa_low", "loa_high", "icc", "icc_ci_low", "icc_ci_high", "icc_original",
                    "r2", "pearson_r", "mae", "mape_percent"):
            assert row[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), (target, key)
        if target == "weight":  # coverage and AUCE on the 140 subjects that have an interval
            have = slice(100, None)
            truth = ref[target].to_numpy()[have]
            assert row["coverage_95"] == pytest.approx(M.coverage(truth, pred[have], var[have], 0.95), abs=1e-12)
            assert row["auce"] == pytest.approx(M.auce(truth, pred[have], var[have]), abs=1e-9)
            lo, hi = pred[have] - 1.959963984540054 * np.sqrt(var[have]), pred[have] + 1.959963984540054 * np.sqrt(
                var[have])
            assert row["coverage"] == pytest.approx(np.mean((truth >= lo) & (truth <= hi)), abs=1e-6)
        else:  # 5 subjects with an interval, fewer than --min-count: no calibration figure at all
            assert all(math.isnan(row[c]) for c in ("coverage", "coverage_50", "coverage_95", "auce"))
    lf = _row(frame, "liver_fat")
    assert lf["n"] == N and lf["n_calibration"] == N
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    h = next(t for t in doc["targets"] if t["target"] == "height")
    assert h["n"] == N and h["n_calibration"] == 5 and h["calibration_curve"] is None and h["sparsification"] is None
    w = next(t for t in doc["targets"] if t["target"] == "weight")
    assert w["subgroups"]["qc_status=warn"]["n"] == N // 4  # subgroups count the pairs too
    assert w["subgroups"]["qc_status=warn"]["n_calibration"] == N // 4 - 25  # 25 of the first 100 are warn
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), str(tmp_path / "r.csv"), "-o",
                                   str(tmp_path / "ev2"), "--no-figures"])
    assert res.exit_code == 0, res.output
    assert re.search(r"mod_a weight: N=240, .*, coverage 0\.\d{3} at 0\.95, AUCE 0\.\d{3} \(N=140 with an interval\)",
                     res.output), res.output
    assert re.search(r"mod_a height: N=240, .*, no coverage or AUCE \(5 with an interval, fewer than 10\)",
                     res.output), res.output


def test_figures_and_page_without_intervals(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("jinja2")
    results, ref, _ = make_study()
    (tmp_path / "p.csv").write_text(_without_intervals(results, {"height": N - 5}))
    rap_table(ref).to_csv(tmp_path / "r.csv", index=False)
    res = evaluate(tmp_path / "p.csv", tmp_path / "r.csv", tmp_path / "ev")
    height = next(r for r in res.rows if r["target"] == "height")
    assert height["n"] == N and height["auce"] is None
    assert (tmp_path / "ev" / height["figure"]).stat().st_size > 1000
    assert "evaluation.html" in {p.name for p in (tmp_path / "ev").iterdir()}
