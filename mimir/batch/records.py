"""Per-subject records of a batch run, and the final outputs built from them.

Every finished subject, predicted or failed, has one JSON record at
``OUT_DIR/records/<xx>/<key>.json`` (``xx``: the first two hex digits of the
sha256 of the name, so no folder holds more than ~1/256 of a release; ``key``:
:func:`record_key`, a bounded, collision-free file name). A
record is written to a temporary file beside it and renamed into place, so a
reader (or a resumed run) sees the whole record or none. Records are not
fsynced: a record torn by a power cut is unreadable JSON, which counts as
"not done" and is redone.

A record holds the CSV row and the JSON object exactly as ``predict`` writes
them (or the failing stage and a one-line message), the validity key, and
provenance. The **validity key** is the pipeline version, the identity of
every module (name, version, member sha256s, module.json digest) in order, the
interval level, the output schema, the resolved precision (``fp32`` or
``bf16``) and the device type (``cpu``, ``cuda`` or ``mps``). A record counts
as done only when its key equals the current run's key; any other record is
redone (so a run resumed under another precision or on another kind of device
redoes its subjects rather than mixing numbers of two settings).

The final ``predictions.csv``, ``predictions.json`` and ``errors.csv`` are
rebuilt from the records of the run's subjects, sorted by subject name, so
they do not depend on the order in which subjects finished: an interrupted
and resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mimir.utils import atomic

#: ``format`` field of every record.
RECORD_FORMAT = "mimir-batch-record/1"
#: Folder of the records inside OUT_DIR.
RECORDS_DIR = "records"
#: Columns of errors.csv.
ERROR_COLUMNS = ("name", "path", "stage", "message")

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
ERRORS_CSV = "errors.csv"

#: Stages named in errors.csv.
STAGE_INPUT = "input"  # refused before reading (e.g. two inputs with one name)
STAGE_PREPROCESS = "preprocess"  # reading, checking and fusing the zip, or loading the .npy
STAGE_WORKER = "worker"  # the preprocessing process died (e.g. killed for memory)
STAGE_INFERENCE = "inference"  # the prediction is not finite (names the module and target)


def run_key(
    pipeline_version: str, modules: Sequence[Mapping[str, Any]], level: float, *, precision: str, device_type: str
) -> dict[str, Any]:
    """The validity key of a run: pipeline version, module identities (in order), interval level, output schema,
    resolved precision (``fp32``/``bf16``) and device type (``cpu``/``cuda``/``mps``).

    A record made under another output schema (docs/outputs.md) is redone, so
    every row of a run has the same columns; one made under another precision
    or device type too, so every row of a run was computed the same way.
    """
    from mimir.outputs.writers import SCHEMA_VERSION

    return {
        "pipeline_version": pipeline_version,
        "modules": [dict(m) for m in modules],
        "level": float(level),
        "output_schema": SCHEMA_VERSION,
        "precision": precision,
        "device_type": device_type,
    }


def key_digest(key: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a validity key (for display and run.json)."""
    canon = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def ok_record(
    name: str, source: str, key: Mapping[str, Any], row: Mapping[str, Any], obj: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> dict[str, Any]:
    """The record of a predicted subject."""
    return {
        "format": RECORD_FORMAT,
        "name": name,
        "source": source,
        "status": "ok",
        "key": dict(key),
        "row": dict(row),
        "json": dict(obj),
        "provenance": {**provenance, "finished_at": _now()},
    }


def error_record(
    name: str, source: str, key: Mapping[str, Any], stage: str, message: str, provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """The record of a failed subject."""
    return {
        "format": RECORD_FORMAT,
        "name": name,
        "source": source,
        "status": "failed",
        "key": dict(key),
        "error": {"stage": stage, "message": " ".join(message.split())},
        "provenance": {**provenance, "finished_at": _now()},
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


#: Characters of the subject name kept in a record's file name.
KEY_NAME_CHARS = 80
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def record_key(name: str, digest: str | None = None) -> str:
    """The file-name stem of a subject's record: a readable prefix of the name and a hash.

    ``<first 80 safe characters of the name>.<first 20 hex digits of sha256(name)>``:
    at most 101 ASCII characters whatever the name (a 230-character subject name
    is fine on every file system), distinct for distinct names (the hash covers
    the whole name; the record itself stores the name and is checked on reading),
    and never colliding on case-insensitive file systems by accident of case alone
    beyond the hash's 80 bits.
    """
    digest = digest or hashlib.sha256(name.encode("utf-8")).hexdigest()
    readable = "".join(c if c in _SAFE else "_" for c in name[:KEY_NAME_CHARS]).lstrip(".") or "_"
    return f"{readable}.{digest[:20]}"


class RecordStore:
    """The records folder of one OUT_DIR."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.root = Path(out_dir) / RECORDS_DIR

    def path_for(self, name: str) -> Path:
        """Where the record of subject ``name`` lives: ``records/<xx>/<key>.json``.

        The key is :func:`record_key` (bounded length, collision-free), so any
        subject name, however long or odd, gives a valid file name.
        """
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
        return self.root / digest[:2] / f"{record_key(name, digest)}.json"

    def write(self, record: Mapping[str, Any]) -> None:
        """Write a record atomically (temporary file in the same folder, then rename)."""
        dest = self.path_for(record["name"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read(self, name: str) -> dict[str, Any] | None:
        """The record of ``name``, or None when absent, unreadable, or not this subject's."""
        try:
            data = self.path_for(name).read_bytes()
            record = json.loads(data)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("name") != name:
            return None
        if record.get("status") not in ("ok", "failed"):
            return None
        return record

    def valid(self, name: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record of ``name`` if it was made under ``key`` (else None: redo it)."""
        record = self.read(name)
        if record is None or record.get("key") != key:
            return None
        complete = isinstance(record.get("row"), dict) and isinstance(record.get("json"), dict)
        if record["status"] == "ok" and not complete:
            return None
        return record

    def remove_stale_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by killed runs (older than ``older_than_s``); return how many."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        n = 0
        for tmp in self.root.glob("*/.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    n += 1
        return n


# --------------------------------------------------------------------------- status of a run


@dataclass
class Status:
    """Which subjects of a run are done (predicted or failed) and which are left."""

    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)


def scan(store: RecordStore, names: Iterable[str], key: Mapping[str, Any], *, retry_failed: bool = False) -> Status:
    """Sort ``names`` into predicted, failed and to do, under ``key``.

    With ``retry_failed`` the failed ones are to do again.
    """
    status = Status()
    for name in names:
        record = store.valid(name, key)
        if record is None:
            status.todo.append(name)
        elif record["status"] == "ok":
            status.ok.append(name)
        elif retry_failed:
            status.todo.append(name)
        else:
            status.failed.append(name)
    return status


# --------------------------------------------------------------------------- final outputs


@dataclass(frozen=True)
class ErrorRow:
    """One line of errors.csv."""

    name: str
    path: str
    stage: str
    message: str


@dataclass
class Outputs:
    """What the final outputs hold."""

    predicted: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    #: predicted subjects per QC verdict of their input ("ok", "warn", "fail", "" when not computed)
    qc: dict[str, int] = field(default_factory=dict)


def _json_item(obj: Mapping[str, Any]) -> str:
    """One element of a JSON list, formatted exactly as ``json.dumps(list, indent=2)`` does."""
    text = json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False)
    return "\n".join("  " + line for line in text.split("\n"))


class _JsonListWriter:
    """Streams a JSON list, byte-identical to :func:`mimir.outputs.writers.json_text` of the same objects."""

    def __init__(self, fh: TextIO) -> None:
        self.fh = fh
        self.n = 0

    def add(self, obj: Mapping[str, Any]) -> None:
        self.fh.write("[\n" if self.n == 0 else ",\n")
        self.fh.write(_json_item(obj))
        self.n += 1

    def close(self) -> None:
        self.fh.write("[]\n" if self.n == 0 else "\n]\n")


def write_outputs(
    out_dir: str | os.PathLike[str],
    names: Iterable[str],
    lookup: Callable[[str], dict[str, Any] | None],
    header: Sequence[str],
    input_errors: Iterable[ErrorRow] = (),
    csv_layout: str = "wide",
    with_json: bool = True,
) -> Outputs:
    """Write predictions.csv, predictions.json and errors.csv from the records, sorted by name.

    ``lookup(name)`` returns the valid record of a subject or None (then the
    subject is counted as missing). ``input_errors`` are the inputs refused
    before reading; they go into errors.csv too. Each file is written
    atomically; memory use does not grow with the number of subjects beyond
    the list of names. ``csv_layout`` ``long`` writes predictions.csv with one
    row per subject x target (made from each record's JSON object).
    ``with_json=False`` leaves predictions.json out (records without JSON objects).
    """
    from mimir.inference.predictions import LONG_HEADER, long_rows

    out = Path(out_dir)
    result = Outputs()
    errors: list[ErrorRow] = list(input_errors)
    names = sorted(set(names))
    json_path = out / PREDICTIONS_JSON if with_json else Path(os.devnull)
    with (
        atomic.atomic_path(out / PREDICTIONS_CSV) as csv_tmp,
        contextlib.nullcontext(json_path) if not with_json else atomic.atomic_path(json_path) as json_tmp,
    ):
        with open(csv_tmp, "w", encoding="utf-8", newline="") as cf, open(json_tmp, "w", encoding="utf-8") as jf:
            long = csv_layout == "long"
            writer = csv.DictWriter(cf, fieldnames=LONG_HEADER if long else list(header), lineterminator="\n")
            writer.writeheader()
            items = _JsonListWriter(jf)
            for name in names:
                record = lookup(name)
                if record is None:
                    result.missing.append(name)
                elif record["status"] == "ok":
                    if long:
                        writer.writerows(long_rows(record["json"]))
                    else:
                        writer.writerow(record["row"])
                    items.add(record["json"])
                    result.predicted += 1
                    verdict = str(record["row"].get("qc_status", ""))
                    result.qc[verdict] = result.qc.get(verdict, 0) + 1
                else:
                    err = record.get("error") or {}
                    source = record.get("source", "")
                    errors.append(ErrorRow(name, source, err.get("stage", ""), err.get("message", "")))
            items.close()
    result.failed = len({e.name for e in errors})
    write_errors(out / ERRORS_CSV, errors)
    return result


def write_errors(path: str | os.PathLike[str], errors: Iterable[ErrorRow]) -> None:
    """errors.csv: ``name, path, stage, message``, sorted by name and path (header only when none)."""
    rows = sorted(errors, key=lambda e: (e.name, e.path, e.stage, e.message))
    with atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ERROR_COLUMNS)
        for e in rows:
            writer.writerow((e.name, e.path, e.stage, e.message))


def read_errors(path: str | os.PathLike[str]) -> list[ErrorRow]:
    """The rows of an errors.csv (empty when the file is absent)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return [ErrorRow(r["name"], r["path"], r["stage"], r["message"]) for r in csv.DictReader(fh)]
    except FileNotFoundError:
        return []
