"""``mimir batch``: outputs, errors, records and their validity, sharding, usage errors."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest_models import DEFAULT_TARGETS, random_resnet_state, save_images

from mimir.batch.inputs import collect, resolve_shard, select_shard, shard_of
from mimir.batch.progress import LogMonitor, Monitor, RichMonitor, format_duration
from mimir.batch.records import RecordStore, _JsonListWriter
from mimir.batch.runner import run_batch
from mimir.errors import UsageError
from mimir.models.modules import TargetSpec, write_module

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers (used by the other batch tests)


def cli():
    from mimir.cli import app

    return app


def make_module(folder: Path, seed: int = 1, name: str = "tiny", width: int = 8) -> str:
    """A random-weight module of the conftest_models kind (slim, fast on a CPU); returns its folder."""
    targets = [
        TargetSpec(name=n, field=f, unit=u, divisor=d, mean=m, sd=s, calibration=c)
        for n, f, u, d, m, s, c in DEFAULT_TARGETS
    ]
    write_module(folder, name=name, version="1", targets=targets, state_dicts=[random_resnet_state(3, width, seed)])
    return str(folder)


def synth_zips(folder: Path, seeds: list[int], variant: str | None = None) -> list[Path]:
    synth = pytest.importorskip("mimir.synth")
    return [Path(synth.generate_subject(folder, seed=s, variant=variant, small=True).zip_path) for s in seeds]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def record_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "records").glob("*/*.json"))


def outputs(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("predictions.csv", "predictions.json", "errors.csv")}


def batch(args: list[str]):
    r = runner.invoke(cli(), ["batch", *args])
    return r


@pytest.fixture(scope="session")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Small synthetic subjects: 3 good ones and 2 broken ones (made once per session)."""
    root = tmp_path_factory.mktemp("batch-zips")
    return {
        "good": synth_zips(root / "good", [1, 2, 3]),
        "broken": synth_zips(root / "broken", [20], "truncated")
        + synth_zips(root / "broken", [21], "wf_position_mismatch"),
    }


# --------------------------------------------------------------------------- good and broken subjects


def test_good_and_broken_subjects(tmp_path: Path, zips) -> None:
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    for z in zips["good"][:2] + zips["broken"]:
        (data / z.name).write_bytes(z.read_bytes())
    good3 = data / "nested" / zips["good"][2].name
    good3.write_bytes(zips["good"][2].read_bytes())
    (data / "9000001_20201_2_0.zip").write_bytes(b"not a zip at all")
    (data / "notes.txt").write_text("ignored")
    (data / "other.zip").write_bytes(b"ignored: not a 20201 name")
    save_images(data, ["img_a"], seed=4)
    np.save(data / "img_bad.npy", np.zeros((3, 64, 64), np.uint8))
    module = make_module(tmp_path / "mod")
    out = tmp_path / "out"

    # one torch thread, as `predict` has in this test process (CPU sums depend on the thread count)
    r = batch([str(data), "-o", str(out), "-m", module, "--device", "cpu", "-b", "1", "-w", "2", "--threads", "1"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "4 predicted, 4 failed, 0 unfinished of 8 subject(s)" in r.stdout
    assert "see" in r.stderr and "errors.csv" in r.stderr

    errors = read_csv(out / "errors.csv")
    assert [e["name"] for e in errors] == ["1000020_20201_2_0", "1000021_20201_2_0", "9000001_20201_2_0", "img_bad"]
    assert {e["stage"] for e in errors} == {"preprocess"}
    by_name = {e["name"]: e for e in errors}
    assert by_name["1000020_20201_2_0"]["path"].endswith("1000020_20201_2_0.zip")
    assert "truncated" in by_name["1000020_20201_2_0"]["message"]
    assert "(3, 64, 64)" in by_name["img_bad"]["message"]
    assert all("\n" not in e["message"] for e in errors)

    # the predictions: sorted by name, exactly what `mimir predict` writes for the same inputs
    good = sorted([*(data / z.name for z in zips["good"][:2]), good3, data / "img_a.npy"], key=lambda p: p.name)
    for suffix in ("csv", "json"):
        ref = tmp_path / f"ref.{suffix}"
        args = ["predict", *map(str, good), "-m", module, "--device", "cpu", "-b", "1", "-o", str(ref)]
        rp = runner.invoke(cli(), args)
        assert rp.exit_code == 0, rp.stderr
        assert (out / f"predictions.{suffix}").read_bytes() == ref.read_bytes()

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["counts"]["predicted"] == 4 and run["counts"]["failed"] == 4 and run["counts"]["processed"] == 8
    assert run["modules"][0]["name"] == "tiny" and len(run["modules"][0]["members"][0]) == 64
    assert run["workers"] == 2 and run["batch_size"] == 1 and run["devices"] and run["wall_s"] > 0
    assert run["throughput_subjects_per_s"] > 0 and run["inference_wait_share"] is not None
    assert run["pipeline_version"] == "mimir-v1" and run["versions"]["mimir"]
    assert run["versions"]["preprocessing"] == "compiled"
    assert len(record_files(out)) == 8
    subjects = read_csv(out / "subjects.csv")
    assert len(subjects) == 8 and [s["name"] for s in subjects] == sorted(s["name"] for s in subjects)

    # a second run does nothing and writes the same bytes
    before = outputs(out)
    r = batch([str(data), "-o", str(out), "-m", module, "--device", "cpu", "-b", "1"])
    assert r.exit_code == 2
    assert "nothing to do" in r.stdout
    assert outputs(out) == before


def test_retry_failed_and_all_good_exit_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, ["s1", "s2"], seed=1)
    np.save(data / "s3.npy", np.zeros((3, 10, 10), np.uint8))
    module = make_module(tmp_path / "mod")
    out = tmp_path / "out"
    args = [str(data), "-o", str(out), "-m", module, "--device", "cpu", "-b", "2", "-w", "1"]
    assert batch(args).exit_code == 2
    save_images(data, ["s3"], seed=9)  # fixed
    r = batch(args)
    assert r.exit_code == 2 and "nothing to do" in r.stdout  # failed ones are done until retried
    r = batch([*args, "--retry-failed"])
    assert r.exit_code == 0, r.stderr
    assert read_csv(out / "errors.csv") == []
    assert [row["name"] for row in read_csv(out / "predictions.csv")] == ["s1", "s2", "s3"]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["processed"] == 1 and run["counts"]["done_before"] == 2


def test_changed_module_or_level_invalidates_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, ["a", "b", "c"], seed=2)
    out = tmp_path / "out"
    mod1 = make_module(tmp_path / "m1", seed=1)
    mod2 = make_module(tmp_path / "m2", seed=2)  # same name and version, other weights
    base = [str(data), "-o", str(out), "--device", "cpu", "-b", "4", "-w", "1"]

    assert batch([*base, "-m", mod1]).exit_code == 0
    first = (out / "predictions.csv").read_bytes()
    key1 = json.loads(record_files(out)[0].read_text())["key"]

    r = batch([*base, "-m", mod2])
    assert r.exit_code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["done_before"] == 0 and run["counts"]["processed"] == 3
    assert (out / "predictions.csv").read_bytes() != first
    key2 = json.loads(record_files(out)[0].read_text())["key"]
    assert key2["modules"][0]["members"] != key1["modules"][0]["members"]

    r = batch([*base, "-m", mod2, "--ci", "0.9"])
    assert r.exit_code == 0
    assert json.loads((out / "run.json").read_text())["counts"]["processed"] == 3
    doc = json.loads((out / "predictions.json").read_text())
    assert doc[0]["targets"]["age"]["level"] == 0.9

    # a record from another pipeline version counts as not done
    rec_path = RecordStore(out).path_for("b")
    rec = json.loads(rec_path.read_text())
    rec["key"]["pipeline_version"] = "mimir-v0"
    rec_path.write_text(json.dumps(rec))
    (RecordStore(out).path_for("c")).write_text("{torn")  # and so does a torn one
    r = batch([*base, "-m", mod2, "--ci", "0.9"])
    assert r.exit_code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["done_before"] == 1 and run["counts"]["processed"] == 2


def test_same_name_twice_is_reported_not_overwritten(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data / "x", ["dup", "one"], seed=1)
    save_images(data / "y", ["dup"], seed=2)
    out = tmp_path / "out"
    r = batch([str(data), "-o", str(out), "-m", make_module(tmp_path / "mod"), "--device", "cpu", "-w", "1"])
    assert r.exit_code == 2, r.stderr
    errors = read_csv(out / "errors.csv")
    assert [(e["name"], e["stage"]) for e in errors] == [("dup", "input"), ("dup", "input")]
    assert {Path(e["path"]).parent.name for e in errors} == {"x", "y"}
    assert "also the name of" in errors[0]["message"]
    assert [row["name"] for row in read_csv(out / "predictions.csv")] == ["one"]
    assert not RecordStore(out).path_for("dup").exists()


def test_list_file_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, ["p", "q"], seed=3)
    listing = tmp_path / "inputs.txt"
    listing.write_text("# subjects\n\ndata/p.npy\n  data/q.npy  \ndata/missing_20201_2_0.zip\n")
    out = tmp_path / "out"
    r = batch([str(listing), "-o", str(out), "-m", make_module(tmp_path / "mod"), "--device", "cpu", "-w", "1"])
    assert r.exit_code == 2, r.stderr
    assert [row["name"] for row in read_csv(out / "predictions.csv")] == ["p", "q"]
    (err,) = read_csv(out / "errors.csv")
    assert err["name"] == "missing_20201_2_0" and "file not found" in err["message"]


# --------------------------------------------------------------------------- a worker that dies


def die_on_kill(name: str, path: str, *, cache: bool = True):
    """Preprocessing that SIGKILLs its own process for subjects named ``kill...``."""
    if name.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    from mimir.batch.stages import preprocess_or_error

    return preprocess_or_error(name, path, cache=cache)


def test_dying_worker_is_replaced_and_its_subject_failed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, ["a", "kill_me", "b", "c"], seed=5)
    out = tmp_path / "out"
    result = run_batch(
        data, out, modules=[make_module(tmp_path / "mod")], device="cpu", workers=1, batch_size=2,
        preprocess=die_on_kill,
    )
    assert (result.predicted, result.failed, result.unfinished, result.exit_code) == (3, 1, 0, 2)
    (err,) = read_csv(out / "errors.csv")
    assert err["name"] == "kill_me" and err["stage"] == "worker" and "SIGKILL" in err["message"]


def test_two_inference_processes_share_the_work(tmp_path: Path) -> None:
    """--gpu 0,1 starts one inference process per device; shown here with two CPU ones."""
    from mimir.batch.inputs import InputFile
    from mimir.batch.local import Hooks, LocalConfig, LocalEngine

    paths = save_images(tmp_path / "d", [f"i{k}" for k in range(7)], seed=2)
    todo = [InputFile(p.stem, str(p)) for p in paths]
    module = make_module(tmp_path / "mod")
    results = {}
    for devices in (["cpu", "cpu"], ["cpu"]):
        cfg = LocalConfig(modules=[module], devices=devices, workers=2, batch_size=2, level=0.95, threads=1)
        ready: list[int] = []
        outcomes = []
        hooks = Hooks(ready=lambda c, i, d: ready.append(c), outcome=outcomes.append)
        report = LocalEngine(cfg).run(todo, hooks, Monitor())
        assert sorted(ready) == list(range(len(devices))) and report.unfinished == 0
        assert sorted(o.name for o in outcomes) == [f.name for f in todo] and all(o.ok for o in outcomes)
        results[len(devices)] = {o.name: o.row for o in outcomes}
    assert results[2] == results[1]


# --------------------------------------------------------------------------- sharding


def test_shards_are_disjoint_and_cover_the_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = [f"s{i:02d}" for i in range(9)]
    save_images(data, names, seed=6)
    module = make_module(tmp_path / "mod")
    seen: list[str] = []
    for k in range(3):
        out = tmp_path / f"shard{k}"
        res = run_batch(data, out, modules=[module], device="cpu", workers=1, batch_size=4, num_shards=3, shard_index=k)
        assert res.exit_code == 0
        rows = [r["name"] for r in read_csv(out / "predictions.csv")]
        assert rows == sorted(n for n in names if shard_of(n, 3) == k)
        assert {json.loads(p.read_text())["name"] for p in record_files(out)} == set(rows)
        seen += rows
    assert sorted(seen) == names  # disjoint (no name twice) and complete


def test_shard_assignment_is_stable_and_from_slurm() -> None:
    # sha256 of the name, not Python's salted hash: the same values on every machine and run
    import hashlib

    names = ("1000001_20201_2_0", "1000002_20201_2_0", "1000003_20201_2_0", "a")
    assert [shard_of(n, 4) for n in names] == [0, 0, 1, 2]

    assert shard_of("a", 7) == int.from_bytes(hashlib.sha256(b"a").digest()[:8], "big") % 7
    env = {"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0"}
    assert resolve_shard(None, None, env) == (8, 5)
    assert resolve_shard(None, None, {**env, "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "1"}) == (8, 7)
    assert resolve_shard(4, 1, env) == (4, 1)  # options win
    assert resolve_shard(None, None, {}) == (1, 0)
    with pytest.raises(UsageError, match="outside 0..7"):
        resolve_shard(None, None, {**env, "SLURM_ARRAY_TASK_ID": "9"})


_NAMES = st.text(min_size=1, max_size=12).filter(lambda s: "/" not in s and "." not in s)


@settings(max_examples=50, deadline=None)
@given(st.lists(_NAMES, min_size=1, max_size=30, unique=True), st.lists(_NAMES, max_size=10, unique=True),
       st.integers(1, 6))
def test_adding_files_moves_no_subject_between_shards(old: list[str], new: list[str], n: int) -> None:
    before = collect(f"{x}.npy" for x in old)
    after = collect(f"{x}.npy" for x in old + [y for y in new if y not in old])
    for k in range(n):
        a = {f.name for f in select_shard(before, n, k).files}
        b = {f.name for f in select_shard(after, n, k).files}
        assert a <= b and a == b & set(old)


# --------------------------------------------------------------------------- usage errors and the lock


def test_usage_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, ["s"], seed=1)
    (tmp_path / "empty").mkdir()
    module = make_module(tmp_path / "mod")
    out = tmp_path / "out"
    cases = [
        ([str(data), "--gpu", "0", "--device", "cpu"], "contradicts"),
        ([str(data), "--gpu", "a,b"], "GPU indices"),
        ([str(data), "--engine", "spark"], "unknown engine"),
        ([str(data), "--address", "ray://x:10001"], "--address needs --engine ray"),
        ([str(data), "--ci", "1.5"], "confidence level"),
        ([str(tmp_path / "nope")], "no such file or folder"),
        ([str(tmp_path / "empty")], "holds no subject zips"),
        ([str(data), "--num-shards", "2", "--shard-index", "2"], "outside 0..1"),
        ([str(data), "-m", "not_installed"], "not_installed"),
    ]
    for args, message in cases:
        full = [*args, "-o", str(out)]
        if "-m" not in args:
            full += ["-m", module]
        if "--device" not in args and "--gpu" not in args:
            full += ["--device", "cpu"]
        r = batch(full)
        assert r.exit_code == 1, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (args, r.stderr)

    out.mkdir(exist_ok=True)
    with open(out / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        r = batch([str(data), "-o", str(out), "-m", module, "--device", "cpu"])
    assert r.exit_code == 1 and "another mimir batch is writing to this folder" in r.stderr


def test_cuda_on_a_machine_without_gpu_stops_the_run(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = tmp_path / "data"
    save_images(data, ["s"], seed=1)
    out = tmp_path / "out"
    r = batch([str(data), "-o", str(out), "-m", make_module(tmp_path / "mod"), "--gpu", "0", "-w", "1"])
    assert r.exit_code == 1
    assert "cuda:0" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "cuda:0" in run["error"]


# --------------------------------------------------------------------------- pieces


def test_preprocessing_workers_never_import_torch(zips) -> None:
    code = (
        "import sys\n"
        "from mimir.batch import local, stages\n"
        "prepared, message = stages.preprocess_or_error('s', sys.argv[1], cache=False)\n"
        "assert message is None and prepared.image.shape == (3, 256, 256), message\n"
        "assert prepared.qc['status'] == 'ok', prepared.qc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code, str(zips["good"][0])]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr


def test_streamed_json_matches_the_predict_writer() -> None:
    import io

    from mimir.inference.predictions import SubjectResult, TargetPrediction, layout_for
    from mimir.outputs.writers import json_text

    layout = layout_for([("m", "1", [("x", "L", 1), ("y", "%", None)])])
    results = []
    for i in range(3):
        r = SubjectResult.for_input(f"{1000000 + i}_20201_2_0.zip")
        r.predictions = [TargetPrediction(layout[0], 1.5 + i, 0.25), TargetPrediction(layout[1], float("nan"), 1.0)]
        results.append(r)
    for subset in (results, results[:1], []):
        buf = io.StringIO()
        w = _JsonListWriter(buf)
        for r in subset:
            w.add(r.to_json())
        w.close()
        assert buf.getvalue() == json_text(subset)


def test_monitor_texts() -> None:
    assert format_duration(None) == "--" and format_duration(5) == "5s"
    assert format_duration(125) == "2m05s" and format_duration(3 * 3600 + 120) == "3h02m"
    m = Monitor()
    m.begin(10)
    assert m.waiting_text() == "starting"
    m.stage_times(infer_wait=3.0, infer_busy=1.0, work_busy=4.0, work_blocked=0.0)
    m.advance(True)
    m.advance(False, None)
    m.tick()
    text = m.summary()
    assert "2/10 done (1 predicted, 1 failed), 8 remaining" in text
    assert "inference waits for preprocessing 75%" in text and "preprocessing waits for inference 0%" in text

    from rich.console import Console

    console = Console(file=io_buffer(), width=200)
    lm = LogMonitor(console, interval=0.0)
    lm.begin(2)
    lm.advance(False, "failed: x.zip: broken")
    lm.tick()
    lm.end()
    printed = console.file.getvalue()
    assert "failed: x.zip: broken" in printed and "batch: 1/2 done" in printed

    live = Console(file=io_buffer(), force_terminal=True, width=160)
    rm = RichMonitor(live)
    rm.begin(3)
    rm.advance(True)
    rm.advance(False, "failed: y.zip: bad")
    rm.stage_times(infer_wait=1.0, infer_busy=1.0)
    rm.tick()
    rm.end()
    shown = live.file.getvalue()
    want = ("failed: y.zip: bad", "2/3", "1 predicted", "1 failed", "1 remaining", "subj/s", "ETA", "inference waits")
    for text in want:
        assert text in shown, text


def io_buffer():
    import io

    return io.StringIO()
