"""``mimir batch --volumes``: volumes written by the workers, resumed, failures reported; ``mimir preprocess --volumes``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

from test_batch import batch, make_module, read_csv, synth_zips  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mimir.cli import app  # noqa: E402
from mimir.preprocessing.fusion import fuse_stations  # noqa: E402
from mimir.preprocessing.pipeline import read_stations  # noqa: E402

COMMON = ["--device", "cpu", "-b", "1", "--no-cache"]


def _stems(folder: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in folder.glob("*.nii.gz"):
        stem, _, contrast = p.name[: -len(".nii.gz")].rpartition("_")
        out.setdefault(stem, set()).add(contrast)
    return out


@pytest.mark.slow
def test_batch_writes_volumes_resumes_and_reports_failures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = synth_zips(data, [61, 62])
    synth_zips(data, [63], "truncated")
    module = make_module(tmp_path / "mod")
    out, vol = tmp_path / "out", tmp_path / "vol"
    args = [str(data), "-o", str(out), "-m", module, *COMMON, "-w", "2", "--volumes", str(vol)]

    r = batch(args)
    assert r.exit_code == 2, r.stderr  # the truncated zip failed, and is reported
    assert _stems(vol) == {z.name[:-4]: {"water", "fat", "ff"} for z in good}
    errors = read_csv(out / "errors.csv")
    assert [e["name"] for e in errors] == ["1000063_20201_2_0"]
    assert len(read_csv(out / "predictions.csv")) == 2
    run = json.loads((out / "run.json").read_text())
    assert run["volumes"]["contrasts"] == ["water", "fat", "ff"]
    water = good[0]
    from nibabel import load

    img = load(str(vol / f"{water.name[:-4]}_water.nii.gz"))
    assert np.array_equal(np.asanyarray(img.dataobj), fuse_stations(read_stations(water)).water)

    # Resume: nothing to do; the files are not rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in vol.iterdir()}
    r = batch(args)
    assert "nothing to do" in r.stdout + r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in vol.iterdir()} == mtimes

    # A subject whose sidecar is gone (or stale) is converted again, and only that one.
    (vol / f"{good[1].name[:-4]}_volumes.json").unlink()
    r = batch(args)
    assert r.exit_code == 2
    assert json.loads((out / "run.json").read_text())["counts"]["processed"] == 1
    assert (vol / f"{good[1].name[:-4]}_volumes.json").exists()
    assert {p.name: p.stat().st_mtime_ns for p in vol.iterdir() if good[0].name[:-4] in p.name} == {
        n: t for n, t in mtimes.items() if good[0].name[:-4] in n}


def test_batch_volumes_usage_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synth_zips(data, [64])
    r = batch([str(data), "-o", str(tmp_path / "o"), "--contrasts", "ff"])
    assert r.exit_code == 1 and "--contrasts applies to --volumes only" in r.stderr
    r = batch([str(data), "-o", str(tmp_path / "o"), "--volumes", str(tmp_path / "v"), "--engine", "ray"])
    assert r.exit_code == 1 and "local engine only" in r.stderr
    (tmp_path / "file").write_text("x")
    r = batch([str(data), "-o", str(tmp_path / "o"), "--volumes", str(tmp_path / "file")])
    assert r.exit_code == 1 and "volumes folder" in r.stderr


def test_preprocess_volumes_cli(tmp_path: Path) -> None:
    zip_path = synth_zips(tmp_path / "data", [65])[0]
    runner = CliRunner()
    vol = tmp_path / "vol"
    r = runner.invoke(app, ["preprocess", str(zip_path), "--volumes", str(vol), "--contrasts", "water,in"])
    assert r.exit_code == 0, r.stderr
    assert _stems(vol) == {zip_path.name[:-4]: {"water", "in"}}
    assert not list(Path.cwd().glob(f"{zip_path.name[:-4]}.npy"))  # without -o, only the volumes
    r = runner.invoke(app, ["preprocess", str(zip_path), "--volumes", str(vol), "-o", str(tmp_path / "img")])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "img" / f"{zip_path.name[:-4]}.npy").exists()
    bad = tmp_path / "bad_20201_2_0.zip"
    bad.write_bytes(b"not a zip")
    r = runner.invoke(app, ["preprocess", str(bad), "--volumes", str(vol)])
    assert r.exit_code == 1 and "bad_20201_2_0.zip" in r.stderr
    shutil.rmtree(vol)
