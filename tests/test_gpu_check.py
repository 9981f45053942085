"""The prepared GPU check script runs its CPU dry run end to end and writes every step's figures to one file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    env = dict(os.environ, MIMIR_HOME=str(tmp_path / "home"))
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "-o", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# mimir GPU check") and "QUICK dry run: not a measurement" in text
    # the default settings agree with --device cpu exactly on the CPU; bf16's deviation is measured
    assert "| default | cpu (fp32" in text and "0.00e+00" in text and "| bf16 |" in text
    for step in ("1.", "2.", "3."):
        assert f"- {step}" in text and "FAILED" not in text
