"""The preprocessing pipeline: a subject zip to the ``mimir-v1`` 2-D image.

zip -> signal slices (:mod:`mimir.preprocessing.reader`) -> stations
(:mod:`mimir.preprocessing.stations`) -> fused volumes (:mod:`mimir.preprocessing.fusion`) -> image
(:mod:`mimir.preprocessing.projection`). The image contract is ``preprocessing-spec.md``.
"""

from __future__ import annotations

import logging
import os
import stat

import numpy as np

from mimir.errors import ImageFileError
from mimir.preprocessing import cache as image_cache
from mimir.preprocessing import qc as qc_mod
from mimir.preprocessing.fusion import FusedVolumes, PlacedStations, fuse_stations, place_stations
from mimir.preprocessing.geometry import check_geometry
from mimir.preprocessing.projection import IMAGE_SIZE, make_image, make_image_from_placed
from mimir.preprocessing.qc import QCRecord
from mimir.preprocessing.reader import SIGNAL_CONTRASTS, read_signal_slices
from mimir.preprocessing.stations import Station, StationSet, group_stations, pair_water_fat

log = logging.getLogger("mimir")

#: Version of the image contract. Images of one version are interchangeable;
#: the cache and batch records are keyed by it.
PIPELINE_VERSION = "mimir-v1"

#: Shape of one image: (channels, rows, columns).
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)


def read_stations(path: str | os.PathLike[str]) -> StationSet:
    """Read a subject zip into consistent water and fat stations, head first."""
    return read_station_lists(path)[0]


def read_station_lists(
    path: str | os.PathLike[str], contrasts: tuple[str, ...] = SIGNAL_CONTRASTS
) -> tuple[StationSet, list[Station]]:
    """:func:`read_stations`, and every station read (one per series) for the ``contrasts`` asked for.

    ``contrasts`` (:data:`~mimir.preprocessing.reader.DIXON_MARKERS` keys)
    beyond water and fat are read in the same pass; the water and fat
    stations are the same whatever else is read.
    """
    slices = read_signal_slices(path, contrasts)
    grouped = group_stations(slices, path)
    stations = pair_water_fat(grouped, path)
    check_geometry(stations, path)
    return stations, grouped


def preprocess_volumes(path: str | os.PathLike[str]) -> FusedVolumes:
    """Read and fuse a subject zip: water and fat volumes on the 2.23 x 2.23 x 3 mm grid."""
    return fuse_stations(read_stations(path))


def image_of_stations(stations: StationSet) -> np.ndarray:
    """The (3, 256, 256) uint8 image of read stations: fusion and projection.

    With the compiled kernels the stations are placed
    (:func:`~mimir.preprocessing.fusion.place_stations`) and the image is
    made from the placed buffers, never building the float64 volumes; else
    the NumPy steps. Both give the same bits.
    """
    return _image_and_fused(stations)[0]


def _image_and_fused(stations: StationSet) -> tuple[np.ndarray, PlacedStations | FusedVolumes]:
    """:func:`image_of_stations`, and the placed stations (or, without the kernels, the volumes) it was made from."""
    placed = place_stations(stations)
    if placed is not None:
        return make_image_from_placed(placed), placed
    volumes = fuse_stations(stations)
    return make_image(volumes.water, volumes.fat), volumes


def image_and_qc(
    stations: StationSet, path: str | os.PathLike[str]
) -> tuple[np.ndarray, QCRecord, PlacedStations | FusedVolumes]:
    """The image and QC record of read stations, and what the image was made from.

    QC flags that are not repairs (already logged by the stations stage) are
    logged at WARNING; a QC computation that fails costs no image (flag ``qc_incomplete``).
    """
    try:
        record = qc_mod.assess(stations)
    except Exception as exc:  # noqa: BLE001 - QC informs; it must never cost a subject its image
        log.warning("%s: QC could not be computed (%s: %s)", path, type(exc).__name__, exc)
        record = QCRecord()
        record.add(*stations.flags, "qc_incomplete")
    image, fused = _image_and_fused(stations)
    repaired = set(stations.flags)  # already logged as sentences by the stations stage
    for flag in record.flags:
        if flag not in repaired:
            log.warning("%s: QC %s", path, flag)
    return image, record, fused


def preprocess(path: str | os.PathLike[str], *, cache: bool = True) -> np.ndarray:
    """Turn one subject zip into the (3, 256, 256) uint8 ``mimir-v1`` image.

    Channels: water projection, fat projection, fat-fraction slices. With
    ``cache=True`` the image is looked up by the zip's content hash first and
    stored after computing (see :mod:`mimir.preprocessing.cache`).
    :func:`preprocess_with_qc` also returns the subject's QC record.

    Raises
    ------
    mimir.errors.InputError
        The zip cannot be turned into an image; the message says why.
    """
    return preprocess_with_qc(path, cache=cache)[0]


def preprocess_with_qc(path: str | os.PathLike[str], *, cache: bool = True) -> tuple[np.ndarray, QCRecord]:
    """The (3, 256, 256) uint8 image of a subject zip and its QC record (:class:`~mimir.preprocessing.qc.QCRecord`).

    The QC record (verdict ``ok``/``warn``/``fail``, flags such as
    ``fat_water_swap:station=3``, per-station swap numbers; see docs/qc.md) is
    computed while the zip is decoded and cached with the image, so a cache
    hit returns the same record. Flags are logged (at WARNING) only when the
    zip is decoded.
    """
    key = None
    if cache and _hashable(path):
        key = image_cache.file_sha256(path)
        if key is not None:
            hit = image_cache.load(key, PIPELINE_VERSION, IMAGE_SHAPE)
            if hit is not None:
                record = _cached_qc(hit[1])
                if record is not None:
                    return hit[0], record
    image, record, _ = image_and_qc(read_stations(path), path)
    if key is not None:
        image_cache.store(key, PIPELINE_VERSION, image, {"qc": record.to_json()})
    return image, record


def _cached_qc(meta: dict[str, object]) -> QCRecord | None:
    """The QC record of a cache entry, or None when it lacks one of the current QC version."""
    obj = meta.get("qc")
    if not isinstance(obj, dict):
        return None
    try:
        record = QCRecord.from_json(obj)
    except ValueError:
        return None
    return record if record.version == qc_mod.QC_VERSION else None


def _hashable(path: str | os.PathLike[str]) -> bool:
    """A regular file within the zip size limit (anything else is refused by the reader, unhashed)."""
    from mimir.utils.limits import MAX_ZIP_BYTES

    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= MAX_ZIP_BYTES.value()


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an already made image (``.npy``) and check it is a (3, 256, 256) uint8 array.

    The file must be a regular file; shape and dtype are read from the .npy
    header and checked before any data is loaded, so a header claiming a
    huge array costs nothing.
    """
    from numpy.lib import format as npy_format

    from mimir.utils.limits import open_regular, quote

    fh, _ = open_regular(path, ".npy image")
    with fh:
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (OSError, ValueError, EOFError, SyntaxError, TypeError) as exc:
            raise ImageFileError(f"is not a readable .npy image ({quote(str(exc))})", path) from None
        if tuple(shape) != IMAGE_SHAPE or dtype != np.uint8 or dtype.hasobject:
            raise ImageFileError(
                f"holds a {quote(str(dtype), 40)} array of shape {quote(str(tuple(shape)), 80)}, "
                f"expected uint8 {IMAGE_SHAPE}",
                path,
                "Make it with `mimir preprocess`.",
            )
        count = int(np.prod(IMAGE_SHAPE))
        data = fh.read(count)
    if len(data) != count:
        raise ImageFileError(
            f"is cut off ({len(data)} of {count} bytes of pixel data)", path, "Make it again with `mimir preprocess`."
        )
    image = np.frombuffer(data, dtype=np.uint8).reshape(IMAGE_SHAPE, order="F" if fortran else "C")
    return np.array(image, order="C")  # a writable copy


def load_input(path: str | os.PathLike[str], *, cache: bool = True) -> np.ndarray:
    """The image of one input: a subject zip is preprocessed, a ``.npy`` image loaded."""
    return load_input_with_qc(path, cache=cache)[0]


def load_input_with_qc(path: str | os.PathLike[str], *, cache: bool = True) -> tuple[np.ndarray, QCRecord | None]:
    """The image of one input and its QC record; a ``.npy`` image has no QC record (None)."""
    if str(path).lower().endswith(".npy"):
        return load_image(path), None
    return preprocess_with_qc(path, cache=cache)
