"""Modules in the original MIMIR layout, and their conversion into mimir's format.

The published MIMIR modules come as ``snapshot.pth.tar``, ``metadata.txt``,
``standardization_parameters.txt`` and ``calibration_factors.txt``;
:func:`convert_original` turns such a folder into a mimir module, recording
the hashes of the original files.
"""


from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from mimir import __version__
from mimir.errors import ModuleError
from mimir.models.module_format import (
    DEFAULT_PIPELINE,
    INTENDED_RESEARCH,
    ORIGINAL_FILES,
    ModuleSpec,
    TargetSpec,
    _validate_target,
    is_module_folder,
    valid_name,
)
from mimir.models.module_store import write_module
from mimir.utils.hashing import file_sha256

# --------------------------------------------------------------------------- original MIMIR format


def is_original_format(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` looks like a published MIMIR module (snapshot.pth.tar + metadata.txt)."""
    folder = Path(folder)
    return (folder / "snapshot.pth.tar").is_file() and (folder / "metadata.txt").is_file()



def find_module_root(folder: str | os.PathLike[str]) -> Path:
    """The module folder in ``folder``: itself, or its only sub-folder that is one.

    Archives often hold one top folder (``module_bodycomp/...``); this finds it.
    """
    folder = Path(folder)
    if is_module_folder(folder) or is_original_format(folder):
        return folder
    subs = [
        p
        for p in sorted(folder.iterdir())
        if p.is_dir() and not p.name.startswith(("__MACOSX", ".")) and (is_module_folder(p) or is_original_format(p))
    ]
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise ModuleError(
            "holds no module (neither module.json nor MIMIR's snapshot.pth.tar + metadata.txt)",
            path=folder.name,
        )
    raise ModuleError(f"holds {len(subs)} modules; import them one at a time", path=folder.name)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ModuleError("missing (needed to convert a MIMIR module)", path=path.name) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _floats(values: Sequence[str], where: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except ValueError as exc:
        raise ModuleError(f"not a number ({exc})", path=where) from None
    return out


def read_original_targets(folder: str | os.PathLike[str]) -> list[TargetSpec]:
    """Targets of a module in the original MIMIR layout, from its three text files.

    ``metadata.txt``: header ``Name,Field,Unit,Divisor``, one row per target;
    ``standardization_parameters.txt``: header, then ``mean,stdev`` per target;
    ``calibration_factors.txt``: header, then one factor per target. Published
    metrics are filled in from the catalogue where the target name is known.
    """
    from mimir.models.catalogue import catalogue_by_name

    folder = Path(folder)
    meta_lines = _read_lines(folder / "metadata.txt")
    if len(meta_lines) < 2:
        raise ModuleError("has no targets", path="metadata.txt")
    rows = list(csv.reader(meta_lines[1:]))
    std_lines = _read_lines(folder / "standardization_parameters.txt")[1:]
    cal_text = _read_lines(folder / "calibration_factors.txt")[1:]
    cal_values = [v.strip() for ln in cal_text for v in ln.split(",") if v.strip()]
    t = len(rows)
    if len(std_lines) != t:
        raise ModuleError(f"has {len(std_lines)} rows, metadata.txt has {t} targets", path="standardization_parameters.txt")
    if len(cal_values) != t:
        raise ModuleError(f"has {len(cal_values)} factors, metadata.txt has {t} targets", path="calibration_factors.txt")
    cal = _floats(cal_values, "calibration_factors.txt")
    cat = catalogue_by_name()
    targets = []
    for i, (row, std) in enumerate(zip(rows, std_lines)):
        if len(row) < 4:
            raise ModuleError(f"row {i + 2} has {len(row)} fields, expected Name,Field,Unit,Divisor", path="metadata.txt")
        name, fid, unit, div = (x.strip() for x in row[:4])
        mean_sd = _floats([x.strip() for x in std.split(",")[:2]], "standardization_parameters.txt")
        if len(mean_sd) != 2:
            raise ModuleError(f"row {i + 2} is not mean,stdev", path="standardization_parameters.txt")
        try:
            field_id = int(float(fid)) if fid else None
        except ValueError:
            field_id = None
        entry = cat.get(name)
        spec = TargetSpec(
            name=name,
            unit=unit,
            field=field_id,
            divisor=_floats([div], "metadata.txt")[0],
            mean=mean_sd[0],
            sd=mean_sd[1],
            calibration=cal[i],
            metrics=(entry.metrics_json() or None) if entry is not None else None,
            support=entry.support if entry is not None else None,
        )
        _validate_target(spec, "metadata.txt")
        targets.append(spec)
    return targets


def convert_original(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str = "1.0",
    description: str | None = None,
    intended_use: str | None = None,
    overwrite: bool = False,
) -> ModuleSpec:
    """Convert a module in the original MIMIR layout at ``src`` into our format at ``dest``.

    The snapshot is read with ``torch.load(weights_only=True)``; the sha256
    of every original file is recorded under ``source`` in module.json.
    """
    from mimir.models.resnet import architecture_of, load_checkpoint

    src = Path(src)
    name = name or src.name
    if not valid_name(name):
        raise ModuleError(f"invalid module name {name!r}", hint="Pass a name with letters, digits, '.', '_' or '-'.")
    targets = read_original_targets(src)
    sd = load_checkpoint(src / "snapshot.pth.tar")
    width, outputs = architecture_of(sd)
    if outputs != 2 * len(targets):
        raise ModuleError(
            f"network gives {outputs} outputs but metadata.txt lists {len(targets)} targets "
            f"(expected {2 * len(targets)})",
            path="snapshot.pth.tar",
        )
    source = {
        "kind": "converted from the original MIMIR module format",
        "original_name": src.name,
        "original_files": {f: file_sha256(src / f) for f in ORIGINAL_FILES if (src / f).is_file()},
        "converted_by": f"mimir {__version__}",
    }
    return write_module(
        dest,
        name=name,
        version=version,
        targets=targets,
        state_dicts=[sd],
        description=description
        if description is not None
        else f"MIMIR inference module {src.name} (Langner et al.), converted from its original format.",
        intended_use=intended_use if intended_use is not None else INTENDED_RESEARCH,
        intended_use_note=(
            "Research use on UK Biobank neck-to-knee Dixon body MRI (field 20201), adults 44-82 years; "
            "not a medical device."
        ),
        input_pipeline=DEFAULT_PIPELINE,
        source=source,
        overwrite=overwrite,
    )
