"""A script that starts spawn workers without the __main__ guard gets one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2])


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(body)
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)


def test_a_top_level_call_without_the_guard_is_refused(tmp_path: Path) -> None:
    r = _run(
        tmp_path,
        "from mimir.errors import UsageError\n"
        "from mimir.utils.processes import require_main_guard\n"
        "try:\n"
        "    require_main_guard('mimir.run_batch')\n"
        "except UsageError as exc:\n"
        "    print('REFUSED', exc)\n",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("REFUSED script.py: mimir.run_batch starts worker processes")
    assert "line 4" in r.stdout and 'if __name__ == "__main__":' in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1


def test_a_call_under_the_guard_or_in_a_function_called_there_passes(tmp_path: Path) -> None:
    r = _run(
        tmp_path,
        "from mimir.utils.processes import require_main_guard\n"
        "def go():\n"
        "    require_main_guard('x')\n"
        "    print('OK')\n"
        "if __name__ == '__main__':\n"
        "    go()\n",
    )
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr


def test_run_batch_checks_the_guard(tmp_path: Path) -> None:
    r = _run(
        tmp_path,
        "import mimir\n"
        f"mimir.run_batch({str(tmp_path / 'nothing')!r}, {str(tmp_path / 'out')!r}, workers=1)\n",
    )
    assert r.returncode == 1
    assert "mimir.errors.UsageError: script.py: mimir.run_batch starts worker processes" in r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was made
