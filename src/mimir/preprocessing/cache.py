"""Content-addressed cache of preprocessed images.

A subject zip is decoded once: its 2-D image is stored under the sha256 of
the zip's bytes and the pipeline version, so a renamed or copied zip hits
the cache and a changed pipeline never reuses stale images. Entries are
written atomically; a damaged entry is ignored and rebuilt.

Layout: ``<cache_dir>/images/<pipeline version>/<hash[:2]>/<hash>.npy``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimir.utils import atomic
from mimir.utils.hashing import file_sha256
from mimir.utils.paths import cache_dir

__all__ = ["entry_path", "file_sha256", "load", "store"]


def entry_path(content_hash: str, pipeline_version: str, root: Path | None = None) -> Path:
    """Where the image of a zip with this hash lives."""
    root = cache_dir() if root is None else root
    return root / "images" / pipeline_version / content_hash[:2] / f"{content_hash}.npy"


def load(content_hash: str, pipeline_version: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached image, or None when absent or unreadable (then it is rebuilt)."""
    path = entry_path(content_hash, pipeline_version)
    try:
        image = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if image.shape != shape or image.dtype != np.uint8:
        return None
    return image


def store(content_hash: str, pipeline_version: str, image: np.ndarray) -> None:
    """Store an image atomically. A cache that cannot be written is skipped silently."""
    path = entry_path(content_hash, pipeline_version)
    try:
        with atomic.atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, image, allow_pickle=False)
    except OSError:
        pass
