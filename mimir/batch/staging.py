"""Staging: copy inputs from a slow or unreliable mount (dxfuse) to local disk ahead of the workers, verified.

A :class:`Stager` in the main process copies the subjects to do, in the
order the engine hands them out, into ``STAGE_DIR/ready/<key>/<file name>``
(``key``: the record key of the subject name), keeping at most
``max_files`` files and ``max_bytes`` bytes staged or being copied but not
yet preprocessed (the look-ahead). It copies with ``threads`` threads at
once: verifying a copy inflates every member (about 0.3 s of CPU for a
full-size 50 MB zip, as much as preprocessing it), and a FUSE read waits on
the network, so one thread could not keep several workers busy. A worker
that wants a subject not yet staged says so (``STAGE_DIR/want/<key>``);
wanted subjects go first, even past the look-ahead, so the run never waits
on the order.

Each copy is verified before a worker may read it: its size against the
listing's size (or the size the mount reported before the copy), its MD5
against the listing's when there is one, and, for a zip, the CRC-32 of every
member (the zip's own checksums; this catches a corrupted read even when the
platform gives no checksum). A copy that fails is read again, up to
``tries`` times with a growing pause; one that never reads intact becomes an
error row (stage ``preprocess``) naming the file and the last reason, never
an image made from bad bytes. The worker deletes the staged copy once it
has made the image, freeing the look-ahead.

The worker side is :func:`staged_preprocess`, which wraps the engine's
preprocessing function (a picklable ``functools.partial``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mimir.batch.inputs import InputFile
from mimir.batch.rap import Expected
from mimir.batch.records import record_key
from mimir.utils import atomic

READY, WANT, TMP = "ready", "want", "tmp"
#: Seconds between looks at the staging folder (stager and workers).
POLL_S = 0.05
#: Seconds a worker waits for its file before giving up with an error row.
WAIT_S = 3600.0
#: Bytes per read while copying.
CHUNK = 4 << 20


def _key(name: str) -> str:
    return record_key(name)


class StagingFailed(Exception):
    """A copy did not verify."""


class StagingStopped(Exception):
    """The run ended while a copy was under way (the copy is dropped, not reported)."""


def copy_verified(src: str, dest: Path, expected: Expected | None, stop: threading.Event | None = None) -> int:
    """Copy ``src`` to ``dest`` and verify it (size, MD5 when known, zip CRCs); return its size.

    ``stop``, when set, ends the copy at the next block (:class:`StagingStopped`).
    """
    before = os.stat(src).st_size
    md5 = hashlib.md5(usedforsecurity=False) if expected is not None and expected.md5 else None
    size = 0
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        while True:
            if stop is not None and stop.is_set():
                raise StagingStopped(src)
            block = fi.read(CHUNK)
            if not block:
                break
            if md5 is not None:
                md5.update(block)
            fo.write(block)
            size += len(block)
    want = expected.size if expected is not None and expected.size is not None else before
    if size != want:
        raise StagingFailed(f"read {size} bytes, expected {want}")
    if md5 is not None and expected is not None and md5.hexdigest() != expected.md5:
        raise StagingFailed(f"MD5 {md5.hexdigest()} differs from the listing's {expected.md5}")
    if dest.suffix.lower() == ".zip":
        from mimir.preprocessing.reader import first_damaged_member

        try:
            bad = first_damaged_member(dest)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise StagingFailed(f"not a readable zip ({type(exc).__name__}: {exc})") from None
        if bad is not None:
            raise StagingFailed(f"member {bad} fails its CRC check")
    return size


class Stager(threading.Thread):
    """Stages ``files`` (in order) into ``root`` with ``threads`` copying threads; see the module docstring."""

    def __init__(
        self, files: Sequence[InputFile], root: str | os.PathLike[str], expected: Mapping[str, Expected] | None = None,
        *, max_files: int = 8, max_bytes: int = 4 << 30, tries: int = 3, pause_s: float = 0.5, threads: int = 1,
    ) -> None:
        super().__init__(name="mimir-stager", daemon=True)
        self.files = list(files)
        self.by_key = {_key(f.name): f for f in self.files}
        self.root = Path(root)
        self.expected = dict(expected or {})
        self.max_files, self.max_bytes = max(1, max_files), max(1, max_bytes)
        self.tries, self.pause_s = max(1, tries), pause_s
        self.threads = max(1, threads)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.done: set[str] = set()
        #: copies under way: key -> bytes the listing or the mount gives for it
        self._copying: dict[str, int] = {}
        self._next_pending = 0
        #: counts for run.json: copies retried, files that never verified
        self.retried = 0
        self.failed = 0
        for sub in (READY, WANT, TMP):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _in_flight(self) -> tuple[int, int]:
        """Files and bytes staged and not yet taken, plus the copies under way (call with ``self.lock`` held).

        A file counts once, whether its copy is still under way or it has just landed in ``ready/``.
        """
        ready: set[str] = set()
        size = 0
        for entry in os.scandir(self.root / READY):
            ready.add(entry.name.removesuffix(".err"))
            if entry.is_dir():
                with contextlib.suppress(OSError):  # a worker may take (delete) it while we look
                    for f in os.scandir(entry.path):
                        size += f.stat().st_size
        size += sum(nbytes for key, nbytes in self._copying.items() if key not in ready)
        return len(ready | self._copying.keys()), size

    def _wanted(self) -> list[str]:
        return sorted(k for k in os.listdir(self.root / WANT) if k in self.by_key and k not in self.done)

    def _size_of(self, f: InputFile) -> int:
        known = self.expected.get(f.path)
        if known is not None and known.size is not None:
            return known.size
        try:
            return os.stat(f.path).st_size
        except OSError:
            return 0

    def _take(self) -> InputFile | None:
        """The next file to copy (wanted ones first, past the look-ahead), reserved; or None."""
        with self.lock:
            wanted = self._wanted()
            if wanted:
                pick = self.by_key[wanted[0]]
            else:
                while self._next_pending < len(self.files) and _key(self.files[self._next_pending].name) in self.done:
                    self._next_pending += 1
                if self._next_pending >= len(self.files):
                    return None
                n, size = self._in_flight()
                if n >= self.max_files or size >= self.max_bytes:
                    return None
                pick = self.files[self._next_pending]
            self.done.add(_key(pick.name))
            self._copying[_key(pick.name)] = self._size_of(pick)
            return pick

    def stage(self, f: InputFile) -> None:
        """Stage one file (or write its error) into ``ready/``."""
        key = _key(f.name)
        with self.lock:
            self.done.add(key)
        tmp_dir = self.root / TMP / key
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        dest = tmp_dir / Path(f.path).name
        reason = ""
        for attempt in range(self.tries):
            if attempt:
                with self.lock:
                    self.retried += 1
                time.sleep(self.pause_s * 2 ** (attempt - 1))
            try:
                copy_verified(f.path, dest, self.expected.get(f.path), self.stop_event)
            except StagingStopped:  # the run is over: nobody waits for this file
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return
            except FileNotFoundError:
                reason = "no such file"
                break
            except (StagingFailed, OSError) as exc:
                reason = str(exc) if isinstance(exc, StagingFailed) else f"{type(exc).__name__}: {exc.strerror or exc}"
                continue
            os.replace(tmp_dir, self.root / READY / key)
            return
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tries = "" if reason == "no such file" else f" after {self.tries} tries"
        self._unreadable(f, reason, tries)

    def _unreadable(self, f: InputFile, reason: str, tries: str = "") -> None:
        """Count ``f`` as unreadable and leave its error (written whole) for the worker that waits for it."""
        with self.lock:
            self.failed += 1
        err = self.root / READY / f"{_key(f.name)}.err"
        atomic.write_text(err, f"{f.path}: could not be read intact{tries} ({reason}); it was not preprocessed")

    def _copy_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                f = self._take()
            except OSError:  # the staging folder could not be listed this time: try again, never die
                f = None
            if f is None:
                self.stop_event.wait(POLL_S)
                continue
            try:
                self.stage(f)
            except Exception as exc:  # noqa: BLE001 - a copying thread must never die: the worker would wait for ever
                with contextlib.suppress(OSError):  # no room even for the error: its worker times out (WAIT_S)
                    self._unreadable(f, f"{type(exc).__name__}: {exc}")
            finally:
                with self.lock:
                    self._copying.pop(_key(f.name), None)

    def run(self) -> None:
        helpers = [threading.Thread(target=self._copy_loop, name=f"mimir-stager-{i}", daemon=True)
                   for i in range(1, self.threads)]
        for t in helpers:
            t.start()
        self._copy_loop()
        for t in helpers:
            t.join()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


#: The folder mimir stages into, inside the one the user gives (``--stage DIR``); only it is ever emptied.
WORK_SUBDIR = ".mimir-stage"


def work_dir(stage_dir: str | os.PathLike[str]) -> Path:
    """Where staging happens for ``--stage stage_dir``: a folder of mimir's own, never the user's files."""
    return Path(stage_dir) / WORK_SUBDIR


@contextlib.contextmanager
def staging(
    files: Sequence[InputFile], root: str | os.PathLike[str], expected: Mapping[str, Expected] | None = None, **kw: Any
) -> Iterator[Stager]:
    """Run a :class:`Stager` for the block in :func:`work_dir` of ``root``, emptied before (a killed run's
    leftovers) and removed after; nothing else in ``root`` is touched."""
    work = work_dir(root)
    shutil.rmtree(work, ignore_errors=True)
    stager = Stager(files, work, expected, **kw)
    stager.start()
    try:
        yield stager
    finally:
        stager.stop()
        shutil.rmtree(work, ignore_errors=True)


def _preprocess_staged(
    name: str, path: str, *, stage_dir: str, inner: Callable[..., tuple[Any, str | None]] | None, cache: bool = True
) -> tuple[Any, str | None]:
    """Worker side: wait for the staged copy of ``path``, preprocess it, delete it."""
    from mimir.batch.stages import preprocess_or_error

    key = _key(name)
    root = Path(stage_dir)
    ready, err = root / READY / key, root / READY / f"{key}.err"
    with contextlib.suppress(OSError):
        (root / WANT / key).touch()
    deadline = time.monotonic() + WAIT_S
    while not ready.is_dir() and not err.exists():
        if time.monotonic() > deadline:
            return None, f"{path}: was not staged within {WAIT_S:.0f} s; it was not preprocessed"
        time.sleep(POLL_S)
    with contextlib.suppress(OSError):
        (root / WANT / key).unlink()
    if err.exists():
        message = err.read_text(encoding="utf-8")
        with contextlib.suppress(OSError):
            err.unlink()
        return None, message
    local = str(ready / Path(path).name)
    try:
        result, message = (inner or preprocess_or_error)(name, local, cache=cache)
    finally:
        shutil.rmtree(ready, ignore_errors=True)
    if message:
        message = message.replace(local, path)
    return result, message


def staged_preprocess(stage_dir: str, inner: Callable[..., tuple[Any, str | None]] | None = None) -> Any:
    """The engine's preprocessing function reading staged copies from ``stage_dir`` (picklable)."""
    return functools.partial(_preprocess_staged, stage_dir=os.path.abspath(work_dir(stage_dir)), inner=inner)
