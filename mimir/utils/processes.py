"""Checks before starting ``spawn`` worker processes from the user's own script.

``multiprocessing`` with the ``spawn`` start method (the one mimir uses, on
every platform) starts each child by importing the parent's main script
again under the name ``__mp_main__``. A script that calls
``mimir.run_batch(...)`` or ``train_module(..., workers=2)`` at its top level,
without ``if __name__ == "__main__":``, would call it again in every child,
which fails deep inside multiprocessing. :func:`require_main_guard` finds
that case before any process is started and raises one clear line instead.
"""

from __future__ import annotations

import ast
import os
import sys
from functools import lru_cache
from types import FrameType

from mimir.errors import UsageError


@lru_cache(maxsize=8)
def _guarded_lines(path: str, mtime: float) -> tuple[tuple[int, int], ...] | None:
    """Line ranges of the ``if __name__ == "__main__":`` blocks of a script (None if it cannot be parsed)."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test):
            out.append((node.lineno, node.end_lineno or node.lineno))
    return tuple(out)


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return bool(names and consts)


def _main_script_frame(frame: FrameType | None) -> FrameType | None:
    """The frame running the main script's top level, if the call came from there."""
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") in ("__main__", "__mp_main__"):
            return frame
        frame = frame.f_back
    return None


def require_main_guard(what: str) -> None:
    """Raise :class:`UsageError` when ``what`` was called from a main script's top level without the guard.

    Interactive sessions, ``python -c``, notebooks and ``python -m package``
    are never re-imported by ``spawn`` and always pass.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if not path:
        return
    if spec is not None and getattr(spec, "name", "").endswith(".__main__"):
        return  # multiprocessing does not re-run a package's __main__
    frame = _main_script_frame(sys._getframe(1))
    if frame is None:
        return
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        return
    line = frame.f_lineno
    guarded = _guarded_lines(str(path), mtime)
    if guarded is None or any(start <= line <= end for start, end in guarded):
        return
    raise UsageError(
        f"{what} starts worker processes, which re-run this script; it was called at line {line} outside "
        "'if __name__ == \"__main__\":'",
        path=os.path.basename(str(path)),
        hint="Put the call under that line (see the README, Python API).",
    )
