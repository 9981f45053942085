"""The preview PNG: three panels side by side, labelled with channel names, subject name and QC flags."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from mimir.outputs.preview import encode_png, labelled_preview, preview, write_preview


def _image() -> np.ndarray:
    img = np.zeros((3, 256, 256), np.uint8)
    img[0, 50:200, 40:90] = 200
    img[1, 60:220, 30:100] = 120
    img[2, 100:140, 60:80] = 250
    return img


def test_panels_are_kept_unchanged_below_the_header() -> None:
    img = _image()
    plain = preview(img)
    labelled = labelled_preview(img, "1000001_20201_2_0", ["fat_water_swap:station=3"])
    assert labelled.dtype == np.uint8 and labelled.shape[1] == plain.shape[1] == 3 * 256 + 2 * 4
    top = labelled.shape[0] - plain.shape[0] - 34  # header height; 34 rows of captions below
    assert top > 0
    np.testing.assert_array_equal(labelled[top: top + 256], plain)
    # text was drawn in the header and under the panels
    assert labelled[:top].max() == 255 and (labelled[:top] > 0).mean() > 0.01
    assert (labelled[top + 256:] > 0).mean() > 0.01


def test_labels_depend_on_name_and_flags() -> None:
    img = _image()
    a = labelled_preview(img, "subject_a")
    b = labelled_preview(img, "subject_b")
    c = labelled_preview(img, "subject_a", ["slices_dropped:station=2,n=1"])
    assert a.shape == b.shape == c.shape
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    bare = labelled_preview(img)  # no name, no flags: captions only
    assert bare.shape[0] == 256 + 34


def test_write_preview_names_the_subject_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "1000001_20201_2_0.png"
    write_preview(path, _image())
    with Image.open(path) as im:
        got = np.asarray(im)
    np.testing.assert_array_equal(got, labelled_preview(_image(), "1000001_20201_2_0"))
    assert encode_png(got) == path.read_bytes()


def test_long_flag_lists_are_shortened_to_the_width() -> None:
    flags = [f"geometry:station={i},something_long" for i in range(40)]
    out = labelled_preview(_image(), "x", flags)
    assert out.shape[1] == 3 * 256 + 8
    png = Image.open(io.BytesIO(encode_png(out)))
    assert png.size == (out.shape[1], out.shape[0])
