"""Which subjects a batch run covers: discovery, subject names, sharding.

INPUT is one of

- a folder: searched recursively for subject zips named like UK Biobank's
  bulk files (``*_20201_*_*.zip``) and for ``.npy`` images;
- a text file: one path per line (blank lines and ``#`` comments ignored;
  relative paths are taken relative to the folder of the list file);
- a single ``.zip`` or ``.npy`` file.

A subject is named as ``predict`` names it: the file name up to its first dot
(``1000001_20201_2_0.zip`` -> ``1000001_20201_2_0``). Two inputs with the same
name (the same zip in two folders) would overwrite each other's record, so
neither is processed: both are reported as input errors.

Sharding assigns a subject to shard ``sha256(name) mod N`` (first 8 bytes of
the digest, big-endian). It depends only on the subject's name, so adding or
removing files never moves another subject to a different shard, and it is
the same on every machine and Python version (unlike ``hash()``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mimir.errors import UsageError
from mimir.inference.predictions import parse_subject_name
from mimir.utils.discovery import NPY_SUFFIX, ZIP_PATTERN, list_paths  # noqa: F401  (re-exported)
from mimir.utils.limits import describe_mode


@dataclass(frozen=True, order=True)
class InputFile:
    """One subject to process: its name and its path (as found or listed)."""

    name: str
    path: str


@dataclass(frozen=True)
class InputProblem:
    """An input that is not processed at all (refused before any reading), and why."""

    name: str
    path: str
    message: str


@dataclass(frozen=True)
class Inputs:
    """The subjects of a run: processable files, and the inputs refused up front."""

    files: list[InputFile]
    problems: list[InputProblem]

    @property
    def names(self) -> list[str]:
        """Every subject name covered (processable or refused), sorted, unique."""
        return sorted({f.name for f in self.files} | {p.name for p in self.problems})


# --------------------------------------------------------------------------- discovery


def _not_regular(path: str) -> str | None:
    """Why ``path`` is refused without reading (a FIFO, a device, a folder), or None.

    ``os.stat`` follows symbolic links and never opens the file, so a FIFO
    cannot block discovery. A missing file is left to the preprocessing stage,
    which reports it.
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, or a name the OS cannot take (a NUL byte)
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {describe_mode(st.st_mode)}, not a regular file; it was not read"


def collect(paths: Iterable[str]) -> Inputs:
    """Name every path; refuse nameless inputs and names that more than one path shares."""
    by_name: dict[str, list[str]] = {}
    problems: list[InputProblem] = []
    for path in paths:
        name = parse_subject_name(path)[0]
        if not name:
            problems.append(
                InputProblem(Path(path).name, path, "has no subject name (the file name starts with a dot)")
            )
            continue
        odd = _not_regular(path)
        if odd is not None:
            problems.append(InputProblem(name, path, odd))
            continue
        by_name.setdefault(name, []).append(path)
    files: list[InputFile] = []
    for name, group in by_name.items():
        unique = sorted(set(group))
        if len(unique) == 1:
            files.append(InputFile(name, unique[0]))
            continue
        for path in unique:
            others = ", ".join(o for o in unique if o != path)
            message = f"subject name {name} is also the name of {others}; rename or remove one"
            problems.append(InputProblem(name, path, message))
    files.sort()
    problems.sort(key=lambda q: (q.name, q.path))
    return Inputs(files, problems)


def discover(source: str | os.PathLike[str], *, skip: str | os.PathLike[str] | None = None) -> Inputs:
    """Every subject named by INPUT; :class:`UsageError` when there is none."""
    paths = list_paths(source, skip=skip)
    if not paths:
        raise UsageError(
            f"holds no subject zips ({ZIP_PATTERN}) or .npy images",
            path=os.fspath(source),
            hint="Check the folder, or give a text file with one path per line.",
        )
    return collect(paths)


# --------------------------------------------------------------------------- sharding


def shard_of(name: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) of a subject: sha256 of its UTF-8 name, first 8 bytes, mod N."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def select_shard(inputs: Inputs, num_shards: int, shard_index: int) -> Inputs:
    """The part of ``inputs`` that belongs to shard ``shard_index`` of ``num_shards``."""
    if num_shards == 1:
        return inputs
    return Inputs(
        [f for f in inputs.files if shard_of(f.name, num_shards) == shard_index],
        [q for q in inputs.problems if shard_of(q.name, num_shards) == shard_index],
    )


def resolve_shard(
    num_shards: int | None, shard_index: int | None, environ: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """(num_shards, shard_index) from the options, defaulting from a SLURM job array.

    ``SLURM_ARRAY_TASK_COUNT`` gives the number of shards and
    ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` the index (so ``--array=1-8``
    works as well as ``--array=0-7``); explicit options win. Outside a job
    array the default is a single shard.
    """
    env = os.environ if environ is None else environ

    def env_int(key: str) -> int | None:
        text = env.get(key, "").strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"${key} is {text!r}, not a whole number") from None

    if num_shards is None:
        num_shards = env_int("SLURM_ARRAY_TASK_COUNT") or 1
    if shard_index is None:
        task_id = env_int("SLURM_ARRAY_TASK_ID")
        shard_index = 0
        if task_id is not None and num_shards > 1:
            shard_index = task_id - (env_int("SLURM_ARRAY_TASK_MIN") or 0)
    if num_shards < 1:
        raise UsageError(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise UsageError(
            f"shard index {shard_index} is outside 0..{num_shards - 1}",
            hint="Use a contiguous job array (--array=0-N) or give --num-shards and --shard-index.",
        )
    return num_shards, shard_index
