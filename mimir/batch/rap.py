"""Inputs on the UK Biobank Research Analysis Platform (DNAnexus): the dxfuse mount and ``dx find data`` listings.

On the RAP the field-20201 zips are project files under
``/Bulk/Whole Body MRI/Dixon/<subfolder>/<eid>_20201_<instance>_0.zip``, seen
read-only through dxfuse at ``/mnt/project`` (:data:`DEFAULT_MOUNT`). INPUT of
``mimir batch`` may be

- the mounted folder itself (spaces and subfolders are fine: it is searched
  like any folder);
- the JSON written by ``dx find data --json`` (a list of objects with ``id``,
  ``project`` and ``describe`` holding ``name``, ``folder`` and ``size``);
  each file becomes ``<mount><folder>/<name>``, and its size (and an MD5,
  when the listing carries one as ``describe.md5`` or
  ``describe.properties.md5``) is kept to verify a staged copy;
- a text listing: lines of ``dx find data``'s default output (``... /path
  (file-...)``), ``project-...:/path`` lines, or one path per line (as any
  list file). Project paths are taken under the mount.

``dx find data --brief`` prints only ``project-...:file-...`` ids, which do not
say where a file is mounted: such a listing is refused with a hint to use
``--json``. ``instance`` (2 or 3) keeps only that visit's zips.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mimir.batch.inputs import Inputs, collect, discover
from mimir.errors import UsageError
from mimir.inference.predictions import parse_subject_name

#: Where dxfuse mounts the project in a RAP job or workstation.
DEFAULT_MOUNT = "/mnt/project"
#: Where UK Biobank puts the field-20201 zips in a RAP project.
DIXON_FOLDER = "/Bulk/Whole Body MRI/Dixon"
#: Largest listing read (a listing of 120,000 files as JSON is about 60 MB).
MAX_LISTING_BYTES = 512 << 20

_ID = r"[0-9A-Za-z]{24}"
_BRIEF = re.compile(rf"^project-{_ID}:file-{_ID}$")
_PROJECT_PATH = re.compile(rf"^project-{_ID}:(/.*)$")
_DEFAULT_LINE = re.compile(r"^\S+\s+.*?\s(/.*?)\s+\((file-[0-9A-Za-z]+)\)\s*$")


@dataclass(frozen=True)
class Expected:
    """What the platform says a file is: its size in bytes, and its MD5 (hex) when the listing has one."""

    size: int | None
    md5: str | None = None


def mounted(project_path: str, mount: str | None) -> str:
    """The local path of a project path under the dxfuse mount."""
    root = (mount or DEFAULT_MOUNT).rstrip("/")
    return root + "/" + project_path.lstrip("/")


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_LISTING_BYTES:
            raise UsageError(f"is {size} bytes, more than a listing may be ({MAX_LISTING_BYTES})", path=str(path))
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the listing ({type(exc).__name__})", path=str(path)) from None


def parse_json_listing(text: str, *, mount: str | None, where: str) -> dict[str, Expected]:
    """Mounted path -> :class:`Expected` for each file of a ``dx find data --json`` listing."""
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"is not valid JSON ({exc.msg} at line {exc.lineno})", path=where) from None
    if not isinstance(items, list):
        raise UsageError("is JSON but not a list (expected the output of dx find data --json)", path=where)
    out: dict[str, Expected] = {}
    for i, item in enumerate(items):
        d = item.get("describe") if isinstance(item, dict) else None
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("folder"), str):
            raise UsageError(
                f"entry {i} has no describe.name and describe.folder", path=where,
                hint="Make the listing with dx find data --json (it describes every file).",
            )
        size = d.get("size")
        props = d.get("properties") if isinstance(d.get("properties"), dict) else {}
        md5 = d.get("md5") or props.get("md5")
        folder = d["folder"].rstrip("/")
        out[mounted(f"{folder}/{d['name']}", mount)] = Expected(
            size if isinstance(size, int) and size >= 0 else None,
            md5.lower() if isinstance(md5, str) and re.fullmatch(r"[0-9a-fA-F]{32}", md5) else None,
        )
    return out


def parse_text_listing(text: str, *, mount: str | None, base: Path, where: str) -> list[str]:
    """Local paths of a text listing (``dx find data`` default lines, ``project-...:/path`` or paths)."""
    out: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if _BRIEF.match(entry):
            raise UsageError(
                f"line {n} is a file id ({entry}), which does not say where the file is mounted", path=where,
                hint="List the files with dx find data --json (or without --brief).",
            )
        m = _PROJECT_PATH.match(entry) or _DEFAULT_LINE.match(entry)
        if m:
            out.append(mounted(m.group(1), mount))
            continue
        p = Path(entry).expanduser()
        if mount is not None and p.is_absolute() and not entry.startswith(mount.rstrip("/") + "/"):
            out.append(mounted(entry, mount))  # a project path, with --mount given
        else:
            out.append(str(p if p.is_absolute() else base / p))
    return out


def _keep_instance(inputs: Inputs, instance: int | None) -> Inputs:
    if instance is None:
        return inputs

    def keep(path: str) -> bool:
        return parse_subject_name(path)[2] == instance

    return Inputs([f for f in inputs.files if keep(f.path)], [q for q in inputs.problems if keep(q.path)])


def discover_inputs(
    source: str | os.PathLike[str], *, skip: str | os.PathLike[str] | None = None, instance: int | None = None,
    mount: str | None = None,
) -> tuple[Inputs, dict[str, Expected]]:
    """The subjects of INPUT (folder, list, ``dx find data`` listing or file) and what listings say of each file.

    Returns (inputs, {path: Expected}); the mapping is empty unless INPUT is a
    JSON listing. :class:`UsageError` when no subject is left (after ``instance``).
    """
    p = Path(source).expanduser()
    expected: dict[str, Expected] = {}
    if p.is_file() and p.suffix.lower() not in (".zip", ".npy"):
        text = _read(p)
        if text.lstrip().startswith(("[", "{")):
            expected = parse_json_listing(text, mount=mount, where=os.fspath(source))
            paths = list(expected)
        else:
            paths = parse_text_listing(text, mount=mount, base=p.parent, where=os.fspath(source))
        inputs = collect(paths)
        if not paths:
            raise UsageError("lists no files", path=os.fspath(source))
    else:
        inputs = discover(source, skip=skip)
    kept = _keep_instance(inputs, instance)
    if instance is not None and not kept.files and not kept.problems:
        raise UsageError(
            f"holds no subject of instance {instance} (names <eid>_20201_{instance}_<array>)", path=os.fspath(source)
        )
    return kept, expected
