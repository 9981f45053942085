"""Build StationSets directly in NumPy (no DICOM) for tests of the numerics."""

from __future__ import annotations

import numpy as np

from mimir.preprocessing.stations import Station, StationSet

PS = np.float32(2.2321429)


def blob_volume(rng, shape, z0_mm, dz):
    """A smooth body-like water/fat pair: an ellipse body with a fat rim and noise."""
    rows, cols, n = shape
    r = (np.arange(rows) - rows * 0.45)[:, None, None] / (rows * 0.35)
    c = (np.arange(cols) - cols / 2)[None, :, None] / (cols * 0.4)
    z = (z0_mm - np.arange(n) * dz)[None, None, :]
    wobble = 1 + 0.1 * np.sin(z / 40.0)
    rad = np.sqrt(r**2 + (c / wobble) ** 2)
    body = rad < 1
    rim = (rad > 0.8) & body
    water = np.where(body & ~rim, 800.0, 5.0) + rng.normal(0, 20, (rows, cols, n))
    fat = np.where(rim, 700.0, 10.0) + 200 * (np.sin(z / 25.0) > 0.5) * body + rng.normal(0, 20, (rows, cols, n))
    return np.abs(water).astype(np.float32), np.abs(fat).astype(np.float32)


def make_station_set(
    seed: int = 0,
    rows=(40, 44, 44, 42),
    cols: int = 48,
    slices=(20, 14, 14, 18),
    dz=(3.0, 4.5, 4.5, 3.5),
    overlap_mm=(36.0, 31.5, 35.0),
    x_mm: float = -53.5,
) -> StationSet:
    """Stations head first, positions per the UK Biobank conventions (z down, FOV centred)."""
    rng = np.random.default_rng(seed)
    water, fat = [], []
    z_top = 0.0
    for i, (nr, n, d) in enumerate(zip(rows, slices, dz)):
        if i > 0:
            # The previous station ends one spacing below its last slice; overlap from there.
            z_top = z_top - slices[i - 1] * dz[i - 1] + overlap_mm[i - 1]
        pos = np.array([x_mm, -(nr * float(PS)) / 2, z_top], dtype=np.float32).astype(np.float64)
        spacing = np.array([PS, PS, np.float32(d)], dtype=np.float64)
        w, f = blob_volume(rng, (nr, cols, n), z_top, d)
        common = dict(position=pos, spacing=spacing, series_time=f"1200{i:02d}.000000")
        water.append(Station(voxels=w, series_number=4 * i + 4, description="Dixon_W", **common))
        fat.append(Station(voxels=f, series_number=4 * i + 3, description="Dixon_F", **common))
    return StationSet(water=water, fat=fat)
