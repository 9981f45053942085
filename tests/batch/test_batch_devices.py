"""Batch runs and devices: precision and device type in the validity key, one GPU per inference process.

No GPU is needed: the per-process GPU pinning is checked on the environment
the inference processes would be started with (a fake device list), and the
resume rules on the CPU with ``--precision fp32`` and ``bf16``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest_models import save_images
from test_batch import make_module, record_files

from mimir.batch import local
from mimir.batch.local import LocalConfig, _Run, consumer_device
from mimir.batch.progress import Monitor
from mimir.batch.runner import run_batch


def test_resume_under_another_precision_redoes_the_subjects(tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_images(data, ["a", "b"], seed=2)
    module = make_module(tmp_path / "mod")
    out = tmp_path / "out"
    opts: dict[str, Any] = {"modules": [module], "device": "cpu", "workers": 1, "batch_size": 2}

    first = run_batch(data, out, **opts)  # the default: exact fp32
    assert first.processed == 2
    run = json.loads((out / "run.json").read_text())
    assert (run["precision"], run["precision_requested"], run["device_type"]) == ("fp32", "auto", "cpu")
    assert run["key"]["precision"] == "fp32" and run["key"]["device_type"] == "cpu"
    before = (out / "predictions.csv").read_text()

    again = run_batch(data, out, precision="fp32", **opts)  # auto and fp32 are the same: nothing to redo
    assert again.processed == 0 and again.done_before == 2

    bf16 = run_batch(data, out, precision="bf16", **opts)
    assert bf16.processed == 2 and bf16.done_before == 0  # never a mix of fp32 and bf16 records
    run = json.loads((out / "run.json").read_text())
    assert (run["precision"], run["precision_requested"]) == ("bf16", "bf16")
    records = [json.loads(p.read_text()) for p in record_files(out)]
    assert {r["key"]["precision"] for r in records} == {"bf16"}
    assert {r["provenance"]["precision"] for r in records} == {"bf16"}
    assert all("(bf16" in r["provenance"]["device"] for r in records)
    assert (out / "predictions.csv").read_text() != before


def test_a_record_of_another_device_type_is_redone(tmp_path: Path) -> None:
    from mimir.batch.records import RecordStore, scan

    data = tmp_path / "data"
    save_images(data, ["a"], seed=3)
    out = tmp_path / "out"
    run_batch(data, out, modules=[make_module(tmp_path / "mod")], device="cpu", workers=1, batch_size=1)
    key = json.loads((out / "run.json").read_text())["key"]
    store = RecordStore(out)
    assert scan(store, ["a"], key).todo == []
    assert scan(store, ["a"], {**key, "device_type": "cuda"}).todo == ["a"]


@pytest.mark.parametrize(
    ("device", "visible", "want"),
    [
        ("cuda:1", None, ("cuda:0", {"CUDA_VISIBLE_DEVICES": "1"})),
        ("cuda:1", "4,6", ("cuda:0", {"CUDA_VISIBLE_DEVICES": "6"})),  # N counts among the GPUs we see
        ("cuda:0", "GPU-8a1f,GPU-77c2", ("cuda:0", {"CUDA_VISIBLE_DEVICES": "GPU-8a1f"})),
        ("cuda:2", "4,6", ("cuda:2", {})),  # not there: the child says so in one line
        ("cpu", None, ("cpu", {})),
        ("auto", "3", ("auto", {})),
    ],
)
def test_consumer_device(device: str, visible: str | None, want: tuple[str, dict[str, str]]) -> None:
    assert consumer_device(device, visible) == want


class _FakeProcess:
    """Records the environment a spawned child would inherit (``os.environ`` at ``start()``)."""

    started: list[tuple[tuple[Any, ...], dict[str, str]]] = []

    def __init__(self, target: Any, args: tuple[Any, ...], name: str, daemon: bool) -> None:
        self.args = args

    def start(self) -> None:
        _FakeProcess.started.append((self.args, dict(os.environ)))


class _FakeContext:
    def Process(self, **kw: Any) -> _FakeProcess:  # noqa: N802 - mimics multiprocessing's context
        return _FakeProcess(**kw)

    def Pipe(self, duplex: bool = True) -> tuple[Any, Any]:  # noqa: N802
        class Conn:
            def close(self) -> None:
                pass

        return Conn(), Conn()


def test_each_inference_process_sees_only_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--gpu 0,1`` on a machine whose CUDA_VISIBLE_DEVICES lists 2,3: the children see 2 and 3, each as cuda:0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    _FakeProcess.started = []
    run = object.__new__(_Run)
    run.cfg = LocalConfig(modules=None, devices=["cuda:0", "cuda:1"], workers=1, batch_size=4, level=0.95)
    run.ctx, run.image_q, run.consumers = _FakeContext(), None, []
    run.start_consumers()
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in _FakeProcess.started] == ["2", "3"]
    assert [(args[0], args[1], args[5]) for args, _ in _FakeProcess.started] == [(0, "cuda:0", "cuda:0"),
                                                                                  (1, "cuda:0", "cuda:1")]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # the main process's own setting is left as it was


def test_an_inference_process_names_the_gpu_the_user_gave(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the child the GPU is cuda:0; records and run.json say cuda:1, as the user asked."""
    sent: list[Any] = []

    class Stage:
        def __init__(self, *a: Any, **k: Any) -> None:
            pass

        def identity(self) -> list[dict[str, Any]]:
            return []

        def describe(self) -> str:
            return "cuda:0 (FAKE GPU, fp32, TF32 off)"

    import mimir.batch.stages as stages

    monkeypatch.setattr(stages, "InferenceStage", Stage)
    monkeypatch.setattr(local, "_send", lambda conn, msg: sent.append(msg) or 0.0)
    monkeypatch.setattr(local, "_ignore_stop_signals", lambda: None)

    class Queue:
        def get(self, timeout: float | None = None) -> None:
            return None

    cfg = LocalConfig(modules=None, devices=["cuda:1"], workers=1, batch_size=2, level=0.95)
    local.inference_main(0, "cuda:0", cfg, Queue(), None, "cuda:1")  # type: ignore[arg-type]
    assert sent[0] == ("hello", 0, [], "cuda:1 (FAKE GPU, fp32, TF32 off)")
    assert sent[-1] == ("bye", 0)


def test_the_stall_warning_names_what_the_run_waits_for(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []

    class Quiet(Monitor):
        def print_line(self, text: str) -> None:
            lines.append(text)

    now = [1000.0]
    monkeypatch.setattr("mimir.batch.progress.time.monotonic", lambda: now[0])
    m = Quiet(stall_after=120.0)
    m.waiting_for = lambda: "2 of 2 preprocessing process(es) hold a subject"
    m.begin(3)
    now[0] += 119
    m.tick()
    assert lines == []
    now[0] += 2
    m.tick()
    m.tick()
    assert lines == ["warning: no subject has finished for 2m01s; waiting for: 2 of 2 preprocessing process(es) "
                     "hold a subject"]
    m.advance(True)  # progress re-arms it: a later stall is reported again
    now[0] += 200
    m.tick()
    assert len(lines) == 2 and "3m20s" in lines[1]
