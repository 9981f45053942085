"""Organ maps of synthetic subjects lie exactly on their image (``mimir.synth.organs``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from mimir.preprocessing.imageops import resize_bilinear_float, resize_bilinear_u8
from mimir.preprocessing.pipeline import preprocess
from mimir.synth import build_study, study_zip_bytes
from mimir.synth.organs import ORGANS, mass_inside, organ_projections, organ_regions


@functools.lru_cache(maxsize=8)
def _subject(seed: int, small: bool, tmp: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, object]]:
    study = build_study(seed, small=small)
    path = Path(tmp) / f"{study.eid}_20201_2_0.zip"
    path.write_bytes(study_zip_bytes(study))
    return preprocess(path, cache=False), organ_projections(study, signal=True), study.truth


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("organs"))


def _edges(a: np.ndarray) -> np.ndarray:
    """Differences along rows and columns, flattened: sensitive to a shift of one pixel."""
    a = np.asarray(a, float)[8:-8, 8:-8]
    return np.concatenate([np.diff(a, axis=0)[:, :-1].ravel(), np.diff(a, axis=1)[:-1].ravel()])


def _best_shift(drawn: np.ndarray, channel: np.ndarray, reach: int = 3) -> tuple[int, int, float]:
    """(rows, columns, correlation of the edges) of the shift of ``drawn`` that fits ``channel`` best."""
    best = (0, 0, -2.0)
    target = _edges(channel)
    for dr in range(-reach, reach + 1):
        for dc in range(-reach, reach + 1):
            r = float(np.corrcoef(_edges(np.roll(drawn, (dr, dc), axis=(0, 1))), target)[0, 1])
            if r > best[2]:
                best = (dr, dc, r)
    return best


def test_float_resize_samples_like_the_image_resize() -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (97, 131)).astype(np.uint8)
    got = resize_bilinear_float(src.astype(float), 256, 256)
    assert got.shape == (256, 256)
    # the same taps and weights as the 8-bit resize; that one rounds in fixed point
    assert np.abs(got - resize_bilinear_u8(src)).max() <= 1.0
    np.testing.assert_allclose(resize_bilinear_float(np.full((40, 30), 7.0)), 7.0)


@pytest.mark.parametrize("small", [True, False])
def test_the_drawn_body_projects_onto_the_image_with_no_shift(small: bool, tmp: str) -> None:
    """The noise-free water signal drawn on the organ maps' grid fits the image's water channel best unshifted.

    Compared by the correlation of their edges (row and column differences).
    """
    image, maps, _ = _subject(1000, small, tmp)
    rows, cols, r = _best_shift(maps["water"], image[0])
    assert (rows, cols) == (0, 0) and r > 0.9, (rows, cols, r)
    # one pixel off fits clearly worse: the check sees a misalignment of one pixel
    assert _best_shift(np.roll(maps["water"], 1, axis=0), image[0], reach=0)[2] < r - 0.015


@pytest.mark.parametrize("seed", [4, 7, 8])
def test_the_liver_region_shows_the_livers_fat_fraction(seed: int, tmp: str) -> None:
    """Inside the liver region the fat-fraction channel reads the truth's liver fat (0..255 is 0-50 %)."""
    from scipy.ndimage import binary_erosion

    image, maps, truth = _subject(seed, True, tmp)
    regions = organ_regions(maps)
    core = binary_erosion(regions["liver"], iterations=2)
    assert core.sum() > 1000
    ff = np.median(image[2][core]) / 255 * 50
    assert ff == pytest.approx(truth["liver_fat_percent"], abs=1.0)
    # the liver is brighter in water than the thighs' rays (muscle seen through subcutaneous fat)
    assert image[0][core].mean() > image[0][regions["thigh_muscle"]].mean() + 30


def test_organ_regions_sit_in_their_anatomical_order(tmp: str) -> None:
    _, maps, _ = _subject(1000, True, tmp)
    regions = organ_regions(maps)
    assert set(regions) == set(ORGANS)
    centre_row = {o: float(np.nonzero(regions[o])[0].mean()) for o in ORGANS}
    assert centre_row["liver"] < centre_row["vat"] < centre_row["thigh_muscle"]
    assert (regions["thigh_muscle"] & ~regions["thighs"]).sum() == 0  # muscle lies inside the thighs
    both_views = regions["liver"][:, :152].sum() > 500 and regions["liver"][:, 152:].sum() > 300
    assert both_views  # coronal and sagittal halves
    assert mass_inside(regions["liver"].astype(float), regions["liver"]) == 1.0
    assert mass_inside(np.zeros((256, 256)), regions["liver"]) == 0.0


def test_variants_are_refused() -> None:
    with pytest.raises(ValueError, match="regular studies"):
        organ_projections(build_study(3, "no_manifest", small=True))
