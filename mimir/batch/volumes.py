"""Subject zips to NIfTI volumes (``--volumes DIR`` of ``mimir preprocess`` and ``mimir batch``).

:func:`convert_subject` reads one zip once and writes its fused volumes
(:mod:`mimir.preprocessing.volumes`) as ``.nii.gz`` files with a JSON
sidecar (:mod:`mimir.outputs.nifti`); it also returns the subject's image and
QC record, so a batch run predicts from the same read. A subject whose
sidecar is valid for the zip's sha256, the pipeline and the contrasts asked
for is not converted again (:func:`volumes_done`). docs/volumes.md describes the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimir import __version__
from mimir.outputs import nifti

#: Where the sidecar points a reader for what the numbers and grid are.
IMAGE_CONTRACT = "mimir-v1 (docs/image-contract.md); volumes: docs/volumes.md"
#: The axes of every volume, in words.
AXES = {
    "i": "columns of the fused grid, patient right to left (RAS+ x decreasing)",
    "j": "rows of the fused grid, anterior to posterior (RAS+ y decreasing)",
    "k": "slices, feet to head (RAS+ z increasing)",
}
FAT_FRACTION_RULE = (
    "fat / (water + fat) inside mimir's body mask (water + fat, zeros replaced by 1, at or above the mean of the "
    "per-coronal-slice Otsu thresholds: the image's mask), 0 outside; float32 in [0, 1]"
)


def stem_of(path: str | os.PathLike[str]) -> str:
    """File name without ``.zip``: the prefix of the subject's volume files."""
    name = Path(path).name
    return name[:-4] if name.lower().endswith(".zip") else name


def _sha256(path: str | os.PathLike[str]) -> str:
    from mimir.utils.hashing import file_sha256

    return file_sha256(path)


def volumes_done(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], contrasts: tuple[str, ...],
                 *, quick: bool = False) -> bool:
    """True when ``out_dir`` already holds valid volumes of this zip for ``contrasts`` (see :func:`~mimir.outputs.nifti.sidecar_valid`).

    The zip is identified by its sha256, or with ``quick`` (a batch run's
    resume scan, which must not read a whole release) by its name and size.
    """
    from mimir.preprocessing.pipeline import PIPELINE_VERSION

    sidecar = nifti.read_sidecar(out_dir, stem_of(path))
    if sidecar is None:
        return False  # no hashing for the common case of nothing written yet
    source = sidecar.get("source")
    try:
        if quick:
            size = os.path.getsize(path)
            if not isinstance(source, dict) or source.get("bytes") != size or source.get("file") != Path(path).name:
                return False
            digest = source.get("sha256")
        else:
            digest = _sha256(path)
    except OSError:
        return False
    return isinstance(digest, str) and nifti.sidecar_valid(out_dir, stem_of(path), digest, contrasts, PIPELINE_VERSION)


@dataclass
class Converted:
    """One converted subject: its image and QC record (as JSON), and the files written (sidecar last)."""

    image: np.ndarray
    qc: dict[str, Any]
    written: list[Path] = field(default_factory=list)


def convert_subject(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    contrasts: tuple[str, ...],
    *,
    cache: bool = True,
    level: int = nifti.GZIP_LEVEL,
) -> Converted:
    """Read ``path`` once, write its volumes for ``contrasts`` to ``out_dir``; return its image and QC.

    Raises :class:`~mimir.errors.InputError` as preprocessing does, OSError when a file cannot be written.
    """
    from mimir.preprocessing import cache as image_cache
    from mimir.preprocessing.pipeline import IMAGE_SHAPE, PIPELINE_VERSION
    from mimir.preprocessing.volumes import CONTRASTS, read_subject

    nifti.require_nibabel("--volumes")
    sha256 = _sha256(path)
    subject = read_subject(path, contrasts)
    if cache and subject.image.shape == IMAGE_SHAPE:
        image_cache.store(sha256, PIPELINE_VERSION, subject.image, {"qc": subject.qc.to_json()})
    affine = subject.affine
    fused = subject.fused
    sidecar = {
        "format": nifti.SIDECAR_FORMAT,
        "mimir_version": __version__,
        "pipeline_version": PIPELINE_VERSION,
        "image_contract": IMAGE_CONTRACT,
        "source": {"file": Path(path).name, "sha256": sha256, "bytes": os.path.getsize(path)},
        "contrasts": {c: CONTRASTS[c] for c in contrasts},
        "fat_fraction_rule": FAT_FRACTION_RULE,
        "affine_ras_mm": [[float(v) for v in row] for row in affine],
        "voxel_size_mm": [float(abs(affine[k, k])) for k in range(3)],
        "axes": AXES,
        "orientation": "LPS (i to the patient's left, j posterior, k superior; nibabel aff2axcodes)",
        "xform_code": "scanner (1), qform and sform",
        "gzip_level": level,
        "qc": subject.qc.to_json(),
        "stations": subject.stations_used(),
        "repairs": {"flags": list(subject.stations.flags), "warnings": list(fused.warnings)},
    }
    descriptions = {c: f"mimir {__version__} {PIPELINE_VERSION} {c}: {CONTRASTS[c]}" for c in contrasts}
    written = nifti.write_volumes(out_dir, stem_of(path), subject.volumes(contrasts), affine, descriptions,
                                  sidecar, level)
    return Converted(image=subject.image, qc=subject.qc.to_json(), written=written)


def preprocess_or_error_with_volumes(
    name: str, path: str, *, cache: bool = True, out_dir: str, contrasts: tuple[str, ...]
) -> tuple[Any, str | None]:
    """:func:`mimir.batch.stages.preprocess_or_error` that also writes the subject's volumes.

    A subject whose volumes are already valid is only preprocessed (cache
    first). A failure to write the volumes fails the subject, with its one-line reason.
    """
    from mimir.batch.stages import Prepared, one_line, preprocess_or_error

    if path.lower().endswith(".npy"):
        return None, "an image (.npy) has no volumes; --volumes needs the subject's zip"
    try:
        if volumes_done(path, out_dir, contrasts):
            return preprocess_or_error(name, path, cache=cache)
        done = convert_subject(path, out_dir, contrasts, cache=cache)
        return Prepared(done.image, done.qc), None
    except MemoryError:
        return None, "out of memory while writing volumes"
    except OSError as exc:
        return None, f"volumes could not be written to {out_dir} ({exc.strerror or exc})"
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a release
        return None, one_line(exc, path)


def check_volume_options(out_dir: str, engine: str, preprocess: Any) -> None:
    """Refuse ``--volumes`` where it cannot work, before any work: nibabel missing, folder not writable, Ray."""
    from mimir.errors import UsageError
    from mimir.utils.atomic import check_writable_dir

    if engine != "local":
        raise UsageError("--volumes works with the local engine only",
                         hint="Drop --engine ray, or convert with mimir batch --volumes on each machine.")
    if preprocess is not None:
        raise UsageError("--volumes cannot be combined with a replaced preprocessing function")
    nifti.require_nibabel("batch --volumes")
    check_writable_dir(out_dir, what="volumes folder")


def volume_options(opts: Any) -> Any:
    """``opts`` (:class:`~mimir.batch.runner.BatchOptions`) whose preprocessing workers also write the volumes.

    Applied before the engine is made: the engine hands ``opts.preprocess`` to its workers.
    """
    from dataclasses import replace
    from functools import partial

    from mimir.preprocessing.volumes import DEFAULT_CONTRASTS

    contrasts = tuple(opts.volume_contrasts or DEFAULT_CONTRASTS)
    work = partial(preprocess_or_error_with_volumes, out_dir=str(opts.volumes), contrasts=contrasts)
    return replace(opts, preprocess=work, volume_contrasts=contrasts)


def redo_missing_volumes(opts: Any, status: Any, paths: dict[str, str]) -> None:
    """Move subjects already predicted whose volumes are missing or stale from ``status.ok`` to ``status.todo``.

    Their predictions are made again (the same bits); the resume check is
    :func:`volumes_done` with ``quick``. ``opts`` is the result of :func:`volume_options`.
    """
    redo = [n for n in status.ok if not volumes_done(paths[n], opts.volumes, opts.volume_contrasts, quick=True)]
    if redo:
        again = set(redo)
        status.ok = [n for n in status.ok if n not in again]
        status.todo = [*status.todo, *redo]
