"""Limits on what mimir reads, and the checks made before reading anything.

Inputs are hostile: a zip's directory can lie about sizes, a file name can
stand for a FIFO or a device, a ``module.json`` can nest brackets a million
deep. Every limit here is checked *before* the memory is allocated, on the
bytes actually read (never on what a header claims), and can be raised with an
environment variable when a genuine file needs it.

Default limits are derived from what a real UK Biobank field-20201 zip holds
(about 1,600 slices of ~0.1 MB, about 100 MB uncompressed, a manifest of a few
hundred kB); see ``docs/limits.md``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from mimir.errors import InputError, MimirError

MiB = 1024 * 1024

#: Longest value quoted in an error message, in characters.
QUOTE_CHARS = 200


@dataclass(frozen=True)
class Limit:
    """One size limit: its environment variable, default, unit, and what a real file needs."""

    env: str
    default: int
    what: str
    typical: str

    def value(self) -> int:
        """The limit in force: the environment variable if set to a positive whole number, else the default."""
        text = os.environ.get(self.env, "").strip()
        if not text:
            return self.default
        try:
            value = int(float(text)) if any(c in text for c in ".eE") else int(text, 0)
        except ValueError:
            raise MimirError(f"${self.env} is {quote(text, 40)}, not a whole number of bytes") from None
        if value < 1:
            raise MimirError(f"${self.env} must be at least 1, got {value}")
        return value


#: Uncompressed bytes of one zip member (a DICOM slice). A real slice is ~0.1 MB.
MAX_MEMBER_BYTES = Limit("MIMIR_MAX_MEMBER_BYTES", 16 * MiB, "bytes in one zip member", "a slice is about 0.1 MB")
#: Uncompressed bytes of the manifest. A real one is a few hundred kB.
MAX_MANIFEST_BYTES = Limit(
    "MIMIR_MAX_MANIFEST_BYTES", 16 * MiB, "bytes in the manifest", "a manifest is a few hundred kB"
)
#: Uncompressed bytes read from one zip in all, and size of the zip file itself. A real zip is ~100 MB.
MAX_ZIP_BYTES = Limit("MIMIR_MAX_ZIP_BYTES", 512 * MiB, "bytes in one subject zip", "a zip is about 100 MB")
#: Members (files) in one zip. A real zip holds ~1,600 slices.
MAX_ZIP_MEMBERS = Limit("MIMIR_MAX_ZIP_MEMBERS", 20_000, "files in one subject zip", "a zip holds about 1,600")
#: Size of a ``module.json`` or a weights manifest.
MAX_JSON_BYTES = Limit("MIMIR_MAX_JSON_BYTES", 8 * MiB, "bytes in a JSON file", "a module.json is a few kB")

#: Deepest nesting of brackets accepted in a JSON file (module.json nests 5 deep).
MAX_JSON_DEPTH = 64


class LimitError(InputError):
    """An input is larger than a limit allows (before or while reading it)."""


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr``-like text of ``value``, cut to ``limit`` characters (with the length noted)."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[: limit * 4]).decode("ascii", errors="replace")
    text = " ".join(text.split())
    if len(text) > limit:
        return f"'{text[:limit]}...' ({len(value) if hasattr(value, '__len__') else len(text)} characters)"
    return f"'{text}'"


def describe_mode(mode: int) -> str:
    """What kind of file a ``st_mode`` stands for, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular_file(path: str | os.PathLike[str], what: str = "input") -> os.stat_result:
    """Refuse anything but an existing regular file, without opening it.

    Symbolic links are followed (``os.stat``), so a link is accepted only when
    it leads to a regular file. Returns the stat result (``st_size`` is the
    size to expect).

    Raises
    ------
    InputError
        Missing file, folder, FIFO, device, socket, or a file that cannot be examined.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError("is a broken symbolic link", path, "Check the path.") from None
        raise InputError("file not found", path, "Check the path.") from None
    except OSError as exc:
        raise InputError(f"cannot be examined ({exc.strerror or exc})", path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = describe_mode(st.st_mode)
        hint = "Pass the zip file itself." if kind == "a folder" else f"Pass a regular {what} file."
        raise InputError(f"is {kind}, not a regular file; it was not read", path, hint)
    return st


def open_regular(path: str | os.PathLike[str], what: str = "input") -> tuple[Any, int]:
    """Open a regular file for binary reading; refuse anything else without blocking.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the
    open descriptor, so a FIFO swapped in after :func:`check_regular_file`
    still cannot make the read hang. Returns (file object, size in bytes).
    """
    check_regular_file(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"is {describe_mode(st.st_mode)}, not a regular file; it was not read", path)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def limit_hint(limit: Limit, needed: int | None = None) -> str:
    """What to do when a genuine file exceeds ``limit``."""
    raise_to = f"{limit.env}={max(needed or 0, 2 * limit.value())}"
    return f"{limit.typical[0].upper()}{limit.typical[1:]}; if this file is genuine, raise the limit, e.g. {raise_to}."


# --------------------------------------------------------------------------- JSON with a depth guard


_JSON_SPECIAL = re.compile(r'["\\\[\]{}]')


def json_depth_ok(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True when no bracket in ``text`` nests deeper than ``max_depth`` (strings are skipped)."""
    depth = 0
    in_string = False
    escaped_at = -2
    for m in _JSON_SPECIAL.finditer(text):
        ch, at = m.group(), m.start()
        if in_string:
            if ch == "\\":
                if escaped_at != at - 1:
                    escaped_at = at
                else:
                    escaped_at = -2
            elif ch == '"' and escaped_at != at - 1:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def loads_guarded(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses deep nesting (ValueError) instead of raising RecursionError.

    Non-finite numbers (``NaN``, ``Infinity``) are refused too: they are not JSON.
    """
    if not json_depth_ok(text, max_depth):
        raise ValueError(f"brackets nest deeper than {max_depth} levels")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=no_constant)
    except RecursionError:  # pragma: no cover - the depth guard comes first
        raise ValueError(f"brackets nest deeper than {max_depth} levels") from None
