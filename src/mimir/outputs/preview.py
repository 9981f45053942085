"""Preview PNGs of images, written with zlib (no imaging library needed)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from mimir.utils import atomic


def encode_png(gray: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit greyscale PNG."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    height, width = gray.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), gray], axis=1).tobytes()  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def preview(image: np.ndarray, gap: int = 4) -> np.ndarray:
    """The three channels of a (3, H, W) image side by side, separated by ``gap`` black columns."""
    channels, height, _ = image.shape
    spacer = np.zeros((height, gap), np.uint8)
    parts = []
    for c in range(channels):
        parts += [image[c], spacer] if c < channels - 1 else [image[c]]
    return np.concatenate(parts, axis=1)


def write_preview(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Atomically write the side-by-side preview of a (3, H, W) uint8 image as PNG."""
    atomic.write_bytes(path, encode_png(preview(image)))
