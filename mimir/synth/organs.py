"""Where a synthetic subject's organs lie in its 3 x 256 x 256 image.

:func:`organ_projections` draws the subject's body (:mod:`mimir.synth.body`)
once more on the fused grid of the ``mimir-v1`` pipeline (the grid the
pipeline builds from the study's stations: 2.232 x 2.232 x 3 mm, station 1
first, :data:`~mimir.preprocessing.fusion.TRIM_SLICES` cut at each end, the
:data:`~mimir.preprocessing.projection.BED_ROWS` posterior rows removed),
projects the occupancy of each organ along the same axes as the image's
water and fat channels (coronal: front to back; sagittal: left to right),
puts the two views side by side and resizes them on the image's own
sampling grid (:func:`~mimir.preprocessing.imageops.resize_bilinear_float`).
So pixel (r, c) of an organ map and of the image show the same ray through
the body. Values are the organ's thickness along the ray in mm.

Organs (:data:`ORGANS`), with the truth's slab definitions
(:mod:`mimir.synth.body`):

- ``liver``;
- ``vat``: fat inside the abdominal cavity, between the top of the femoral
  heads and the liver dome; ``asat``: torso subcutaneous fat in the same slab;
- ``thigh_muscle``: leg muscle between the knee joint and the top of the
  femoral heads; ``thighs``: the whole legs (muscle, fat, bone) in that slab.

:func:`organ_regions` turns the maps into boolean regions (at least one
voxel, 2.232 mm, of the organ on the ray).
"""

from __future__ import annotations

import numpy as np

from mimir.preprocessing.fusion import (
    OUT_SPACING,
    TRIM_SLICES,
    plan_overlaps,
    station_grid,
)
from mimir.preprocessing.imageops import resize_bilinear_float
from mimir.preprocessing.projection import BED_ROWS, IMAGE_SIZE
from mimir.synth.body import Y_BED, Body, Canvas, Structure, draw_params
from mimir.synth.study import SMALL_SCALE_XY, SMALL_Y_BED, SynthStudy

#: Organ maps written by :func:`organ_projections`, in this order.
ORGANS: tuple[str, ...] = ("liver", "vat", "asat", "thigh_muscle", "thighs")
#: A pixel belongs to an organ's region when the organ is at least this thick on its ray (mm): one voxel.
REGION_MIN_MM = float(OUT_SPACING[0])
#: Image slices drawn at a time (keeps the working set to a few tens of MB).
_CHUNK = 48
#: Occupancy functions of the leg structures (muscle, fat, femur and tibia, patella).
_LEG_SHAPES = ("Body._leg.", "Body._long_bone.", "Body._patella.")


def _layer(s: Structure) -> str | None:
    """The layer a painted structure adds to (None: not an organ of interest)."""
    if s.tissue in ("liver", "vat", "sat"):
        return s.tissue
    if any(getattr(s.occ, "__qualname__", "").startswith(p) for p in _LEG_SHAPES):
        return "leg_muscle" if s.tissue == "leg_muscle" else "leg_other"
    return None


def _slab(h: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """1.0 for slices whose height lies in [lo, hi], else 0.0: (n, 1, 1) float32."""
    return ((h >= lo) & (h <= hi)).astype(np.float32)[:, None, None]


def _fused_geometry(study: SynthStudy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient (z of each image row before resizing, y of each kept AP row, x of each LR column), mm."""
    water = sorted((s for s in study.series if s.kind == "W"), key=lambda s: -float(s.z[0]))
    positions = np.array([(s.x0, s.y0, float(s.z[0])) for s in water])
    spacings = np.array([(OUT_SPACING[0], OUT_SPACING[1], s.spacing) for s in water])
    shapes = np.array([(s.pixels.shape[1], s.pixels.shape[2], s.pixels.shape[0]) for s in water])
    plan, _ = plan_overlaps(station_grid(positions, spacings, shapes))
    rows, cols, slices = (int(v) for v in plan.end.max(axis=0))
    # fused voxel (row a, column c, slice k) sits at y = min y0 + a dy, x = x0 + c dx, z = z_top - k dz;
    # image row i (head first) is fused slice TRIM_SLICES + i (see fusion._reorient, projection.make_image)
    z = positions[0, 2] - OUT_SPACING[2] * (TRIM_SLICES + np.arange(slices - 2 * TRIM_SLICES))
    y = positions[:, 1].min() + OUT_SPACING[0] * np.arange(rows - BED_ROWS)
    x = positions[0, 0] + OUT_SPACING[1] * np.arange(cols)
    return z, y, x


def organ_projections(study: SynthStudy, *, signal: bool = False) -> dict[str, np.ndarray]:
    """Organ thickness maps of a regular synthetic study in its image's frame.

    Parameters
    ----------
    study:
        A study from :func:`~mimir.synth.build_study` without a variant
        (full size or ``small``).
    signal:
        Also return ``"water"`` and ``"fat"``: the noise-free signal of the
        whole body projected the same way (signal x mm), for checking the
        alignment against the image's own channels.

    Returns
    -------
    dict
        :data:`ORGANS` (and the signals) -> (256, 256) float64, mm of the
        organ along each pixel's ray (coronal half: front to back; sagittal
        half: left to right).
    """
    if study.variant is not None:
        raise ValueError(f"organ maps are drawn for regular studies only, not the {study.variant!r} variant")
    body = Body(draw_params(study.seed))
    marks = study.truth["landmarks_z_mm"]
    assert isinstance(marks, dict)
    kz = (marks["chin"] - marks["knee"]) / (body.h_chin - body.h_knee)  # patient mm per body mm along z
    kxy, y_bed = (SMALL_SCALE_XY, SMALL_Y_BED) if study.small else (1.0, Y_BED)
    z, y, x = _fused_geometry(study)
    h_all = (body.h_chin + (z - marks["chin"]) / kz).astype(np.float32)
    yb = (Y_BED + (y - y_bed) / kxy).astype(np.float32)
    xb = (x / kxy).astype(np.float32)
    edge = max(2.0, 0.7 * OUT_SPACING[0] / kxy)
    names = ORGANS + (("water", "fat") if signal else ())
    coronal = {n: np.zeros((z.size, x.size)) for n in names}
    sagittal = {n: np.zeros((z.size, y.size)) for n in names}
    lo, hi = body.h_femoral_head_top, body.h_liver_top
    for z0 in range(0, z.size, _CHUNK):
        h = h_all[z0:z0 + _CHUNK]
        canvas = Canvas(h, yb, xb, edge, render=signal, layers=_layer)
        body.paint(canvas)
        abdomen, thigh = _slab(h, lo, hi), _slab(h, body.h_knee, lo)
        for n in names:
            v = _organ_volume(n, canvas, abdomen, thigh)
            coronal[n][z0:z0 + _CHUNK] = v.sum(axis=1, dtype=np.float64) * OUT_SPACING[0]
            sagittal[n][z0:z0 + _CHUNK] = v.sum(axis=2, dtype=np.float64) * OUT_SPACING[1]
    return {n: np.maximum(resize_bilinear_float(np.concatenate([coronal[n], sagittal[n]], axis=1),
                                                IMAGE_SIZE, IMAGE_SIZE), 0.0)
            for n in names}


def _organ_volume(name: str, canvas: Canvas, abdomen: np.ndarray, thigh: np.ndarray) -> np.ndarray:
    """Occupancy (or signal) of one organ on a painted canvas, (h, y, x) float32; ``abdomen``, ``thigh``: slabs."""
    if name in ("water", "fat"):
        signal = canvas.water if name == "water" else canvas.fat
        assert signal is not None
        return signal
    got, zero = canvas.layers_out, np.zeros(canvas.vis.shape, np.float32)
    if name == "liver":
        return got.get("liver", zero)
    if name in ("vat", "asat"):
        return got.get("vat" if name == "vat" else "sat", zero) * abdomen
    muscle = got.get("leg_muscle", zero)
    return (muscle if name == "thigh_muscle" else muscle + got.get("leg_other", zero)) * thigh


def organ_regions(maps: dict[str, np.ndarray], min_mm: float = REGION_MIN_MM) -> dict[str, np.ndarray]:
    """Boolean (256, 256) region of each organ map: pixels where the organ is at least ``min_mm`` thick."""
    return {n: np.asarray(m) >= min_mm for n, m in maps.items() if n in ORGANS}


def mass_inside(saliency: np.ndarray, region: np.ndarray) -> float:
    """Share of a non-negative map's mass inside a boolean region (0 for an all-zero map)."""
    s = np.asarray(saliency, dtype=np.float64)
    total = float(s.sum())
    return float(s[np.asarray(region, bool)].sum() / total) if total > 0 else 0.0
