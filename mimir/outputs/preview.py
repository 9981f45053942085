"""Preview PNGs of images: the three channels side by side, labelled.

:func:`encode_png` writes greyscale PNGs with zlib alone. The labelled
preview (:func:`labelled_preview`) draws its text with Pillow: a title line
with the subject's name, one line of QC flags (or "QC: no flags"), and under
each panel the channel's name and which half is coronal and which sagittal.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from mimir.utils import atomic

#: What the three channels of a ``mimir-v1`` image are (preprocessing-spec.md section 8).
CHANNEL_NAMES: tuple[str, str, str] = ("water (mean projection)", "fat (mean projection)", "fat fraction (slices)")
#: Short names, for narrow panels.
CHANNEL_SHORT: tuple[str, str, str] = ("water", "fat", "fat fraction")
#: Each channel holds the coronal view (left half) and the sagittal view (right half).
HALVES = ("coronal", "sagittal")


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


def _font(size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, font, width: int) -> str:  # type: ignore[no-untyped-def]
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def labelled_preview(
    image: np.ndarray, name: str | None = None, flags: Sequence[str] = (), *, gap: int = 4
) -> np.ndarray:
    """The side-by-side preview with labels, (H', W') uint8 greyscale.

    Above the panels: ``name`` (if given) and the QC flags (``"QC: no flags"``
    when there are none; omitted with ``name`` None and no flags). Under each
    panel: its channel name from :data:`CHANNEL_NAMES` and "coronal |
    sagittal" under the two halves.
    """
    from PIL import Image, ImageDraw

    panels = preview(image, gap)
    h, w = panels.shape
    side = image.shape[2]
    font, small = _font(13), _font(11)
    top = 0
    lines: list[tuple[str, object, int]] = []
    if name is not None or flags:
        if name is not None:
            lines.append((name, font, 255))
        lines.append(("QC: " + (", ".join(flags) if flags else "no flags"), small, 255 if flags else 170))
        top = 4 + 17 * len(lines)
    bottom = 34
    canvas = Image.new("L", (w, h + top + bottom), 0)
    canvas.paste(Image.fromarray(panels), (0, top))
    draw = ImageDraw.Draw(canvas)
    y = 3
    for text, f, shade in lines:
        draw.text((4, y), _fit(text, f, w - 8), fill=shade, font=f)
        y += 17
    for c in range(image.shape[0]):
        x0 = c * (side + gap)
        label = CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"channel {c}"
        if font.getlength(label) > side - 4 and c < len(CHANNEL_SHORT):
            label = CHANNEL_SHORT[c]
        draw.text((x0 + side / 2, h + top + 2), label, fill=255, font=font, anchor="ma")
        for k, half in enumerate(HALVES):
            draw.text((x0 + side / 4 + k * side / 2, h + top + 19), half, fill=170, font=small, anchor="ma")
        draw.line([(x0 + side // 2, h + top), (x0 + side // 2, h + top + 32)], fill=90)
    return np.asarray(canvas, dtype=np.uint8)


def write_preview(
    path: str | os.PathLike[str], image: np.ndarray, name: str | None = None, flags: Sequence[str] = ()
) -> None:
    """Atomically write the labelled preview of a (3, H, W) uint8 image as PNG.

    ``name`` defaults to the file name of ``path`` without ``.png``.
    """
    if name is None:
        name = os.path.basename(os.fspath(path))
        name = name[:-4] if name.lower().endswith(".png") else name
    atomic.write_bytes(path, encode_png(labelled_preview(image, name, flags)))
