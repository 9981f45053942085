"""Predictions: the formulas, the ensemble mixture, outputs, and bad inputs."""

from __future__ import annotations

import csv
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

from mimir.models.catalogue import catalogue_by_name
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from conftest_models import (
    DEFAULT_TARGETS,
    make_original_module,
    no_builtin_modules,  # noqa: F401  (fixture)
    random_images,
    random_resnet_state,
    reference_prediction,
    save_images,
    single_torch_thread,  # noqa: F401  (fixture)
    zip_folder,
)

from mimir.errors import UsageError
from mimir.inference.predictor import Predictor
from mimir.models.modules import TargetSpec, write_module
from mimir.inference.predictions import (
    SubjectResult,
    convert_output,
    interval,
    layout_for,
    mixture,
    parse_subject_name,
    z_value,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")
runner = CliRunner()
Z95 = 1.959963984540054


def _cli():
    from mimir.cli import app

    return app


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access outside fetch-weights")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _specs(targets=DEFAULT_TARGETS) -> list[TargetSpec]:
    return [TargetSpec(name=n, field=f, unit=u, divisor=d, mean=m, sd=s, calibration=c) for n, f, u, d, m, s, c in targets]


# --------------------------------------------------------------------------- the formulas, end to end


def test_original_module_import_and_predict_match_formulas(tmp_path: Path, no_network) -> None:
    """A full-width MIMIR-format module (divisor 1000 on one target), imported with --from."""
    src = tmp_path / "module_test"
    sd = make_original_module(src, width=64, seed=7)
    archive = zip_folder(src, tmp_path / "module_test.zip")
    r = runner.invoke(_cli(), ["fetch-weights", "--from", str(archive)])
    assert r.exit_code == 0, r.stderr
    assert "installed module_test 1.0 (3 targets, 1 member)" in r.stdout

    names = ["1000001_20201_2_0", "scan_b"]
    paths = save_images(tmp_path / "img", names, seed=3)
    images = np.stack([np.load(p) for p in paths])
    ref_mean, ref_var = reference_prediction([sd], images)

    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    r = runner.invoke(_cli(), ["predict", *map(str, paths), "-m", "module_test", "-o", str(out_csv), "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(out_csv.open()))
    header = list(rows[0])
    assert header == [
        "name", "eid", "instance", "qc_status", "qc_flags", "ci_level",
        "module_test_version", "module_test_intended_use", "module_test_ood_score",
        *[f"{n}_{kind}_in_{u}" for n, _, u, *_ in DEFAULT_TARGETS for kind in ("mean", "variance", "ci_low", "ci_high")],
    ]
    assert header[6 + 3 : 6 + 3 + 4] == [
        "AtlasVatVolume_mean_in_L",
        "AtlasVatVolume_variance_in_L",
        "AtlasVatVolume_ci_low_in_L",
        "AtlasVatVolume_ci_high_in_L",
    ]
    assert {(r_["ci_level"], r_["module_test_version"], r_["module_test_intended_use"]) for r_ in rows} == {
        ("0.95", "1.0", "research")
    }
    assert [(r_["name"], r_["eid"], r_["instance"]) for r_ in rows] == [
        ("1000001_20201_2_0", "1000001", "2"),
        ("scan_b", "", ""),
    ]
    for i, row in enumerate(rows):
        for j, (name, _, unit, *_) in enumerate(DEFAULT_TARGETS):
            mean = float(row[f"{name}_mean_in_{unit}"])
            var = float(row[f"{name}_variance_in_{unit}"])
            assert mean == pytest.approx(ref_mean[i, j], rel=1e-5)
            assert var == pytest.approx(ref_var[i, j], rel=1e-4)
            # intervals are cut to the catalogue's support of the target (volumes, ages >= 0; percentages 0-100)
            low, high = catalogue_by_name()[name].support
            want_low = max(mean - Z95 * math.sqrt(var), low)
            want_high = min(mean + Z95 * math.sqrt(var), 100.0 if high is not None else math.inf)
            assert float(row[f"{name}_ci_low_in_{unit}"]) == pytest.approx(want_low, rel=1e-9, abs=1e-9)
            assert float(row[f"{name}_ci_high_in_{unit}"]) == pytest.approx(max(want_high, low), rel=1e-9, abs=1e-9)

    r = runner.invoke(
        _cli(), ["predict", *map(str, paths), "-o", str(out_json), "--ci", "0.9", "--device", "cpu", "--threads", "1"]
    )
    assert r.exit_code == 0, r.stderr
    doc = json.loads(out_json.read_text())
    assert [s["name"] for s in doc] == names and doc[0]["eid"] == 1000001 and doc[0]["instance"] == 2
    vat = doc[0]["targets"]["AtlasVatVolume"]
    assert set(vat) == {
        "value", "variance", "sd", "ci_low", "ci_high", "level", "unit", "field", "target", "module", "module_version",
        "intended_use",
    }
    assert doc[0]["ci_level"] == 0.9 and doc[0]["modules"] == {"module_test": {"version": "1.0", "intended_use": "research"}}
    assert doc[0]["qc"] == {"status": None, "flags": []} and doc[0]["ood_scores"] == {"module_test": None}  # no reference
    assert (vat["unit"], vat["field"], vat["module"], vat["module_version"], vat["level"]) == ("L", 22407, "module_test", "1.0", 0.9)
    assert vat["value"] == pytest.approx(ref_mean[0, 0], rel=1e-5)
    assert vat["sd"] == pytest.approx(math.sqrt(ref_var[0, 0]), rel=1e-4)
    z90 = 1.6448536269514722
    assert vat["ci_high"] - vat["value"] == pytest.approx(z90 * vat["sd"], rel=1e-9)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_of_copies_and_of_different_members(tmp_path: Path) -> None:
    members = [random_resnet_state(3, 8, seed) for seed in (11, 12, 13)]
    write_module(tmp_path / "one", name="one", version="1", targets=_specs(), state_dicts=members[:1])
    write_module(tmp_path / "copies", name="copies", version="1", targets=_specs(), state_dicts=[members[0]] * 3)
    write_module(tmp_path / "mix", name="mix", version="1", targets=_specs(), state_dicts=members)
    images = random_images(4, seed=5)

    p = Predictor([str(tmp_path / n) for n in ("one", "copies", "mix")], device="cpu", precision="fp32")
    (m1, v1), (mc, vc), (mm, vm) = p.predict_arrays(images)
    np.testing.assert_allclose(mc, m1, rtol=1e-12)
    np.testing.assert_allclose(vc, v1, rtol=1e-12)

    ref_mean, ref_var = reference_prediction(members, images)
    np.testing.assert_allclose(mm, ref_mean, rtol=1e-5)
    np.testing.assert_allclose(vm, ref_var, rtol=1e-4)
    # and from mimir's own per-member numbers
    singles = [reference_prediction([m], images) for m in members]
    means = np.stack([s[0] for s in singles])
    np.testing.assert_allclose(vm, np.stack([s[1] for s in singles]).mean(0) + means.var(0), rtol=1e-4)

    # same target names in several modules: the first module keeps the plain names, later ones are keyed by module
    assert [t.key for t in p.layout] == [
        "AtlasVatVolume", "age", "liverFat", *(f"{m}.{t}" for m in ("copies", "mix") for t in ("AtlasVatVolume", "age", "liverFat"))
    ]
    assert p.columns()[6:15] == [f"{m}_{c}" for m in ("one", "copies", "mix") for c in ("version", "intended_use", "ood_score")]
    assert p.columns()[15] == "AtlasVatVolume_mean_in_L" and p.columns()[15 + 12] == "copies.AtlasVatVolume_mean_in_L"
    ident = p.identity()
    assert [i["name"] for i in ident] == ["one", "copies", "mix"] and len(ident[2]["members"]) == 3
    results = p.predict_images(images[:2], ["1000002_20201_3_0.zip", "x.npy"])
    assert results[0].eid == 1000002 and results[0].instance == 3
    assert len(results[0].predictions) == 9


# --------------------------------------------------------------------------- numerics (properties)


finite = st.floats(-5, 5, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 6),
    means=arrays(np.float64, (6, 3), elements=st.floats(-1e3, 1e3)),
    variances=arrays(np.float64, (6, 3), elements=st.floats(1e-6, 1e3)),
)
def test_mixture_properties(k: int, means: np.ndarray, variances: np.ndarray) -> None:
    m, v = means[:k], variances[:k]
    mean, var = mixture(m, v)
    # the moments of a uniform mixture: E[X], E[X^2] - E[X]^2
    np.testing.assert_allclose(mean, m.mean(0), rtol=1e-12, atol=1e-9)
    second = (v + m**2).mean(0)
    assert np.all(np.abs(var - (second - mean**2)) <= 1e-6 * (1 + np.abs(second)))
    assert np.all(var >= v.mean(0) - 1e-9)
    assert np.all((mean >= m.min(0) - 1e-9) & (mean <= m.max(0) + 1e-9))
    # order does not matter; copies of one member give that member
    rev = mixture(m[::-1], v[::-1])
    np.testing.assert_allclose(rev[0], mean, rtol=1e-12, atol=1e-9)
    same = mixture(np.repeat(m[:1], k, 0), np.repeat(v[:1], k, 0))
    np.testing.assert_allclose(same[0], m[0], rtol=1e-12)
    np.testing.assert_allclose(same[1], v[0], rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    raw=arrays(np.float64, (2, 4), elements=finite),
    mu=st.floats(-100, 100),
    sd=st.floats(0.01, 100),
    cal=st.floats(0.1, 10),
    div=st.sampled_from([1.0, 10.0, 1000.0, 0.5, -2.0]),
)
def test_convert_output_formula(raw, mu, sd, cal, div) -> None:
    mean, var = convert_output(raw, [mu, mu], [sd, sd], [cal, cal], [div, div])
    r = raw.reshape(2, 2, 2)
    np.testing.assert_allclose(mean, (r[..., 0] * sd + mu) / div, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, np.exp(r[..., 1]) * sd**2 * cal / div**2, rtol=1e-12)
    # the variance is in the squared unit: scaling the divisor by 10 divides it by 100
    _, var10 = convert_output(raw, [mu, mu], [sd, sd], [cal, cal], [div * 10, div * 10])
    np.testing.assert_allclose(var10, var / 100, rtol=1e-12)


def test_intervals_and_names() -> None:
    assert z_value(0.95) == pytest.approx(Z95, abs=1e-12)
    low, high = interval(10.0, 4.0, 0.95)
    assert (low, high) == pytest.approx((10 - 2 * Z95, 10 + 2 * Z95))
    for bad in (0.0, 1.0, -0.5, 95):
        with pytest.raises(ValueError):
            z_value(bad)
    assert parse_subject_name("/data/1234567_20201_2_0.zip") == ("1234567_20201_2_0", 1234567, 2)
    assert parse_subject_name("1234567_20201_3_0.npy") == ("1234567_20201_3_0", 1234567, 3)
    assert parse_subject_name("subject.a.zip") == ("subject", None, None)
    lay = layout_for([("a", "1", [("x", "L", 1), ("y", "kg", None)]), ("b", "2", [("x", "L", 1)])])
    assert [t.key for t in lay] == ["x", "y", "b.x"]  # the first module in request order keeps the plain name
    rec = SubjectResult.for_input("p.npy")
    assert rec.to_row(lay)["x_mean_in_L"] == "" and rec.to_row(lay)["b.x_mean_in_L"] == ""


# --------------------------------------------------------------------------- CLI behaviour


@pytest.fixture
def small_module(tmp_path: Path) -> str:
    src = tmp_path / "small_src"
    make_original_module(src, width=8, seed=1)
    r = runner.invoke(_cli(), ["fetch-weights", "small", "--from", str(src)])
    assert r.exit_code == 0, r.stderr
    return "small"


def test_table_output(tmp_path: Path, small_module: str, no_network) -> None:
    save_images(tmp_path / "in", ["1000003_20201_2_0"])
    r = runner.invoke(_cli(), ["predict", str(tmp_path / "in"), "--device", "cpu"])  # a folder of inputs
    assert r.exit_code == 0, r.stderr
    for text in ("1000003_20201_2_0", "AtlasVatVolume", "liverFat", "95% CI", "years", "small"):
        assert text in r.stdout


def test_bad_inputs_are_reported_and_good_ones_written(tmp_path: Path, small_module: str, no_network) -> None:
    good = save_images(tmp_path, ["good_a", "good_b"])
    wrong = tmp_path / "wrong_shape.npy"
    np.save(wrong, np.zeros((3, 128, 128), np.uint8))
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY garbage")
    notzip = tmp_path / "1000004_20201_2_0.zip"
    notzip.write_bytes(b"this is not a zip archive")
    missing = tmp_path / "missing.zip"
    out = tmp_path / "out.csv"
    args = [str(good[0]), str(wrong), str(missing), str(garbage), str(notzip), str(good[1])]
    r = runner.invoke(_cli(), ["predict", *args, "-o", str(out), "--device", "cpu", "-b", "2"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 4, r.stderr
    assert any("missing.zip: file not found" in e for e in errors)
    assert any("wrong_shape.npy" in e and "(3, 128, 128)" in e for e in errors)
    assert any("garbage.npy" in e for e in errors)
    assert any("1000004_20201_2_0.zip" in e for e in errors)
    assert "4 of 6 input(s) failed" in r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [row["name"] for row in rows] == ["good_a", "good_b"]

    # every input bad: exit 1 and nothing written
    out2 = tmp_path / "none.json"
    r = runner.invoke(_cli(), ["predict", str(missing), str(wrong), "-o", str(out2), "--device", "cpu"])
    assert r.exit_code == 1
    assert "nothing written" in r.stderr and not out2.exists()


def test_usage_errors(tmp_path: Path, small_module: str) -> None:
    (p,) = save_images(tmp_path, ["s"])
    cases = [
        (["--ci", "1.5"], "confidence level"),
        (["-o", str(tmp_path / "x.txt")], "unknown output format"),
        (["-m", "nope"], "nope: no such module is installed"),
        (["--device", "tpu"], "unknown device"),
        (["--device", "cpu", "--gpu", "1"], "contradicts"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda:0"], "cuda:0"))
    for extra, message in cases:
        r = runner.invoke(_cli(), ["predict", str(p), *extra])
        assert r.exit_code == 1, (extra, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (extra, r.stderr)


def test_tampered_module_is_refused_by_predict(tmp_path: Path, small_module: str) -> None:
    from mimir.utils.paths import modules_dir

    member = modules_dir() / "small" / "member_0.safetensors"
    data = bytearray(member.read_bytes())
    data[1000] ^= 1
    member.write_bytes(bytes(data))
    (p,) = save_images(tmp_path, ["s"])
    r = runner.invoke(_cli(), ["predict", str(p), "--device", "cpu"])
    assert r.exit_code == 1
    assert "small: member member_0.safetensors fails verification" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_no_module_installed() -> None:
    with pytest.raises(UsageError, match="no research module is installed"):
        Predictor(device="cpu")


def test_zip_inputs(tmp_path: Path, small_module: str, no_network) -> None:
    synth = pytest.importorskip("mimir.synth")
    if not hasattr(synth, "generate_subject"):
        pytest.skip("mimir.synth.generate_subject not available yet")
    subject = synth.generate_subject(tmp_path / "subj", seed=1, small=True)
    good = Path(subject.zip_path)
    broken = tmp_path / "broken_20201_2_0.zip"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out.json"
    r = runner.invoke(_cli(), ["predict", str(good), str(broken), "-o", str(out), "--device", "cpu"])
    assert r.exit_code == 2, r.stderr
    assert "broken_20201_2_0.zip" in r.stderr
    doc = json.loads(out.read_text())
    assert [s["name"] for s in doc] == [good.name.split(".")[0]]


def test_bf16_autocast_stays_close_to_fp32(tmp_path: Path) -> None:
    """The CUDA default (bf16 backbone, fp32 head), exercised on the CPU."""
    write_module(tmp_path / "m", name="m", version="1", targets=_specs(), state_dicts=[random_resnet_state(3, 16, 4)])
    images = random_images(2, seed=9)
    (m32, v32), = Predictor([str(tmp_path / "m")], device="cpu", precision="fp32").predict_arrays(images)
    p16 = Predictor([str(tmp_path / "m")], device="cpu", precision="bf16")
    assert p16.precision == "bf16" and not p16.channels_last
    (m16, v16), = p16.predict_arrays(images)
    np.testing.assert_allclose(m16, m32, rtol=0.02)
    np.testing.assert_allclose(v16, v32, rtol=0.05)
