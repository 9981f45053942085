"""Fast path from a synthetic subject to its ``mimir-v1`` image, without DICOM files.

``mimir.synth.build_study`` draws a subject in memory. Writing its zip
(thousands of DICOM files) and reading it back costs seconds; for training
data we hand the same slices to the same pipeline functions from the signal
slices onward (``group_stations``, ``pair_water_fat``, ``fuse_stations``,
``make_image``). Every value is converted as the DICOM round trip would
convert it (positions through the decimal string the writer emits, then
float32; pixels as stored uint16 to float32), so the image is identical to
``mimir.preprocess`` of the subject's zip; :func:`check_identical` verifies
that on real zips.
"""

from __future__ import annotations

import numpy as np

from mimir.preprocessing.reader import SignalSlice
from mimir.preprocessing.fusion import fuse_stations
from mimir.preprocessing.projection import make_image
from mimir.preprocessing.stations import group_stations, pair_water_fat
from mimir.synth import PIXEL_SPACING_TEXT, build_study
from mimir.synth import dicom_writer as dw

#: The truth keys that the demo module predicts, with unit.
DEMO_TARGETS = {
    "weight_kg": "kg",
    "height_cm": "cm",
    "vat_volume_l": "L",
    "asat_volume_l": "L",
    "liver_fat_percent": "percent",
    "thigh_muscle_volume_l": "L",
}


def _f32(value: float) -> np.float32:
    return np.float32(float(dw.ds(value)))


def study_image(seed: int) -> tuple[np.ndarray, dict[str, object]]:
    """(image (3, 256, 256) uint8, truth) of the full-size synthetic subject ``seed``."""
    study = build_study(seed)
    spacing = np.full(2, np.float32(float(PIXEL_SPACING_TEXT)), dtype=np.float32)
    slices = []
    for s in study.series:
        if s.kind not in ("W", "F"):
            continue
        for k in range(s.pixels.shape[0]):
            pos = np.array([_f32(s.x0), _f32(s.y0), _f32(float(s.z[k]))], dtype=np.float32)
            slices.append(
                SignalSlice(s.pixels[k].astype(np.float32), s.number, s.description, pos, spacing, s.time)
            )
    stations = pair_water_fat(group_stations(slices))
    fused = fuse_stations(stations)
    return make_image(fused.water, fused.fat), study.truth


def check_identical(seeds: list[int], tmp_dir: str) -> None:
    """Raise AssertionError unless the fast path equals ``mimir.preprocess`` of the written zip."""
    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth import generate_subject

    for seed in seeds:
        fast, _ = study_image(seed)
        subject = generate_subject(tmp_dir, seed)
        slow = preprocess(subject.zip_path, cache=False)
        if not np.array_equal(fast, slow):
            diff = int(np.abs(fast.astype(int) - slow.astype(int)).max())
            raise AssertionError(f"seed {seed}: fast path differs from the zip pipeline (max |diff| {diff})")
