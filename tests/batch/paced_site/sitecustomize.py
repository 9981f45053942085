"""Test-only start-up hook for the fake RAP job (tests/batch/test_rap.py): pace the batch's records.

On ``PYTHONPATH`` with ``MIMIR_TEST_RECORD_DELAY_S=S`` set, every
``RecordStore.write`` of the processes started waits S seconds first, so that
a job killed at its second checkpoint upload is killed mid-shard however
fast the machine (small subjects are otherwise all done within one poll of
the checkpointer). Nothing is imported unless the variable is set.
"""

from __future__ import annotations

import os

_DELAY = float(os.environ.get("MIMIR_TEST_RECORD_DELAY_S", "0") or 0)

if _DELAY > 0:
    import importlib.abc
    import importlib.machinery
    import sys
    import time

    class _PaceRecords(importlib.abc.MetaPathFinder):
        """Wraps ``mimir.batch.records.RecordStore.write`` once that module is imported."""

        def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
            if name != "mimir.batch.records":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):  # type: ignore[no-untyped-def]
                run(module)
                write = module.RecordStore.write

                def paced(self, record):  # type: ignore[no-untyped-def]
                    time.sleep(_DELAY)
                    return write(self, record)

                module.RecordStore.write = paced

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _PaceRecords())
