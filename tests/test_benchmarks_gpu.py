"""benchmarks/gpu.py in its CPU quick mode: it runs end to end, and a torch.compile failure loses no other figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_a_compile_failure_is_recorded_and_every_other_table_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MIMIR_HOME", str(tmp_path / "home"))  # the benchmark sets both: restored afterwards
    monkeypatch.setenv("MIMIR_CACHE", str(tmp_path / "cache"))
    gpu = _load("gpu")
    compiled: list[object] = []

    def broken_compile(net):  # noqa: ANN001, ANN202 - what Inductor does without gcc or Python headers
        compiled.append(net)
        raise RuntimeError("backend='inductor' raised:\nCalledProcessError: gcc: not found (injected)")

    out = tmp_path / "gpu.json"
    code = gpu.main(["--device", "cpu", "--quick", "--compile", "--data", str(tmp_path / "data"), "--json", str(out)],
                    compile_fn=broken_compile)
    assert code == 0 and len(compiled) == 1
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    modes = [r["mode"] for r in result["inference"]]
    assert modes == ["fp32 eager", "mimir fp32", "mimir bf16+cl", "fp32 compiled"]
    failed = result["inference"][-1]
    assert failed["images_per_s"] is None and "gcc: not found" in failed["error"] and "\n" not in failed["error"]
    assert all(r["images_per_s"] > 0 and r["peak_gpu_mib"] is None for r in result["inference"][:-1])
    assert "| 1 | 2 | fp32 compiled | failed: RuntimeError: backend='inductor' raised: CalledProcessError" in printed
    assert "| 1 | 2 | mimir fp32 |" in printed  # the rest of the inference table

    (row,) = result["batch"]  # Part 2 ran after the failure, and its table printed
    assert row["workers"] == 1 and row["subjects"] == 2 and row["failed"] == 0 and row["precision"] == "fp32"
    assert row["first_result_s"] > 0 and 0 <= row["inference_computing_share"] <= 1
    assert "| workers | subjects | subjects/s (from 1st result) |" in printed
    assert printed.index("### Inference alone") < printed.index("### mimir batch")
    assert "exact fp32" in result["setup"] and "preprocessing compiled" in result["setup"]
    assert result["total_s"] > 0


def test_gpu_index_and_the_gpu_nvidia_smi_is_asked_about(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = _load("gpu")
    assert gpu.gpu_index("cuda:1") == 1 and gpu.gpu_index("cuda") == 0 and gpu.gpu_index("cpu") is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.physical_gpu(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu.physical_gpu(1) == "5"  # nvidia-smi numbers GPUs physically, torch among the visible ones
