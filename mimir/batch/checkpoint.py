"""Spot-safe resume across instances: a shard's records, kept as one file in persistent storage.

A low-priority (spot) job can be stopped and restarted on a fresh instance
whose disk is empty. The records of a batch run (:mod:`mimir.batch.records`)
already make a local resume exact; a checkpoint carries them to the next
instance:

- :func:`pack_records`: every valid-looking record file of ``OUT/records`` in
  one ``.tar.gz`` (a few KB per subject), written atomically;
- :func:`restore_records`: unpack one into ``OUT/records`` (only
  ``records/<xx>/<name>.json`` members; nothing outside the folder);
- :class:`Checkpointer`: decides when to save (every ``every_s`` seconds or
  every ``every_n`` new records, whichever comes first) and hands the file
  to an ``upload`` function (on the RAP: :func:`mimir.batch.dx.replace`).

Records restored from a checkpoint are checked like any record (validity
key, subject name), so the resumed shard's outputs are byte-identical to
those of an uninterrupted run.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from mimir.batch.records import RECORDS_DIR
from mimir.errors import UsageError
from mimir.utils import atomic

_MEMBER = re.compile(r"^records/[0-9a-f]{2}/[A-Za-z0-9._-]{1,120}\.json$")
#: Largest checkpoint restored (records are a few KB; 100,000 subjects fit easily).
MAX_CHECKPOINT_BYTES = 4 << 30


def record_files(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The record files of an OUT_DIR (temporary files left out), sorted."""
    root = Path(out_dir) / RECORDS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*.json") if not p.name.startswith("."))


def pack_records(out_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Write the records of ``out_dir`` into ``dest`` (.tar.gz); return how many."""
    files = record_files(out_dir)
    with atomic.atomic_path(Path(dest)) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=6) as gz, tarfile.open(
            fileobj=gz, mode="w", format=tarfile.PAX_FORMAT
        ) as tar:
            for p in files:
                try:
                    data = p.read_bytes()
                except FileNotFoundError:  # replaced between listing and reading: the next save has it
                    continue
                info = tarfile.TarInfo(f"{RECORDS_DIR}/{p.parent.name}/{p.name}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return len(files)


def restore_records(archive: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> int:
    """Unpack a checkpoint's records into ``out_dir``; return how many. Existing records are kept."""
    if os.path.getsize(archive) > MAX_CHECKPOINT_BYTES:
        raise UsageError(f"is larger than a checkpoint may be ({MAX_CHECKPOINT_BYTES} bytes)", path=os.fspath(archive))
    out = Path(out_dir)
    n = 0
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for m in tar.getmembers():
                if not (m.isfile() and _MEMBER.match(m.name)):
                    continue
                dest = out / m.name
                if dest.exists():
                    continue
                src = tar.extractfile(m)
                if src is None:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_bytes(dest, src.read())
                n += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"is not a readable checkpoint ({type(exc).__name__})", path=os.fspath(archive)) from None
    return n


class Checkpointer:
    """Saves ``out_dir``'s records through ``upload(path)`` every ``every_s`` seconds or ``every_n`` new records."""

    def __init__(
        self, out_dir: str | os.PathLike[str], work_file: str | os.PathLike[str], upload: Callable[[str], object],
        *, every_s: float = 600.0, every_n: int = 500, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out_dir, self.work_file, self.upload = Path(out_dir), Path(work_file), upload
        self.every_s, self.every_n, self.clock = every_s, max(1, every_n), clock
        self.saved_count = len(record_files(out_dir))
        self.saved_at = clock()
        self.saves = 0

    def due(self) -> bool:
        """Whether a save is due now (something new, and enough time or records since the last)."""
        n = len(record_files(self.out_dir))
        if n == self.saved_count:
            return False
        return n - self.saved_count >= self.every_n or self.clock() - self.saved_at >= self.every_s

    def save(self) -> int:
        """Pack and upload now; return the records saved."""
        n = pack_records(self.out_dir, self.work_file)
        self.upload(str(self.work_file))
        self.saved_count, self.saved_at = n, self.clock()
        self.saves += 1
        return n

    def maybe_save(self) -> bool:
        """Save when due; whether it did."""
        if self.due():
            self.save()
            return True
        return False
