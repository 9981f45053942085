"""The preprocessing pipeline: a subject zip to the ``mimir-v1`` 2-D image.

zip -> signal slices (:mod:`mimir.preprocessing.reader`) -> stations
(:mod:`mimir.preprocessing.stations`) -> fused volumes (:mod:`mimir.preprocessing.fusion`) -> image
(:mod:`mimir.preprocessing.projection`). The image contract is ``preprocessing-spec.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mimir.errors import ImageFileError
from mimir.preprocessing import cache as image_cache
from mimir.preprocessing.fusion import FusedVolumes, fuse_stations
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
    return pair_water_fat(group_stations(slices, path), path)


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
    if cache:
        key = image_cache.file_sha256(path) if Path(path).is_file() else None
        if key is not None:
            hit = image_cache.load(key, PIPELINE_VERSION, IMAGE_SHAPE)
            if hit is not None:
                return hit
    volumes = preprocess_volumes(path)
    image = make_image(volumes.water, volumes.fat)
    if key is not None:
        image_cache.store(key, PIPELINE_VERSION, image)
    return image


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an already made image (``.npy``) and check it is a (3, 256, 256) uint8 array."""
    try:
        image = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ImageFileError("file not found", path, "Check the path.") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ImageFileError(f"is not a readable .npy image ({exc})", path) from None
    if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise ImageFileError(
            f"holds a {image.dtype} array of shape {image.shape}, expected uint8 {IMAGE_SHAPE}",
            path,
            "Make it with `mimir preprocess`.",
        )
    return image


def load_input(path: str | os.PathLike[str], *, cache: bool = True) -> np.ndarray:
    """The image of one input: a subject zip is preprocessed, a ``.npy`` image loaded."""
    if str(path).lower().endswith(".npy"):
        return load_image(path)
    return preprocess(path, cache=cache)
