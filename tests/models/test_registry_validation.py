"""Poisoned and broken modules: module.json schema bounds, nesting depth, members checked at import.

A module that cannot run is never installed; a broken installed module is
skipped with one warning line and never breaks the others.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest_models import DEFAULT_TARGETS, no_builtin_modules, random_resnet_state  # noqa: F401
from hostile import TORCH_CAP, mimir_capped
from typer.testing import CliRunner

from mimir.errors import ModuleError, UsageError
from mimir.models.modules import TargetSpec, read_module, write_module
from mimir.models.registry import install_module, read_manifest, scan_modules
from mimir.utils.limits import MAX_JSON_DEPTH, json_depth_ok, loads_guarded

runner = CliRunner()


@pytest.fixture(scope="module")
def good_module(tmp_path_factory) -> Path:
    """A valid width-8 module with 3 targets and one member (random weights)."""
    folder = tmp_path_factory.mktemp("mod") / "tiny"
    targets = [
        TargetSpec(name=n, field=f, unit=u, divisor=d, mean=m, sd=s, calibration=c)
        for n, f, u, d, m, s, c in DEFAULT_TARGETS
    ]
    write_module(folder, name="tiny", version="1", targets=targets, state_dicts=[random_resnet_state(3, 8, 1)])
    return folder


def poisoned(good: Path, dest: Path, edit) -> Path:
    """A copy of the good module whose module.json is changed by ``edit(dict)`` (or replaced by a string)."""
    shutil.copytree(good, dest)
    data = json.loads((good / "module.json").read_text())
    new = edit(data)
    text = new if isinstance(new, str) else json.dumps(data if new is None else new)
    (dest / "module.json").write_text(text, encoding="utf-8")
    return dest


def _cli():
    from mimir.cli import app

    return app


def _set(path: str, value):
    def edit(d):
        obj = d
        keys = path.split(".")
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        obj[keys[-1]] = value

    return edit


POISONS = [
    ("width-1e9", _set("architecture.width", 10**9), "architecture width is '1000000000'; expected a whole number"),
    ("width-float", _set("architecture.width", 8.5), "architecture width is '8.5'"),
    ("10k-targets", lambda d: d.update(targets=d["targets"] * 3334), "has 10002 targets; at most 256"),
    ("sd-1e300", _set("targets.0.standardization.sd", 1e300), "standardisation sd 1e+300 is outside"),
    ("mean-1e300", _set("targets.0.standardization.mean", -1e300), "standardisation mean -1e+300 is beyond"),
    ("calibration-1e9", _set("targets.1.calibration_factor", 1e9), "calibration factor 1e+09 is outside"),
    ("divisor-tiny", _set("targets.2.divisor", 1e-300), "divisor 1e-300 is outside"),
    ("sd-string", _set("targets.0.standardization.sd", "1"), "standardization sd must be a number"),
    ("nan", lambda d: json.dumps(d).replace('"calibration_factor": 1.3', '"calibration_factor": NaN'),
     "NaN is not a JSON number"),
    ("huge-number", lambda d: json.dumps(d).replace('"calibration_factor": 1.3', '"calibration_factor": 1e400'),
     "calibration factor is not finite"),
    ("nested", lambda d: "[" * 100_000 + "]" * 100_000, f"brackets nest deeper than {MAX_JSON_DEPTH} levels"),
    ("nested-in-metrics", lambda d: json.dumps(d).replace('"metrics": null', '"metrics": ' + "[" * 5000 + "]" * 5000, 1),
     "brackets nest deeper"),
    ("long-version", _set("version", "1" * 5000), "version is 5000 characters long"),
    ("65-members", lambda d: d.update(members=[dict(d["members"][0], file=f"m{i}.safetensors") for i in range(65)]),
     "has 65 members; at most 64"),
    ("support-reversed", _set("targets.0.support", [10, 1]), "support low is above high"),
    ("support-nan-like", _set("targets.0.support", ["x", None]), "support must be a number"),
]


@pytest.mark.parametrize("edit, expected", [p[1:] for p in POISONS], ids=[p[0] for p in POISONS])
def test_poisoned_module_json_is_refused_in_one_line(good_module, tmp_path, edit, expected):
    bad = poisoned(good_module, tmp_path / "tiny", edit)
    with pytest.raises(ModuleError) as err:
        read_module(bad)
    text = str(err.value)
    assert expected in text, text
    assert "\n" not in text and len(text) < 500 and "tiny/module.json" in text


def test_fields_of_other_issues_are_accepted(good_module, tmp_path):
    """intended_use (issue 10), per-target support (issue 11b) and unknown keys pass validation
    (ood_reference is validated by its own parser, mimir.models.ood)."""

    def edit(d):
        d["intended_use"] = "research"
        d["targets"][0]["support"] = [None, 120.5]
        d["targets"][1]["support"] = [40, 80]
        d["something_new"] = {"a": [1, 2, 3]}

    spec = read_module(poisoned(good_module, tmp_path / "tiny", edit))
    assert spec.intended_use == "research" and spec.num_targets == 3
    assert spec.targets[0].support == (None, 120.5) and spec.targets[1].support == (40.0, 80.0)


def test_import_refuses_poisoned_module_and_leaves_registry_as_it_was(good_module, tmp_path, no_builtin_modules):
    install_module(good_module)
    before = sorted(p.name for p in (Path(os.environ["MIMIR_HOME"]) / "modules").iterdir())
    bad = poisoned(good_module, tmp_path / "other" / "tiny2", lambda d: d.update(name="tiny2") or _set(
        "architecture.width", 10**9)(d))
    r = runner.invoke(_cli(), ["fetch-weights", "--from", str(bad)])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "architecture width is '1000000000'" in lines[0], r.stderr
    assert sorted(p.name for p in (Path(os.environ["MIMIR_HOME"]) / "modules").iterdir()) == before


def test_import_checks_members_against_module_json(good_module, tmp_path, no_builtin_modules):
    """module.json claims width 16 / 4 targets while the member is width 8 / 3 targets: never installed."""

    def edit(d):
        d["name"] = "liar"
        d["targets"].append(dict(d["targets"][0], name="extra"))

    bad = poisoned(good_module, tmp_path / "liar", edit)
    with pytest.raises(ModuleError) as err:
        install_module(bad)
    text = str(err.value)
    assert "member member_0.safetensors is a width-8 ResNet50 with 6 outputs" in text
    assert "4 targets" in text and "not installed" in text
    assert scan_modules().modules == []
    bad2 = poisoned(good_module, tmp_path / "liar2", lambda d: d.update(name="liar2") or _set(
        "architecture.width", 16)(d))
    with pytest.raises(ModuleError, match="module.json says width 16"):
        install_module(bad2)


@pytest.mark.slow
def test_broken_installed_module_is_skipped_with_one_warning(good_module, tmp_path, no_builtin_modules):
    """A poisoned module.json dropped into the registry by hand: predict uses the other module, one warning."""
    install_module(good_module)
    home = Path(os.environ["MIMIR_HOME"]) / "modules"
    poisoned(good_module, home / "nested", lambda d: "[" * 100_000 + "]" * 100_000)
    poisoned(good_module, home / "wide", lambda d: d.update(name="wide") or _set("architecture.width", 10**9)(d))
    liar = poisoned(good_module, home / "liar", lambda d: d.update(name="liar") or d["targets"].append(
        dict(d["targets"][0], name="extra")))
    assert liar.exists()
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((3, 256, 256), np.uint8))
    out = tmp_path / "out.csv"
    env = {"MIMIR_HOME": os.environ["MIMIR_HOME"], "MIMIR_CACHE": os.environ["MIMIR_CACHE"]}
    r = mimir_capped("predict", str(image), "--device", "cpu", "-o", str(out), cap=TORCH_CAP, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.error_lines if x.startswith("warning:")]
    assert len(warnings) == 3, r.stderr
    assert any("nested/module.json" in w and "brackets nest deeper" in w for w in warnings)
    assert any("wide/module.json" in w and "width" in w for w in warnings)
    assert any("liar" in w and "6 outputs" in w for w in warnings)
    header = out.read_text().splitlines()[0]
    assert "AtlasVatVolume_mean" in header and "extra_" not in header

    # list-targets and an explicit request for the broken one: one line, no traceback
    r2 = runner.invoke(_cli(), ["list-targets"])
    assert r2.exit_code == 0 and "Traceback" not in r2.stderr
    r3 = runner.invoke(_cli(), ["predict", str(image), "-m", "nested", "--device", "cpu"])
    assert r3.exit_code == 1 and len(r3.stderr.strip().splitlines()) == 1 and "brackets nest" in r3.stderr


def test_deeply_nested_manifest_is_one_line(tmp_path):
    m = tmp_path / "m.json"
    m.write_text("{" * 50_000 + "}" * 50_000)
    with pytest.raises(Exception) as err:
        read_manifest(m)
    assert "brackets nest deeper" in str(err.value) and "\n" not in str(err.value)
    r = runner.invoke(_cli(), ["fetch-weights", "--manifest", str(m), "--list"])
    assert r.exit_code == 1 and "Traceback" not in (r.stderr + r.stdout)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_manifest_and_module_json_are_refused(good_module, tmp_path):
    fifo = tmp_path / "m.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO"):
        read_manifest(fifo)
    mod = tmp_path / "tiny"
    shutil.copytree(good_module, mod)
    (mod / "module.json").unlink()
    os.mkfifo(mod / "module.json")
    with pytest.raises(ModuleError, match="FIFO"):
        read_module(mod)


def test_depth_guard_skips_strings():
    assert json_depth_ok('{"a": "[[[[[[[[[[", "b": [1]}', 2)
    assert json_depth_ok(r'{"a": "\"[[[[", "b": [1]}', 2)
    assert not json_depth_ok(r'{"a": "\\", "b": [[[1]]]}', 2)
    assert loads_guarded('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    with pytest.raises(ValueError, match="Infinity"):
        loads_guarded('{"a": Infinity}')
