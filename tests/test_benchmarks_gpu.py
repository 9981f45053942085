"""Smoke test of benchmarks/gpu.py in its CPU quick mode: it runs end to end and reports figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_quick_mode_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MIMIR_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
         "--data", str(tmp_path / "data"), "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    modes = {r["mode"] for r in result["inference"]}
    assert modes == {"fp32 eager", "mimir fp32", "mimir bf16+cl"}
    assert all(r["images_per_s"] > 0 and r["peak_gpu_mib"] is None for r in result["inference"])
    (row,) = result["batch"]
    assert row["workers"] == 1 and row["subjects"] == 2 and row["failed"] == 0
    assert row["subjects_per_s"] > 0 and 0 <= row["inference_computing_share"] <= 1
    assert "| workers | subjects | subjects/s |" in proc.stdout
