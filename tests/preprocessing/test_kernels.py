"""The compiled kernels give the same bits as the plain NumPy code, step by step and end to end.

``MIMIR_KERNELS=0`` switches every step back to the NumPy code of
``stations``/``fusion``/``projection``; each test runs both and compares
with ``np.array_equal`` (no tolerance). The C extension must be built here
(``pip install -e .`` builds it): these tests fail, not skip, without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimir.preprocessing import fusion, kernels, projection
from mimir.preprocessing.fusion import Grid, fuse_stations
from mimir.preprocessing.imageops import otsu_threshold
from stationkit import make_station_set



def test_the_extension_is_built():
    assert kernels.available(), "mimir.preprocessing._kernels is missing: run `pip install -e .` with a C compiler"


def _both(monkeypatch, fn):
    """(NumPy result, compiled result) of ``fn()``."""
    monkeypatch.setenv("MIMIR_KERNELS", "0")
    assert not kernels.enabled()
    plain = fn()
    monkeypatch.setenv("MIMIR_KERNELS", "1")
    assert kernels.enabled()
    return plain, fn()


#: Station sets that cover the layouts: plain, uneven rows, resampled slices and long overlaps, a gap.
STATION_SETS = [
    dict(seed=0),
    dict(seed=1, rows=(60, 64, 64, 62), cols=56),
    dict(seed=2, slices=(30, 12, 25, 20), dz=(3.0, 4.5, 4.5, 3.5), overlap_mm=(40.0, 9.0, 45.0)),
    dict(seed=3, overlap_mm=(-6.0, 20.0, 30.0)),  # a gap between the first two stations
]


@pytest.mark.parametrize("kwargs", STATION_SETS)
def test_fusion_and_image_are_bit_identical(monkeypatch, kwargs):
    stations = make_station_set(**kwargs)

    def run():
        fused = fuse_stations(stations)
        return fused.water, fused.fat, projection.make_image(fused.water, fused.fat)

    plain, fast = _both(monkeypatch, run)
    for a, b in zip(plain, fast):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kwargs", [{**k, "seed": k["seed"] + 4} for k in STATION_SETS])  # other voxels
def test_image_from_placed_stations_is_bit_identical(monkeypatch, kwargs):
    from mimir.preprocessing.pipeline import image_of_stations

    stations = make_station_set(**kwargs)
    monkeypatch.setenv("MIMIR_KERNELS", "0")
    assert fusion.place_stations(stations) is None
    fused = fuse_stations(stations)
    plain = projection.make_image(fused.water, fused.fat)
    assert np.array_equal(image_of_stations(stations), plain)
    monkeypatch.setenv("MIMIR_KERNELS", "1")
    placed = fusion.place_stations(stations)
    assert placed is not None and placed.water.dtype == np.float32
    assert np.array_equal(projection.make_image_from_placed(placed), plain)
    assert np.array_equal(image_of_stations(stations), plain)
    volumes = placed.volumes()
    assert np.array_equal(volumes.water, fused.water) and np.array_equal(volumes.fat, fused.fat)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(2, 12)),
    scale=st.tuples(st.floats(0.5, 2.0), st.floats(0.9, 1.1), st.floats(0.4, 2.5)),
    offset=st.tuples(st.floats(-0.7, 0.7), st.floats(-0.7, 0.7), st.floats(-0.7, 0.7)),
    cuts=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    seed=st.integers(0, 2**31),
)
def test_resample_trimmed_equals_resample_station(shape, scale, offset, cuts, seed):
    v = np.random.default_rng(seed).gamma(2.0, 300.0, shape).astype(np.float32)
    origin = np.array([offset])
    origin_end = origin + np.array([shape]) * np.array([scale])
    g = Grid(origin, origin_end, np.around(origin).astype(np.int64), np.around(origin_end).astype(np.int64))
    if np.any(g.size[0] < 1) or g.size[0, 2] - sum(cuts) < 1:
        return
    full = fusion.resample_station(v, g, 0, dtype=np.float32)
    before = os.environ.get("MIMIR_KERNELS")
    os.environ["MIMIR_KERNELS"] = "1"  # (hypothesis runs this many times: no monkeypatch)
    try:
        fast = fusion.resample_trimmed(v, g, 0, *cuts)
    finally:
        if before is None:
            del os.environ["MIMIR_KERNELS"]
        else:
            os.environ["MIMIR_KERNELS"] = before
    assert np.array_equal(fast, full[:, :, cuts[0] : full.shape[2] - cuts[1]])


@settings(max_examples=200, deadline=None)
@given(lo=st.floats(-1e6, 1e6), span=st.floats(1e-300, 1e6), n=st.integers(2, 300))
def test_linspace_edges_match_numpy(lo, span, n):
    hi = lo + span
    edges = np.empty(n)
    kernels.linspace_edges(lo, hi, edges)
    assert np.array_equal(edges, np.linspace(lo, hi, n))


def _volumes(seed, shape=(23, 40, 31), zeros=0.3):
    rng = np.random.default_rng(seed)
    water = rng.gamma(2.0, 200.0, shape) * (rng.random(shape) > zeros)
    fat = rng.gamma(1.5, 150.0, shape) * (rng.random(shape) > zeros)
    return water, fat


@pytest.mark.parametrize("seed", range(4))
def test_projection_pass_histograms_and_sums_match_numpy(seed):
    water, fat = _volumes(seed)
    if seed == 3:
        water[:, 5, :] = 0  # a constant (all-zero signal) slice: threshold is its value
        fat[:, 5, :] = 0
    keep = water.shape[1] - 7
    w, f = np.swapaxes(water, 0, 1), np.swapaxes(fat, 0, 1)
    n_lr, n_ap, n_hf = water.shape
    cor_w, cor_f = np.zeros((n_lr, n_hf)), np.zeros((n_lr, n_hf))
    sag_w, sag_f = np.zeros((keep, n_hf)), np.zeros((keep, n_hf))
    lows, highs = np.empty(n_ap), np.empty(n_ap)
    hist = np.zeros((n_ap, 256), dtype=np.int64)
    assert kernels.projection_pass(w, f, keep, cor_w, cor_f, sag_w, sag_f, lows, highs, hist)
    signal = water + fat
    signal[signal == 0] = 1
    for i in range(n_ap):
        s = signal[:, i, :]
        assert (lows[i], highs[i]) == (s.min(), s.max())
        if s.min() != s.max():
            assert np.array_equal(hist[i], np.histogram(s, bins=256, range=(float(s.min()), float(s.max())))[0])
    thresholds = projection.otsu_thresholds_from_histograms(hist, lows, highs)
    assert thresholds.tolist() == [otsu_threshold(signal[:, i, :]) for i in range(n_ap)]
    assert np.array_equal(cor_w, np.sum(water[:, :keep, :], axis=1))
    assert np.array_equal(sag_f, np.sum(fat[:, :keep, :], axis=0))


@pytest.mark.parametrize("layout", ["c", "pipeline", "flipped-copy"])
def test_make_image_is_bit_identical_for_any_layout(monkeypatch, layout):
    water, fat = _volumes(7, shape=(30, 52, 40), zeros=0.5)
    if layout == "pipeline":  # the view fusion returns: (rows, cols, slices) memory, flipped and swapped
        water = np.swapaxes(np.flip(np.ascontiguousarray(np.swapaxes(water, 0, 1)[:, :, ::-1]), 2), 0, 1)
        fat = np.swapaxes(np.flip(np.ascontiguousarray(np.swapaxes(fat, 0, 1)[:, :, ::-1]), 2), 0, 1)
    elif layout == "flipped-copy":
        water, fat = np.flip(water, 2), np.flip(fat, 2)
    plain, fast = _both(monkeypatch, lambda: projection.make_image(water, fat))
    assert projection._make_image_compiled(water, fat) is not None  # the compiled path was taken
    assert np.array_equal(plain, fast)


def test_make_image_falls_back_for_other_layouts(monkeypatch):
    water, fat = _volumes(8, shape=(30, 52, 40))
    water, fat = np.asfortranarray(water), np.asfortranarray(fat)  # NumPy would sum pairwise here
    monkeypatch.setenv("MIMIR_KERNELS", "1")
    assert projection._make_image_compiled(water, fat) is None
    assert projection._make_image_compiled(water.astype(np.float32), fat.astype(np.float32)) is None


@pytest.mark.parametrize("overlaps", [[8, 8, 0], [3, 0, 0], [0, 5, 0], [-2, 8, 0]])
def test_slab_seams_equal_plain_seams(monkeypatch, overlaps):
    rng = np.random.default_rng(sum(overlaps) + 11)
    stations = [rng.gamma(2.0, 300.0, (9, 11, d)).astype(np.float32) for d in (20, 18, 25)]
    overlaps = np.array(overlaps)
    fast = fusion.fade_and_correct(stations, overlaps)
    monkeypatch.setattr(fusion, "_fade_and_correct_slabs", lambda out, o: False)
    plain = fusion.fade_and_correct(stations, overlaps)
    assert all(np.array_equal(a, b) for a, b in zip(plain, fast))


def test_short_stations_take_the_plain_seams():
    stations = [np.ones((3, 3, 5), np.float32), np.ones((3, 3, 4), np.float32), np.ones((3, 3, 6), np.float32)]
    # the middle station's head (3 + 1 slices) and tail (2 + 1 slices) would overlap
    assert not fusion._fade_and_correct_slabs([s.copy() for s in stations], np.array([3, 2, 0]))


@pytest.mark.parametrize("starts", [[0, 10, 25], [0, 12, 20], [0, 25, 50], [0, 5, 8]])
def test_compiled_paste_equals_numpy_paste(starts):
    rng = np.random.default_rng(5)
    stations = [rng.random((3 + i, 4 + (i == 1), 14)).astype(np.float32) for i in range(3)]
    stations[1][0, 0, :3] = -0.0  # a negative zero added to a zero must stay as NumPy leaves it
    start = np.array([[i, 0, z] for i, z in enumerate(starts)])
    end = start + np.array([s.shape for s in stations])
    plain = fusion.paste(stations, start, end)
    shapes = np.array([s.shape for s in stations])
    offsets = np.concatenate([[0], np.cumsum(np.prod(shapes, axis=1))[:-1]])
    volume = np.empty(tuple(end.max(axis=0)))
    kernels.paste_all(volume, np.concatenate([s.ravel() for s in stations]), offsets, shapes, start,
                      fusion.paste_splits(start, end))
    fast = fusion._reorient(volume)
    assert np.array_equal(plain, fast)
    assert np.array_equal(np.signbit(plain), np.signbit(fast))


def test_zip_to_image_is_bit_identical(monkeypatch, tmp_path):
    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth import generate_subject

    s = generate_subject(tmp_path, seed=21, small=True)
    plain, fast = _both(monkeypatch, lambda: preprocess(s.zip_path, cache=False))
    assert np.array_equal(plain, fast)


def test_group_stations_is_bit_identical(monkeypatch, tmp_path):
    from mimir.preprocessing.reader import read_signal_slices
    from mimir.preprocessing.stations import group_stations
    from mimir.synth import generate_subject

    slices = read_signal_slices(generate_subject(tmp_path, seed=22, small=True).zip_path)
    plain, fast = _both(monkeypatch, lambda: group_stations(slices))
    assert len(plain) == len(fast) == 12
    for a, b in zip(plain, fast):
        assert b.voxels.flags.c_contiguous and a.voxels.dtype == b.voxels.dtype == np.float32
        assert np.array_equal(a.voxels, b.voxels)


def test_stack_slices_equals_numpy_stack():
    rng = np.random.default_rng(3)
    for n in (1, 15, 16, 17, 40):
        parts = [rng.random((6, 9), dtype=np.float32) for _ in range(n)]
        assert np.array_equal(kernels.stack_slices(parts), np.stack(parts, axis=-1))


def test_kernels_refuse_arguments_that_would_index_out_of_bounds():
    v = np.ones((4, 5, 6), np.float32)
    taps = [np.zeros(4, np.int64), np.zeros(4, np.int64), np.ones(4), np.zeros(4)]
    taps += [np.zeros(5, np.int64), np.zeros(5, np.int64), np.ones(5), np.zeros(5)]
    taps += [np.zeros(6, np.int64), np.zeros(6, np.int64), np.ones(6), np.zeros(6)]
    out = np.empty((4, 5, 6), np.float32)
    kernels.resample_into(v, *taps, 0, out)
    assert np.array_equal(out, v)
    bad = list(taps)
    bad[1] = np.full(4, 4, np.int64)  # row index 4 of 4 rows
    with pytest.raises(ValueError, match="a1"):
        kernels.resample_into(v, *bad, 0, out)
    with pytest.raises(ValueError, match="c0 has 6 entries, 7 needed"):
        kernels.resample_into(v, *taps, 1, out)
    volume = np.empty((4, 5, 6))
    with pytest.raises(ValueError, match="station 0 does not fit"):
        kernels.paste_all(volume, np.ones(120, np.float32), np.array([0]), np.array([[4, 5, 7]]),
                          np.array([[0, 0, 0]]), np.array([0]))
    with pytest.raises(ValueError, match="buf must be a float32 array"):
        kernels._c.paste_all(volume, np.ones(120), *(np.array(a) for a in ([0], [[4, 5, 6]], [[0, 0, 0]], [0])))
    with pytest.raises(ValueError, match="the stations end at slice 5, the volume at 6"):
        kernels.paste_all(volume, np.ones(120, np.float32), np.array([0]), np.array([[4, 5, 5]]),
                          np.array([[0, 0, 0]]), np.array([0]))
    with pytest.raises(ValueError, match="water and fat volumes of different shapes"):
        kernels.mask_counts(volume, volume[:3], 2, 1.0, np.zeros(2, np.int64), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="mask_counts: the arrays' shapes do not agree"):
        kernels.mask_counts(volume, volume, 2, 1.0, np.zeros(1, np.int64), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="projection pass: the arrays' shapes do not agree"):
        kernels.projection_pass(volume, volume, 2, *(np.zeros((5, 6)),) * 2, *(np.zeros((2, 6)),) * 2,
                                np.empty(4), np.empty(4), np.zeros((3, 256), np.int64))
    with pytest.raises(ValueError, match="slice 1 is not a float32"):
        kernels.stack_slices([np.ones((2, 2), np.float32), np.ones((2, 3), np.float32)])


def test_legacy_switch_still_turns_the_kernels_off(monkeypatch):
    monkeypatch.delenv("MIMIR_KERNELS", raising=False)
    monkeypatch.setenv("MIMIR_NUMBA", "0")
    assert not kernels.enabled()
    monkeypatch.setenv("MIMIR_KERNELS", "1")  # the new name wins
    assert kernels.enabled()


_COLD = """
import sys
from mimir.preprocessing import accel
print(accel.compiled() is not None, "numba" in sys.modules)
"""


def test_a_fresh_process_uses_the_kernels_from_its_first_image():
    env = {k: v for k, v in os.environ.items() if k not in ("MIMIR_KERNELS", "MIMIR_NUMBA")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", _COLD], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
