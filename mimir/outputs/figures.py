"""Figures drawn with matplotlib (Agg): saliency overlays for ``mimir explain``, histograms for ``mimir report``.

matplotlib is an optional dependency (the ``report`` extra);
:func:`require_matplotlib` raises a one-line :class:`UsageError` that says
what to install when it is missing.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mimir.errors import UsageError
from mimir.utils import atomic
from mimir.utils.install import extra_hint

#: How to install the plotting dependencies (the command fits a release or a checkout).
INSTALL_HINT = extra_hint("report")

#: Channel titles of the saliency figure.
CHANNEL_TITLES = ("water", "fat", "fat fraction (slices)")


def require_matplotlib(command: str) -> Any:
    """The ``matplotlib.pyplot`` module on the Agg backend, or a UsageError naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"mimir {command} needs matplotlib, which is not installed", hint=INSTALL_HINT) from None
    return plt


def _png_bytes(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def saliency_figure(
    image: np.ndarray,
    saliency: np.ndarray,
    title: str,
    subtitle: str = "",
    *,
    smooth_px: float = 0.0,
    dpi: int = 100,
) -> bytes:
    """PNG bytes: the three channels of ``image`` (3, 256, 256) with ``saliency`` (256, 256) overlaid.

    The map is shown relative to its maximum with the ``inferno`` colour map,
    transparent where it is low (alpha = value / max, capped at 0.75). Each
    panel is titled with its channel and shows which half is coronal and
    which sagittal. ``smooth_px`` > 0 blurs the map for display only
    (Gaussian, that sigma in pixels): pixel-level maps are speckled.
    """
    plt = require_matplotlib("explain")
    s = np.asarray(saliency, dtype=np.float64)
    if smooth_px > 0:
        from scipy.ndimage import gaussian_filter

        s = gaussian_filter(s, smooth_px)
    peak = float(s.max()) if s.size else 0.0
    rel = s / peak if peak > 0 else np.zeros_like(s)
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.55), dpi=dpi)
    size = image.shape[-1]
    for c, ax in enumerate(axes):
        ax.imshow(image[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.imshow(rel, cmap="inferno", vmin=0, vmax=1, alpha=np.clip(rel, 0, 0.75), interpolation="bilinear")
        ax.axvline(size / 2 - 0.5, color="white", lw=0.5, alpha=0.6)
        ax.set_title(CHANNEL_TITLES[c] if c < len(CHANNEL_TITLES) else f"channel {c}", fontsize=9)
        ax.set_xticks([size / 4, 3 * size / 4], ["coronal", "sagittal"], fontsize=7)
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    if subtitle:
        fig.text(0.01, 0.895, subtitle, fontsize=7.5, ha="left", color="0.3")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.80, bottom=0.07, wspace=0.04)
    try:
        return _png_bytes(fig, dpi)
    finally:
        plt.close(fig)


def write_saliency_figure(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
    """Atomically write :func:`saliency_figure` to ``path``."""
    atomic.write_bytes(path, saliency_figure(*args, **kwargs))


def histogram_png(
    values: np.ndarray,
    *,
    xlabel: str,
    title: str,
    bins: int = 40,
    note: str = "",
    color: str = "#3b6ea8",
) -> bytes:
    """A small histogram (about 380 x 210 pixels) of the finite ``values`` as PNG bytes."""
    plt = require_matplotlib("report")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    fig, ax = plt.subplots(figsize=(4.2, 2.3), dpi=90)
    try:
        if v.size:
            counts, edges = np.histogram(v, bins=bins)
            ax.stairs(counts, edges, fill=True, color=color, alpha=0.85)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("subjects", fontsize=8)
        ax.set_title(f"{title} (n={v.size})", fontsize=9)
        ax.tick_params(labelsize=7)
        if note:
            ax.text(0.98, 0.95, note, ha="right", va="top", fontsize=7, transform=ax.transAxes, color="0.25")
        fig.tight_layout()
        return _png_bytes(fig, 90)
    finally:
        plt.close(fig)


def labelled_jpeg(image: np.ndarray, name: str, flags: Sequence[str], width: int | None = None,
                  quality: int = 80) -> bytes:
    """The labelled preview (:func:`mimir.outputs.preview.labelled_preview`) as greyscale JPEG bytes.

    ``width`` (pixels) scales it down (None: full size, 776 pixels for a
    256-pixel image). JPEG keeps the noisy fat-fraction background small.
    """
    from PIL import Image

    from mimir.outputs.preview import labelled_preview

    img = Image.fromarray(labelled_preview(image, name, flags))
    if width is not None and width < img.width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
