"""Module format: conversion from the original MIMIR layout, validation, hashes, registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest_models import DEFAULT_TARGETS, make_original_module, no_builtin_modules, random_resnet_state, single_torch_thread  # noqa: F401

from mimir.models import registry
from mimir.errors import ModuleError
from mimir.utils.hashing import file_sha256
from mimir.models.modules import (
    TargetSpec,
    convert_original,
    load_networks,
    read_module,
    spec_from_json,
    verify_module,
    write_module,
)
from mimir.utils.paths import modules_dir
from mimir.models.registry import builtin_modules_dir as packaged_builtin_dir

pytestmark = pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")



def _targets(n: int = 2) -> list[TargetSpec]:
    return [TargetSpec(name=f"t{i}", unit="kg", field=None, mean=1.0, sd=2.0) for i in range(n)]


def test_convert_original_records_everything(tmp_path: Path) -> None:
    src = tmp_path / "module_test"
    sd = make_original_module(src, width=8)
    spec = convert_original(src, tmp_path / "out", name="module_test", version="2.0")
    data = json.loads((tmp_path / "out" / "module.json").read_text())
    assert data["format"] == "mimir-module" and data["format_version"] == 1
    assert data["name"] == "module_test" and data["version"] == "2.0"
    assert data["architecture"] == {"name": "resnet50", "width": 8, "output": "mean_logvar"}
    assert data["input"]["pipeline"] == "mimir-v1"
    assert data["description"] and data["intended_use"]
    vat = data["targets"][0]
    assert vat["name"] == "AtlasVatVolume" and vat["field"] == 22407 and vat["unit"] == "L"
    assert vat["divisor"] == 1000.0 and vat["calibration_factor"] == 1.3
    assert vat["standardization"] == {"mean": 3500.0, "sd": 1500.0}
    # published metrics come from the catalogue
    assert vat["metrics"]["cv"]["icc"] == 0.995 and vat["metrics"]["test"]["n"] == 14772
    assert data["targets"][1]["field"] is None
    # hashes: members and the original files
    member = data["members"][0]
    assert member["sha256"] == file_sha256(tmp_path / "out" / member["file"])
    orig = data["source"]["original_files"]
    assert orig["snapshot.pth.tar"] == file_sha256(src / "snapshot.pth.tar")
    assert set(orig) == {"snapshot.pth.tar", "metadata.txt", "standardization_parameters.txt", "calibration_factors.txt"}
    # weights survive the conversion bit for bit
    (net,) = load_networks(spec)
    for k, v in sd.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert spec.identity()["members"] == [member["sha256"]]


def test_convert_refuses_inconsistent_original(tmp_path: Path) -> None:
    src = tmp_path / "m"
    make_original_module(src, width=8)
    (src / "calibration_factors.txt").write_text("calibration_factor\n1.0\n1.0\n")
    with pytest.raises(ModuleError, match="calibration_factors.txt: has 2 factors, metadata.txt has 3 targets"):
        convert_original(src, tmp_path / "out")
    make_original_module(src, width=8, state_dict=random_resnet_state(2, 8, 0))
    with pytest.raises(ModuleError, match="network gives 4 outputs but metadata.txt lists 3 targets"):
        convert_original(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tampered_member_is_refused_at_load(tmp_path: Path) -> None:
    sd = random_resnet_state(2, 8, 1)
    spec = write_module(tmp_path / "demo", name="demo", version="1", targets=_targets(), state_dicts=[sd, sd])
    verify_module(spec)
    member = tmp_path / "demo" / "member_1.safetensors"
    data = bytearray(member.read_bytes())
    data[-10] ^= 0xFF
    member.write_bytes(bytes(data))
    with pytest.raises(ModuleError) as exc:
        load_networks(read_module(tmp_path / "demo"))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("demo: member member_1.safetensors fails verification: its sha256 starts")
    assert msg.endswith("The file is damaged or was changed; reinstall it: mimir fetch-weights demo --force, "
                        "or, for a module downloaded in a browser or of your own, "
                        "mimir fetch-weights demo --from FILE.zip --force")
    with pytest.raises(ModuleError, match="fails verification"):
        verify_module(read_module(tmp_path / "demo"))
    member.unlink()
    with pytest.raises(ModuleError, match="member member_1.safetensors is missing"):
        load_networks(read_module(tmp_path / "demo"))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"format": "other"}, "not a mimir module"),
        ({"format_version": 99}, "newer than this mimir"),
        ({"targets": []}, "no targets"),
        ({"members": [{"file": "../x.safetensors", "sha256": "0" * 64}]}, "invalid member file"),
        ({"members": [{"file": "m.safetensors", "sha256": "xyz"}]}, "invalid sha256"),
        ({"architecture": {"name": "vgg16"}}, "unknown architecture"),
        ({"name": "bad name"}, "invalid module name"),
    ],
)
def test_module_json_validation(tmp_path: Path, patch: dict, message: str) -> None:
    spec = write_module(tmp_path / "ok", name="ok", version="1", targets=_targets(), state_dicts=[random_resnet_state(2, 8, 0)])
    data = spec.to_json() | patch
    with pytest.raises(ModuleError, match=message):
        spec_from_json(data)


def test_bad_target_values_are_refused() -> None:
    base = {
        "format": "mimir-module", "format_version": 1, "name": "x", "version": "1",
        "architecture": {"name": "resnet50", "width": 8},
        "members": [{"file": "m.safetensors", "sha256": "0" * 64}],
    }
    t = {"name": "a", "unit": "L", "divisor": 1, "standardization": {"mean": 0, "sd": 0}, "calibration_factor": 1}
    with pytest.raises(ModuleError, match="sd must be > 0"):
        spec_from_json(base | {"targets": [t]})
    with pytest.raises(ModuleError, match="divisor must not be 0"):
        spec_from_json(base | {"targets": [t | {"standardization": {"mean": 0, "sd": 1}, "divisor": 0}]})


def test_registry_install_builtin_and_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builtin = tmp_path / "builtin"
    write_module(builtin / "demo", name="demo", version="0.1", targets=_targets(), state_dicts=[random_resnet_state(2, 8, 2)])
    monkeypatch.setattr(registry, "builtin_modules_dir", lambda: builtin)
    scan = registry.scan_modules()
    assert [(s.name, s.builtin) for s in scan.modules] == [("demo", True)]

    # an installed module of the same name hides the built-in one
    write_module(tmp_path / "src" / "demo", name="demo", version="0.2", targets=_targets(), state_dicts=[random_resnet_state(2, 8, 3)])
    registry.install_module(tmp_path / "src" / "demo")
    assert [(s.name, s.version, s.builtin) for s in registry.installed_modules()] == [("demo", "0.2", False)]
    with pytest.raises(ModuleError, match="already installed"):
        registry.install_module(tmp_path / "src" / "demo")
    assert registry.get_module("demo").version == "0.2"
    assert registry.get_module(str(builtin / "demo")).version == "0.1"  # by folder
    with pytest.raises(ModuleError, match="nope: no such module is installed. Installed modules: demo"):
        registry.get_module("nope")
    with pytest.raises(ModuleError) as info:  # a published module: a browser download, then --from
        registry.get_module("module_age")
    assert str(info.value) == (
        "module_age: no such module is installed. Download it in a browser "
        "(https://uppsala.box.com/s/k04jl8npr3792urscue2u4ov47jmeahb), then install it with: "
        "mimir fetch-weights module_age --from FILE.zip")
    registry.remove_module("demo")
    assert [(s.name, s.builtin) for s in registry.installed_modules()] == [("demo", True)]


def test_builtin_modules_live_in_the_package() -> None:
    import mimir

    assert packaged_builtin_dir() == Path(mimir.__file__).parent / "data" / "modules"
    assert registry.search_path()[0] == (modules_dir(), False)


def test_failed_install_leaves_registry_unchanged(tmp_path: Path) -> None:
    write_module(tmp_path / "a" / "keep", name="keep", version="1", targets=_targets(), state_dicts=[random_resnet_state(2, 8, 4)])
    registry.install_module(tmp_path / "a" / "keep")
    before = sorted(os.listdir(modules_dir()))
    bad = tmp_path / "b" / "keep"
    write_module(bad, name="keep", version="2", targets=_targets(), state_dicts=[random_resnet_state(2, 8, 5)])
    (bad / "member_0.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ModuleError, match="fails verification"):
        registry.install_module(bad, force=True)
    assert sorted(os.listdir(modules_dir())) == before  # no staging leftovers
    assert registry.get_module("keep").version == "1"
    verify_module(registry.get_module("keep"))
    # the original MIMIR layout is converted on install, named after its folder
    make_original_module(tmp_path / "module_x", width=8, targets=DEFAULT_TARGETS[:1])
    spec = registry.install_module(tmp_path / "module_x")
    assert (spec.name, spec.version, spec.path) == ("module_x", "1.0", modules_dir() / "module_x")


def test_light_imports_do_not_load_torch_or_requests() -> None:
    code = (
        "import sys, mimir, mimir.models.targets, mimir.models.registry, mimir.inference.predictions, mimir.outputs.writers, mimir.models.modules,"
        " mimir.inference.predictor, mimir.models.fetch, mimir.utils.devices;"
        "mimir.models.targets.list_targets();"
        "import mimir.cli;"
        "bad = [m for m in ('torch', 'requests', 'safetensors') if m in sys.modules];"
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]


def test_written_module_has_ordinary_permissions(tmp_path) -> None:
    import stat

    from conftest_models import random_resnet_state

    umask = os.umask(0)
    os.umask(umask)
    dest = tmp_path / "m"
    write_module(
        dest, name="m", version="1", targets=_targets(1), state_dicts=[random_resnet_state(1, width=8, seed=0)],
    )
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask
    for f in dest.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask


def test_install_hints_say_the_real_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A downloadable module installs by name; a browser-only one from its file; unknown names get none."""
    entries = [registry.ManifestEntry(name="auto", version="1", url="https://example.org/auto.zip", sha256="0" * 64),
               registry.ManifestEntry(name="manual", version="1", page="https://example.org/page"),
               registry.ManifestEntry(name="nowhere", version="1")]
    monkeypatch.setattr(registry, "_safe_manifest", lambda: entries)
    assert registry.install_hint("auto") == "Install it with: mimir fetch-weights auto"
    assert registry.install_hint("manual") == (
        "Download it in a browser (https://example.org/page), then install it with: "
        "mimir fetch-weights manual --from FILE.zip")
    assert registry.install_hint("nowhere") == (
        "Download it in a browser (mimir fetch-weights --list says where), then install it with: "
        "mimir fetch-weights nowhere --from FILE.zip")
    assert registry.install_hint("other") is None
