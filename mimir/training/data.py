"""Training data: the targets table, the images, splits, batches, augmentation.

- :func:`read_targets_csv` reads ``TARGETS.csv``: a ``name`` column matching
  the image file stems, or an ``eid`` column (the UK Biobank participant id,
  as phenotype tables are keyed), then one numeric column per target; an
  empty cell (or ``NA``/``nan``) is a missing value.
- :func:`target_info` gives each target its unit and UK Biobank field, from
  ``--units``/``--fields`` options, a description file, or the column name.
- :func:`load_images` pairs the table with a folder of ``.npy`` images (as
  ``mimir preprocess`` writes them) or subject zips (preprocessed through the
  cache), and holds them in memory as one uint8 array (N, 3, 256, 256).
- :func:`holdout_split` / :func:`fold_split` split subjects reproducibly.
- :func:`batch_indices` and :func:`random_shifts` draw the batch and the
  augmentation of iteration ``i`` from the seed alone (no hidden state), so a
  resumed run draws exactly what an uninterrupted one would.
- :func:`shift_images` translates images by whole pixels with nearest-edge fill.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimir.errors import InputError, UsageError

#: Image files a training folder may hold.
IMAGE_SUFFIXES = (".npy", ".zip")
_MISSING = {"", "na", "nan", "n/a", "none", "null"}
#: UK Biobank bulk file stems: <eid>_<field>_<instance>_<array>
_UKB_STEM = re.compile(r"^(?P<eid>\d+)_(?P<field>\d+)_(?P<instance>\d+)_(?P<array>\d+)$")

#: Units guessed from the end of a column name (``weight_kg`` -> ``kg``).
_UNIT_SUFFIXES = {
    "kg": "kg",
    "g": "g",
    "cm": "cm",
    "mm": "mm",
    "m": "m",
    "l": "L",
    "ml": "mL",
    "percent": "percent",
    "pct": "percent",
    "years": "years",
    "bpm": "bpm",
}


@dataclass
class TargetTable:
    """The targets of N subjects: ``values[i, t]`` is target t of subject ``names[i]`` (NaN if missing)."""

    names: list[str]
    targets: list[str]
    values: np.ndarray  # (N, T) float64
    #: what ``names`` hold: "name" (image file stems) or "eid" (UK Biobank participant ids)
    key: str = "name"

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class TargetInfo:
    """Unit and UK Biobank field of a target (for module.json)."""

    name: str
    unit: str
    field: int | None = None
    #: ``--support`` given for this target: (low, high) or None (no bounds); unset: derived at training
    support: tuple[float | None, float | None] | None = None
    support_given: bool = False


def _parse_value(text: str, where: str) -> float:
    t = text.strip()
    if t.lower() in _MISSING:
        return math.nan
    try:
        v = float(t)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number", hint="Leave missing values empty.") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: {text!r} is not a finite number")
    return v


def read_targets_csv(path: str | os.PathLike[str]) -> TargetTable:
    """Read a targets table: ``name`` (or ``eid``) then one numeric column per target.

    Raises :class:`InputError` for a missing file, a first column other than ``name`` or ``eid``,
    duplicate names or columns, or a cell that is neither a number nor empty.
    """
    shown = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise InputError("file not found", path=shown) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the targets table ({exc})", path=shown) from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputError("the targets table is empty", path=shown)
    header = [h.strip() for h in rows[0]]
    key = header[0].lower() if header else ""
    if key not in ("name", "eid"):
        raise InputError(
            "the first column must be 'name' (the image file stems) or 'eid' (UK Biobank participant ids)",
            path=shown, hint="Header: name,<target>,... or eid,<target>,...",
        )
    targets = header[1:]
    if not targets:
        raise InputError(f"has no target columns after {key!r}", path=shown)
    if any(not t for t in targets) or len(set(targets)) != len(targets):
        raise InputError("target column names must be non-empty and distinct", path=shown)
    for t in targets:
        if "," in t or not re.match(r"^[A-Za-z0-9_.\-]+$", t):
            raise InputError(f"invalid target name {t!r} (letters, digits, '_', '.', '-')", path=shown)
    names: list[str] = []
    values = np.full((len(rows) - 1, len(targets)), np.nan)
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) > len(header):
            raise InputError(f"line {line} has {len(row)} cells, the header {len(header)}", path=shown)
        name = row[0].strip()
        if not name:
            raise InputError(f"line {line} has no {key}", path=shown)
        if key == "eid":
            if not name.isdigit():
                raise InputError(f"line {line}: eid {name!r} is not a whole number", path=shown)
            name = str(int(name))
        names.append(name)
        for j, cell in enumerate(row[1:]):
            values[i, j] = _parse_value(cell, f"{Path(shown).name} line {line}, column {targets[j]}")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InputError(f"{key} {n!r} appears twice", path=shown)
        seen.add(n)
    return TargetTable(names=names, targets=targets, values=values, key=key)


def _pairs(text: Sequence[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in text or []:
        for item in chunk.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"{option}: {item!r} is not TARGET=VALUE")
            out[key.strip()] = value.strip()
    return out


def guess_unit(name: str) -> str:
    """A unit from the end of a target name (``vat_volume_l`` -> ``L``), else ``1``."""
    suffix = name.rsplit("_", 1)[-1].lower() if "_" in name else ""
    return _UNIT_SUFFIXES.get(suffix, "1")


def read_target_info_file(path: str | os.PathLike[str]) -> dict[str, tuple[str | None, str | None]]:
    """A description file: CSV with columns ``name``, ``unit`` and optionally ``field``."""
    shown = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise InputError("file not found", path=shown) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the target description ({exc})", path=shown) from None
    out: dict[str, tuple[str | None, str | None]] = {}
    for row in rows:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not row.get("name"):
            raise InputError("every row needs a name (columns: name,unit,field)", path=shown)
        out[row["name"]] = (row.get("unit") or None, row.get("field") or None)
    return out


def target_info(
    targets: Sequence[str],
    *,
    units: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
    info_file: str | os.PathLike[str] | None = None,
    supports: Sequence[str] | None = None,
) -> list[TargetInfo]:
    """Unit, field and any ``--support`` of every target.

    Precedence: ``--units``/``--fields`` (``name=value`` lists), then the
    description file, then a unit guessed from the name's suffix and no field.
    ``supports``: ``name=LOW:HIGH`` (a side may be empty) or ``name=none``.
    Names that are not targets are an error (a typo would otherwise pass).
    """
    from mimir.models.units import parse_support_text

    unit_map = _pairs(units, "--units")
    field_map = _pairs(fields, "--fields")
    support_map = _pairs(supports, "--support")
    file_map = read_target_info_file(info_file) if info_file is not None else {}
    known = set(targets)
    for option, mapping in (("--units", unit_map), ("--fields", field_map), ("--support", support_map),
                            ("target description", file_map)):
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise UsageError(f"{option}: {', '.join(unknown)} is not a column of the targets table")
    out = []
    for t in targets:
        f_unit, f_field = file_map.get(t, (None, None))
        unit = unit_map.get(t) or f_unit or guess_unit(t)
        if not re.match(r"^[^\s,]+$", unit):
            raise UsageError(f"unit of {t} must be one word without commas, got {unit!r}")
        field_text = field_map.get(t) or f_field
        field_id = None
        if field_text:
            try:
                field_id = int(field_text)
            except ValueError:
                raise UsageError(f"field of {t} must be an integer UK Biobank field id, got {field_text!r}") from None
        support = None
        if t in support_map:
            try:
                support = parse_support_text(support_map[t], f"--support of {t}")
            except ValueError as exc:
                raise UsageError(str(exc), hint="Write TARGET=LOW:HIGH, e.g. liver_fat=0:100 or vat=0: (or none).") from None
        out.append(TargetInfo(t, unit, field_id, support=support, support_given=t in support_map))
    return out


def image_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Image files of a folder by stem (name up to the first dot); ``.npy`` wins over ``.zip``."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError("is not a folder of .npy images or subject zips", path=os.fspath(folder))
    found: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = p.name.split(".")[0]
        if stem in found and found[stem].suffix.lower() == ".npy":
            continue
        found[stem] = p
    if not found:
        raise UsageError("holds no .npy images or .zip files", path=os.fspath(folder))
    return found


def files_by_eid(files: dict[str, Path], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Image files keyed by UK Biobank eid (from ``<eid>_<field>_<instance>_<array>`` stems).

    Files whose stem is not of that form are left out. Two images of one eid
    (two instances or arrays) make the eid ambiguous: :class:`UsageError`,
    naming both, since a table keyed by eid cannot say which visit it means.
    """
    out: dict[str, Path] = {}
    for path in files.values():
        m = _UKB_STEM.match(path.name.split(".")[0])
        if m is None:
            continue
        k = str(int(m["eid"]))
        if k in out:
            raise UsageError(
                f"eid {k} has two images, {out[k].name} and {path.name}",
                path=os.fspath(folder),
                hint="Key the targets table by 'name' (the file stem) to say which visit each row means.",
            )
        out[k] = path
    if not out:
        raise UsageError(
            "holds no images named <eid>_<field>_<instance>_<array>, so an 'eid' column cannot match them",
            path=os.fspath(folder), hint="Key the targets table by 'name' (the file stems).",
        )
    return out


@dataclass
class Dataset:
    """Images and targets of the subjects present in both the folder and the table."""

    names: list[str]
    targets: list[str]
    images: np.ndarray  # (N, 3, 256, 256) uint8
    values: np.ndarray  # (N, T) float64, NaN = missing
    unmatched_images: int = 0
    unmatched_rows: int = 0


def load_images(
    folder: str | os.PathLike[str],
    table: TargetTable,
    *,
    cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Load the image of every subject of ``table`` found in ``folder``.

    Subjects of the table without an image, and images without a row, are
    left out (their counts are returned). Rows whose targets are all missing
    are left out too. ``on_progress(done, total)`` is called per image.
    """
    from mimir.preprocessing.pipeline import load_input

    files = image_files(folder)
    if table.key == "eid":
        files = files_by_eid(files, folder)
    rows = [i for i, n in enumerate(table.names) if n in files and np.isfinite(table.values[i]).any()]
    if not rows:
        raise UsageError(
            f"no image in {os.fspath(folder)} matches a row of the targets table with a value",
            hint="The 'name' column must equal the image file names without extension.",
        )
    images = np.empty((len(rows), 3, 256, 256), dtype=np.uint8)
    for k, i in enumerate(rows):
        images[k] = load_input(files[table.names[i]], cache=cache)
        if on_progress is not None:
            on_progress(k + 1, len(rows))
    names = [table.names[i] for i in rows]
    return Dataset(
        names=names,
        targets=list(table.targets),
        images=images,
        values=table.values[rows].copy(),
        unmatched_images=len(set(files) - set(table.names)),
        unmatched_rows=len(table.names) - len(rows),
    )


# --------------------------------------------------------------------------- standardisation


def standardisation(values: np.ndarray, targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-target mean and sd (ddof=1) over the present values of ``values`` (N, T)."""
    means = np.empty(values.shape[1])
    sds = np.empty(values.shape[1])
    for t, name in enumerate(targets):
        col = values[:, t]
        col = col[np.isfinite(col)]
        if col.size < 2:
            raise UsageError(f"target {name} has {col.size} value(s) in the training subjects; at least 2 are needed")
        sd = float(np.std(col, ddof=1))
        if not sd > 0:
            raise UsageError(f"target {name} has the same value for every training subject; it cannot be learnt")
        means[t], sds[t] = float(np.mean(col)), sd
    return means, sds


# --------------------------------------------------------------------------- splits and sampling


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: ``round(fraction * n)`` subjects held out, at random."""
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * n))
    if fraction > 0 and n_val < 2:
        raise UsageError(f"--val-fraction {fraction} holds out {n_val} of {n} subjects; at least 2 are needed")
    if n - n_val < 2:
        raise UsageError(f"{n} subjects leave {n - n_val} for training; at least 2 are needed")
    perm = _rng(seed, 0x5EED).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fold_split(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint validation index sets covering all n subjects."""
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    if n < 2 * folds:
        raise UsageError(f"{n} subjects are too few for {folds} folds")
    perm = _rng(seed, 0xF01D).permutation(n)
    return [np.sort(perm[k::folds]) for k in range(folds)]


class BatchSampler:
    """Batch ``i`` of a run, drawn from the seed alone.

    Subjects are visited epoch by epoch, each epoch a fresh permutation of
    ``pool``; batch ``i`` holds positions ``i*B .. i*B+B-1`` of that endless
    sequence. Nothing depends on earlier calls, so resuming at iteration i
    gives the same batches as never stopping.
    """

    def __init__(self, pool: np.ndarray, batch_size: int, seed: int, stream: int):
        self.pool = np.asarray(pool)
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = _rng(self.seed, self.stream, 0xBA7C, epoch).permutation(self.pool.size)
        return self._perms[epoch]

    def __call__(self, iteration: int) -> np.ndarray:
        n = self.pool.size
        pos = np.arange(iteration * self.batch_size, (iteration + 1) * self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for k, p in enumerate(pos):
            out[k] = self.pool[self._perm(int(p // n))[int(p % n)]]
        return out


def random_shifts(batch: int, max_shift: int, seed: int, stream: int, iteration: int) -> np.ndarray:
    """(batch, 2) integer (row, column) shifts, uniform in [-max_shift, max_shift]."""
    if max_shift <= 0:
        return np.zeros((batch, 2), dtype=np.int64)
    return _rng(seed, stream, 0x5817, iteration).integers(-max_shift, max_shift + 1, size=(batch, 2))


def shift_images(images: "torch.Tensor", shifts: "torch.Tensor | np.ndarray") -> "torch.Tensor":  # noqa: F821
    """Translate each image of (B, C, H, W) by whole pixels, filling with the nearest edge pixel.

    ``shifts[b] = (dy, dx)``: output pixel (i, j) is input pixel
    ``(clip(i - dy), clip(j - dx))``, so positive shifts move content down and right.
    """
    import torch

    b, _, h, w = images.shape
    s = torch.as_tensor(np.asarray(shifts), device=images.device, dtype=torch.long)
    rows = (torch.arange(h, device=images.device)[None, :] - s[:, 0:1]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=images.device)[None, :] - s[:, 1:2]).clamp_(0, w - 1)  # (B, W)
    bidx = torch.arange(b, device=images.device)[:, None, None]
    out = images.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
