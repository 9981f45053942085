"""Atomic file output: a reader sees the old file or the whole new one, never half.

Every file mimir writes for a user goes through here: the data is written to a
temporary file in the destination folder, flushed to disk, then renamed over
the destination (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``.

    On an exception the temporary file is removed and ``dest`` is untouched.
    ``suffix`` is appended to the temporary name (some writers, e.g.
    ``numpy.save``, look at the extension).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``dest``."""
    write_bytes(dest, text.encode("utf-8"))


def check_writable_dir(folder: str | os.PathLike[str], *, create: bool = True, what: str = "output folder") -> Path:
    """Make sure files can be written in ``folder`` before any work starts.

    Creates the folder (and its parents) when ``create``; then creates and
    removes a temporary file in it, which is the only check that works for
    every reason a write can fail (permissions, read-only mounts, ACLs, root).

    Raises
    ------
    mimir.errors.UsageError
        One line naming the folder and the reason.
    """
    from mimir.errors import UsageError

    folder = Path(folder)
    hint = f"Give an {what} you can write to." if what[0] in "aeiou" else f"Give a {what} you can write to."
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"is a file, not a folder (wanted as the {what})", path=str(folder), hint=hint)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, (NotADirectoryError, FileExistsError)):
                reason = "a part of the path is a file"
            raise UsageError(f"cannot create the {what} ({reason})", path=str(folder), hint=hint) from None
    elif not folder.is_dir():
        raise UsageError(f"the {what} does not exist", path=str(folder), hint=hint)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mimir-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"cannot write in the {what} ({exc.strerror or exc})", path=str(folder), hint=hint) from None
    return folder


def check_writable_parent(dest: str | os.PathLike[str], *, what: str = "output file") -> Path:
    """Make sure the folder that will hold ``dest`` exists (or can be made) and takes writes, before any work starts.

    For outputs written beside themselves and renamed into place: a file
    (:func:`check_writable_file`) or a folder built whole, such as a module.
    """
    from mimir.errors import UsageError

    dest = Path(dest)
    try:
        check_writable_dir(dest.parent if str(dest.parent) else Path("."), what="folder")
    except UsageError as exc:
        raise UsageError(
            f"cannot be written: {exc.path}: {exc.message}", path=str(dest),
            hint=f"Give an {what} in a folder you can write to." if what[0] in "aeiou"
            else f"Give a {what} in a folder you can write to.",
        ) from None
    return dest


def check_writable_file(dest: str | os.PathLike[str], *, what: str = "output file") -> Path:
    """Make sure ``dest`` can be written (atomically, beside it) before any work starts."""
    from mimir.errors import UsageError

    dest = Path(dest)
    if dest.is_dir():
        raise UsageError("is a folder", path=str(dest), hint="Give a file name.")
    return check_writable_parent(dest, what=what)
