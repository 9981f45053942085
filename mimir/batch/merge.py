"""``mimir merge``: combine the output folders of shards (or their archives or Parquet files) into one set of outputs.

Each shard's OUT_DIR holds ``run.json`` (with the validity key and the CSV
columns), ``subjects.csv`` (the inputs of that shard) and ``records/``. The
merge

1. checks that every folder was made with the same key (modules, pipeline
   version, interval level), so the columns agree;
2. takes as the expected subjects the union of the folders' ``subjects.csv``
   (and, with ``input=``, every subject of that INPUT as discovery finds it),
   and notes shards of an N-shard run for which no folder was given;
3. writes ``predictions.csv``, ``predictions.json``, ``errors.csv`` (sorted
   by name, the same bytes an unsharded run would write) and ``missing.csv``
   (subjects neither predicted nor failed) plus a ``run.json`` describing the
   merge.

A predicted record wins over a failed one; when several folders predicted a
subject, the first folder given wins.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimir import __version__
from mimir.batch.records import (
    ERRORS_CSV,
    PREDICTIONS_CSV,
    PREDICTIONS_JSON,
    STAGE_INPUT,
    ErrorRow,
    key_digest,
    read_errors,
    write_outputs,
)
from mimir.batch.runner import RUN_JSON, SUBJECTS_CSV
from mimir.errors import EXIT_OK, EXIT_PARTIAL, UsageError
from mimir.outputs.parquet import PREDICTIONS_PARQUET
from mimir.utils import atomic

MISSING_CSV = "missing.csv"


@dataclass
class MergeResult:
    """Counts of the merged outputs, the missing subjects, and problems found on the way."""

    predicted: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: every subject predicted; 2: some failed or missing."""
        return EXIT_OK if not self.failed and not self.missing else EXIT_PARTIAL


def merge_outputs(
    out_dirs: list[str | os.PathLike[str]], dest: str | os.PathLike[str], *, input: str | None = None,  # noqa: A002
    parquet: bool | None = None,
) -> MergeResult:
    """Merge batch output folders, shard archives or predictions.parquet files into ``dest``; see the module docstring.

    ``parquet``: write predictions.parquet too (None: when any source has one).
    Parquet files carry no JSON objects: when one is merged, predictions.json
    is not written (a problem says so).
    """
    from mimir.batch.shards import open_sources

    if not out_dirs:
        raise UsageError("give at least one output folder to merge")
    dest_path = Path(dest)
    if any(Path(f).exists() and dest_path.resolve() == Path(f).resolve() for f in out_dirs):
        raise UsageError("the merged output folder must not be one of the folders merged", path=str(dest))
    atomic.check_writable_dir(dest_path, what="merged output folder")  # before any work
    with open_sources(list(out_dirs)) as sources:
        return _merge(sources, dest_path, input=input, parquet=parquet)


def _merge(sources: list[Any], dest_path: Path, *, input: str | None, parquet: bool | None) -> MergeResult:  # noqa: A002
    runs = [s.run for s in sources]
    folders = [s.label for s in sources]
    key, header = runs[0]["key"], runs[0]["columns"]
    csv_layout = runs[0].get("csv_layout", "wide")
    for f, run in zip(folders[1:], runs[1:]):
        if run.get("csv_layout", "wide") != csv_layout:
            raise UsageError(
                f"was written with --format {run.get('csv_layout', 'wide')}, {folders[0]} with --format {csv_layout}",
                path=str(f), hint="Merge only folders of the same run.",
            )
        if run["key"] != key or run["columns"] != header:
            raise UsageError(
                f"was made with other modules, pipeline version, interval level, precision or device type than {folders[0]}", path=str(f),
                hint="Merge only folders of the same run.",
            )
    if parquet is None:
        parquet = any(s.parquet for s in sources)
    if parquet:
        from mimir.outputs.parquet import require_pyarrow

        require_pyarrow()
    with_json = all(s.has_json for s in sources)
    result = MergeResult()

    if not with_json:
        result.problems.append("a Parquet file holds no JSON objects: predictions.json was not written")
    expected: dict[str, str] = {}
    for src in sources:
        if src.subjects is None:
            result.problems.append(f"{src.label}: no {SUBJECTS_CSV}; only its records are counted")
            continue
        for name, path in src.subjects:
            expected.setdefault(name, path)
    if input is not None:
        from mimir.batch.rap import discover_inputs

        found, _ = discover_inputs(input, instance=runs[0].get("instance"))
        for x in [*found.files, *found.problems]:
            expected.setdefault(x.name, x.path)

    shards = {(r["shard"]["num_shards"], r["shard"]["shard_index"]) for r in runs if r.get("shard")}
    counts = {n for n, _ in shards}
    for n in sorted(counts):
        absent = sorted(set(range(n)) - {k for m, k in shards if m == n})
        if absent and n > 1:
            listed = ", ".join(map(str, absent[:20])) + (" ..." if len(absent) > 20 else "")
            unknown = "" if input is not None else " (give --input to list its subjects as missing)"
            result.problems.append(f"no folder for shard(s) {listed} of {n}{unknown}")

    input_errors: list[ErrorRow] = []
    seen: set[tuple[str, str]] = set()
    for src in sources:
        for e in src.errors:
            if e.stage == STAGE_INPUT and (e.name, e.path) not in seen:
                seen.add((e.name, e.path))
                input_errors.append(e)
    refused = {e.name for e in input_errors}

    stores = [s.store for s in sources]
    duplicates = 0

    def lookup(name: str) -> dict[str, Any] | None:
        nonlocal duplicates
        found = [r for r in (s.valid(name, key) for s in stores) if r is not None]
        ok = [r for r in found if r["status"] == "ok"]
        if len(ok) > 1:
            duplicates += 1
        return (ok or found or [None])[0]

    names = sorted(n for n in expected if n not in refused)
    written = write_outputs(dest_path, names, lookup, header, input_errors, csv_layout=csv_layout, with_json=with_json)
    if duplicates:
        result.problems.append(
            f"{duplicates} subject(s) were predicted in more than one folder; the first folder's record was kept"
        )
    result.predicted, result.failed, result.missing = written.predicted, written.failed, written.missing

    with atomic.atomic_path(dest_path / MISSING_CSV) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("name", "path"))
        writer.writerows((n, expected.get(n, "")) for n in result.missing)
    if parquet:
        from mimir.outputs.parquet import write_parquet_from_csv

        meta_run = {"key": key, "columns": header, "csv_layout": csv_layout, "shard": None,
                    "instance": runs[0].get("instance"), "subjects": [[n, expected[n]] for n in sorted(expected)],
                    "errors": [[e.name, e.path, e.stage, e.message] for e in read_errors(dest_path / ERRORS_CSV)]}
        write_parquet_from_csv(dest_path / PREDICTIONS_CSV, dest_path / PREDICTIONS_PARQUET, layout=csv_layout,
                               n_modules=len(key["modules"]), metadata={"mimir.run": meta_run})
    # a folder merged into before: what this merge does not write must not stay behind as if it did
    stale = ([] if with_json else [PREDICTIONS_JSON]) + ([] if parquet else [PREDICTIONS_PARQUET])
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            (dest_path / name).unlink()
    merged = {
        "format": "mimir-batch-merge/1",
        "mimir_version": __version__,
        "sources": [os.path.abspath(f) for f in folders],
        "input": None if input is None else os.path.abspath(input),
        "key": key,
        "key_digest": key_digest(key),
        "columns": header,
        "csv_layout": csv_layout,
        "parquet": bool(parquet),
        "instance": runs[0].get("instance"),
        "counts": {"subjects": len(expected), "predicted": result.predicted, "failed": result.failed,
                   "missing": len(result.missing)},
        "problems": result.problems,
    }
    atomic.write_text(dest_path / RUN_JSON, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
    return result
