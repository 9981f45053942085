"""Fat fraction, body mask, slice indices and the three channels (spec sections 7-8)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import reference_pipeline as ref
from mimir.preprocessing.fusion import fuse_stations
from mimir.preprocessing.projection import (
    BED_ROWS,
    body_mask,
    encode_fat_fraction,
    fat_fraction_slice_indices,
    make_image,
    mass_slice_index,
)
from stationkit import make_station_set


@settings(max_examples=100, deadline=None)
@given(mask=arrays(np.bool_, st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 5))))
def test_fat_fraction_indices_match_brute_force_count(mask):
    ic, isag = fat_fraction_slice_indices(mask)
    mass = np.count_nonzero(mask)
    half = np.count_nonzero(mask[: mask.shape[0] // 2])
    assert ic == ref.slice_of_mass(mask, mass / 2, 1)
    assert isag == ref.slice_of_mass(mask, half / 2, 0)


def test_mass_slice_index_examples():
    assert mass_slice_index(np.array([0, 0, 5, 5]), 5) == 3  # slices 0..2 hold 5
    assert mass_slice_index(np.array([4, 4]), 0) == 0
    assert mass_slice_index(np.array([1, 1]), 10) == 0  # never reached


def test_encode_fat_fraction_range_and_truncation():
    ff = np.array([-5.0, 0.0, 250.0, 499.0, 500.0, 900.0])
    assert encode_fat_fraction(ff).tolist() == [0, 0, 127, 254, 255, 255]


def test_body_mask_replaces_zero_signal_and_thresholds():
    water = np.zeros((6, 5, 4))
    fat = np.zeros((6, 5, 4))
    water[1:5, 1:4, :] = 900.0
    body = body_mask(water, fat)
    assert body.signal.min() == 1.0
    assert np.array_equal(body.mask, water > 0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_image_matches_literal_reference(seed):
    stations = make_station_set(seed=seed, rows=(60, 64, 64, 62), cols=56)
    fused = fuse_stations(stations)
    ours = make_image(fused.water, fused.fat)
    theirs, (ic, isag) = ref.image(fused.water, fused.fat)
    assert ours.shape == (3, 256, 256) and ours.dtype == np.uint8
    body = body_mask(fused.water, fused.fat)
    keep = fused.water.shape[1] - BED_ROWS
    assert fat_fraction_slice_indices(body.mask[:, :keep, :]) == (ic, isag)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize(
    "seed, small", [(5, True), (6, True), pytest.param(8, False, marks=pytest.mark.slow)]
)
def test_zip_to_image_matches_literal_reference_end_to_end(tmp_path, seed, small):
    """Reader + fast fusion + projection against the literal transcription, from a zip."""
    from mimir.preprocessing.pipeline import preprocess, read_stations
    from mimir.synth import generate_subject

    s = generate_subject(tmp_path, seed=seed, small=small)
    stations = read_stations(s.zip_path)
    water = ref.fuse([st.voxels for st in stations.water], stations.positions, stations.spacings)
    fat = ref.fuse([st.voxels for st in stations.fat], stations.positions, stations.spacings)
    expected, _ = ref.image(water, fat)
    assert np.array_equal(preprocess(s.zip_path, cache=False), expected)
