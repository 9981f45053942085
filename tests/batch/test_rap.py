"""Running on the UK Biobank RAP, without the platform: a fake dxfuse mount (spaces, subfolders), ``dx find data``
listings, staging with verification, Parquet outputs, shard archives, merge, checkpoints, the launcher."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimir.batch.checkpoint import Checkpointer, pack_records, restore_records
from mimir.batch.inputs import InputFile, shard_of
from mimir.batch.launcher import BOOT_MIN, dx_run_commands, parse_instance, plan, subjects_per_hour
from mimir.batch.rap import Expected, discover_inputs
from mimir.batch.staging import READY, Stager, StagingFailed, copy_verified
from mimir.cli import app
from mimir.errors import UsageError
from mimir.synth import generate_subject

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

runner = CliRunner()
DIXON = "Bulk/Whole Body MRI/Dixon"
EIDS = [1000011, 1000022, 2000033, 2000044, 3000055]


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/mnt project/Bulk/Whole Body MRI/Dixon/<first 2 digits of eid>/<eid>_20201_2_0.zip`` (+ one visit-3 zip)."""
    root = tmp_path_factory.mktemp("rap") / "mnt project"
    for seed, eid in enumerate(EIDS, start=1):
        folder = root / DIXON / str(eid)[:2]
        folder.mkdir(parents=True, exist_ok=True)
        generate_subject(folder, seed, small=True, eid=eid).truth_path.unlink()
    first = root / DIXON / "10" / "1000011_20201_2_0.zip"
    shutil.copy(first, first.with_name("1000011_20201_3_0.zip"))
    return root


def batch(*args: str):
    return runner.invoke(app, ["batch", *args, "-m", "phantom-demo", "--workers", "1", "--device", "cpu",
                               "--threads", "1"])


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_parquet_equals_csv(parquet: Path, csv_path: Path) -> None:
    """Same columns in the same order, same rows, every value the CSV's (typed)."""
    table = pq.read_table(parquet)
    rows = csv_rows(csv_path)
    with open(csv_path, encoding="utf-8", newline="") as fh:
        assert table.column_names == next(csv.reader(fh))
    assert table.num_rows == len(rows)
    for field, col in zip(table.schema, table.columns):
        values = col.to_pylist()
        for v, row in zip(values, rows):
            text = row[field.name]
            if pa.types.is_string(field.type):
                assert v == text
            elif text == "":
                assert v is None
            elif pa.types.is_integer(field.type):
                assert v == int(text)
            else:
                assert (math.isnan(v) and text == "nan") or v == float(text), (field.name, v, text)


@pytest.fixture(scope="module")
def whole(mount: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mimir batch "<mount>/Bulk/Whole Body MRI/Dixon" -o out -m phantom-demo --format parquet --instance 2``."""
    out = tmp_path_factory.mktemp("whole") / "out"
    r = batch(str(mount / DIXON), "-o", str(out), "--format", "parquet", "--instance", "2")
    assert r.exit_code == 0, r.output
    return out


def test_batch_parquet_on_the_mount_with_spaces(whole: Path) -> None:
    out = whole
    table = pq.read_table(out / "predictions.parquet")
    assert table.column("name").to_pylist() == [f"{e}_20201_2_0" for e in EIDS]  # visit 3 left out
    assert table.schema.field("eid").type == pa.int64() and table.schema.field("ci_level").type == pa.float64()
    assert table.schema.field("phantom-demo_version").type == pa.string()
    assert table.schema.field("weight_kg_mean_in_kg").type == pa.float64()
    assert_parquet_equals_csv(out / "predictions.parquet", out / "predictions.csv")
    meta = table.schema.metadata
    assert meta[b"mimir.output_schema"] == b"2" and meta[b"mimir.layout"] == b"wide"
    assert len(json.loads(meta[b"mimir.run"])["subjects"]) == len(EIDS)
    assert json.loads((out / "run.json").read_text())["parquet"] is True


def test_parquet_shards_merge_to_the_unsharded_run(mount: Path, whole: Path, tmp_path: Path) -> None:
    src = str(mount / DIXON)
    shards = [tmp_path / f"s{k}" for k in range(2)]
    for k, out in enumerate(shards):
        r = batch(src, "-o", str(out), "--format", "parquet", "--instance", "2", "--num-shards", "2",
                  "--shard-index", str(k))
        assert r.exit_code == 0, r.output
    assert all(csv_rows(s / "predictions.csv") for s in shards)  # both shards hold subjects
    assert {n for s in shards for n in (r["name"] for r in csv_rows(s / "predictions.csv"))} == {
        r["name"] for r in csv_rows(whole / "predictions.csv")}
    expected = pq.read_table(whole / "predictions.parquet")

    merged = tmp_path / "m-folders"
    r = runner.invoke(app, ["merge", *map(str, shards), "-o", str(merged)])
    assert r.exit_code == 0, r.output
    for name in ("predictions.csv", "predictions.json", "errors.csv"):
        assert (merged / name).read_bytes() == (whole / name).read_bytes(), name
    assert pq.read_table(merged / "predictions.parquet").equals(expected)

    # the two Parquet files alone: the same table, and the same CSV
    merged = tmp_path / "m-parquet"
    r = runner.invoke(app, ["merge", *(str(s / "predictions.parquet") for s in shards), "-o", str(merged)])
    assert r.exit_code == 0, r.output
    assert "predictions.json was not written" in r.output
    assert pq.read_table(merged / "predictions.parquet").equals(expected)
    assert (merged / "predictions.csv").read_bytes() == (whole / "predictions.csv").read_bytes()
    # the same into the folder merged before: its predictions.json (not written this time) does not stay behind
    r = runner.invoke(app, ["merge", *(str(s / "predictions.parquet") for s in shards), "-o", str(tmp_path / "m-folders")])
    assert r.exit_code == 0 and not (tmp_path / "m-folders" / "predictions.json").exists(), r.output
    assert (tmp_path / "m-folders" / "predictions.csv").read_bytes() == (whole / "predictions.csv").read_bytes()

    # one archive per shard: the same bytes again; a shard left out is listed as missing with --input
    from mimir.batch.shards import pack

    archives = [str(tmp_path / f"s{k}.tar.gz") for k in range(2)]
    for s, a in zip(shards, archives):
        pack(s, a)
    pack(shards[0], tmp_path / "again.tar.gz")
    assert (tmp_path / "again.tar.gz").read_bytes() == Path(archives[0]).read_bytes()  # reproducible
    merged = tmp_path / "m-archives"
    assert runner.invoke(app, ["merge", *archives, "-o", str(merged)]).exit_code == 0
    for name in ("predictions.csv", "predictions.json", "errors.csv"):
        assert (merged / name).read_bytes() == (whole / name).read_bytes(), name
    r = runner.invoke(app, ["merge", archives[0], "-o", str(tmp_path / "m1"), "--input", src])
    assert r.exit_code == 2
    lost = [r["name"] for r in csv_rows(tmp_path / "m1" / "missing.csv")]
    assert lost == sorted(r["name"] for r in csv_rows(shards[1] / "subjects.csv"))


def test_predict_parquet_matches_its_csv(mount: Path, tmp_path: Path) -> None:
    zips = [str(p) for p in sorted((mount / DIXON).rglob("*_2_0.zip"))][:2]
    args = ["predict", *zips, "-m", "phantom-demo", "--device", "cpu"]
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "p.csv")]).exit_code == 0
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "p.parquet")])
    assert r.exit_code == 0, r.output
    assert_parquet_equals_csv(tmp_path / "p.parquet", tmp_path / "p.csv")
    r = runner.invoke(app, [*args, "--format", "parquet", "-o", str(tmp_path / "p.csv")])
    assert r.exit_code == 1 and "FILE.parquet" in r.output


def test_dx_find_data_listings(mount: Path, tmp_path: Path) -> None:
    files = sorted((mount / DIXON).rglob("*.zip"))
    listing = [{"project": "project-" + "a" * 24, "id": f"file-{i:024d}",
                "describe": {"name": p.name, "folder": "/" + str(p.parent.relative_to(mount)), "size": p.stat().st_size}}
               for i, p in enumerate(files)]
    (tmp_path / "dixon.json").write_text(json.dumps(listing))
    inputs, expected = discover_inputs(tmp_path / "dixon.json", mount=str(mount), instance=3)
    assert [f.name for f in inputs.files] == ["1000011_20201_3_0"]
    assert expected[inputs.files[0].path].size == files[0].stat().st_size
    assert os.path.exists(inputs.files[0].path)

    text = "\n".join(f"project-{'a' * 24}:/{p.relative_to(mount)}" for p in files)
    (tmp_path / "paths.txt").write_text(text + "\n")
    inputs, expected = discover_inputs(tmp_path / "paths.txt", mount=str(mount))
    assert len(inputs.files) == len(files) and not expected and all(os.path.exists(f.path) for f in inputs.files)

    (tmp_path / "brief.txt").write_text(f"project-{'a' * 24}:file-{'b' * 24}\n")
    with pytest.raises(UsageError, match="--json"):
        discover_inputs(tmp_path / "brief.txt")


def test_staging_verifies_and_retries_then_reports(mount: Path, tmp_path: Path) -> None:
    good = sorted((mount / DIXON).rglob("*_2_0.zip"))[0]
    bad = tmp_path / "9000001_20201_2_0.zip"
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.infolist()[3]
    data[info.header_offset + 30 + len(info.filename) + 10] ^= 0xFF  # one byte of a member: its CRC fails
    bad.write_bytes(bytes(data))
    stager = Stager([InputFile("g", str(good)), InputFile("b", str(bad))], tmp_path / "stage", tries=2, pause_s=0)
    stager.stage(stager.files[0])
    stager.stage(stager.files[1])
    ready = sorted(os.listdir(tmp_path / "stage" / READY))
    assert len(ready) == 2 and stager.retried == 1 and stager.failed == 1
    err = next(p for p in (tmp_path / "stage" / READY).iterdir() if p.suffix == ".err").read_text()
    assert "could not be read intact after 2 tries" in err and str(bad) in err
    staged = next(p for p in (tmp_path / "stage" / READY).iterdir() if p.is_dir())
    assert (staged / good.name).read_bytes() == good.read_bytes()

    # the listing's MD5 is checked when it has one; size alone when not
    import hashlib

    digest = hashlib.md5(good.read_bytes()).hexdigest()
    size = good.stat().st_size
    assert copy_verified(str(good), tmp_path / "ok.zip", Expected(size, digest)) == size
    with pytest.raises(StagingFailed, match="MD5"):
        copy_verified(str(good), tmp_path / "x.zip", Expected(size, "0" * 32))
    with pytest.raises(StagingFailed, match=f"expected {size + 1}"):
        copy_verified(str(good), tmp_path / "y.zip", Expected(size + 1))

    # in a run: the bad zip is an error row, the others are predicted as without staging
    src = tmp_path / "src"
    shutil.copytree(mount / DIXON, src)
    (src / "90").mkdir(exist_ok=True)
    shutil.copy(bad, src / "90")
    out = tmp_path / "out"
    r = batch(str(src), "-o", str(out), "--stage", str(tmp_path / "st"), "--stage-files", "2")
    assert r.exit_code == 2, r.output
    errors = csv_rows(out / "errors.csv")
    assert [e["name"] for e in errors] == ["9000001_20201_2_0"] and "could not be read intact" in errors[0]["message"]
    assert errors[0]["path"] == str(src / "90" / bad.name)
    assert len(csv_rows(out / "predictions.csv")) == len(EIDS) + 1
    assert not any((tmp_path / "st").rglob("*.zip"))  # staged copies are removed


def test_stager_threads_copy_at_once_within_the_look_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several copying threads: copies overlap, the look-ahead (staged + under way) is never exceeded, none is lost."""
    import threading
    import time

    import mimir.batch.staging as staging_mod

    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(9):
        (src / f"{i}.bin").write_bytes(bytes([i]) * 1000)
        files.append(InputFile(f"s{i}", str(src / f"{i}.bin")))
    lock, active, peak, peak_flight = threading.Lock(), [0], [0], [0]
    real = staging_mod.copy_verified

    def slow_copy(path: str, dest: Path, expected: object, stop: object = None) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.15)
        with lock:
            active[0] -= 1
        return real(path, dest, expected)  # type: ignore[arg-type]

    monkeypatch.setattr(staging_mod, "copy_verified", slow_copy)

    def run(threads: int, max_files: int) -> tuple[int, int]:
        root = tmp_path / f"stage{threads}-{max_files}"
        peak[0] = 0
        stager = Stager(files, root, max_files=max_files, threads=threads)
        taken: list[str] = []
        stager.start()
        deadline = time.monotonic() + 30
        while len(taken) < len(files) and time.monotonic() < deadline:  # a worker taking staged files in order
            with stager.lock:
                n, _ = stager._in_flight()
            peak_flight[0] = max(peak_flight[0], n)
            for entry in sorted(os.listdir(root / READY)):
                shutil.rmtree(root / READY / entry)
                taken.append(entry)
            time.sleep(0.01)
        stager.stop()
        assert sorted(taken) == sorted(staging_mod._key(f.name) for f in files)  # every file, once
        return peak[0], peak_flight[0]

    copies, _ = run(threads=3, max_files=8)
    assert copies == 3  # three copies under way at once
    peak_flight[0] = 0
    copies, flight = run(threads=3, max_files=2)
    assert copies <= 2 and flight <= 2  # the look-ahead counts the copies under way


def test_staging_keeps_the_users_folders_and_survives_odd_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--stage DIR works in DIR/.mimir-stage only; a killed run's leftovers and an unexpected error never hang a run."""
    import mimir.batch.staging as staging_mod

    stage = tmp_path / "home"
    for sub in (READY, "want", "tmp"):  # the user's own folders of the same names
        (stage / sub).mkdir(parents=True)
        (stage / sub / "mine.txt").write_text("keep")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 100)
    files = [InputFile("a", str(src)), InputFile("b", str(src))]
    key_a = staging_mod._key("a")
    (staging_mod.work_dir(stage) / READY / key_a).mkdir(parents=True)  # a leftover of a killed run
    (staging_mod.work_dir(stage) / READY / key_a / "a.bin").write_bytes(b"old")
    real = staging_mod.copy_verified

    def odd(path: str, dest: Path, expected: object, stop: object = None) -> int:
        if dest.parent.name == staging_mod._key("b"):
            raise RuntimeError("File is encrypted, password required")
        return real(path, dest, expected)  # type: ignore[arg-type]

    monkeypatch.setattr(staging_mod, "copy_verified", odd)
    with staging_mod.staging(files, stage) as stager:
        work = staging_mod.work_dir(stage) / READY
        deadline = time.monotonic() + 20
        while not ((work / key_a).is_dir() and (work / f"{staging_mod._key('b')}.err").exists()):
            assert time.monotonic() < deadline, "staging stalled"
            time.sleep(0.02)
        assert (work / key_a / "a.bin").read_bytes() == b"x" * 100  # staged afresh, not the leftover
        assert "RuntimeError: File is encrypted" in (work / f"{staging_mod._key('b')}.err").read_text()
        assert stager.failed == 1
    assert not staging_mod.work_dir(stage).exists()
    assert all((stage / sub / "mine.txt").read_text() == "keep" for sub in (READY, "want", "tmp"))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from mimir.batch.records import RecordStore

    store = RecordStore(tmp_path / "a")
    for i in range(3):
        store.write({"format": "mimir-batch-record/1", "name": f"s{i}", "status": "failed"})
    saved: list[str] = []
    clock = [0.0]
    cp = Checkpointer(tmp_path / "a", tmp_path / "c.tar.gz", saved.append, every_s=60, every_n=2,
                      clock=lambda: clock[0])
    assert not cp.due() and cp.saved_count == 3
    store.write({"format": "mimir-batch-record/1", "name": "s3", "status": "failed"})
    assert not cp.due()  # 1 new record, 0 s
    clock[0] = 61.0
    assert cp.maybe_save() and saved == [str(tmp_path / "c.tar.gz")] and cp.saved_count == 4
    assert restore_records(tmp_path / "c.tar.gz", tmp_path / "b") == 4
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.json"))
    b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.json"))
    assert a == b and all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in a)
    pack_records(tmp_path / "a", tmp_path / "d.tar.gz")
    assert (tmp_path / "d.tar.gz").read_bytes() == (tmp_path / "c.tar.gz").read_bytes()


def test_launcher_dry_run_prints_plan_and_commands(tmp_path: Path) -> None:
    n = 20_000
    names = [f"{1000000 + i}_20201_2_0.zip" for i in range(n)]
    listing = [{"id": f"file-{i:024d}", "describe": {"name": n, "folder": f"/{DIXON}/{n[:2]}", "size": 50_000_000}}
               for i, n in enumerate(names)]
    (tmp_path / "dixon.json").write_text(json.dumps(listing))
    gpu = parse_instance("mem3_ssd1_gpu_x8")
    assert gpu.cores == 8 and gpu.gpu and not parse_instance("mem1_ssd1_v2_x16").gpu
    rate = subjects_per_hour(gpu)
    p = plan(str(tmp_path / "dixon.json"), instance_type=gpu.name, target_hours=1, price_per_hour=1.5)
    assert p.num_shards == 1  # 20,000 subjects at the estimated rate
    assert p.num_shards == math.ceil(n / (rate * 1)) and sum(p.per_shard) == n
    assert p.instance_hours == pytest.approx(n / rate + p.num_shards * BOOT_MIN / 60)
    r = runner.invoke(app, ["rap", "plan", str(tmp_path / "dixon.json"), "--instance-type", gpu.name,
                            "--price-per-hour", "1.5", "--target-hours", "0.25", "--listing-file", "project-x:/mimir/dixon.json",
                            "--modules-file", "project-x:/mimir/modules.tar.gz", "--folder", "project-x:/mimir/run1",
                            "-m", "module_bodycomp", "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    q = plan(str(tmp_path / "dixon.json"), instance_type=gpu.name, target_hours=0.25, price_per_hour=1.5)
    assert q.num_shards == math.ceil(n / (rate * 0.25)) > 1 and sum(q.per_shard) == n
    assert q.per_shard[1] == sum(shard_of(x.split(".")[0], q.num_shards) == 1 for x in names)  # exact, by name hash
    assert f"subjects: {n}; shards: {q.num_shards}" in lines[0]
    assert f"estimated cost: {q.instance_hours * 1.5:.2f} at your price of 1.5" in r.stdout
    cmds = [ln for ln in lines if ln.startswith("dx run mimir-shard")]
    assert len(cmds) == q.num_shards
    assert "--instance-type mem3_ssd1_gpu_x8 --priority low" in cmds[0] and "-ishard_index=0" in cmds[0]
    assert "--cost-limit" in cmds[0] and "restartOn" in cmds[0] and "-imodule=module_bodycomp" in cmds[0]
    assert "dry run: " in r.output
    # the applet puts the job's project in front of output_folder: the folder goes in bare, its project with --project
    assert "--project project-x " in cmds[0] and "-ioutput_folder=/mimir/run1 " in cmds[0]
    bare = dx_run_commands(q, applet="a", listing_file="l", modules_file="m", folder=":/mimir/run1/")
    assert "-ioutput_folder=/mimir/run1" in bare[0] and "--project" not in bare[0]


@pytest.mark.parametrize(("output_folder", "expected"), [("/mimir/run1", "project-ctx:/mimir/run1"),
                                                         ("project-b:/mimir/run1", "project-b:/mimir/run1")])
def test_entry_script_passes_the_output_folder_once(tmp_path: Path, output_folder: str, expected: str) -> None:
    """The applet's --folder for run-shard: the job's project in front of a bare folder, a PROJECT:/x kept."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "deploy" / "ukb-rap" / "src" / "mimir_shard.sh"
    stubs = 'dx() { :; }; tar() { :; }; mimir() { printf "%s\\n" "$@" > "$ARGS_OUT"; }; '
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MIMIR_WORK": str(tmp_path / "w"),
           "ARGS_OUT": str(tmp_path / "args"), "DX_PROJECT_CONTEXT_ID": "project-ctx", "output_folder": output_folder,
           "listing": "{}", "modules": "{}", "num_shards": "2", "shard_index": "0"}
    subprocess.run(["bash", "-c", f'source "$0"; {stubs} main', str(script)], env=env, check=True, timeout=60)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["rap", "run-shard"] and args[args.index("--folder") + 1] == expected


def test_dxapp_json_has_what_dnanexus_documents() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy" / "ukb-rap"
    spec = json.loads((root / "dxapp.json").read_text())
    assert spec["name"] == "mimir-shard" and spec["runSpec"]["interpreter"] == "bash"
    assert (root / spec["runSpec"]["file"]).is_file()
    for key in ("distribution", "release", "version"):
        assert spec["runSpec"][key]
    classes = {"file", "int", "float", "string", "boolean", "array:string"}
    names = set()
    for item in spec["inputSpec"]:
        assert item["class"] in classes and item["name"].isidentifier()
        names.add(item["name"])
    script = (root / spec["runSpec"]["file"]).read_text()
    for name in names:
        assert f"${name}" in script or f"${{{name}" in script, name  # every input is used
    policy = spec["runSpec"]["executionPolicy"]
    assert set(policy["restartOn"]) <= {"ExecutionError", "UnresponsiveWorker", "JMInternalError", "AppInternalError",
                                        "JobTimeoutExceeded", "*"}
    assert spec["access"]["project"] == "CONTRIBUTE"  # uploads to the project folder


def _run_entry(tmp_path: Path, mount: Path, project: Path, work: Path, listing_id: str, modules_id: str, *,
               kill_after: int = 0) -> int:
    """Run the applet's entry script as DNAnexus would (inputs as variables, main()), with the dx stand-in."""
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "dx").write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).with_name('fake_dx.py')} \"$@\"\n")
    (bin_dir / "dx").chmod(0o755)
    script = Path(__file__).resolve().parents[2] / "deploy" / "ukb-rap" / "src" / "mimir_shard.sh"
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FAKE_DX_PROJECT": str(project), "DX_PROJECT_CONTEXT_ID": "project-fake", "MIMIR_WORK": str(work),
           "FAKE_DX_KILL_AFTER_CHECKPOINTS": str(kill_after), "listing": json.dumps({"$dnanexus_link": listing_id}),
           "modules": json.dumps({"$dnanexus_link": modules_id}), "num_shards": "2", "shard_index": "0",
           "output_folder": "/mimir/run1", "mount": str(mount), "checkpoint_minutes": "10",
           "checkpoint_subjects": "1", "batch_args": "--workers 1 --threads 1 --batch-size 1"}
    if kill_after:  # records paced (tests/batch/paced_site), so that the kill comes mid-shard on any machine
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).with_name("paced_site")), env.get("PYTHONPATH", "")])
        env["MIMIR_TEST_RECORD_DELAY_S"] = "0.3"
    code = 'source "$0"; module=(phantom-demo); main'
    return subprocess.run(["bash", "-c", code, str(script)], env=env, start_new_session=True, timeout=300).returncode


@pytest.mark.slow
def test_entry_script_end_to_end_interrupted_and_restarted(mount: Path, tmp_path: Path) -> None:
    """The applet's job, killed mid-shard after a checkpoint, restarted on an empty instance: identical outputs."""
    import subprocess
    import sys
    import tarfile

    extra = [(7000000 + i, 40 + i) for i in range(6)]  # more subjects, so that the shard takes a while
    big = tmp_path / "mount"
    shutil.copytree(mount, big)
    for eid, seed in extra:
        folder = big / DIXON / str(eid)[:2]
        folder.mkdir(parents=True, exist_ok=True)
        generate_subject(folder, seed, small=True, eid=eid).truth_path.unlink()
    files = sorted((big / DIXON).rglob("*.zip"))
    listing = [{"project": "project-fake", "id": f"file-{i:024d}",
                "describe": {"name": p.name, "folder": "/" + str(p.parent.relative_to(big)), "size": p.stat().st_size}}
               for i, p in enumerate(files)]
    (tmp_path / "dixon.json").write_text(json.dumps(listing))
    (tmp_path / "empty").mkdir()
    with tarfile.open(tmp_path / "modules.tar.gz", "w:gz"):  # phantom-demo is built in: an empty archive
        pass

    def project_with_inputs(name: str) -> tuple[Path, str, str]:
        project = tmp_path / name
        env = {**os.environ, "FAKE_DX_PROJECT": str(project)}
        fake = [sys.executable, str(Path(__file__).with_name("fake_dx.py"))]
        ids = [subprocess.run([*fake, "upload", str(tmp_path / f), "--path", f"project-fake:/inputs/{f}", "--brief"],
                              env=env, capture_output=True, text=True, check=True).stdout.strip()
               for f in ("dixon.json", "modules.tar.gz")]
        return project, ids[0], ids[1]

    def archive_members(project: Path) -> dict[str, bytes]:
        index = json.loads((project / "index.json").read_text())
        names = sorted(d["name"] for d in index.values() if d["folder"] == "/mimir/run1")
        assert names == ["shard-0000-of-0002.tar.gz"], names  # the checkpoint is gone, one archive stays
        fid = next(k for k, d in index.items() if d["name"] == names[0])
        with tarfile.open(project / "objects" / fid) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}

    # uninterrupted
    project, listing_id, modules_id = project_with_inputs("p-straight")
    assert _run_entry(tmp_path, big, project, tmp_path / "w1", listing_id, modules_id) == 0
    straight = archive_members(project)

    # killed (SIGKILL to the whole job) at its second checkpoint upload (the first stays), then restarted on an empty disk
    project, listing_id, modules_id = project_with_inputs("p-spot")
    assert _run_entry(tmp_path, big, project, tmp_path / "w2", listing_id, modules_id, kill_after=2) == -9
    index = json.loads((project / "index.json").read_text())
    left = {d["name"] for d in index.values() if d["folder"] == "/mimir/run1"}
    assert left == {"shard-0000-of-0002.checkpoint.tar.gz"}  # (the old copy may remain: uploaded first, then removed)
    assert _run_entry(tmp_path, big, project, tmp_path / "w3", listing_id, modules_id) == 0
    resumed = archive_members(project)

    run = json.loads(resumed["run.json"])
    assert 1 <= run["counts"]["done_before"] < run["counts"]["subjects"]  # it really resumed mid-shard
    assert set(resumed) == set(straight) >= {"predictions.csv", "predictions.json", "predictions.parquet", "errors.csv"}
    for name in sorted(set(straight) - {"run.json", "predictions.parquet"}):
        assert resumed[name] == straight[name], name
    import io

    assert pq.read_table(io.BytesIO(resumed["predictions.parquet"])).equals(
        pq.read_table(io.BytesIO(straight["predictions.parquet"])))
    expected_names = sorted(p.name.split(".")[0] for p in files if shard_of(p.name.split(".")[0], 2) == 0)
    assert [r["name"] for r in csv.DictReader(io.StringIO(straight["subjects.csv"].decode()))] == expected_names


def test_rap_collect_downloads_and_merges_the_shard_archives(whole: Path, tmp_path: Path, monkeypatch) -> None:
    """``mimir rap collect`` through the dx stand-in: the archives in the project folder merge into the run."""
    import sys

    from mimir.batch import dx
    from mimir.batch.shards import pack

    fake = tmp_path / "dx"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).with_name('fake_dx.py')} \"$@\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MIMIR_DX", str(fake))
    monkeypatch.setenv("FAKE_DX_PROJECT", str(tmp_path / "project"))
    pack(whole, tmp_path / "shard-0000-of-0001.tar.gz")
    dx.replace(str(tmp_path / "shard-0000-of-0001.tar.gz"), "project-fake:/mimir/run1", "shard-0000-of-0001.tar.gz")
    dx.upload(str(tmp_path / "shard-0000-of-0001.tar.gz"), "project-fake:/mimir/run1", "shard-0000-of-0001.checkpoint.tar.gz")
    assert [f.name for f in dx.find("project-fake:/mimir/run1", "shard-0000-of-0001.tar.gz")] == ["shard-0000-of-0001.tar.gz"]
    r = runner.invoke(app, ["rap", "collect", "--folder", "project-fake:/mimir/run1", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "collected 1 shard(s): 5 predicted, 0 failed, 0 missing" in r.output
    for name in ("predictions.csv", "predictions.json", "errors.csv"):
        assert (tmp_path / "m" / name).read_bytes() == (whole / name).read_bytes(), name
    assert pq.read_table(tmp_path / "m" / "predictions.parquet").equals(pq.read_table(whole / "predictions.parquet"))
    r = runner.invoke(app, ["rap", "collect", "--folder", "project-fake:/elsewhere", "-o", str(tmp_path / "n")])
    assert r.exit_code == 1 and "no shard archives" in r.output

    # a shard job whose archive is already in the folder does nothing (a restart after its upload)
    from mimir.batch.rap_job import run_shard

    said: list[str] = []
    result = run_shard("unused.json", "project-fake:/mimir/run1", shard_index=0, num_shards=1,
                       work_dir=str(tmp_path / "w"), log=said.append)
    assert result.restored == 0 and result.checkpoints == 0 and result.archive_id.startswith("file-")
    assert "already done" in said[0] and not (tmp_path / "w" / "shard-0000-of-0001" / "records").exists()


def test_the_look_ahead_survives_a_staged_copy_taken_while_it_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker deleting a staged copy while the stager sizes it must not kill the stager (the run would hang)."""
    import mimir.batch.staging as staging_mod

    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 10)
    stager = Stager([InputFile("a", str(src)), InputFile("b", str(src))], tmp_path / "stage")
    key = staging_mod._key("a")
    (tmp_path / "stage" / READY / key).mkdir()
    (tmp_path / "stage" / READY / key / "a.bin").write_bytes(b"x" * 10)
    real = os.scandir

    def scandir_after_delete(path: object = ".") -> object:
        if str(path).endswith(os.sep + key):  # the worker took it between the listing and the look inside
            os.remove(os.path.join(str(path), "a.bin"))
            os.rmdir(str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(staging_mod.os, "scandir", scandir_after_delete)
    with stager.lock:
        assert stager._in_flight() == (1, 0)  # counted (it was listed), its size unknown
    taken = stager._take()  # and the stager goes on
    assert taken is not None and taken.name == "a" and stager._copying == {key: 10}


def test_run_shard_and_stage_refuse_bad_options_in_one_line_before_any_work(mount: Path, tmp_path: Path) -> None:
    """Unbalanced quotes in --batch-args, a --work or --stage under a file: one error line, exit 1, nothing run."""
    (tmp_path / "afile").write_text("a regular file\n")
    base = ["rap", "run-shard", str(mount), "--folder", "project-x:/mimir/run1", "--shard-index", "0",
            "--num-shards", "1", "--work", str(tmp_path / "w")]
    cases = {
        "--batch-args": [*base, "--batch-args", '--workers "1'],
        "afile": [*base[:-1], str(tmp_path / "afile"), "--batch-args", "--workers 1"],
    }
    for expected, args in cases.items():
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), (args, r.exception)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], r.stderr
    assert not (tmp_path / "w").exists()  # nothing run

    r = batch(str(mount / DIXON), "-o", str(tmp_path / "out"), "--stage", str(tmp_path / "afile" / "sub"))
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "afile" in lines[0] and "staging folder" in lines[0], r.stderr
    assert not any((tmp_path / "out").glob("*.csv"))  # refused before any subject


def test_reading_a_parquet_file_leaves_no_file_open(whole: Path) -> None:
    """merge reads many Parquet files: each is closed once read, or once its reader is dropped early."""
    from mimir.outputs.parquet import iter_rows

    path = whole / "predictions.parquet"

    def open_on_it() -> int:
        return sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve()) for fd in os.listdir("/proc/self/fd"))

    rows = list(iter_rows(path))
    assert [r["name"] for r in rows] == [r["name"] for r in csv_rows(whole / "predictions.csv")]
    assert open_on_it() == 0
    early = iter_rows(path)
    next(early)
    assert open_on_it() == 1
    early.close()
    assert open_on_it() == 0


def test_a_copy_under_way_when_the_run_ends_is_dropped_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run ends (done, Ctrl-C, an error) during a slow copy: the copy stops at its next block, no error row."""
    import threading

    import mimir.batch.staging as staging_mod

    fifo = tmp_path / "slow.zip"
    os.mkfifo(fifo)  # a source that gives one byte at a time, as a stalled mount would
    done = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb", buffering=0) as fh:
            while not done.wait(0.02):
                fh.write(b"x")

    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    monkeypatch.setattr(staging_mod, "CHUNK", 1)
    stage = tmp_path / "st"
    with staging_mod.staging([InputFile("slow", str(fifo))], stage) as stager:
        tmp = staging_mod.work_dir(stage) / "tmp" / staging_mod._key("slow") / "slow.zip"
        deadline = time.monotonic() + 20
        while not tmp.exists():  # the copy is under way
            assert time.monotonic() < deadline, "the copy never started"
            time.sleep(0.01)
        time.sleep(0.2)
        started = time.monotonic()
    took = time.monotonic() - started
    done.set()
    assert took < 2 and not stager.is_alive()  # stopped at the next block, not after the 30 s join timeout
    assert stager.failed == 0 and stager.retried == 0  # dropped, not reported as unreadable
    assert not staging_mod.work_dir(stage).exists()
