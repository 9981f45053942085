"""The preprocessing pipeline: a subject zip to the ``mimir-v1`` 2-D image.

zip -> signal slices (:mod:`mimir.preprocessing.reader`) -> stations
(:mod:`mimir.preprocessing.stations`) -> fused volumes (:mod:`mimir.preprocessing.fusion`) -> image
(:mod:`mimir.preprocessing.projection`). The image contract is ``preprocessing-spec.md``.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from mimir.errors import ImageFileError
from mimir.preprocessing import cache as image_cache
from mimir.preprocessing.fusion import FusedVolumes, fuse_stations
from mimir.preprocessing.geometry import check_geometry
from mimir.preprocessing.projection import IMAGE_SIZE, make_image
from mimir.preprocessing.reader import read_signal_slices
from mimir.preprocessing.stations import StationSet, group_stations, pair_water_fat

#: Version of the image contract. Images of one version are interchangeable;
#: the cache and batch records are keyed by it.
PIPELINE_VERSION = "mimir-v1"

#: Shape of one image: (channels, rows, columns).
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)


def read_stations(path: str | os.PathLike[str]) -> StationSet:
    """Read a subject zip into consistent water and fat stations, head first."""
    slices = read_signal_slices(path)
    stations = pair_water_fat(group_stations(slices, path), path)
    check_geometry(stations, path)
    return stations


def preprocess_volumes(path: str | os.PathLike[str]) -> FusedVolumes:
    """Read and fuse a subject zip: water and fat volumes on the 2.23 x 2.23 x 3 mm grid."""
    return fuse_stations(read_stations(path))


def preprocess(path: str | os.PathLike[str], *, cache: bool = True) -> np.ndarray:
    """Turn one subject zip into the (3, 256, 256) uint8 ``mimir-v1`` image.

    Channels: water projection, fat projection, fat-fraction slices. With
    ``cache=True`` the image is looked up by the zip's content hash first and
    stored after computing (see :mod:`mimir.preprocessing.cache`).

    Raises
    ------
    mimir.errors.InputError
        The zip cannot be turned into an image; the message says why.
    """
    key = None
    if cache and _hashable(path):
        key = image_cache.file_sha256(path)
        if key is not None:
            hit = image_cache.load(key, PIPELINE_VERSION, IMAGE_SHAPE)
            if hit is not None:
                return hit
    volumes = preprocess_volumes(path)
    image = make_image(volumes.water, volumes.fat)
    if key is not None:
        image_cache.store(key, PIPELINE_VERSION, image)
    return image


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
    if str(path).lower().endswith(".npy"):
        return load_image(path)
    return preprocess(path, cache=cache)
