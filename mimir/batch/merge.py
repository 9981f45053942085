"""``mimir merge``: combine the output folders of shards into one set of outputs.

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

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimir import __version__
from mimir.batch.inputs import discover
from mimir.batch.records import (
    ERRORS_CSV,
    STAGE_INPUT,
    ErrorRow,
    RecordStore,
    key_digest,
    read_errors,
    write_outputs,
)
from mimir.batch.runner import RUN_JSON, SUBJECTS_CSV, read_subjects
from mimir.errors import EXIT_OK, EXIT_PARTIAL, UsageError
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


def _load_run(folder: Path) -> dict[str, Any]:
    try:
        run = json.loads((folder / RUN_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("is not a mimir batch output folder (no run.json)", path=str(folder)) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"has an unreadable run.json ({type(exc).__name__})", path=str(folder)) from None
    if not isinstance(run, dict) or "key" not in run or "columns" not in run:
        raise UsageError("has a run.json without a validity key (not written by mimir batch)", path=str(folder))
    return run


def merge_outputs(
    out_dirs: list[str | os.PathLike[str]], dest: str | os.PathLike[str], *, input: str | None = None  # noqa: A002
) -> MergeResult:
    """Merge the batch output folders ``out_dirs`` into ``dest``; see the module docstring."""
    if not out_dirs:
        raise UsageError("give at least one output folder to merge")
    folders = [Path(d) for d in out_dirs]
    dest_path = Path(dest)
    if any(dest_path.resolve() == f.resolve() for f in folders):
        raise UsageError("the merged output folder must not be one of the folders merged", path=str(dest))
    atomic.check_writable_dir(dest_path, what="merged output folder")  # before any work
    runs = [_load_run(f) for f in folders]
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
    result = MergeResult()

    expected: dict[str, str] = {}
    for f in folders:
        try:
            for name, path in read_subjects(f / SUBJECTS_CSV):
                expected.setdefault(name, path)
        except FileNotFoundError:
            result.problems.append(f"{f}: no {SUBJECTS_CSV}; only its records are counted")
    if input is not None:
        found = discover(input)
        for x in [*found.files, *found.problems]:
            expected.setdefault(x.name, x.path)

    shards = {(r["shard"]["num_shards"], r["shard"]["shard_index"]) for r in runs if "shard" in r}
    counts = {n for n, _ in shards}
    for n in sorted(counts):
        absent = sorted(set(range(n)) - {k for m, k in shards if m == n})
        if absent and n > 1:
            listed = ", ".join(map(str, absent[:20])) + (" ..." if len(absent) > 20 else "")
            unknown = "" if input is not None else " (give --input to list its subjects as missing)"
            result.problems.append(f"no folder for shard(s) {listed} of {n}{unknown}")

    input_errors: list[ErrorRow] = []
    seen: set[tuple[str, str]] = set()
    for f in folders:
        for e in read_errors(f / ERRORS_CSV):
            if e.stage == STAGE_INPUT and (e.name, e.path) not in seen:
                seen.add((e.name, e.path))
                input_errors.append(e)
    refused = {e.name for e in input_errors}

    stores = [RecordStore(f) for f in folders]
    duplicates = 0

    def lookup(name: str) -> dict[str, Any] | None:
        nonlocal duplicates
        found = [r for r in (s.valid(name, key) for s in stores) if r is not None]
        ok = [r for r in found if r["status"] == "ok"]
        if len(ok) > 1:
            duplicates += 1
        return (ok or found or [None])[0]

    names = sorted(n for n in expected if n not in refused)
    written = write_outputs(dest_path, names, lookup, header, input_errors, csv_layout=csv_layout)
    if duplicates:
        result.problems.append(
            f"{duplicates} subject(s) were predicted in more than one folder; the first folder's record was kept"
        )
    result.predicted, result.failed, result.missing = written.predicted, written.failed, written.missing

    with atomic.atomic_path(dest_path / MISSING_CSV) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("name", "path"))
        writer.writerows((n, expected.get(n, "")) for n in result.missing)
    merged = {
        "format": "mimir-batch-merge/1",
        "mimir_version": __version__,
        "sources": [os.path.abspath(f) for f in folders],
        "input": None if input is None else os.path.abspath(input),
        "key": key,
        "key_digest": key_digest(key),
        "columns": header,
        "csv_layout": csv_layout,
        "counts": {"subjects": len(expected), "predicted": result.predicted, "failed": result.failed,
                   "missing": len(result.missing)},
        "problems": result.problems,
    }
    atomic.write_text(dest_path / RUN_JSON, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
    return result
