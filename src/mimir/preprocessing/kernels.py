"""Compiled loops for the memory-bound steps of fusion and projection (numba).

Each kernel does, in one pass over memory, what :mod:`mimir.preprocessing.fusion`
and :mod:`mimir.preprocessing.projection` spell out as several NumPy passes,
with the SAME floating-point operations in the SAME order, so the results
are bit-identical (``tests/preprocessing/test_kernels.py`` compares both
paths on every step). No fast-math: every product and sum is rounded as
NumPy rounds it (LLVM does not contract them into fused multiply-adds
without fast-math flags).

The kernels are compiled on first use and cached on disk (numba's
``cache=True``: next to this file, or in the user's cache folder when the
package folder is read-only), so only the very first process pays the
compilation. Importing this module imports numba (about 0.2 s CPU, and
0.3 s more at the first kernel call); :mod:`mimir.preprocessing.accel`
decides when the pipeline uses the kernels (by default from the second
image of a process on).

``MIMIR_NUMBA=0`` in the environment, or numba not installed, selects the
plain NumPy code everywhere (:func:`enabled` is then False).
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is a dependency; this guard keeps mimir usable where it cannot be installed
    import numba
except ImportError:  # pragma: no cover
    numba = None


def enabled() -> bool:
    """True when the compiled kernels are used (numba importable and not disabled)."""
    return numba is not None and os.environ.get("MIMIR_NUMBA", "1") != "0"


def _jit(fn):  # type: ignore[no-untyped-def]
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, error_model="numpy")(fn)


@_jit
def resample_into(  # type: ignore[no-untyped-def]
    voxels, a0, a1, wa0, wa1, b0, b1, wb0, wb1, c0, c1, wc0, wc1, z_from, out
):
    """Separable clamped trilinear resampling of one station, fused into one pass.

    ``voxels`` (rows, cols, slices) float32; taps and weights per output
    index along each axis (``interpolation_taps``: index arrays int64,
    weights float64, ``w0 = 1 - da``, ``w1 = da``). Writes output slices
    ``z_from .. z_from + out.shape[2] - 1`` into ``out`` (float32).

    The arithmetic is that of ``fusion.resample_station``: the row pass,
    then the column pass, then the slice pass, each ``x0 * w0 + x1 * w1`` in
    float64, the last one rounded to float32. Only one output row's
    intermediate values are held at a time.
    """
    n_cols = voxels.shape[1]
    n_slices = voxels.shape[2]
    rows_out, cols_out, depth = out.shape
    row = np.empty((n_cols, n_slices))
    col = np.empty(n_slices)
    for x in range(rows_out):
        i0 = a0[x]
        i1 = a1[x]
        u0 = wa0[x]
        u1 = wa1[x]
        for j in range(n_cols):
            for k in range(n_slices):
                row[j, k] = np.float64(voxels[i0, j, k]) * u0 + np.float64(voxels[i1, j, k]) * u1
        for y in range(cols_out):
            j0 = b0[y]
            j1 = b1[y]
            v0 = wb0[y]
            v1 = wb1[y]
            for k in range(n_slices):
                col[k] = row[j0, k] * v0 + row[j1, k] * v1
            for z in range(depth):
                zz = z + z_from
                out[x, y, z] = np.float32(col[c0[zz]] * wc0[zz] + col[c1[zz]] * wc1[zz])


@_jit
def paste_into(volume, station, r0, c0, z0, split):  # type: ignore[no-untyped-def]
    """Place one float32 station into the float64 volume at (r0, c0, z0).

    Slices below ``split`` (absolute) are added to what earlier stations
    wrote there; from ``split`` on they are assigned, as ``fusion.paste``.
    """
    rows, cols, depth = station.shape
    for r in range(rows):
        for c in range(cols):
            for z in range(depth):
                zz = z0 + z
                value = np.float64(station[r, c, z])
                if zz < split:
                    volume[r0 + r, c0 + c, zz] += value
                else:
                    volume[r0 + r, c0 + c, zz] = value


@_jit
def _linspace_edges(lo, hi, edges):  # type: ignore[no-untyped-def]
    """``np.linspace(lo, hi, len(edges))`` for float64 scalars, operation for operation."""
    n = edges.shape[0]
    div = n - 1
    delta = hi - lo
    step = delta / div
    if step == 0:
        for k in range(n):
            edges[k] = (np.float64(k) / div) * delta + lo
    else:
        for k in range(n):
            edges[k] = np.float64(k) * step + lo
    edges[n - 1] = hi


@_jit
def projection_pass(water, fat, keep, cor_w, cor_f, sag_w, sag_f, lows, highs, hist):  # type: ignore[no-untyped-def]
    """One pass over both volumes: projections, and per-slice signal range and histogram.

    ``water`` and ``fat`` are (AP, LR, HF) float64 (any strides). For every
    AP slice ``r`` the signal ``s = water + fat`` (0 replaced by 1) is
    formed; ``lows[r]``, ``highs[r]`` get its min and max and ``hist[r]``
    its 256-bin histogram over [min, max] with ``np.histogram``'s bin rule
    (left in place when min == max). For ``r < keep`` the water and fat
    values are added to the coronal sums ``cor_* (LR, HF)`` (over AP, in
    order) and sagittal sums ``sag_* (AP, HF)`` (over LR, in order), which
    must start at zero.

    Returns False when a signal value is not finite (the caller then takes
    the NumPy path, which reports it).
    """
    n_ap, n_lr, n_hf = water.shape
    nbins = hist.shape[1]
    signal = np.empty((n_lr, n_hf))
    edges = np.empty(nbins + 1)
    for r in range(n_ap):
        lo = np.inf
        hi = -np.inf
        finite = True
        for c in range(n_lr):
            for z in range(n_hf):
                w = water[r, c, z]
                f = fat[r, c, z]
                s = w + f
                if s == 0:
                    s = 1.0
                if not (s - s == 0):
                    finite = False
                signal[c, z] = s
                if s < lo:
                    lo = s
                if s > hi:
                    hi = s
                if r < keep:
                    cor_w[c, z] += w
                    cor_f[c, z] += f
                    sag_w[r, z] += w
                    sag_f[r, z] += f
        if not finite:
            return False
        lows[r] = lo
        highs[r] = hi
        if lo == hi:
            continue
        _linspace_edges(lo, hi, edges)
        denom = hi - lo
        for c in range(n_lr):
            for z in range(n_hf):
                s = signal[c, z]
                i = np.intp((s - lo) / denom * nbins)
                if i == nbins:
                    i -= 1
                if s < edges[i]:
                    i -= 1
                if s >= edges[i + 1] and i != nbins - 1:
                    i += 1
                hist[r, i] += 1
    return True


@_jit
def mask_counts(water, fat, keep, threshold, counts_ap, counts_lr):  # type: ignore[no-untyped-def]
    """Body-mask voxels (``signal >= threshold``) per AP slice and per LR slice, AP < ``keep``.

    ``counts_ap`` (keep,) and ``counts_lr`` (LR,) int64 must start at zero.
    """
    n_lr = water.shape[1]
    n_hf = water.shape[2]
    for r in range(keep):
        for c in range(n_lr):
            n = 0
            for z in range(n_hf):
                s = water[r, c, z] + fat[r, c, z]
                if s == 0:
                    s = 1.0
                if s >= threshold:
                    n += 1
            counts_ap[r] += n
            counts_lr[c] += n


@_jit
def paste_all(volume, buf, offsets, shapes, starts, splits):  # type: ignore[no-untyped-def]
    """Every station into the float64 volume in one sweep over it; ``fusion.paste``'s values.

    ``volume`` (rows, cols, slices) C-contiguous float64, fully written here
    (zeros where no station lies). Station ``i`` is ``buf[offsets[i]:]``
    read as a C-ordered float32 array of ``shapes[i]``, placed at
    ``starts[i]``; along each (row, col) line its slices below ``splits[i]``
    are added to what earlier stations wrote, the rest assigned. The same
    additions in the same station order as ``fusion.paste``, but the volume
    is walked once, line by line, instead of once per station.
    """
    n_rows, n_cols, n_slices = volume.shape
    flat = volume.reshape(-1)
    n_stations = offsets.shape[0]
    for r in range(n_rows):
        for c in range(n_cols):
            base = (r * n_cols + c) * n_slices
            written = 0
            for i in range(n_stations):
                r0 = starts[i, 0]
                c0 = starts[i, 1]
                z0 = starts[i, 2]
                z1 = z0 + shapes[i, 2]
                split = splits[i]
                for z in range(written, z0):
                    flat[base + z] = 0.0  # a gap between stations
                if r0 <= r < r0 + shapes[i, 0] and c0 <= c < c0 + shapes[i, 1]:
                    src = offsets[i] + ((r - r0) * shapes[i, 1] + (c - c0)) * shapes[i, 2] - z0
                    for z in range(z0, split):
                        flat[base + z] += np.float64(buf[src + z])
                    for z in range(split, z1):
                        flat[base + z] = np.float64(buf[src + z])
                else:
                    for z in range(split, z1):
                        flat[base + z] = 0.0
                if z1 > written:
                    written = z1
