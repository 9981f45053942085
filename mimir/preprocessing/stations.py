"""Group signal slices into stations and make water and fat consistent.

Spec: ``preprocessing-spec.md`` sections 2 and 3.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

import numpy as np

from mimir.errors import InconsistentStationsError, MissingSeriesError
from mimir.preprocessing import accel
from mimir.preprocessing.reader import SignalSlice

log = logging.getLogger("mimir")


@dataclass(frozen=True)
class Station:
    """One series: a 3-D block of slices.

    Attributes
    ----------
    voxels:
        (Rows, Columns, n) float32; slices ordered by z descending (head first).
    position:
        (3,) float64, mm: element-wise maximum of the slices' ImagePositionPatient.
    spacing:
        (3,) float64, mm: (PixelSpacing[0], PixelSpacing[1], (z_max - z_min) / (n - 1)).
    series_number, description, series_time:
        From the first slice of the series in file order.
    """

    voxels: np.ndarray
    position: np.ndarray
    spacing: np.ndarray
    series_number: int
    description: str
    series_time: str


@dataclass
class StationSet:
    """Water and fat stations of one subject, consistent and sorted head first.

    ``water[i]`` and ``fat[i]`` share position and shape. Positions and
    spacings are taken from the water stations, as in the original
    procedure. ``warnings`` lists the irregularities that were repaired, as
    sentences; ``flags`` the same as QC codes (``rescan_replaced:station=N``,
    ``slices_dropped:station=N,n=K``, ``wf_shape_cropped:station=N``; N counts
    the kept stations from 1, head first; see docs/qc.md).
    """

    water: list[Station]
    fat: list[Station]
    warnings: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def positions(self) -> np.ndarray:
        """(S, 3) float64 station positions, mm."""
        return np.stack([s.position for s in self.water])

    @property
    def spacings(self) -> np.ndarray:
        """(S, 3) float64 voxel spacings, mm."""
        return np.stack([s.spacing for s in self.water])


def group_stations(slices: list[SignalSlice], path: str | os.PathLike[str] | None = None) -> list[Station]:
    """One station per SeriesNumber, in ascending SeriesNumber order."""
    by_series: dict[int, list[SignalSlice]] = {}
    for s in slices:
        by_series.setdefault(s.series_number, []).append(s)
    stations = []
    for number in sorted(by_series):
        group = by_series[number]
        first = group[0]
        if len(group) < 2:
            raise MissingSeriesError(
                f"series {number} ({first.description[:80]}) has only {len(group)} slice",
                path,
                "The zip is incomplete; download it again.",
            )
        shapes = {g.pixels.shape for g in group}
        if len(shapes) != 1:
            raise InconsistentStationsError(
                f"series {number} ({first.description[:80]}) mixes slice sizes {sorted(shapes)}", path
            )
        z = np.array([g.position[2] for g in group], dtype=np.float32)
        order = np.argsort(z)[::-1]
        voxels = _stack([group[i].pixels for i in order])
        positions = np.stack([g.position for g in group]).astype(np.float64)
        z64 = z.astype(np.float64)
        dz = (z64.max() - z64.min()) / (len(group) - 1)
        spacing = np.array([first.pixel_spacing[0], first.pixel_spacing[1], dz], dtype=np.float64)
        stations.append(
            Station(
                voxels=voxels,
                position=positions.max(axis=0),
                spacing=spacing,
                series_number=number,
                description=first.description,
                series_time=first.series_time,
            )
        )
    return stations


def _stack(pixels: list[np.ndarray]) -> np.ndarray:
    """Slices (rows, cols), head first, as one C-contiguous (rows, cols, slices) float32 volume."""
    kernels = accel.compiled()
    if kernels is not None and all(p.dtype == np.float32 for p in pixels):
        return kernels.stack_slices(pixels)
    # Stack along a new first axis (contiguous writes), then one transposing copy.
    return np.ascontiguousarray(np.stack(pixels).transpose(1, 2, 0))


def pair_water_fat(stations: list[Station], path: str | os.PathLike[str] | None = None) -> StationSet:
    """Split into water and fat, drop rescans, crop mismatched shapes, sort head first.

    Raises
    ------
    MissingSeriesError
        No water or no fat series.
    InconsistentStationsError
        Water and fat stations differ in number or position: the subject cannot be used.
    """
    water = [s for s in stations if "_W" in s.description]
    fat = [s for s in stations if "_F" in s.description]
    if not water or not fat:
        missing = "water (_W)" if not water else "fat (_F)"
        raise MissingSeriesError(f"has no {missing} series", path, "Is this a complete field-20201 zip?")
    if len(water) != len(fat):
        raise InconsistentStationsError(
            f"has {len(water)} water but {len(fat)} fat series; the subject cannot be used", path
        )
    pos_w = np.stack([s.position for s in water])
    pos_f = np.stack([s.position for s in fat])
    if not np.allclose(pos_w, pos_f):
        raise InconsistentStationsError(
            "water and fat stations are at different positions; the subject cannot be used", path
        )
    warnings: list[str] = []
    repairs: list[tuple[int, str]] = []  # (water series number, QC code with details after "station=N")

    # Rescans: stations sharing one position keep the most recent (water SeriesTime).
    unique = np.unique(pos_w, axis=0)
    if len(unique) != len(pos_w):
        keep = []
        for pos in unique:
            idx = np.flatnonzero(np.all(pos_w == pos, axis=1))
            if len(idx) > 1:
                times = np.array([water[i].series_time.replace(".", "") for i in idx])
                chosen = int(idx[int(np.argmax(times))])
                dropped = [water[i].series_number for i in idx if i != chosen]
                warnings.append(
                    f"station at z={pos[2]:.1f} mm was acquired {len(idx)} times; kept the most recent "
                    f"(water series {water[chosen].series_number}), dropped series {dropped}"
                )
                keep.append(chosen)
                repairs.append((water[chosen].series_number, "rescan_replaced:station={}"))
            else:
                keep.append(int(idx[0]))
        water = [water[i] for i in keep]
        fat = [fat[i] for i in keep]

    # Water and fat of one station with different shapes: crop both to the common minimum.
    for i, (w, f) in enumerate(zip(water, fat)):
        if w.voxels.shape != f.voxels.shape:
            common = np.minimum(w.voxels.shape, f.voxels.shape)
            warnings.append(
                f"water and fat of series {w.series_number}/{f.series_number} differ in shape "
                f"{w.voxels.shape} vs {f.voxels.shape}; cropped both to {tuple(int(c) for c in common)}"
            )
            if w.voxels.shape[:2] == f.voxels.shape[:2]:
                dropped = abs(w.voxels.shape[2] - f.voxels.shape[2])
                repairs.append((w.series_number, "slices_dropped:station={}" + f",n={dropped}"))
            else:
                repairs.append((w.series_number, "wf_shape_cropped:station={}"))
            crop = tuple(slice(0, int(c)) for c in common)
            water[i] = replace(w, voxels=np.ascontiguousarray(w.voxels[crop]))
            fat[i] = replace(f, voxels=np.ascontiguousarray(f.voxels[crop]))

    order = np.argsort(np.array([s.position[2] for s in water]))[::-1]
    water = [water[i] for i in order]
    fat = [fat[i] for i in order]
    for w in warnings:
        log.warning("%s: %s", path, w)
    station_of = {s.series_number: k + 1 for k, s in enumerate(water)}
    flags = [code.format(station_of[number]) for number, code in repairs]
    return StationSet(water=water, fat=fat, warnings=warnings, flags=flags)


def pair_contrast(
    stations: list[Station], paired: StationSet, marker: str, name: str, path: str | os.PathLike[str] | None = None
) -> list[Station]:
    """The stations of another Dixon contrast (in-phase ``_in``, opposed-phase ``_opp``) matched to ``paired``.

    One station per water station of ``paired``, head first: the series of
    the contrast at the water station's position (the most recent, by
    SeriesTime, where the station was acquired twice, as for water and fat),
    cropped to the fat station's shape as water and fat were.

    Raises
    ------
    MissingSeriesError
        No series of the contrast at one of the water stations' positions.
    InconsistentStationsError
        A series smaller than the fat station it must match.
    """
    candidates = [s for s in stations if marker in s.description]
    out = []
    for k, (w, f) in enumerate(zip(paired.water, paired.fat)):
        here = [s for s in candidates if np.allclose(s.position, w.position)]
        if not here:
            raise MissingSeriesError(
                f"has no {name} ({marker}) series at station {k + 1} (z = {w.position[2]:.1f} mm)",
                path,
                "Write the other contrasts only, or ask for a fresh copy of the zip.",
            )
        chosen = max(here, key=lambda s: s.series_time.replace(".", ""))
        shape = f.voxels.shape
        if any(a < b for a, b in zip(chosen.voxels.shape, shape)):
            raise InconsistentStationsError(
                f"{name} series {chosen.series_number} is {chosen.voxels.shape}, smaller than its fat "
                f"station {shape}",
                path,
                "Write the other contrasts only.",
            )
        if chosen.voxels.shape != shape:
            crop = tuple(slice(0, int(c)) for c in shape)
            chosen = replace(chosen, voxels=np.ascontiguousarray(chosen.voxels[crop]))
        out.append(chosen)
    return out
