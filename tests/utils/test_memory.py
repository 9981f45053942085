"""glibc tuning for preprocessing workers: big arrays are reused, not re-faulted."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CODE = """
import resource, numpy as np
from mimir.utils.memory import reuse_freed_memory
if {tune}:
    assert reuse_freed_memory()
a = np.ones(40_000_000 // 8); del a            # 40 MB: above glibc's default mmap ceiling
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    a = np.ones(40_000_000 // 8); del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tune: bool) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CODE.format(tune=tune)], capture_output=True, text=True, check=True, timeout=60
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_reuse_freed_memory_stops_page_faults_on_reallocation():
    tuned, default = _faults(True), _faults(False)
    assert tuned * 10 < default  # measured here: 0 against ~2,800 (huge pages) to ~49,000
