"""Resample stations onto the output grid and fuse them into one volume.

Spec: ``preprocessing-spec.md`` sections 4 to 6. All functions are pure; the
only state is in their arguments and return values.

Axis conventions: a station's voxels are (row, column, slice) = (anterior ->
posterior, right -> left, head -> foot). The fused volume returned by
:func:`fuse_volume` is (left-right, anterior-posterior, head-foot) with the
head at the END of the last axis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from mimir.preprocessing import accel
from mimir.preprocessing.stations import Station, StationSet

log = logging.getLogger("mimir")

#: Output voxel spacing, mm, (row, column, slice).
OUT_SPACING = np.array((2.23214293, 2.23214293, 3.0))
#: A station is resampled when it lies further than this (in output voxels) off the grid.
RESAMPLE_TOLERANCE = 0.01
#: Station overlaps are cut down to at most this many slices.
MAX_OVERLAP = 8
#: Slices removed at each end of the fused volume (folding artefacts).
TRIM_SLICES = 4


@dataclass(frozen=True)
class Grid:
    """Placement of S stations on the output voxel grid.

    Attributes
    ----------
    origin, origin_end:
        (S, 3) float64: exact start and end of each station in output voxels
        (``R`` and ``R_end`` in the spec).
    start, end:
        (S, 3) int64: the rounded start and end (``W`` and ``W_end``).
    """

    origin: np.ndarray
    origin_end: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def size(self) -> np.ndarray:
        """(S, 3) int64 station sizes on the grid (``W_size``)."""
        return self.end - self.start


def station_grid(positions: np.ndarray, spacings: np.ndarray, shapes: np.ndarray) -> Grid:
    """Place stations on the output grid (spec section 4).

    Parameters
    ----------
    positions:
        (S, 3) station positions, mm, patient (x, y, z), head station first.
    spacings:
        (S, 3) voxel spacings, mm, (row, column, slice).
    shapes:
        (S, 3) voxel counts (rows, columns, slices).
    """
    positions = np.asarray(positions, dtype=np.float64)
    r = (positions - positions[0]) / OUT_SPACING
    r[:, 0] -= r[:, 0].min()
    r[:, 1] -= r[:, 1].min()
    r[:, 2] *= -1
    r[:, [0, 1]] = r[:, [1, 0]]
    r_end = r + np.asarray(shapes, dtype=np.float64) * np.asarray(spacings, dtype=np.float64) / OUT_SPACING
    start = np.around(r).astype(np.int64)
    end = np.around(r_end).astype(np.int64)
    return Grid(origin=r, origin_end=r_end, start=start, end=end)


def needs_resampling(grid: Grid, i: int, shape: tuple[int, int, int]) -> bool:
    """True when station ``i`` is off the grid by more than the tolerance, or changes size."""
    corners = np.concatenate([grid.origin[i], grid.origin_end[i]])
    off_grid = np.abs(corners - np.around(corners)).max() > RESAMPLE_TOLERANCE
    return bool(off_grid or np.sum(grid.size[i] - np.asarray(shape)) != 0)


def interpolation_taps(
    out_size: int, in_size: int, scale: float, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of the spec's clamped linear interpolation along one axis.

    For output voxel x: ``a = (x - offset) / scale``, ``a0 = trunc(a)``,
    ``a1 = a0 + 1``, each clamped into [0, in_size - 1]; the weight of ``a1``
    is ``a - a0`` (after clamping).

    Returns
    -------
    (a0, a1, da): (out_size,) int64, int64, float64.
    """
    a = (np.arange(out_size, dtype=np.float64) - offset) / scale
    a0 = np.trunc(a)
    a1 = a0 + 1
    hi = in_size - 1
    a = np.clip(a, 0, hi)
    a0 = np.clip(a0, 0, hi)
    a1 = np.clip(a1, 0, hi)
    return a0.astype(np.int64), a1.astype(np.int64), a - a0


def resample_station(voxels: np.ndarray, grid: Grid, i: int, dtype: type = np.float64) -> np.ndarray:
    """Resample station ``i`` onto the grid with clamped trilinear interpolation.

    Separable: interpolates along axis 0, then 1, then 2, in float64, with
    ``scale = (R_end - R) / N`` and ``offset = R - W`` per axis. ``dtype``
    is the type the result is stored in (the arithmetic stays float64;
    float32 saves the separate cast that fusion applies anyway).

    Returns
    -------
    Array of shape ``grid.size[i]`` and type ``dtype``.
    """
    shape = np.array(voxels.shape)
    scale = (grid.origin_end[i] - grid.origin[i]) / shape
    offset = grid.origin[i] - grid.start[i]
    out = voxels.astype(np.float64)
    for axis in range(3):
        a0, a1, da = interpolation_taps(int(grid.size[i, axis]), int(shape[axis]), scale[axis], offset[axis])
        bshape = [1, 1, 1]
        bshape[axis] = -1
        lo = _weighted_taps(out, a0, (1 - da).reshape(bshape), axis)
        hi = _weighted_taps(out, a1, da.reshape(bshape), axis)
        if axis < 2:
            lo += hi
            out = lo
        else:
            out = np.add(lo, hi, out=np.empty(lo.shape, dtype=dtype), casting="unsafe")
    return out


def resample_trimmed(
    voxels: np.ndarray, grid: Grid, i: int, cut_start: int, cut_end: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``resample_station(voxels, grid, i, float32)[:, :, cut_start : size - cut_end]``, computed directly.

    With the compiled kernels (:mod:`mimir.preprocessing.kernels`, see
    :mod:`mimir.preprocessing.accel` for when they are used) the
    three interpolation passes run as one pass over memory and only the
    kept slices are computed; the values are bit-identical to
    :func:`resample_station`'s. Returns a new float32 array, or ``out``
    (C-contiguous float32 of the trimmed shape) filled.
    """
    kernels = accel.compiled()
    size = tuple(int(s) for s in grid.size[i])
    depth = size[2] - cut_start - cut_end
    if kernels is None or voxels.dtype != np.float32 or depth <= 0 or min(voxels.shape) == 0:
        full = resample_station(voxels, grid, i, dtype=np.float32)
        trimmed = full[:, :, cut_start : full.shape[2] - cut_end]
        if out is None:
            return trimmed
        np.copyto(out, trimmed)
        return out
    shape = np.array(voxels.shape)
    scale = (grid.origin_end[i] - grid.origin[i]) / shape
    offset = grid.origin[i] - grid.start[i]
    taps = []
    for axis in range(3):
        a0, a1, da = interpolation_taps(size[axis], int(shape[axis]), scale[axis], offset[axis])
        taps += [a0, a1, 1 - da, da]
    if out is None:
        out = np.empty((size[0], size[1], depth), dtype=np.float32)
    kernels.resample_into(np.ascontiguousarray(voxels), *taps, cut_start, out)
    return out


def _weighted_taps(volume: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``np.take(volume, index, axis) * weights`` as a new array, reading through a
    slice instead of a gathered copy when the indices are consecutive (always
    the case for the near-identity row and column passes)."""
    if len(index) and np.all(np.diff(index) == 1):
        sl = [slice(None)] * volume.ndim
        sl[axis] = slice(int(index[0]), int(index[-1]) + 1)
        return volume[tuple(sl)] * weights
    taken = np.take(volume, index, axis=axis)
    taken *= weights
    return taken


@dataclass(frozen=True)
class OverlapPlan:
    """Overlap trimming between neighbouring stations (spec section 5).

    Attributes
    ----------
    start, end:
        (S, 3) int64 grid placement after trimming.
    overlaps:
        (S,) int64; ``overlaps[i]`` is the overlap, in slices, between
        stations i and i+1 (0 for the last station; may be <= 0).
    cut_end, cut_start:
        (S,) int64 slices removed from the end / start of each station.
    """

    start: np.ndarray
    end: np.ndarray
    overlaps: np.ndarray
    cut_end: np.ndarray
    cut_start: np.ndarray

    @property
    def size(self) -> np.ndarray:
        return self.end - self.start


def plan_overlaps(grid: Grid) -> tuple[OverlapPlan, list[str]]:
    """Cut overlaps of more than :data:`MAX_OVERLAP` slices symmetrically.

    Returns the plan and warnings for neighbours with no overlap.
    """
    start = grid.start.copy()
    end = grid.end.copy()
    n = len(start)
    overlaps = np.zeros(n, dtype=np.int64)
    cut_end = np.zeros(n, dtype=np.int64)
    cut_start = np.zeros(n, dtype=np.int64)
    warnings = []
    for i in range(n - 1):
        overlap = int(end[i, 2] - start[i + 1, 2])
        if overlap <= 0:
            warnings.append(f"no overlap between stations {i} and {i + 1} ({overlap} slices)")
        elif overlap > MAX_OVERLAP:
            cut = (overlap - MAX_OVERLAP) / 2
            cut_a, cut_b = int(np.floor(cut)), int(np.ceil(cut))
            end[i, 2] -= cut_a
            start[i + 1, 2] += cut_b
            cut_end[i] = cut_a
            cut_start[i + 1] = cut_b
            overlap = MAX_OVERLAP
        overlaps[i] = overlap
    return OverlapPlan(start, end, overlaps, cut_end, cut_start), warnings


def fade_weights(overlap: int) -> np.ndarray:
    """Weights ``(j + 1) / (overlap + 1)`` for j = 0..overlap-1, float64.

    The fading-in station is multiplied by these on its first slices, the
    fading-out station by the reverse on its last slices, so the two weights
    at every overlapping slice sum to one.
    """
    return (np.arange(max(overlap, 0)) + 1) / (float(overlap) + 1)


def fade_and_correct(stations: list[np.ndarray], overlaps: np.ndarray, copy: bool = True) -> list[np.ndarray]:
    """Fade station edges and equalise intensity across seams (spec 6.1-6.3).

    Parameters
    ----------
    stations:
        Trimmed station voxels on the grid, any float dtype, (rows, cols, slices).
    overlaps:
        (S,) overlaps from :func:`plan_overlaps`.
    copy:
        With False, float32 inputs are modified in place (for callers that
        own them); other inputs are always converted to new float32 arrays.

    Returns
    -------
    float32 arrays; with ``copy=True`` the inputs are not modified.
    """
    out = [np.array(v, dtype=np.float32, copy=copy or v.dtype != np.float32) for v in stations]
    if _fade_and_correct_slabs(out, overlaps):
        return out
    n = len(out)
    for i in range(n):
        if i < n - 1 and overlaps[i] > 0:
            w = fade_weights(int(overlaps[i])).astype(np.float32)
            depth = out[i].shape[2]
            idx = depth - 1 - np.arange(len(w))
            out[i][:, :, idx] *= w
        if i > 0 and overlaps[i - 1] > 0:
            w = fade_weights(int(overlaps[i - 1])).astype(np.float32)
            out[i][:, :, : len(w)] *= w
    for i in range(n - 1):
        o = int(overlaps[i])
        if o <= 0:
            continue
        depth = out[i].shape[2]
        # Means in float32 and their differences/sums in float32, as NumPy 1.x
        # computed them in the original procedure.
        mean_a = np.mean(out[i + 1][:, :, o])
        mean_b = np.mean(out[i][:, :, depth - 1 - o])
        for j in range(o):
            target = float(mean_b) + float(mean_a - mean_b) * ((j + 1) / (float(o) + 1))
            k = depth - o + j
            current = float(np.mean(out[i + 1][:, :, j]) + np.mean(out[i][:, :, k]))
            if current == 0:
                continue  # an empty slice pair: nothing to scale
            factor = target / current
            out[i][:, :, k] *= factor
            out[i + 1][:, :, j] *= factor
    return out


def _fade_and_correct_slabs(out: list[np.ndarray], overlaps: np.ndarray) -> bool:
    """:func:`fade_and_correct` in place on ``out`` (float32), through slice-major copies of the edges.

    A slice ``[:, :, k]`` of a (rows, cols, slices) array is scattered in
    memory; the seams touch up to nine slices at each end of a station, many
    times. Here those slices are copied once into (slices, rows, cols)
    blocks, faded and corrected there with the same operations (the same
    float32 products, and the same ``np.mean``, which sums a slice in the
    same order whatever its memory layout), and copied back.

    Returns False, touching nothing, where a station is too short for its
    head and tail edges to be disjoint; the caller then runs the plain code.
    """
    n = len(out)
    fade_in = [int(overlaps[i - 1]) if i > 0 and overlaps[i - 1] > 0 else 0 for i in range(n)]
    fade_out = [int(overlaps[i]) if i < n - 1 and overlaps[i] > 0 else 0 for i in range(n)]
    for v, h, t in zip(out, fade_in, fade_out):
        if v.ndim != 3 or (h or t) and (h + 1 if h else 0) + (t + 1 if t else 0) > v.shape[2]:
            return False
    # heads[i]: slices 0..h (h = fade-in length); tails[i]: slices depth-1-t .. depth-1.
    heads = [np.ascontiguousarray(v[:, :, : h + 1].transpose(2, 0, 1)) if h else None for v, h in zip(out, fade_in)]
    tails = [
        np.ascontiguousarray(v[:, :, v.shape[2] - t - 1 :].transpose(2, 0, 1)) if t else None
        for v, t in zip(out, fade_out)
    ]
    for i in range(n):
        if fade_out[i]:
            w = fade_weights(fade_out[i]).astype(np.float32)
            tails[i][1:] *= w[::-1, None, None]  # slice depth-1-j times w[j]
        if fade_in[i]:
            w = fade_weights(fade_in[i]).astype(np.float32)
            heads[i][:-1] *= w[:, None, None]
    for i in range(n - 1):
        o = fade_out[i]
        if o <= 0:
            continue
        tail, head = tails[i], heads[i + 1]
        # tail[s] is slice depth-1-o+s of station i; head[j] is slice j of station i+1.
        mean_a = np.mean(head[o])
        mean_b = np.mean(tail[0])
        for j in range(o):
            target = float(mean_b) + float(mean_a - mean_b) * ((j + 1) / (float(o) + 1))
            current = float(np.mean(head[j]) + np.mean(tail[j + 1]))
            if current == 0:
                continue  # an empty slice pair: nothing to scale
            factor = target / current
            tail[j + 1] *= factor
            head[j] *= factor
    for v, head, tail in zip(out, heads, tails):
        if head is not None:
            v[:, :, : head.shape[0]] = head.transpose(1, 2, 0)
        if tail is not None:
            v[:, :, v.shape[2] - tail.shape[0] :] = tail.transpose(1, 2, 0)
    return True


def paste_splits(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(S,) int64: the slice from which each station is assigned rather than added.

    Station ``i`` covers slices ``start[i, 2] .. end[i, 2] - 1``; those that
    an earlier station reached (below the running maximum of the earlier
    ends) are added to what is there, the rest assigned.
    """
    splits, written_to = [], 0
    for a, b in zip(start, end):
        splits.append(min(max(written_to, int(a[2])), int(b[2])))
        written_to = max(written_to, int(b[2]))
    return np.array(splits, dtype=np.int64)


def paste(stations: list[np.ndarray], start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Add stations into one float64 volume and reorient it (spec 6.4-6.6).

    Returns
    -------
    (columns, rows, slices) float64 view: (left-right, anterior-posterior,
    head-foot with the head at the end), :data:`TRIM_SLICES` removed at both
    ends of the last axis.
    """
    volume = np.zeros(tuple(int(x) for x in end.max(axis=0)))
    for v, a, b, split in zip(stations, start, end, paste_splits(start, end)):
        # Slices no earlier station reached are assigned (0 + x == x exactly),
        # the overlap with earlier stations is added, as the spec's running sum.
        rows, cols = slice(a[0], b[0]), slice(a[1], b[1])
        volume[rows, cols, a[2] : split] += v[:, :, : split - a[2]]
        volume[rows, cols, split : b[2]] = v[:, :, split - a[2] :]
    return _reorient(volume)


@dataclass
class FusedVolumes:
    """Water and fat volumes of one subject on the output grid.

    ``water`` and ``fat`` are (left-right, anterior-posterior, head-foot)
    float64 arrays, head at the end of the last axis, voxel spacing
    :data:`OUT_SPACING` (mm). ``warnings`` lists irregularities repaired on the way.
    """

    water: np.ndarray
    fat: np.ndarray
    warnings: list[str]


@dataclass(frozen=True)
class PlacedStations:
    """Water and fat stations resampled onto the grid, trimmed, faded and corrected, not yet added up.

    The compiled path (:mod:`mimir.preprocessing.kernels`) keeps a subject in
    this form: two float32 buffers a quarter the size of the two float64
    volumes. :meth:`volumes` adds them up into :class:`FusedVolumes`;
    :func:`mimir.preprocessing.projection.make_image_from_placed` makes the
    image straight from the buffers, line by line, with the same values.

    Attributes
    ----------
    water, fat:
        (N,) float32: station ``i`` is ``buf[offsets[i]:]`` read as a
        C-ordered array of ``shapes[i]`` (rows, cols, slices).
    offsets, splits:
        (S,) int64; along each line, station ``i``'s slices below
        ``splits[i]`` are added to what earlier stations wrote, the rest assigned.
    shapes, starts:
        (S, 3) int64 sizes and places on the grid (rows, cols, slices).
    shape:
        (rows, cols, slices) of the added-up volume before it is reoriented
        and :data:`TRIM_SLICES` are cut at both ends.
    warnings:
        Irregularities repaired on the way, as in :class:`FusedVolumes`.
    """

    water: np.ndarray
    fat: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    starts: np.ndarray
    splits: np.ndarray
    shape: tuple[int, int, int]
    warnings: list[str]

    @property
    def placement(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, shapes, starts, splits), the arguments every placed kernel takes after the buffers."""
        return self.offsets, self.shapes, self.starts, self.splits

    def pasted(self, buf: np.ndarray) -> np.ndarray:
        """One channel added up: the (rows, cols, slices) float64 volume of :func:`paste`, untrimmed."""
        return _paste_placed(buf, self.placement, self.shape)

    def volumes(self) -> FusedVolumes:
        """The fused water and fat volumes, equal to :func:`fuse_stations`'s NumPy result bit for bit."""
        water, fat = (_reorient(self.pasted(buf)) for buf in (self.water, self.fat))
        return FusedVolumes(water=water, fat=fat, warnings=list(self.warnings))


def _paste_placed(
    buf: np.ndarray, placement: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], shape: tuple[int, int, int]
) -> np.ndarray:
    """A placed channel buffer added up into its (rows, cols, slices) float64 volume (compiled kernel)."""
    from mimir.preprocessing import kernels

    volume = np.empty(shape)
    kernels.paste_all(volume, buf, *placement)
    return volume


def _reorient(volume: np.ndarray) -> np.ndarray:
    """(rows, cols, slices) -> (columns, rows, slices) view, head at the end, :data:`TRIM_SLICES` cut at both ends."""
    volume = np.swapaxes(np.flip(volume, 2), 0, 1)
    return volume[:, :, TRIM_SLICES : volume.shape[2] - TRIM_SLICES]


def _place_channel(channel: list, grid: Grid, plan: OverlapPlan) -> tuple[np.ndarray, list] | None:
    """One channel's kept slices resampled (or copied) into one float32 buffer, faded and corrected there.

    Returns the buffer and the stations' shapes, or None (the caller takes
    the NumPy steps) when a station's size disagrees with its place on the
    grid (where :func:`paste` raises) or is empty.
    """
    shapes = []
    for i, station in enumerate(channel):
        v = station.voxels
        size = grid.size[i] if needs_resampling(grid, i, v.shape) else np.array(v.shape)
        shapes.append((int(size[0]), int(size[1]), int(size[2] - plan.cut_start[i] - plan.cut_end[i])))
        if v.dtype != np.float32 or v.ndim != 3 or shapes[-1] != tuple(int(x) for x in plan.size[i]):
            return None
        if min(shapes[-1]) <= 0 or np.any(plan.start[i] < 0):
            return None
    counts = [a * b * c for a, b, c in shapes]
    buf = np.empty(int(sum(counts)), dtype=np.float32)
    placed, at = [], 0
    for i, station in enumerate(channel):
        out = buf[at : at + counts[i]].reshape(shapes[i])
        at += counts[i]
        v = station.voxels
        lo, hi = int(plan.cut_start[i]), int(plan.cut_end[i])
        if needs_resampling(grid, i, v.shape):
            resample_trimmed(v, grid, i, lo, hi, out=out)
        else:
            np.copyto(out, v[:, :, lo : v.shape[2] - hi])
        placed.append(out)
    fade_and_correct(placed, plan.overlaps, copy=False)  # in place: the views into buf
    return buf, shapes


def place_stations(stations: StationSet) -> PlacedStations | None:
    """Resample, trim, fade and correct water and fat into :class:`PlacedStations` (compiled kernels).

    None when the kernels are off (:mod:`mimir.preprocessing.accel`) or the
    stations do not fit the fast layout; :func:`fuse_stations` then takes the NumPy steps.
    """
    if accel.compiled() is None:
        return None
    grid, plan, warnings = _plan(stations)
    water = _place_channel(stations.water, grid, plan)
    fat = _place_channel(stations.fat, grid, plan) if water is not None else None
    if water is None or fat is None or water[1] != fat[1]:
        return None
    offsets, shapes, starts, splits = _placement(water[1], plan)
    return PlacedStations(
        water=water[0],
        fat=fat[0],
        offsets=offsets,
        shapes=shapes,
        starts=starts,
        splits=splits,
        shape=tuple(int(x) for x in plan.end.max(axis=0)),
        warnings=list(stations.warnings) + warnings,
    )


def _placement(
    shapes: list[tuple[int, int, int]], plan: OverlapPlan
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, shapes, starts, splits) of a placed channel buffer (see :class:`PlacedStations`)."""
    arr = np.array(shapes, dtype=np.int64).reshape(-1, 3)
    counts = np.prod(arr, axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return offsets, arr, np.ascontiguousarray(plan.start, dtype=np.int64), paste_splits(plan.start, plan.end)


def _plan(stations: StationSet) -> tuple[Grid, OverlapPlan, list[str]]:
    shapes = np.array([s.voxels.shape for s in stations.fat])
    grid = station_grid(stations.positions, stations.spacings, shapes)
    plan, warnings = plan_overlaps(grid)
    return grid, plan, warnings


def fuse_stations(stations: StationSet) -> FusedVolumes:
    """Resample, trim, fade, correct and fuse water and fat (spec sections 4-6)."""
    placed = place_stations(stations)
    if placed is not None:
        return placed.volumes()
    grid, plan, warnings = _plan(stations)
    fused = [_fuse_channel_numpy(channel, grid, plan) for channel in (stations.water, stations.fat)]
    all_warnings = list(stations.warnings) + warnings
    return FusedVolumes(water=fused[0], fat=fused[1], warnings=all_warnings)


def _fuse_channel_numpy(channel: list[Station], grid: Grid, plan: OverlapPlan) -> np.ndarray:
    """One channel through the NumPy steps: resampled, trimmed, faded, corrected, pasted, reoriented."""
    placed_channel = []
    for i, station in enumerate(channel):
        v = station.voxels
        if needs_resampling(grid, i, v.shape):
            # A new array: ours to modify. Only the slices kept after trimming are computed.
            v = resample_trimmed(v, grid, i, int(plan.cut_start[i]), int(plan.cut_end[i]))
        else:
            # A copy of the kept slices: never modify the caller's stations.
            v = v[:, :, plan.cut_start[i] : v.shape[2] - plan.cut_end[i]].copy()
        placed_channel.append(v)
    faded = fade_and_correct(placed_channel, plan.overlaps, copy=False)
    return paste(faded, plan.start, plan.end)


def fuse_channel(channel: list[Station], stations: StationSet) -> np.ndarray:
    """Another contrast (in-phase, opposed-phase) fused on the water and fat stations' grid.

    ``channel`` holds one station per water station, head first, each of the
    fat station's shape (:func:`mimir.preprocessing.stations.pair_contrast`).
    It takes the same placement, overlap cuts, fades and intensity
    correction (its own means, as water and fat each use theirs) as
    :func:`fuse_stations`; returns the (left-right, anterior-posterior,
    head-foot) float64 volume of :class:`FusedVolumes`' shape.
    """
    grid, plan, _ = _plan(stations)
    if accel.compiled() is not None:
        placed = _place_channel(channel, grid, plan)
        if placed is not None:
            shape = tuple(int(x) for x in plan.end.max(axis=0))
            return _reorient(_paste_placed(placed[0], _placement(placed[1], plan), shape))
    return _fuse_channel_numpy(channel, grid, plan)
