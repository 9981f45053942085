"""Bit-exactness of the resize and Otsu implementations, and the PNG writer."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimir.preprocessing.imageops import minmax_to_u8, otsu_threshold, resize_bilinear_u8
from mimir.outputs.preview import encode_png


def test_resize_identity_size_is_identity():
    img = np.arange(256 * 256, dtype=np.int64).reshape(256, 256).astype(np.uint8)
    assert np.array_equal(resize_bilinear_u8(img), img)


def test_resize_constant_image_stays_constant():
    img = np.full((362, 376), 173, np.uint8)
    assert np.all(resize_bilinear_u8(img) == 173)


def test_resize_known_values_2x_upscale():
    # 1 x 2 -> 1 x 4 along x: centres at +0.5 give weights 1, 0.75/0.25, 0.25/0.75, 1.
    img = np.array([[0, 200]], np.uint8)
    out = resize_bilinear_u8(img, 1, 4)
    assert out.tolist() == [[0, 50, 150, 200]]


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 420), w=st.integers(1, 420), oh=st.integers(1, 300), ow=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_resize_matches_opencv(h, w, oh, ow, seed):
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    assert np.array_equal(resize_bilinear_u8(img, oh, ow), cv2.resize(img, (ow, oh)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), zeros=st.floats(0.0, 0.9))
def test_otsu_matches_scikit_image(seed, zeros):
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(seed)
    img = rng.gamma(2.0, 150.0, (70, 90)) * (rng.random((70, 90)) > zeros) + 1
    assert otsu_threshold(img) == filters.threshold_otsu(img)


def test_otsu_separates_two_populations():
    img = np.concatenate([np.full(500, 10.0), np.full(500, 1000.0)])
    t = otsu_threshold(img)
    assert 10.0 <= t < 1000.0


def test_otsu_constant_image_returns_value():
    assert otsu_threshold(np.full((4, 4), 7.5)) == 7.5


def test_minmax_to_u8_truncates():
    out = minmax_to_u8(np.array([0.0, 0.5, 1.0, 0.999]))
    assert out.tolist() == [0, 127, 255, 254]
    assert minmax_to_u8(np.ones(3)).tolist() == [0, 0, 0]


def test_png_roundtrip_pixels():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (4, 3, 8, 0)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    rows = np.frombuffer(raw, np.uint8).reshape(3, 5)
    assert np.all(rows[:, 0] == 0) and np.array_equal(rows[:, 1:], img)
