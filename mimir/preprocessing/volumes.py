"""A subject's fused 3-D volumes for other tools: the contrasts, their values and their geometry.

The water and fat volumes are the ones the image is made from
(:func:`~mimir.preprocessing.fusion.fuse_stations`, bit for bit); in-phase
and opposed-phase take the same placement, overlap cuts, fades and intensity
correction (:func:`~mimir.preprocessing.fusion.fuse_channel`); the fat
fraction is ``fat / (water + fat)`` inside the image's body mask, 0 outside.

Every volume is (left-right, anterior-posterior, head-foot) on the
2.23214293 x 2.23214293 x 3.0 mm grid (:data:`~mimir.preprocessing.fusion.OUT_SPACING`),
head at the end of the last axis; :func:`fused_affine` maps its voxel
indices to scanner coordinates in NIfTI's RAS+ convention. Writing the
files is :mod:`mimir.outputs.nifti`'s job; nothing here needs nibabel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mimir.errors import UsageError
from mimir.preprocessing.fusion import (
    OUT_SPACING,
    TRIM_SLICES,
    FusedVolumes,
    PlacedStations,
    _plan,
    _reorient,
    fuse_channel,
)
from mimir.preprocessing.projection import body_mask
from mimir.preprocessing.qc import QCRecord
from mimir.preprocessing.reader import DIXON_MARKERS, SIGNAL_CONTRASTS
from mimir.preprocessing.stations import Station, StationSet, pair_contrast

#: Volumes that can be written, in file order, with what their numbers are.
CONTRASTS: dict[str, str] = {
    "water": "water signal, the source's signal units (float64, no scaling)",
    "fat": "fat signal, the source's signal units (float64, no scaling)",
    "in": "in-phase signal, the source's signal units (float64, no scaling)",
    "opp": "opposed-phase signal, the source's signal units (float64, no scaling)",
    "ff": "fat fraction fat/(water+fat) in [0, 1] inside the body mask, 0 outside (float32)",
}
#: Written when no contrasts are named.
DEFAULT_CONTRASTS: tuple[str, ...] = ("water", "fat", "ff")
#: Full names, for messages.
CONTRAST_NAMES = {"water": "water", "fat": "fat", "in": "in-phase", "opp": "opposed-phase", "ff": "fat fraction"}


def parse_contrasts(text: str | None) -> tuple[str, ...]:
    """``"water,fat,ff"`` (any order, any subset of :data:`CONTRASTS`, or ``all``) -> names in file order.

    Raises :class:`~mimir.errors.UsageError` for an unknown or empty list.
    """
    if text is None:
        return DEFAULT_CONTRASTS
    names = {t.strip().lower() for t in text.split(",") if t.strip()}
    if names == {"all"}:
        return tuple(CONTRASTS)
    unknown = sorted(names - set(CONTRASTS))
    if unknown or not names:
        raise UsageError(
            f"unknown contrast(s) {', '.join(unknown) or '(none)'} for --contrasts",
            hint=f"Choose from {', '.join(CONTRASTS)} (comma-separated), or all.",
        )
    return tuple(c for c in CONTRASTS if c in names)


def fused_affine(stations: StationSet) -> np.ndarray:
    """(4, 4) float64: voxel (i, j, k) of the fused volumes -> scanner RAS+ mm (NIfTI's convention).

    The fused grid (:func:`~mimir.preprocessing.fusion.station_grid`) puts
    grid column ``c`` at DICOM x = ``x_min + c * OUT_SPACING[0]``, grid row
    ``r`` at y = ``y_min + r * OUT_SPACING[1]`` and grid slice ``g`` at
    z = ``z_0 - g * OUT_SPACING[2]``, where ``x_min`` and ``y_min`` are the
    smallest station positions and ``z_0`` the head station's top slice
    (positions: ImagePositionPatient, DICOM's LPS frame, as the stations
    hold them). The volume's axes are (column, row, flipped and trimmed
    slice), so volume index k is grid slice ``S - 1 - TRIM_SLICES - k``
    for a grid of S slices. NIfTI's RAS+ negates x and y.
    """
    positions = stations.positions
    grid, plan, _ = _plan(stations)
    n_slices = int(plan.end.max(axis=0)[2])
    x_min = float(positions[:, 0].min())
    y_min = float(positions[:, 1].min())
    z_0 = float(positions[0, 2])
    dz = float(OUT_SPACING[2])
    affine = np.eye(4)
    affine[0, 0], affine[0, 3] = -float(OUT_SPACING[0]), -x_min
    affine[1, 1], affine[1, 3] = -float(OUT_SPACING[1]), -y_min
    affine[2, 2], affine[2, 3] = dz, z_0 - dz * (n_slices - 1 - TRIM_SLICES)
    return affine


@dataclass
class SubjectVolumes:
    """A read subject, ready to give its volumes one at a time (memory: two at most).

    Attributes
    ----------
    image, qc:
        The subject's ``mimir-v1`` image and QC record, as :func:`~mimir.preprocessing.pipeline.preprocess_with_qc` gives them.
    stations:
        Its water and fat stations.
    extra:
        Stations of the other contrasts read (``"in"``, ``"opp"``), matched to the water stations.
    fused:
        The placed float32 stations (compiled path) or the float64 volumes (NumPy path) the image was made from.
    """

    image: np.ndarray
    qc: QCRecord
    stations: StationSet
    extra: dict[str, list[Station]]
    fused: PlacedStations | FusedVolumes

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) voxel -> scanner RAS+ mm; see :func:`fused_affine`."""
        return fused_affine(self.stations)

    def signal(self, name: str) -> np.ndarray:
        """The fused water or fat volume: (LR, AP, HF) float64, exactly :func:`~mimir.preprocessing.fusion.fuse_stations`'s."""
        if isinstance(self.fused, FusedVolumes):
            return getattr(self.fused, name)
        return _reorient(self.fused.pasted(getattr(self.fused, name)))

    def volumes(self, contrasts: tuple[str, ...]) -> Iterator[tuple[str, np.ndarray]]:
        """(name, volume) for each of ``contrasts``, in :data:`CONTRASTS` order, made one after the other.

        Water and fat are float64 in the source's units; ``in`` and ``opp``
        the same for their series; ``ff`` float32 in [0, 1] (:func:`fat_fraction`).
        """
        water = fat = None
        wanted = set(contrasts)
        if wanted & {"water", "fat", "ff"}:
            water = self.signal("water")
            if "water" in wanted:
                yield "water", water
            fat = self.signal("fat")
            if "fat" in wanted:
                yield "fat", fat
            if "ff" in wanted:
                ff = fat_fraction(water, fat)
                water = fat = None
                yield "ff", ff
            water = fat = None
        for name in ("in", "opp"):
            if name in wanted:
                yield name, fuse_channel(self.extra[name], self.stations)

    def stations_used(self) -> list[dict[str, Any]]:
        """One entry per fused station, head first: series numbers, position, spacing and voxels."""
        grid, plan, _ = _plan(self.stations)
        out = []
        for k, (w, f) in enumerate(zip(self.stations.water, self.stations.fat)):
            entry: dict[str, Any] = {
                "station": k + 1,
                "series": {"water": w.series_number, "fat": f.series_number,
                           **{c: s[k].series_number for c, s in self.extra.items()}},
                "description": w.description,
                "position_lps_mm": [float(v) for v in w.position],
                "spacing_mm": [float(v) for v in w.spacing],
                "voxels": [int(v) for v in f.voxels.shape],
                "grid_start": [int(v) for v in grid.start[k]],
                "slices_cut": [int(plan.cut_start[k]), int(plan.cut_end[k])],
            }
            out.append(entry)
        return out


def fat_fraction(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """Fat fraction volume, float32 in [0, 1]: ``fat / signal`` inside the body mask, 0 outside.

    ``signal`` and the mask are the image's (:func:`~mimir.preprocessing.projection.body_mask`:
    ``signal = water + fat`` with zeros replaced by 1; the mask is ``signal``
    at or above the mean of the per-coronal-slice Otsu thresholds), so inside
    the mask this is the image's fat-fraction channel before it is scaled
    (``1000 * fat / signal`` per mille there). Clipped to [0, 1], which
    only acts where a rescaled source holds negative values.
    """
    body = body_mask(water, fat)
    ff = body.signal  # ours: fat / signal in place, then 0 outside the mask
    np.divide(fat, ff, out=ff)
    np.multiply(ff, body.mask, out=ff)
    out = ff.astype(np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def read_subject(path: str | os.PathLike[str], contrasts: tuple[str, ...]) -> SubjectVolumes:
    """Read and fuse one subject zip for :data:`CONTRASTS` ``contrasts``: image, QC and volumes to come.

    Reads the zip once; the in-phase and opposed-phase series are read only
    when asked for. Raises :class:`~mimir.errors.InputError` as the pipeline does.
    """
    from mimir.preprocessing.pipeline import image_and_qc, read_station_lists

    extra = tuple(c for c in ("in", "opp") if c in contrasts)
    stations, grouped = read_station_lists(path, SIGNAL_CONTRASTS + extra)
    matched = {c: pair_contrast(grouped, stations, DIXON_MARKERS[c], CONTRAST_NAMES[c], path) for c in extra}
    image, record, fused = image_and_qc(stations, path)
    return SubjectVolumes(image=image, qc=record, stations=stations, extra=matched, fused=fused)
