"""The few ``dx`` (DNAnexus command-line) calls mimir makes: upload, find, download, remove, make a folder.

Every call runs the ``dx`` program on PATH (or ``$MIMIR_DX``) with a list of
arguments (no shell). A failing call raises :class:`DxError`, one line with
``dx``'s last line of error output. The tests run these against a stand-in
``dx`` over a local folder (``tests/batch/fake_dx.py``).

Project paths are written ``PROJECT:/folder/name``; ``PROJECT`` defaults to
``$DX_PROJECT_CONTEXT_ID`` (set inside every DNAnexus job), and a path
without ``PROJECT:`` is taken in the current project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from mimir.errors import MimirError


class DxError(MimirError):
    """A ``dx`` call failed."""


def dx_program() -> str:
    """The ``dx`` to run."""
    return os.environ.get("MIMIR_DX") or "dx"


def run_dx(*args: str, timeout_s: float = 3600.0) -> str:
    """Run ``dx ARGS``; its standard output, or :class:`DxError`."""
    prog = dx_program()
    if shutil.which(prog) is None:
        raise DxError(f"the dx command ({prog}) is not installed here", hint="pip install dxpy, or run this on the RAP.")
    try:
        done = subprocess.run([prog, *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DxError(f"dx {args[0]} did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DxError(f"dx {' '.join(args[:2])} failed (exit {done.returncode}): {last}")
    return done.stdout


def split_folder(folder: str) -> tuple[str, str]:
    """``PROJECT:/a/b`` -> (``PROJECT:``, ``/a/b``); a plain ``/a/b`` -> ("", ``/a/b``)."""
    project, sep, path = folder.rpartition(":")
    prefix = f"{project}{sep}" if sep else ""
    return prefix, "/" + path.strip("/") if path.strip("/") else "/"


@dataclass(frozen=True)
class DxFile:
    """A file found in the project: its id, name, folder, size in bytes and creation time (ms)."""

    id: str
    name: str
    folder: str
    size: int | None
    created: int


def find(folder: str, name: str) -> list[DxFile]:
    """Files called ``name`` (a glob) in ``folder`` (not its subfolders), newest first."""
    prefix, path = split_folder(folder)
    out = run_dx("find", "data", "--path", f"{prefix}{path}", "--norecurse", "--name", name, "--json")
    items: list[Any] = json.loads(out or "[]")
    found = []
    for it in items:
        d = it.get("describe", {})
        found.append(DxFile(it["id"], d.get("name", ""), d.get("folder", ""), d.get("size"), int(d.get("created", 0))))
    return sorted(found, key=lambda f: (-f.created, f.id))


def upload(local: str, folder: str, name: str) -> str:
    """Upload ``local`` as ``folder/name`` (folders made as needed); return the new file's id."""
    prefix, path = split_folder(folder)
    run_dx("mkdir", "-p", f"{prefix}{path}")
    dest = f"{prefix}{path.rstrip('/')}/{name}"
    return run_dx("upload", local, "--path", dest, "--brief").strip()


def download(file_id: str, local: str) -> None:
    """Download a file (by id or project path) to ``local`` (overwritten)."""
    run_dx("download", file_id, "-o", local, "-f")


def remove(file_ids: list[str]) -> None:
    """Remove files by id (nothing when the list is empty)."""
    if file_ids:
        run_dx("rm", *file_ids)


def replace(local: str, folder: str, name: str) -> str:
    """Upload ``local`` as ``folder/name``, then remove the older files of that name: one copy stays."""
    before = [f.id for f in find(folder, name)]
    new = upload(local, folder, name)
    remove([i for i in before if i != new])
    return new
