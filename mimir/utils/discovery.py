"""Which files are subject inputs: the one folder search that every command uses.

A folder stands for the subject zips named like UK Biobank's bulk files
(``*_20201_*_*.zip``) and the ``.npy`` images in it and its subfolders
(links followed, no folder entered twice, hidden files skipped, sorted). A
text file that is neither a zip nor an image lists one path per line.
``mimir predict``, ``batch``, ``explain``, ``qc`` and ``fit-reference`` all
search folders this way, so one folder means the same subjects to each.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mimir.errors import UsageError

#: File-name pattern of a field-20201 subject zip found in a folder.
ZIP_PATTERN = "*_20201_*_*.zip"
#: Extension of an already made image.
NPY_SUFFIX = ".npy"


def _is_subject_file(name: str) -> bool:
    low = name.lower()
    return fnmatch.fnmatchcase(low, ZIP_PATTERN) or low.endswith(NPY_SUFFIX)


def _walk(folder: Path, skip: Path | None) -> Iterable[str]:
    """Subject files under ``folder``, following links but never entering a folder twice."""
    seen: set[tuple[int, int]] = set()
    skip_real = os.path.realpath(skip) if skip is not None else None
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen or (skip_real is not None and os.path.realpath(root) == skip_real):
            dirs[:] = []
            continue
        seen.add(ident)
        dirs.sort()
        for f in sorted(files):
            if not f.startswith(".") and _is_subject_file(f):
                yield os.path.join(root, f)


def _read_list(list_file: Path) -> list[str]:
    """Paths listed one per line; relative ones are relative to the list's folder."""
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the list of inputs ({type(exc).__name__})", path=list_file) from None
    base = list_file.parent
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        out.append(str(p if p.is_absolute() else base / p))
    return out


def list_paths(source: str | os.PathLike[str], *, skip: str | os.PathLike[str] | None = None) -> list[str]:
    """The input paths named by INPUT (a folder, a list file, or one subject file).

    ``skip`` is a folder not to search (the output folder, when it lies inside INPUT).
    """
    p = Path(source).expanduser()
    if p.is_dir():
        return list(_walk(p, Path(skip) if skip is not None else None))
    if not p.exists():
        raise UsageError(
            "no such file or folder",
            path=os.fspath(source),
            hint="Give a folder of subject zips or a text file of paths.",
        )
    if p.suffix.lower() in (".zip", NPY_SUFFIX):
        return [os.fspath(source)]
    return _read_list(p)


def expand(
    inputs: Sequence[str | os.PathLike[str]], *, suffixes: tuple[str, ...] = (".zip", NPY_SUFFIX)
) -> list[str]:
    """Input arguments to files: files as given, folders searched as :func:`list_paths` does.

    ``suffixes`` narrows what a folder contributes (``mimir qc`` takes only
    zips); files named directly are kept whatever their suffix, so that the
    command can say what is wrong with them. The same path given twice is one
    input. A folder without any subject file is a usage error.
    """
    paths: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        if Path(text).expanduser().is_dir():
            found = [p for p in list_paths(text) if p.lower().endswith(suffixes)]
            if not found:
                kinds = " or ".join("subject zips (*_20201_*_*.zip)" if s == ".zip" else f"{s} images" for s in suffixes)
                raise UsageError(f"holds no {kinds}, in it or its subfolders", path=text)
            paths.extend(found)
        else:
            paths.append(text)
    return list(dict.fromkeys(paths))
