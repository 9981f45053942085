"""A shard's outputs as a few files: predictions.parquet, one archive, and reading them back for ``mimir merge``.

- :func:`write_batch_parquet`: ``OUT/predictions.parquet`` from ``OUT/predictions.csv``,
  with the run's validity key, columns, shard, subjects and error rows in its
  metadata, so the file alone can be merged.
- :func:`pack`: one ``.tar.gz`` per shard (run.json, subjects.csv,
  predictions.csv/.json/.parquet, errors.csv and, when asked, report.html),
  members sorted with fixed times and owners, so the same outputs give the
  same archive bytes.
- :func:`open_source`: a merge source from a batch folder (its records, or
  its tables when it has none), an archive, or a predictions.parquet.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimir.batch.records import (
    ERRORS_CSV,
    PREDICTIONS_CSV,
    PREDICTIONS_JSON,
    RECORDS_DIR,
    STAGE_INPUT,
    ErrorRow,
    RecordStore,
    read_errors,
)
from mimir.errors import UsageError
from mimir.outputs.parquet import (
    PREDICTIONS_PARQUET,
    iter_rows,
    read_metadata,
    write_parquet_from_csv,
)
from mimir.utils import atomic

RUN_JSON = "run.json"  # the names the runner writes (mimir.batch.runner)
SUBJECTS_CSV = "subjects.csv"
REPORT_HTML = "report.html"
#: Files of a shard archive, in this order (those present).
ARCHIVE_MEMBERS = (RUN_JSON, SUBJECTS_CSV, PREDICTIONS_CSV, PREDICTIONS_JSON, PREDICTIONS_PARQUET, ERRORS_CSV)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def read_subjects(path: Path) -> list[tuple[str, str]]:
    """The (name, path) rows of a subjects.csv (as :func:`mimir.batch.runner.read_subjects`, which the runner
    owns; this module may not import the runner, which imports it)."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [(r["name"], r["path"]) for r in csv.DictReader(fh)]


def write_batch_parquet(out_dir: str | os.PathLike[str], run: dict[str, Any], input_errors: list[ErrorRow]) -> int:
    """``OUT/predictions.parquet`` from ``OUT/predictions.csv`` of a batch run; return the rows written."""
    out = Path(out_dir)
    errors = read_errors(out / ERRORS_CSV)
    meta = {
        "mimir.run": {
            "key": run["key"], "columns": run["columns"], "csv_layout": run["csv_layout"], "shard": run.get("shard"),
            "instance": run.get("instance"),
            "subjects": [list(s) for s in read_subjects(out / SUBJECTS_CSV)],
            "errors": [[e.name, e.path, e.stage, e.message] for e in errors],
        }
    }
    return write_parquet_from_csv(
        out / PREDICTIONS_CSV, out / PREDICTIONS_PARQUET, layout=run["csv_layout"], n_modules=len(run["key"]["modules"]),
        metadata=meta,
    )


# --------------------------------------------------------------------------- archives


def pack(out_dir: str | os.PathLike[str], dest: str | os.PathLike[str], *, report: bool = False) -> list[str]:
    """Write ``dest`` (.tar.gz) with the shard's outputs; return the member names. Reproducible bytes."""
    out = Path(out_dir)
    names = [n for n in ARCHIVE_MEMBERS if (out / n).is_file()]
    if report and (out / REPORT_HTML).is_file():
        names.append(REPORT_HTML)
    if RUN_JSON not in names:
        raise UsageError("is not a mimir batch output folder (no run.json)", path=str(out))
    with atomic.atomic_path(Path(dest)) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, tarfile.open(
            fileobj=gz, mode="w", format=tarfile.PAX_FORMAT
        ) as tar:
            for n in names:
                data = (out / n).read_bytes()
                info = tarfile.TarInfo(n)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return names


def unpack(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Extract a shard archive's known members (nothing else, no paths outside ``dest``)."""
    allowed = {*ARCHIVE_MEMBERS, REPORT_HTML}
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.name in allowed and m.isfile():
                    src = tar.extractfile(m)
                    if src is not None:
                        (Path(dest) / m.name).write_bytes(src.read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"is not a readable shard archive ({type(exc).__name__})", path=os.fspath(archive)) from None


# --------------------------------------------------------------------------- merge sources


class TableStore:
    """Records rebuilt from a folder's predictions.csv/.json and errors.csv (a folder without records/)."""

    def __init__(self, folder: Path, key: dict[str, Any], *, layout: str) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        objs: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError):
            for obj in json.loads((folder / PREDICTIONS_JSON).read_text(encoding="utf-8")):
                objs[obj["name"]] = obj
        rows: dict[str, dict[str, str]] = {}
        if layout == "wide":
            with contextlib.suppress(FileNotFoundError), open(folder / PREDICTIONS_CSV, encoding="utf-8", newline="") as fh:
                rows = {r["name"]: r for r in csv.DictReader(fh)}
        for name in objs.keys() | rows.keys():
            self.records[name] = {"status": "ok", "row": rows.get(name, {}), "json": objs.get(name)}
        for e in read_errors(folder / ERRORS_CSV):
            if e.stage != STAGE_INPUT:
                self.records.setdefault(
                    e.name, {"status": "failed", "source": e.path, "error": {"stage": e.stage, "message": e.message}}
                )

    def valid(self, name: str, key: Any) -> dict[str, Any] | None:
        return self.records.get(name)


class ParquetStore(TableStore):
    """Records from a predictions.parquet of a batch (rows; error rows from its metadata). No JSON objects."""

    def __init__(self, path: Path, run: dict[str, Any]) -> None:
        self.records = {r["name"]: {"status": "ok", "row": r, "json": None} for r in iter_rows(path)}
        for name, src, stage, message in run.get("errors", []):
            if stage != STAGE_INPUT:
                self.records.setdefault(
                    name, {"status": "failed", "source": src, "error": {"stage": stage, "message": message}}
                )


@dataclass
class Source:
    """One thing given to ``mimir merge``: its run description, subjects, input errors, and records."""

    label: str
    run: dict[str, Any]
    subjects: list[tuple[str, str]] | None
    errors: list[ErrorRow]
    store: Any
    has_json: bool = True
    parquet: bool = False
    notes: list[str] = field(default_factory=list)


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


def _folder_source(folder: Path, label: str) -> Source:
    run = _load_run(folder)
    try:
        subjects: list[tuple[str, str]] | None = read_subjects(folder / SUBJECTS_CSV)
    except FileNotFoundError:
        subjects = None
    errors = read_errors(folder / ERRORS_CSV)
    layout = run.get("csv_layout", "wide")
    if (folder / RECORDS_DIR).is_dir():
        store: Any = RecordStore(folder)
    else:
        store = TableStore(folder, run["key"], layout=layout)
    return Source(label, run, subjects, errors, store, parquet=bool(run.get("parquet")))


@contextlib.contextmanager
def open_sources(paths: list[str | os.PathLike[str]]) -> Iterator[list[Source]]:
    """Merge sources for folders, shard archives and predictions.parquet files (temporary files removed after)."""
    with tempfile.TemporaryDirectory(prefix="mimir-merge-") as tmp:
        sources: list[Source] = []
        for i, item in enumerate(paths):
            p = Path(item)
            label = os.fspath(item)
            if p.is_dir():
                sources.append(_folder_source(p, label))
            elif p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES):
                dest = Path(tmp) / f"a{i}"
                dest.mkdir()
                unpack(p, dest)
                sources.append(_folder_source(dest, label))
            elif p.is_file() and p.suffix.lower() == ".parquet":
                meta = read_metadata(p)
                run = meta.get("mimir.run")
                if not isinstance(run, dict) or "key" not in run:
                    raise UsageError(
                        "has no mimir run metadata (only mimir batch writes mergeable Parquet files)", path=label
                    )
                if run.get("csv_layout", "wide") != "wide":
                    raise UsageError(
                        "is a long-layout Parquet file; merge the shard folders or archives instead", path=label
                    )
                subjects = [(n, s) for n, s in run.get("subjects", [])]
                errors = [ErrorRow(*e) for e in run.get("errors", [])]
                sources.append(Source(label, run, subjects, errors, ParquetStore(p, run), has_json=False, parquet=True))
            else:
                why = "" if p.exists() else " (no such file or folder)"
                raise UsageError(
                    f"is not a mimir batch output folder, shard archive (.tar.gz) or predictions.parquet{why}",
                    path=label,
                )
        yield sources
