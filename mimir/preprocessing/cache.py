"""Content-addressed cache of preprocessed images and their QC records.

A subject zip is decoded once: its 2-D image, with the QC record computed
on the way (:mod:`mimir.preprocessing.qc`), is stored under the sha256 of the
zip's bytes and the pipeline version, so a renamed or copied zip hits the
cache and a changed pipeline never reuses stale images. Entries are written
atomically; a damaged entry is ignored and rebuilt.

Layout: ``<cache_dir>/images/<pipeline version>/format<CACHE_FORMAT>/<hash[:2]>/<hash>.npz``,
an uncompressed ``.npz`` holding ``image`` (the uint8 image) and ``meta`` (a
0-d unicode array with JSON text: ``{"qc": <QC record>}``). Entries of an older
format (format 1: a bare ``.npy`` image without QC) are never read, so they
are recomputed once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mimir.utils import atomic
from mimir.utils.hashing import file_sha256
from mimir.utils.paths import cache_dir

__all__ = ["CACHE_FORMAT", "entry_path", "file_sha256", "load", "store"]

#: Version of the entry format; bumped when an entry's content changes (2: QC record added).
CACHE_FORMAT = 2
#: An entry's metadata larger than this is treated as damaged (bytes of JSON text).
MAX_META_CHARS = 1 << 20


def entry_path(content_hash: str, pipeline_version: str, root: Path | None = None) -> Path:
    """Where the entry of a zip with this hash lives."""
    root = cache_dir() if root is None else root
    return root / "images" / pipeline_version / f"format{CACHE_FORMAT}" / content_hash[:2] / f"{content_hash}.npz"


def load(content_hash: str, pipeline_version: str, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached ``(image, meta)``, or None when absent or unreadable (then it is rebuilt)."""
    path = entry_path(content_hash, pipeline_version)
    try:
        with np.load(path, allow_pickle=False) as entry:
            image = entry["image"]
            meta_text = entry["meta"]
            if meta_text.shape != () or meta_text.dtype.kind != "U" or meta_text.dtype.itemsize > 4 * MAX_META_CHARS:
                return None
            meta = json.loads(str(meta_text))
    except (OSError, ValueError, EOFError, KeyError):
        return None
    if image.shape != shape or image.dtype != np.uint8 or not isinstance(meta, dict):
        return None
    return image, meta


def store(content_hash: str, pipeline_version: str, image: np.ndarray, meta: Mapping[str, Any] | None = None) -> None:
    """Store an image and its metadata atomically. A cache that cannot be written is skipped silently."""
    path = entry_path(content_hash, pipeline_version)
    text = np.array(json.dumps(dict(meta or {}), sort_keys=True))
    try:
        with atomic.atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, image=image, meta=text)
    except OSError:
        pass
