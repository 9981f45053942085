"""Grid placement, resampling, overlap trimming, seams and fusion (spec sections 4-6)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_pipeline as ref
from mimir.preprocessing import fusion
from mimir.preprocessing.fusion import (
    Grid,
    OUT_SPACING,
    fade_weights,
    fuse_stations,
    interpolation_taps,
    plan_overlaps,
    resample_station,
    station_grid,
)
from stationkit import make_station_set


@settings(max_examples=50, deadline=None)
@given(out=st.integers(1, 80), n=st.integers(1, 60), scale=st.floats(0.3, 3.0), off=st.floats(-0.6, 0.6))
def test_interpolation_taps_match_the_per_voxel_rule(out, n, scale, off):
    a0, a1, da = interpolation_taps(out, n, scale, off)
    for x in range(out):
        a = (x - off) / scale
        b0 = int(a)  # C-style truncation toward zero
        b1 = b0 + 1
        clamp = lambda v: min(max(v, 0), n - 1)  # noqa: E731
        a_c, b0_c, b1_c = clamp(a), clamp(b0), clamp(b1)
        assert (a0[x], a1[x]) == (b0_c, b1_c)
        assert da[x] == pytest.approx(a_c - b0_c, abs=1e-12)


def test_resample_identity_when_on_grid():
    v = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    g = Grid(np.zeros((1, 3)), np.array([[5.0, 6.0, 7.0]]), np.zeros((1, 3), int), np.array([[5, 6, 7]]))
    assert np.array_equal(resample_station(v, g, 0), v.astype(np.float64))


def test_resample_linear_ramp_is_exact():
    # 4.5 mm slices onto 3 mm: a ramp linear in z stays linear (inside the clamped ends).
    n = 10
    v = np.tile(np.arange(n, dtype=np.float32) * 4.5, (2, 2, 1))
    g = Grid(np.zeros((1, 3)), np.array([[2.0, 2.0, 15.0]]), np.zeros((1, 3), int), np.array([[2, 2, 15]]))
    out = resample_station(v, g, 0)
    assert out.shape == (2, 2, 15)
    assert np.allclose(out[0, 0, :14], np.arange(14) * 3.0)
    assert out[0, 0, 14] == pytest.approx(40.5)  # clamped at the last slice


def test_resample_matches_reference_per_voxel_formula():
    rng = np.random.default_rng(3)
    v = rng.random((9, 11, 8)).astype(np.float32)
    origin = np.array([[0.3, 0.0, 0.0]])
    origin_end = origin + np.array([[9 * 1.0, 11 * 0.999999, 8 * 1.5]])
    g = Grid(origin, origin_end, np.around(origin).astype(int), np.around(origin_end).astype(int))
    ours = resample_station(v, g, 0)
    theirs = ref.resample(v, g.origin[0], g.origin_end[0], g.start[0], g.size[0])
    assert np.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_station_grid_follows_patient_axes():
    # Two stations: the second 6 rows taller (3 px higher up in y) and 100 mm lower.
    ps = 2.2321429
    pos = np.array([[-50.0, -(40 * ps) / 2, 0.0], [-50.0, -(46 * ps) / 2, -100.0]])
    spacing = np.array([[ps, ps, 3.0], [ps, ps, 4.0]])
    g = station_grid(pos, spacing, np.array([[40, 48, 30], [46, 48, 25]]))
    assert g.start.tolist() == [[3, 0, 0], [0, 0, 33]]
    assert g.end[:, 2].tolist() == [30, 67]  # 100 / 3 + 25 * 4 / 3 = 66.7 -> 67
    assert g.size[0].tolist() == [40, 48, 30]


@pytest.mark.parametrize(
    "overlap, kept, cut_a, cut_b",
    [(-3, -3, 0, 0), (0, 0, 0, 0), (1, 1, 0, 0), (8, 8, 0, 0), (9, 8, 0, 1), (12, 8, 2, 2), (19, 8, 5, 6)],
)
def test_plan_overlaps_cuts_to_at_most_eight(overlap, kept, cut_a, cut_b):
    start = np.array([[0, 0, 0], [0, 0, 50 - overlap]])
    end = np.array([[10, 10, 50], [10, 10, 100]])
    plan, warnings = plan_overlaps(Grid(start.astype(float), end.astype(float), start, end))
    assert plan.overlaps.tolist() == [kept, 0]
    assert (plan.cut_end[0], plan.cut_start[1]) == (cut_a, cut_b)
    assert plan.end[0, 2] - plan.start[1, 2] == kept
    assert bool(warnings) == (overlap <= 0)


@pytest.mark.parametrize("o", range(1, 9))
def test_seam_weights_sum_to_one(o):
    w = fade_weights(o)
    assert np.all((w > 0) & (w < 1))
    assert np.allclose(w + w[::-1], 1.0)


def test_fade_of_constant_stations_is_seamless():
    a = np.ones((4, 4, 20), np.float32) * 100
    b = np.ones((4, 4, 20), np.float32) * 100
    faded = fusion.fade_and_correct([a, b], np.array([6, 0]))
    assert np.allclose(faded[0][:, :, -6:] + faded[1][:, :, 5::-1][:, :, ::-1], 100, atol=1e-4)
    vol = fusion.paste(faded, np.array([[0, 0, 0], [0, 0, 14]]), np.array([[4, 4, 20], [4, 4, 34]]))
    assert np.allclose(vol, 100, atol=1e-3)


def test_intensity_correction_removes_a_step_between_stations():
    a = np.ones((4, 4, 20), np.float32) * 100
    b = np.ones((4, 4, 20), np.float32) * 150  # the next station is 50 % brighter
    faded = fusion.fade_and_correct([a, b], np.array([8, 0]))
    vol = fusion.paste(faded, np.array([[0, 0, 0], [0, 0, 12]]), np.array([[4, 4, 20], [4, 4, 32]]))
    profile = vol[0, 0, ::-1]  # head first again
    seam = profile[12 - 4 : 20 - 4]  # after the 4-slice trim
    # Inside the seam the intensity ramps monotonically from 100 to 150.
    assert np.all(np.diff(seam) > 0)
    assert 100 < seam[0] < seam[-1] < 150


def test_on_grid_stations_paste_exactly_outside_the_seams():
    ps = np.float32(OUT_SPACING[0])  # a pixel spacing exactly on the grid
    stations = make_station_set(seed=1, rows=(40, 40, 40), slices=(30, 30, 30), dz=(3.0, 3.0, 3.0),
                                overlap_mm=(15.0, 24.0), x_mm=-50.0)
    for s in stations.water + stations.fat:
        object.__setattr__(s, "spacing", np.array([ps, ps, 3.0], dtype=np.float64))
    shapes = np.array([s.voxels.shape for s in stations.fat])
    g = station_grid(stations.positions, stations.spacings, shapes)
    assert not any(fusion.needs_resampling(g, i, tuple(shapes[i])) for i in range(3))
    fused = fuse_stations(stations)
    plan, _ = plan_overlaps(g)
    assert plan.overlaps[:2].tolist() == [5, 8]
    total = int(plan.end[:, 2].max())
    # Back to (rows, cols, slices) head first; index k - 4 is grid slice k (4 trimmed).
    head_first = np.swapaxes(fused.water, 0, 1)[:, :, ::-1]
    assert head_first.shape[2] == total - 8
    for i, station in enumerate(stations.water):
        lo = plan.start[i, 2] + (plan.overlaps[i - 1] if i > 0 else 0)  # first slice outside a seam
        hi = plan.end[i, 2] - plan.overlaps[i]
        ks = [k for k in range(lo, hi) if 4 <= k < total - 4]
        src = station.voxels[:, :, [plan.cut_start[i] + k - plan.start[i, 2] for k in ks]]
        assert np.array_equal(head_first[:, :, [k - 4 for k in ks]], src.astype(np.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fusion_matches_literal_reference(seed):
    stations = make_station_set(seed=seed)
    fused = fuse_stations(stations)
    for ours, channel in ((fused.water, stations.water), (fused.fat, stations.fat)):
        theirs = ref.fuse([s.voxels for s in channel], stations.positions, stations.spacings)
        assert ours.shape == theirs.shape
        assert np.allclose(ours, theirs, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize(
    "starts", [[0, 10, 25], [0, 12, 20], [0, 25, 50], [0, 5, 8]]  # overlaps, gaps, one station reaching two
)
def test_paste_equals_the_running_sum(starts):
    rng = np.random.default_rng(4)
    stations = [rng.random((3 + i, 4, 14)).astype(np.float32) for i in range(3)]
    start = np.array([[i, 0, z] for i, z in enumerate(starts)])
    end = start + np.array([s.shape for s in stations])
    naive = np.zeros(tuple(end.max(axis=0)))
    for v, a, b in zip(stations, start, end):
        naive[a[0] : b[0], a[1] : b[1], a[2] : b[2]] += v
    naive = np.swapaxes(np.flip(naive, 2), 0, 1)[:, :, 4:-4]
    assert np.array_equal(fusion.paste(stations, start, end), naive)


def test_fusion_leaves_its_input_stations_untouched():
    stations = make_station_set(seed=9)
    before = [s.voxels.copy() for s in stations.water + stations.fat]
    fuse_stations(stations)
    assert all(np.array_equal(b, s.voxels) for b, s in zip(before, stations.water + stations.fat))
