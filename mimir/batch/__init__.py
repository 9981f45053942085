"""``mimir batch``: a whole release through preprocessing and inference, resumable and sharded.

>>> from mimir.batch import run_batch
>>> result = run_batch("ukb/20201/", "out/", modules=["module_bodycomp"], workers=8)
>>> result.predicted, result.failed, result.exit_code

Modules, one stage each, data flowing one way:

- :mod:`~mimir.batch.inputs`: discovery, subject names, sharding by sha256 of the name;
- :mod:`~mimir.batch.stages`: preprocessing (CPU, no torch) and inference (fixed-shape batches);
- :mod:`~mimir.batch.local` / :mod:`~mimir.batch.ray_engine`: the engines;
- :mod:`~mimir.batch.records`: one atomic record per subject, the validity key, the final outputs;
- :mod:`~mimir.batch.progress`: the progress display;
- :mod:`~mimir.batch.runner`: a run from plan to outputs;
- :mod:`~mimir.batch.merge`: combining the output folders of shards;
- :mod:`~mimir.batch.report`: the self-contained HTML report of an output folder (``build_report``);
- on the UK Biobank RAP (DNAnexus): :mod:`~mimir.batch.rap` (mount and listings), :mod:`~mimir.batch.staging`,
  :mod:`~mimir.batch.shards` (Parquet, archives, merge sources), :mod:`~mimir.batch.checkpoint`,
  :mod:`~mimir.batch.dx`, :mod:`~mimir.batch.rap_job` and :mod:`~mimir.batch.launcher`.

Importing this package loads neither torch nor Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_batch", "merge_outputs", "build_report", "BatchResult", "MergeResult"]


def __getattr__(name: str) -> Any:
    if name in ("run_batch", "BatchResult", "BatchOptions"):
        from mimir.batch import runner

        return getattr(runner, name)
    if name in ("merge_outputs", "MergeResult"):
        from mimir.batch import merge

        return getattr(merge, name)
    if name == "build_report":
        from mimir.batch import report

        return report.build_report
    raise AttributeError(f"module 'mimir.batch' has no attribute {name!r}")
