"""NIfTI-1 files of fused volumes (``.nii.gz``) and their per-subject JSON sidecar.

nibabel is an optional dependency (the ``volumes`` extra): :func:`require_nibabel`
raises a one-line :class:`~mimir.errors.UsageError` naming the extra when it
is missing (:data:`INSTALL_HINT` is the one place that says how to install it).

Each file holds one (i, j, k) volume with its affine as both qform and
sform (code 1, scanner), units mm, data stored unscaled in its own type
(``scl_slope`` left unset: the numbers in the file are the values). The
gzip stream is written at :data:`GZIP_LEVEL` with python-isal where it is
installed (the same format, 4-5x faster than zlib), else with zlib; the
sidecar is written last, so a subject whose sidecar is valid
(:func:`sidecar_valid`) has all its files.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mimir.errors import UsageError
from mimir.utils import atomic
from mimir.utils.install import extra_hint

#: How to install nibabel.
INSTALL_HINT = extra_hint("volumes")
#: Version of the sidecar's layout; pinned by tests/outputs/test_nifti.py.
SIDECAR_FORMAT = "mimir-volumes-1"
#: gzip compression level (1: within 2-3 % of level 2-3's size at a fraction of 6's time; benchmarks/volumes.py).
GZIP_LEVEL = 1
#: NIfTI xform code "scanner anatomical" (NIFTI_XFORM_SCANNER_ANAT).
XFORM_SCANNER = 1
#: NIfTI's description field holds 80 bytes, the last a NUL.
DESCRIPTION_BYTES = 79
#: Where the data start in a single-file NIfTI-1 image: the 348-byte header and 4 bytes of (no) extension.
VOX_OFFSET = 352
#: Slices compressed per piece (a few MB of a full-size volume).
SLAB_SLICES = 16


def require_nibabel(command: str) -> Any:
    """The ``nibabel`` module, or a UsageError naming the extra."""
    try:
        import nibabel
    except ImportError:
        raise UsageError(f"mimir {command} needs nibabel, which is not installed", hint=INSTALL_HINT) from None
    return nibabel


def volume_file(out_dir: str | os.PathLike[str], stem: str, contrast: str) -> Path:
    """``OUT_DIR/<stem>_<contrast>.nii.gz``."""
    return Path(out_dir) / f"{stem}_{contrast}.nii.gz"


def sidecar_file(out_dir: str | os.PathLike[str], stem: str) -> Path:
    """``OUT_DIR/<stem>_volumes.json``."""
    return Path(out_dir) / f"{stem}_volumes.json"


def nifti_header(data: np.ndarray, affine: np.ndarray, description: str) -> bytes:
    """The 352 bytes in front of the data of a single-file NIfTI-1 image of ``data``: header and empty extension.

    The same bytes nibabel's ``Nifti1Image.to_bytes`` writes for unscaled data
    (``scl_slope`` 1, ``scl_inter`` 0), with qform and sform set to ``affine``
    (code 1, scanner), units mm and ``descrip`` = ``description`` (ASCII, 79 bytes at most).
    """
    nib = require_nibabel("--volumes")
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=XFORM_SCANNER)
    img.set_sform(affine, code=XFORM_SCANNER)
    hdr = img.header
    hdr.set_xyzt_units(xyz="mm")
    hdr["descrip"] = description.encode("ascii", "replace")[:DESCRIPTION_BYTES]
    hdr["vox_offset"] = VOX_OFFSET
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    return hdr.binaryblock + b"\0" * (VOX_OFFSET - len(hdr.binaryblock))


def nifti_gz_chunks(data: np.ndarray, affine: np.ndarray, description: str, level: int = GZIP_LEVEL) -> Iterator[bytes]:
    """A ``.nii.gz`` file of ``data`` (3-D, its own dtype, unscaled) with ``affine`` (voxel -> RAS+ mm), in pieces.

    The data go out in NIfTI's order (first index fastest) a slab of
    :data:`SLAB_SLICES` slices at a time, so no second copy of the volume is
    made. The gzip header's time stamp is 0: equal volumes give equal files.
    """
    compressor = _gzip_compressor(level)
    yield compressor.compress(nifti_header(data, affine, description))
    for k in range(0, data.shape[2], SLAB_SLICES):
        slab = np.ascontiguousarray(data[:, :, k : k + SLAB_SLICES].transpose(2, 1, 0))
        yield compressor.compress(memoryview(slab).cast("B"))
    yield compressor.flush()


def _gzip_compressor(level: int) -> Any:
    """A gzip-format (wbits 31) compressor: python-isal's where installed (levels 0-3), else zlib's."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.compressobj(level, zlib.DEFLATED, 31)
    return isal_zlib.compressobj(min(level, isal_zlib.ISAL_BEST_COMPRESSION), isal_zlib.DEFLATED, 31)


def write_volumes(
    out_dir: str | os.PathLike[str],
    stem: str,
    volumes: Iterable[tuple[str, np.ndarray]],
    affine: np.ndarray,
    descriptions: Mapping[str, str],
    sidecar: Mapping[str, Any],
    level: int = GZIP_LEVEL,
) -> list[Path]:
    """Write each (contrast, volume) as ``<stem>_<contrast>.nii.gz``, then the sidecar ``<stem>_volumes.json``.

    Every file is written atomically. The sidecar is ``sidecar`` with a
    ``files`` entry added per volume (file name, bytes, dtype, shape,
    description), so :func:`sidecar_valid` can check them. Returns the
    paths written, the sidecar last.
    """
    written: list[Path] = []
    files: dict[str, dict[str, Any]] = {}
    for contrast, data in volumes:
        path = volume_file(out_dir, stem, contrast)
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
            for piece in nifti_gz_chunks(data, affine, descriptions[contrast], level):
                fh.write(piece)
        files[contrast] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "dtype": str(data.dtype),
            "shape": [int(n) for n in data.shape],
            "description": descriptions[contrast],
        }
        written.append(path)
        del data
    side = sidecar_file(out_dir, stem)
    atomic.write_text(side, json.dumps({**sidecar, "files": files}, indent=2, allow_nan=False) + "\n")
    written.append(side)
    return written


def read_sidecar(out_dir: str | os.PathLike[str], stem: str) -> dict[str, Any] | None:
    """The subject's sidecar as a dict, or None when it is missing or not a JSON object."""
    try:
        obj = json.loads(sidecar_file(out_dir, stem).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def sidecar_valid(
    out_dir: str | os.PathLike[str], stem: str, source_sha256: str, contrasts: Iterable[str], pipeline_version: str
) -> bool:
    """True when ``<stem>_volumes.json`` describes ``contrasts`` made from this source by this pipeline,
    and every file it lists is there with the size it records (the files are written before it, atomically).
    """
    obj = read_sidecar(out_dir, stem)
    if obj is None or obj.get("format") != SIDECAR_FORMAT or obj.get("pipeline_version") != pipeline_version:
        return False
    source = obj.get("source")
    files = obj.get("files")
    if not isinstance(source, dict) or source.get("sha256") != source_sha256 or not isinstance(files, dict):
        return False
    for contrast in contrasts:
        entry = files.get(contrast)
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            return False
        path = Path(out_dir) / Path(entry["file"]).name
        try:
            if path.stat().st_size != entry.get("bytes"):
                return False
        except OSError:
            return False
    return True
