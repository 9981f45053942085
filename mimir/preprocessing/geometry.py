"""Refuse impossible station geometry before fusion allocates its volume.

Fusion allocates a volume as large as the stations' placement asks for: a
PixelSpacing of ``60\\60`` or one station 100 m away would ask for gigabytes
and produce a mostly empty image. The checks here use only the headers
(positions, spacings, voxel counts), so they cost nothing, and refuse with one
line naming the station, the attribute and the value:

- every spacing finite and within the protocol's plausible range;
- the fused volume no larger than a human body: :data:`MAX_WIDTH_MM` across
  (left-right and anterior-posterior) and :data:`MAX_LENGTH_MM` head to foot;
- no gap larger than :data:`MAX_GAP_MM` between neighbouring stations
  (smaller gaps and missing overlaps are repaired by fusion and flagged by QC).

Spec: ``preprocessing-spec.md`` section 4 (placement); limits in ``docs/limits.md``.
"""

from __future__ import annotations

import os

import numpy as np

from mimir.errors import GeometryError
from mimir.preprocessing.fusion import OUT_SPACING, station_grid
from mimir.preprocessing.stations import Station, StationSet

#: Largest fused extent across the body (left-right and anterior-posterior), mm.
MAX_WIDTH_MM = 700.0
#: Largest fused extent head to foot, mm.
MAX_LENGTH_MM = 2000.0
#: Largest gap between neighbouring stations, mm (UK Biobank stations overlap by ~30-40 mm).
MAX_GAP_MM = 100.0
#: Plausible slice spacing of one station, mm (UK Biobank: 3.0 to 4.5).
MIN_SLICE_SPACING_MM, MAX_SLICE_SPACING_MM = 0.1, 50.0
#: Largest fused grid, voxels: MAX_WIDTH_MM^2 x MAX_LENGTH_MM on the 2.23 x 2.23 x 3 mm grid (~66 M).
MAX_GRID_VOXELS = int(
    np.ceil(MAX_WIDTH_MM / OUT_SPACING[0]) * np.ceil(MAX_WIDTH_MM / OUT_SPACING[1]) * np.ceil(MAX_LENGTH_MM / OUT_SPACING[2])
)

_HINT = "The subject cannot be used as it is; ask for a fresh copy of its zip."


def _label(i: int, s: Station) -> str:
    return f"station {i + 1} (series {s.series_number}, {s.description[:60]})"


def check_geometry(stations: StationSet, path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`GeometryError` when fusing ``stations`` would make an impossible volume.

    ``stations`` are head first (as :func:`~mimir.preprocessing.stations.pair_water_fat` returns
    them). Uses positions (mm), spacings (mm) and voxel counts only; allocates nothing large.
    """
    water = stations.water
    for i, s in enumerate(water):
        sp = np.asarray(s.spacing, dtype=np.float64)
        if not (np.isfinite(sp[2]) and MIN_SLICE_SPACING_MM <= sp[2] <= MAX_SLICE_SPACING_MM):
            raise GeometryError(
                f"{_label(i, s)}: slice spacing from ImagePositionPatient is {sp[2]:g} mm; expected "
                f"{MIN_SLICE_SPACING_MM} to {MAX_SLICE_SPACING_MM} mm (two slices at one position?)",
                path,
                _HINT,
            )
        if not np.all(np.isfinite(s.position)):
            raise GeometryError(f"{_label(i, s)}: ImagePositionPatient is not finite", path, _HINT)
        rows, cols, n = s.voxels.shape
        extent = (rows * sp[0], cols * sp[1], n * sp[2])
        for axis, mm, limit in (("Rows x PixelSpacing", extent[0], MAX_WIDTH_MM),
                                ("Columns x PixelSpacing", extent[1], MAX_WIDTH_MM),
                                ("slices x slice spacing", extent[2], MAX_LENGTH_MM)):
            if mm > limit:
                raise GeometryError(
                    f"{_label(i, s)}: {axis} is {mm:.0f} mm, larger than a body ({limit:.0f} mm); "
                    f"PixelSpacing {sp[0]:g}\\{sp[1]:g}, slice spacing {sp[2]:g} mm",
                    path,
                    _HINT,
                )
    # Gaps between neighbours, head first: a station ends one slice spacing below its last slice.
    for i in range(len(water) - 1):
        a, b = water[i], water[i + 1]
        bottom_a = a.position[2] - a.voxels.shape[2] * a.spacing[2]
        gap = bottom_a - b.position[2]
        if gap > MAX_GAP_MM:
            raise GeometryError(
                f"{_label(i + 1, b)} starts {gap:.0f} mm below the end of station {i + 1} "
                f"(ImagePositionPatient z = {b.position[2]:g}); gaps over {MAX_GAP_MM:.0f} mm are refused",
                path,
                _HINT,
            )
    # The fused grid, exactly as fusion will place it.
    shapes = np.array([s.voxels.shape for s in stations.fat])
    grid = station_grid(stations.positions, stations.spacings, shapes)
    size = np.maximum(grid.end.max(axis=0), 0)
    mm = size * OUT_SPACING
    limits = (MAX_WIDTH_MM, MAX_WIDTH_MM, MAX_LENGTH_MM)
    names = ("anterior-posterior", "left-right", "head-foot")
    for k in range(3):
        if mm[k] > limits[k] + OUT_SPACING[k]:
            raise GeometryError(
                f"the stations' ImagePositionPatient values place them over {mm[k]:.0f} mm {names[k]} "
                f"(at most {limits[k]:.0f} mm for a body); positions z = "
                + ", ".join(f"{s.position[2]:g}" for s in water[:8]),
                path,
                _HINT,
            )
