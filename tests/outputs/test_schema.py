"""The output schema of docs/outputs.md, pinned: exact headers, the shared-target rule, synthetic marking."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from conftest_models import no_builtin_modules, random_resnet_state, save_images, single_torch_thread  # noqa: F401
from typer.testing import CliRunner

from mimir.errors import ModuleError, UsageError
from mimir.inference.predictions import LONG_HEADER, WIDE_LEAD, SubjectResult, TargetPrediction, csv_header, layout_for
from mimir.models.modules import TargetSpec, write_module
from mimir.outputs.writers import SCHEMA_VERSION, csv_text, long_csv_text

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _cli():
    from mimir.cli import app

    return app


def _layout():
    return layout_for(
        [
            ("mod_a", "1.0", [("VAT", "L", 22407), ("age", "years", None)], "research"),
            ("mod_b", "2.1", [("VAT", "L", 22407), ("liver", "%", 22402)], "synthetic-demo"),
        ]
    )


def _cols(key: str, unit: str) -> list[str]:
    return [f"{key}_mean_in_{unit}", f"{key}_variance_in_{unit}", f"{key}_ci_low_in_{unit}", f"{key}_ci_high_in_{unit}"]


def test_wide_header_is_pinned_and_first_module_keeps_shared_names() -> None:
    assert csv_header(_layout()) == [
        "name", "eid", "instance", "qc_status", "qc_flags", "ci_level",
        "mod_a_version", "mod_a_intended_use", "mod_a_ood_score",
        "mod_b_version", "mod_b_intended_use", "mod_b_ood_score",
        *_cols("VAT", "L"), *_cols("age", "years"), *_cols("mod_b.VAT", "L"), *_cols("liver", "%"),
    ]


def test_a_module_added_after_the_others_renames_no_column() -> None:
    two = csv_header(_layout())
    three = csv_header(
        layout_for(
            [
                ("mod_a", "1.0", [("VAT", "L", 22407), ("age", "years", None)], "research"),
                ("mod_b", "2.1", [("VAT", "L", 22407), ("liver", "%", 22402)], "synthetic-demo"),
                ("mod_c", "0.1", [("VAT", "L", None), ("age", "years", None)], "research"),
            ]
        )
    )
    assert set(two) <= set(three)
    assert [c for c in three if c not in two] == [
        "mod_c_version", "mod_c_intended_use", "mod_c_ood_score", *_cols("mod_c.VAT", "L"), *_cols("mod_c.age", "years")
    ]


def _result(layout, level=0.9) -> SubjectResult:
    r = SubjectResult.for_input("/x/1000001_20201_2_0.zip")
    r.predictions = [TargetPrediction(t, value=1.5 + i, variance=0.25, level=level) for i, t in enumerate(layout)]
    r.qc_status, r.qc_flags, r.ood_scores = "warn", ["fat_water_swap:station=3", "rescan_replaced:station=2"], {"mod_a": 0.5}
    return r


def test_wide_row_values_provenance_and_marking() -> None:
    layout = _layout()
    rows = list(csv.DictReader(io.StringIO(csv_text([_result(layout)], layout))))
    (row,) = rows
    assert (row["name"], row["eid"], row["instance"]) == ("1000001_20201_2_0", "1000001", "2")
    assert row["qc_status"] == "warn" and row["qc_flags"] == "fat_water_swap:station=3;rescan_replaced:station=2"
    assert row["ci_level"] == "0.9"
    assert (row["mod_a_version"], row["mod_a_intended_use"], row["mod_a_ood_score"]) == ("1.0", "research", "0.5")
    assert (row["mod_b_version"], row["mod_b_intended_use"], row["mod_b_ood_score"]) == ("2.1", "synthetic-demo", "")
    assert float(row["mod_b.VAT_mean_in_L"]) == 3.5 and float(row["liver_variance_in_%"]) == 0.25
    z90 = 1.6448536269514722
    assert float(row["VAT_ci_high_in_L"]) == pytest.approx(1.5 + z90 * 0.5, rel=1e-12)


def test_long_header_rows_and_json_agree() -> None:
    layout = _layout()
    result = _result(layout)
    text = long_csv_text([result])
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == [
        "name", "eid", "instance", "qc_status", "qc_flags", "module", "module_version", "intended_use", "ood_score",
        "target", "field", "unit", "mean", "variance", "sd", "ci_low", "ci_high", "level",
    ]
    rows = list(reader)
    assert [(r["module"], r["target"]) for r in rows] == [
        ("mod_a", "VAT"), ("mod_a", "age"), ("mod_b", "VAT"), ("mod_b", "liver")
    ]
    assert [r["intended_use"] for r in rows] == ["research", "research", "synthetic-demo", "synthetic-demo"]
    assert [r["ood_score"] for r in rows] == ["0.5", "0.5", "", ""]
    assert [r["field"] for r in rows] == ["22407", "", "22407", "22402"]
    assert [float(r["mean"]) for r in rows] == [1.5, 2.5, 3.5, 4.5]
    assert {(r["sd"], r["level"], r["qc_status"], r["eid"]) for r in rows} == {("0.5", "0.9", "warn", "1000001")}
    obj = result.to_json()
    assert obj["qc"] == {"status": "warn", "flags": ["fat_water_swap:station=3", "rescan_replaced:station=2"]}
    assert obj["ood_scores"] == {"mod_a": 0.5} and obj["ci_level"] == 0.9
    assert obj["modules"] == {
        "mod_a": {"version": "1.0", "intended_use": "research"},
        "mod_b": {"version": "2.1", "intended_use": "synthetic-demo"},
    }
    assert obj["targets"]["mod_b.VAT"]["target"] == "VAT" and obj["targets"]["mod_b.VAT"]["intended_use"] == "synthetic-demo"


def test_docs_state_the_schema_version_and_columns() -> None:
    doc = (ROOT / "docs" / "outputs.md").read_text()
    assert f"**Schema version: {SCHEMA_VERSION}**" in doc
    assert ",".join(LONG_HEADER) in doc  # the long header, verbatim
    assert all(f"| `{c}` |" in doc for c in WIDE_LEAD)
    example = next(line for line in doc.splitlines() if line.startswith("name,eid,instance,qc_status") and "module_test" in line)
    layout = layout_for([("module_test", "1.0", [("AtlasVatVolume", "L", 22407), ("age", "years", None)])])
    assert example == ",".join(csv_header(layout))
    assert re.search(rf"^- \*\*{SCHEMA_VERSION}\*\*", doc, re.M)


# --------------------------------------------------------------------------- explicit modules, end to end


def _install(name: str, use: str, targets: list[tuple[str, str]]) -> None:
    from mimir.utils.paths import modules_dir

    specs = [TargetSpec(name=t, unit=u, field=None, divisor=1.0, mean=10.0, sd=2.0, calibration=1.0) for t, u in targets]
    write_module(
        modules_dir() / name, name=name, version="1.0", targets=specs,
        state_dicts=[random_resnet_state(len(specs), 8, seed=len(name))], intended_use=use,
    )


@pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")
def test_default_modules_skip_demos_and_columns_ignore_other_installs(tmp_path: Path) -> None:
    _install("demo-like", "synthetic-demo", [("weight_kg", "kg")])
    (npy,) = save_images(tmp_path / "in", ["1000001_20201_2_0"])
    r = runner.invoke(_cli(), ["predict", str(npy), "-o", str(tmp_path / "none.csv"), "--device", "cpu"])
    assert r.exit_code == 1
    (line,) = r.stderr.strip().splitlines()
    assert "no research module is installed" in line and "fetch-weights" in line and "-m phantom-demo" in line

    _install("real", "research", [("weight_kg", "kg"), ("VAT", "L")])
    out = tmp_path / "p.csv"
    r = runner.invoke(_cli(), ["predict", str(npy), "-o", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    header = out.read_text().splitlines()[0].split(",")
    assert header == [*WIDE_LEAD, "real_version", "real_intended_use", "real_ood_score", *_cols("weight_kg", "kg"), *_cols("VAT", "L")]

    # a third module installed: the columns of `-m real` do not change
    _install("another", "research", [("weight_kg", "kg")])
    out2 = tmp_path / "p2.csv"
    r = runner.invoke(_cli(), ["predict", str(npy), "-m", "real", "-o", str(out2), "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    assert out2.read_text().splitlines()[0].split(",") == header
    # without -m, two installed modules sharing a target would make the columns depend on what is
    # installed (which one keeps the plain name): refused in one line that says to name them
    r = runner.invoke(_cli(), ["predict", str(npy), "-o", str(tmp_path / "p3.csv"), "--device", "cpu"])
    assert r.exit_code == 1 and not (tmp_path / "p3.csv").exists()
    (line,) = r.stderr.strip().splitlines()
    assert "installed modules another and real both predict weight_kg" in line and "-m another -m real" in line

    # a demo module runs when named, and is marked synthetic in CSV, JSON and on screen
    out3, out4 = tmp_path / "d.csv", tmp_path / "d.json"
    r = runner.invoke(_cli(), ["predict", str(npy), "-m", "demo-like", "-o", str(out3), "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    assert "demo-like is a synthetic demonstration module" in r.stderr
    (row,) = csv.DictReader(out3.open())
    assert row["demo-like_intended_use"] == "synthetic-demo"
    r = runner.invoke(_cli(), ["predict", str(npy), "-m", "demo-like", "-o", str(out4), "--device", "cpu"])
    (subject,) = json.loads(out4.read_text())
    assert subject["modules"]["demo-like"]["intended_use"] == "synthetic-demo"
    assert subject["targets"]["weight_kg"]["intended_use"] == "synthetic-demo"
    r = runner.invoke(_cli(), ["predict", str(npy), "-m", "demo-like", "--device", "cpu"])
    assert "synthetic demo" in r.stdout and "mean nothing for real UK Biobank images" in r.stdout

    # --format long through the CLI; and refused for JSON
    out5 = tmp_path / "long.csv"
    r = runner.invoke(_cli(), ["predict", str(npy), "-m", "real", "-m", "another", "-o", str(out5), "--format", "long",
                               "--device", "cpu", "--ci", "0.8"])
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(out5.open()))
    assert [(x["module"], x["target"], x["level"]) for x in rows] == [
        ("real", "weight_kg", "0.8"), ("real", "VAT", "0.8"), ("another", "weight_kg", "0.8")
    ]
    r = runner.invoke(_cli(), ["predict", str(npy), "-m", "real", "-o", str(tmp_path / "x.json"), "--format", "long"])
    assert r.exit_code == 1 and "--format long is a CSV layout" in r.stderr


def test_the_demo_module_is_marked_synthetic_demo() -> None:
    from mimir.models.registry import builtin_modules_dir
    from mimir.models.modules import read_module

    spec = read_module(builtin_modules_dir() / "phantom-demo")
    assert spec.intended_use == "synthetic-demo" and spec.synthetic


def test_legacy_free_text_intended_use_is_read(tmp_path: Path) -> None:
    from mimir.models.modules import spec_from_json

    base = {
        "format": "mimir-module", "format_version": 1, "name": "m", "version": "1",
        "architecture": {"name": "resnet50", "width": 8},
        "targets": [{"name": "x", "unit": "L", "field": None, "divisor": 1.0,
                     "standardization": {"mean": 0.0, "sd": 1.0}, "calibration_factor": 1.0}],
        "members": [{"file": "member_0.safetensors", "sha256": "0" * 64}],
    }
    assert spec_from_json(base).intended_use == "research"
    old = spec_from_json({**base, "intended_use": "Synthetic demonstration only: phantoms."})
    assert (old.intended_use, old.intended_use_note) == ("synthetic-demo", "Synthetic demonstration only: phantoms.")
    research = spec_from_json({**base, "intended_use": "Research use on UK Biobank."})
    assert (research.intended_use, research.intended_use_note) == ("research", "Research use on UK Biobank.")
    with pytest.raises(ModuleError, match="intended_use"):
        spec_from_json({**base, "intended_use": 3})


def test_check_layout() -> None:
    from mimir.outputs.writers import check_layout

    assert check_layout("long", "x.csv") == "long"
    for bad, path in (("tidy", None), ("long", "x.json")):
        with pytest.raises(UsageError):
            check_layout(bad, path)


def test_image_contract_doc_cites_tests_that_exist() -> None:
    doc = (ROOT / "docs" / "image-contract.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", doc)
    assert len(cited) >= 6
    for path, name in cited:
        text = (ROOT / path).read_text()
        if name:
            assert f"def {name}(" in text, (path, name)
    for name in re.findall(r"`(test_\w+)`", doc):
        assert any(f"def {name}(" in (ROOT / p).read_text() for p, _ in cited), name
    from mimir.preprocessing import fusion, projection
    from mimir.preprocessing.pipeline import PIPELINE_VERSION

    assert PIPELINE_VERSION == "mimir-v1" and "2.23214293 x 2.23214293 x 3.0 mm" in doc
    assert tuple(fusion.OUT_SPACING) == (2.23214293, 2.23214293, 3.0)
    assert (fusion.MAX_OVERLAP, fusion.TRIM_SLICES, projection.BED_ROWS) == (8, 4, 22)
