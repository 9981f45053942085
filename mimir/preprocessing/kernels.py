"""Compiled loops for the memory-bound steps of stations, fusion and projection.

The loops are C (``_kernels.c``, built into ``mimir.preprocessing._kernels``
when the package is installed). Each does in one pass over memory what
:mod:`mimir.preprocessing.stations`, :mod:`~mimir.preprocessing.fusion` and
:mod:`~mimir.preprocessing.projection` spell out as several NumPy passes,
with the same floating-point operations in the same order, so the results
are bit-identical (``tests/preprocessing/test_kernels.py`` compares both
paths on every step). Importing the extension costs about a millisecond, so
the kernels are used from a process's first image on.

``MIMIR_KERNELS=0`` in the environment (or the extension missing, where the
install had no C compiler) selects the plain NumPy code everywhere:
:func:`enabled` is then False. ``MIMIR_NUMBA``, the variable of the earlier
numba kernels, is read when ``MIMIR_KERNELS`` is unset.

The functions here take NumPy arrays; shapes and types are checked again in
C before any index is used, so a wrong argument raises ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

try:
    from mimir.preprocessing import _kernels as _c
except ImportError:  # pragma: no cover - an install without a C compiler
    _c = None

_OFF = ("0", "off", "no", "false")


def available() -> bool:
    """True when the C extension was built and imports."""
    return _c is not None


def enabled() -> bool:
    """True when the compiled kernels are used: the extension is there and not switched off."""
    if _c is None:
        return False
    mode = os.environ.get("MIMIR_KERNELS")
    if mode is None:
        mode = os.environ.get("MIMIR_NUMBA", "1")
    return mode.strip().lower() not in _OFF


def resample_into(voxels: np.ndarray, a0: np.ndarray, a1: np.ndarray, wa0: np.ndarray, wa1: np.ndarray,
                  b0: np.ndarray, b1: np.ndarray, wb0: np.ndarray, wb1: np.ndarray,
                  c0: np.ndarray, c1: np.ndarray, wc0: np.ndarray, wc1: np.ndarray,
                  z_from: int, out: np.ndarray) -> None:
    """Separable clamped trilinear resampling of one station, in one pass.

    ``voxels`` (rows, cols, slices) float32; per axis the tap indices
    (int64) and weights (float64, ``w0 = 1 - da``, ``w1 = da``) of
    ``fusion.interpolation_taps``. Writes output slices ``z_from ..
    z_from + out.shape[2] - 1`` into ``out`` (float32, C-contiguous). The
    arithmetic is ``fusion.resample_station``'s: the row pass, the column
    pass, then the slice pass, each ``x0 * w0 + x1 * w1`` in float64, the
    last rounded to float32; only one output row's intermediates are held.
    """
    _c.resample_into(np.ascontiguousarray(voxels, dtype=np.float32), *(_i64(a) for a in (a0, a1)),
                     *(_f64(w) for w in (wa0, wa1)), *(_i64(b) for b in (b0, b1)), *(_f64(w) for w in (wb0, wb1)),
                     *(_i64(c) for c in (c0, c1)), *(_f64(w) for w in (wc0, wc1)), int(z_from), out)


def paste_all(volume: np.ndarray, buf: np.ndarray, offsets: np.ndarray, shapes: np.ndarray,
              starts: np.ndarray, splits: np.ndarray) -> None:
    """Every station into the float64 ``volume`` in one sweep over it; ``fusion.paste``'s values.

    ``volume`` (rows, cols, slices) C-contiguous float64, fully written
    (zeros where no station lies). Station ``i`` is ``buf[offsets[i]:]``
    read as a C-ordered float32 array of ``shapes[i]``, placed at
    ``starts[i]``; along each (row, col) line its slices below
    ``splits[i]`` are added to what earlier stations wrote, the rest
    assigned: the additions of ``fusion.paste`` in the same station order,
    with the volume walked once, line by line.
    """
    _c.paste_all(volume, buf, _i64(offsets), _i64(shapes), _i64(starts), _i64(splits))


def linspace_edges(lo: float, hi: float, edges: np.ndarray) -> None:
    """Fill ``edges`` (float64) with ``np.linspace(lo, hi, len(edges))``, operation for operation."""
    _c.linspace_edges(float(lo), float(hi), edges)


def projection_pass(water: np.ndarray, fat: np.ndarray, keep: int, cor_w: np.ndarray, cor_f: np.ndarray,
                    sag_w: np.ndarray, sag_f: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                    hist: np.ndarray) -> bool:
    """One pass over both volumes: projections, and per-slice signal range and histogram.

    ``water`` and ``fat`` are (AP, LR, HF) float64 (any strides). For every
    AP slice ``r`` the signal ``s = water + fat`` (0 replaced by 1) is
    formed; ``lows[r]``, ``highs[r]`` get its min and max and ``hist[r]``
    (int64) its 256-bin histogram over [min, max] with ``np.histogram``'s
    bin rule (left alone when min == max). For ``r < keep`` the water and
    fat values are added to the coronal sums ``cor_* (LR, HF)`` (over AP,
    in order) and sagittal sums ``sag_* (keep, HF)`` (over LR, in order),
    which must start at zero.

    Returns False when a signal value is not finite (the caller then takes
    the NumPy path, which reports it).
    """
    return bool(_c.projection_pass(water, fat, int(keep), cor_w, cor_f, sag_w, sag_f, lows, highs, hist))


def mask_counts(water: np.ndarray, fat: np.ndarray, keep: int, threshold: float,
                counts_ap: np.ndarray, counts_lr: np.ndarray) -> None:
    """Body-mask voxels (``signal >= threshold``) per AP slice and per LR slice, AP < ``keep``.

    ``water``, ``fat`` (AP, LR, HF) float64, any strides; ``counts_ap``
    (keep,) and ``counts_lr`` (LR,) int64 must start at zero.
    """
    _c.mask_counts(water, fat, int(keep), float(threshold), counts_ap, counts_lr)


def placed_projection_pass(buf_w: np.ndarray, buf_f: np.ndarray, offsets: np.ndarray, shapes: np.ndarray,
                           starts: np.ndarray, splits: np.ndarray, n_rows: int, n_cols: int, n_slices: int,
                           trim: int, keep: int, cor_w: np.ndarray, cor_f: np.ndarray, sag_w: np.ndarray,
                           sag_f: np.ndarray, lows: np.ndarray, highs: np.ndarray, hist: np.ndarray) -> bool:
    """:func:`projection_pass` over the volumes :func:`paste_all` would make, without making them.

    ``buf_w``, ``buf_f`` and the placement are those of
    :class:`~mimir.preprocessing.fusion.PlacedStations`; the volume is
    (rows = AP, cols = LR, slices = HF) with slices ``trim .. n_slices -
    trim - 1`` used, in memory order (feet first). Each line is added up
    into a scratch line and used at once.
    """
    return bool(_c.placed_projection_pass(buf_w, buf_f, *(_i64(a) for a in (offsets, shapes, starts, splits)),
                                          int(n_rows), int(n_cols), int(n_slices), int(trim), int(keep),
                                          cor_w, cor_f, sag_w, sag_f, lows, highs, hist))


def placed_mask_counts(buf_w: np.ndarray, buf_f: np.ndarray, offsets: np.ndarray, shapes: np.ndarray,
                       starts: np.ndarray, splits: np.ndarray, n_rows: int, n_cols: int, n_slices: int,
                       trim: int, keep: int, threshold: float, counts_ap: np.ndarray, counts_lr: np.ndarray) -> None:
    """:func:`mask_counts` over the volumes :func:`paste_all` would make (see :func:`placed_projection_pass`)."""
    _c.placed_mask_counts(buf_w, buf_f, *(_i64(a) for a in (offsets, shapes, starts, splits)), int(n_rows),
                          int(n_cols), int(n_slices), int(trim), int(keep), float(threshold), counts_ap, counts_lr)


def placed_lines(buf: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, starts: np.ndarray, splits: np.ndarray,
                 n_rows: int, n_cols: int, n_slices: int, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """Lines ``(rows[k], cols[k])`` of the volume :func:`paste_all` would make, all slices, into ``out`` (k, n_slices)."""
    _c.placed_lines(buf, *(_i64(a) for a in (offsets, shapes, starts, splits)), int(n_rows), int(n_cols),
                    int(n_slices), _i64(rows), _i64(cols), out)


def stack_slices(slices: Sequence[np.ndarray]) -> np.ndarray:
    """``np.stack(slices, axis=-1)`` for equal-shaped 2-D float32 slices: a (rows, cols, n) C-contiguous array.

    One blocked copy instead of NumPy's stack and transposing copy.
    """
    first = slices[0]
    parts = [np.ascontiguousarray(s, dtype=np.float32) for s in slices]
    out = np.empty((first.shape[0], first.shape[1], len(parts)), dtype=np.float32)
    _c.stack_slices(parts, out)
    return out


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)
